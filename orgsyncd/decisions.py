"""Approving and rejecting held jobs: from the CLI, and by decision files in a tenant's inbox.

A tenant with ``sftp_approval = true`` decides its own held jobs by uploading an empty file named
``approve-<job>`` or ``reject-<job>``. Every decision, taken or refused, is a ``job_decision`` row
(who, how, when, which job, the outcome) written in the transaction that makes the state change;
the state change itself goes through ``store.jobs.change_state`` like every other. A decision file
is answered in ``results/<name>.results.csv`` and ``results/<name>.summary.json``; it leaves the
inbox at the next rescan (not at once: SFTP clients look at the file they just uploaded).

Who: ``cli:<user>``, or the uploader as the SFTP layer names it (``sftp:<tenant>@<peer> <key
fingerprint>``). The watcher and rescans see a decision file too, but only the SFTP layer knows its
sender, so they leave a fresh one alone for ``DECISION_GRACE_S`` (the upload's own notification
comes within milliseconds); one still there after that, or placed in the inbox by other means, is
decided as ``inbox:<tenant>``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from orgsyncd.core.header import Issue
from orgsyncd.core.results import ResultsWriter, iso, write_json
from orgsyncd.errors import UsageError
from orgsyncd.jobrunner import JobRunner, atomic_text
from orgsyncd.paths import TenantDirs, atomic_replace, tenant_dirs
from orgsyncd.store.db import write_transaction
from orgsyncd.store.jobs import HELD, QUEUED, JobRecord, JobStore, change_state, utcnow
from orgsyncd.store.tables import Decision, Job

log = structlog.get_logger("orgsyncd.decisions")
DECISION_GRACE_S = 10.0
_NAME = re.compile(r"^(approve|reject)-([0-9]{1,18})$", re.IGNORECASE)
_VERB = {"approve": "approved", "reject": "rejected"}
_MAX_BLANK_BYTES = 64  # "empty" allows a stray newline or two from `echo > approve-12`


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    decision: str  # approve | reject
    job_id: int
    outcome: str  # approved | rejected | refused
    reason: str | None
    actor: str
    via: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "job_id": self.job_id,
            "outcome": self.outcome,
            "code": "approval_refused" if self.outcome == "refused" else None,
            "message": self.reason,
            "actor": self.actor,
            "via": self.via,
            "at": iso(self.at),
        }


def parse_decision_name(name: str) -> tuple[str, int] | None:
    """``approve-12`` -> ("approve", 12); None for any other name."""
    match = _NAME.match(name)
    return (match.group(1).lower(), int(match.group(2))) if match else None


def via_of(actor: str) -> str:
    return actor.split(":", 1)[0] if ":" in actor else "cli"


class Decisions:
    def __init__(self, engine: Engine, jobs: JobStore, runner: JobRunner) -> None:
        self.engine = engine
        self.jobs = jobs
        self.runner = runner

    # -- the CLI ---------------------------------------------------------------------------------

    def decide(self, job_id: int, decision: str, actor: str) -> JobRecord:
        """``jobs approve`` / ``jobs reject``: a refusal is recorded and raised as a UsageError."""
        job = self.jobs.get(job_id)  # NotFoundError for a job that does not exist
        record = self._record(job.tenant_id, job_id, decision, actor, via_of(actor), None, None)
        assert record is not None
        if record.outcome == "refused":
            raise UsageError(record.reason or "refused")
        return self._after(record)

    def of_job(self, job_id: int) -> list[DecisionRecord]:
        """Every decision that named job *job_id*, oldest first (refused ones too)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT decision, job_id, outcome, reason, actor, via, at FROM job_decision "
                    "WHERE job_id = :id ORDER BY id"
                ),
                {"id": job_id},
            ).all()
        return [_from_row(row) for row in rows]

    # -- decision files ----------------------------------------------------------------------

    def take_file(
        self,
        tenant: str,
        path: Path,
        actor: str | None,
        wait: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Decide what an ``approve-<job>`` / ``reject-<job>`` file in *tenant*'s inbox asks.

        Like a roster, the file is taken by hard-linking it into the spool: exactly one of any
        number of watchers, rescans and instances wins, and the link count says "taken" even
        after a client changes the file's times. It stays in the inbox for a while (SFTP clients
        look at what they just uploaded) and a later rescan removes it. *wait*: how to call the
        decision once the file is taken (the daemon's waits out a database outage, so a file taken
        meanwhile is decided when it is back rather than at the next start)."""
        try:
            info = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            return
        settled = time.time() - info.st_ctime >= DECISION_GRACE_S
        if info.st_nlink > 1:
            if settled:
                self._tidy(tenant, path, info)
            return
        if actor is None and not settled:
            return  # the SFTP layer is about to report it with its sender; a rescan comes later
        spool = self._dirs(tenant).spool / f"{info.st_ino:x}-{info.st_mtime_ns:x}__{path.name}"
        spool.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, spool)
        except (FileExistsError, FileNotFoundError):
            return  # another watcher or instance took it first, or it is gone
        decide = functools.partial(self._decide_spooled, tenant, spool, path.name, actor)
        if wait is None:
            decide()
        else:
            wait(decide)

    def recover_spooled(self, tenant: str, spool: Path) -> None:
        """At start-up: a decision file taken into the spool by a process that died before it
        was decided is decided now (its sender is unknown by then)."""
        name = spool.name.split("__", 1)[1]
        if self._stored(tenant, spool.name) is None:
            self._decide_spooled(tenant, spool, name, None)
        with contextlib.suppress(FileNotFoundError):
            if spool.stat().st_nlink == 1:  # the inbox copy is gone: nothing left to tidy
                spool.unlink()

    def _decide_spooled(self, tenant: str, spool: Path, name: str, actor: str | None) -> None:
        parsed = parse_decision_name(name)
        assert parsed is not None
        decision, job_id = parsed
        cfg = self.runner.settings.tenant(tenant)
        record = self._record(
            self.jobs.tenant_id(tenant),
            job_id,
            decision,
            actor or f"inbox:{tenant}",
            via_of(actor) if actor else "inbox",
            (name, spool.name),
            _file_refusal(tenant, cfg.sftp_approval, spool),
        )
        fresh = record is not None
        record = record or self._stored(tenant, spool.name)
        if record is None:
            return
        self._answer(self._dirs(tenant), name, record)
        if fresh and record.outcome != "refused":
            self._after(record)

    def _tidy(self, tenant: str, path: Path, info: os.stat_result) -> None:
        """A decided file leaves the inbox, and its spool link with it."""
        for spool in self._dirs(tenant).spool.glob(f"{info.st_ino:x}-*__{path.name}"):
            if spool.samefile(path) and self._stored(tenant, spool.name) is not None:
                _remove_if_same(path, info)
                spool.unlink(missing_ok=True)

    def _dirs(self, tenant: str) -> TenantDirs:
        return tenant_dirs(self.runner.settings.daemon.data_dir, tenant)

    # -- the decision itself -------------------------------------------------------------------

    def _record(
        self,
        tenant_id: int,
        job_id: int,
        decision: str,
        actor: str,
        via: str,
        file: tuple[str, str] | None,
        refusal: str | None,
    ) -> DecisionRecord | None:
        """Decide and record, in one transaction; None when the file was decided before."""
        now = utcnow()
        try:
            with write_transaction(self.engine) as conn:
                reason = refusal or self._refusal(conn, tenant_id, job_id, decision)
                outcome = "refused" if reason else _VERB[decision]
                self._insert(conn, tenant_id, job_id, decision, outcome, reason, actor, via, file, now)
                if reason is None:
                    self._change(conn, job_id, decision, actor)
        except IntegrityError:
            return None
        record = DecisionRecord(
            decision=decision, job_id=job_id, outcome=outcome, reason=reason, actor=actor, via=via, at=now
        )
        event = "decision_refused" if reason else "decision_taken"
        log.info(event, job_id=job_id, decision=decision, actor=actor, via=via, reason=reason)
        return record

    def _refusal(self, conn: Connection, tenant_id: int, job_id: int, decision: str) -> str | None:
        # Locked until the decision commits: two deciders at once get one decision and one refusal.
        row = conn.execute(
            select(col(Job.tenant_id), col(Job.status)).where(col(Job.id) == job_id).with_for_update()
        ).first()
        if row is None or row[0] != tenant_id:  # another tenant's job is no business of this one
            return f"there is no job {job_id} of this tenant"
        if row[1] != HELD:
            earlier = self._last_decision(conn, job_id)
            return f"job {job_id} is {row[1]}; only held jobs can be {_VERB[decision]}{earlier}"
        return None

    def _last_decision(self, conn: Connection, job_id: int) -> str:
        row = conn.execute(
            text(
                "SELECT outcome, actor, at FROM job_decision WHERE job_id = :id AND outcome <> 'refused' "
                "ORDER BY id DESC LIMIT 1"
            ),
            {"id": job_id},
        ).first()
        return "" if row is None else f" ({row[0]} by {row[1]} at {iso(row[2])})"

    def _insert(
        self,
        conn: Connection,
        tenant_id: int,
        job_id: int,
        decision: str,
        outcome: str,
        reason: str | None,
        actor: str,
        via: str,
        file: tuple[str, str] | None,
        now: datetime,
    ) -> None:
        conn.execute(
            insert(Decision).values(
                tenant_id=tenant_id,
                job_id=job_id,
                decision=decision,
                outcome=outcome,
                reason=reason,
                actor=actor,
                via=via,
                file_name=file[0] if file else None,
                file_key=file[1] if file else None,
                at=now,
            )
        )

    def _change(self, conn: Connection, job_id: int, decision: str, actor: str) -> None:
        if decision == "approve":
            # Back to the queue, ahead of the tenant's other jobs; it skips the guards when it runs.
            change_state(
                conn,
                job_id,
                QUEUED,
                actor=actor,
                allowed=(HELD,),
                code="approved",
                approved=True,
                priority=1,
                finalized=False,
            )
        else:
            change_state(
                conn,
                job_id,
                "rejected",
                actor=actor,
                allowed=(HELD,),
                code="rejected",
                finalized=False,
                finished_at=utcnow(),
            )

    def _after(self, record: DecisionRecord) -> JobRecord:
        """What follows a decision once committed: a rejected job gets its result files."""
        job = self.jobs.get(record.job_id)
        if record.outcome == "rejected" and not job.finalized:
            self.runner.write_operator_outcome(
                job, "rejected", f"rejected by {record.actor}; nothing of this file was applied"
            )
            job = self.jobs.get(record.job_id)
        return job

    def _stored(self, tenant: str, key: str) -> DecisionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT decision, job_id, outcome, reason, actor, via, at FROM job_decision "
                    "WHERE tenant_id = :t AND file_key = :key"
                ),
                {"t": self.jobs.tenant_id(tenant), "key": key},
            ).first()
        return None if row is None else _from_row(row)

    # -- the answer to a decision file ---------------------------------------------------------

    def _answer(self, dirs: TenantDirs, name: str, record: DecisionRecord) -> None:
        """``results/<name>.results.csv`` (one row-0 line) and ``<name>.summary.json``."""
        results = dirs.results / f"{name}.results.csv"
        summary = dirs.results / f"{name}.summary.json"
        tmp = f".{name}.{uuid.uuid4().hex[:8]}"
        csv_tmp, json_tmp = dirs.spool / f"{tmp}.csv.tmp", dirs.spool / f"{tmp}.json.tmp"
        with atomic_text(csv_tmp) as out:
            if record.outcome == "refused":
                issue = Issue("error", "approval_refused", record.reason or "")
            elif record.outcome == "approved":
                issue = Issue("approved", "approved", _taken(record))
            else:
                issue = Issue("rejected", "rejected", _taken(record))
            ResultsWriter(out, None).issues([issue])
        write_json(json_tmp, record.as_dict())
        atomic_replace(csv_tmp, results)
        atomic_replace(json_tmp, summary)


def _from_row(row: Any) -> DecisionRecord:
    decision, job_id, outcome, reason, actor, via, at = row
    return DecisionRecord(
        decision=decision, job_id=job_id, outcome=outcome, reason=reason, actor=actor, via=via, at=at
    )


def _taken(record: DecisionRecord) -> str:
    if record.outcome == "approved":
        return f"job {record.job_id} approved by {record.actor}; it applies at the next run"
    return f"job {record.job_id} rejected by {record.actor}; nothing of it was applied"


def _file_refusal(tenant: str, enabled: bool, path: Path) -> str | None:
    if not enabled:
        return (
            f"tenant {tenant!r} does not take decisions by file (sftp_approval is off); "
            "ask an operator to run 'orgsyncd jobs approve' or 'jobs reject'"
        )
    size = path.stat().st_size
    if size > _MAX_BLANK_BYTES or (size and path.read_bytes().strip()):
        return f"a decision file must be empty; this one has {size} bytes, so nothing was decided"
    return None


def _remove_if_same(path: Path, info: os.stat_result) -> None:
    """Remove *path* unless a new upload of that name replaced it (another inode)."""
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_ino == info.st_ino:
            path.unlink()
