"""Who works on a job now: claims, leases and takeovers, in the database.

A job is claimed by one statement that moves it from queued to running and stamps it with the
claiming instance, a fresh ``claim_token``, a lease (``lease_expires_at``) and the database session
doing the work (``db_session``). While the job runs a heartbeat renews the lease; the outcome is
written only by the holder of the current token (``change_state(..., token=...)``: fencing).

A running job whose lease ran out (its instance hung) or whose holder is provably gone (its
PostgreSQL session ended; on SQLite, its process died on this host) is *reclaimed*: put back in the
queue, with a ``job_event`` saying so, and run again by whoever claims it next. Its attempt never
committed (a commit ends the job's running state in the same transaction), so nothing of it is
applied; on PostgreSQL a session that still holds row locks is ended first
(``pg_terminate_backend``), so the re-run does not wait for a hung instance.

The tenant's running job blocks its later jobs (the unique index ``uq_job_running_tenant`` keeps
it to one), so files still apply in arrival order across instances.

Slot claims (``slot_claim``) do the same for scheduled work that is not a job: the daily export of
a tenant, pruning. The instance that inserts the row for a slot does the work; an abandoned claim
(lease ran out, never done) can be taken over.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import Connection, Engine, exists, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import col

from orgsyncd.store.db import is_sqlite, write_transaction
from orgsyncd.store.jobs import (
    HELD,
    QUEUED,
    RUNNING,
    StateChange,
    change_state,
    record_change,
    utcnow,
)
from orgsyncd.store.tables import Job, SlotClaim

log = structlog.get_logger("orgsyncd.claims")

_TERMINATE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Claim:
    """This instance's hold on one running job."""

    job_id: int
    tenant_id: int
    token: str
    instance: str
    lease_expires_at: datetime


def new_token() -> str:
    return secrets.token_hex(16)


def session_id(conn: Connection) -> str:
    """Who holds this connection's transactions, for another instance to check and end.

    PostgreSQL: the backend, as ``pg:<pid>:<start in µs>`` (the start time, so a reused pid is
    never taken for it). SQLite: its sessions live inside the process, so the process,
    ``sqlite:<host>:<pid>``.
    """
    if is_sqlite(conn):
        return f"sqlite:{socket.gethostname()}:{os.getpid()}"
    row = conn.execute(
        text(
            "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint "
            "FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
    ).one()
    conn.commit()
    return f"pg:{row[0]}:{row[1]}"


def lease_until(lease_s: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_s)


# -- claiming --------------------------------------------------------------------------------------


def claim_job(
    conn: Connection, job_id: int, *, instance: str, actor: str, lease_s: float, in_order: bool = True
) -> Claim | None:
    """Claim queued job *job_id* for *instance* on *conn* (the connection that will do its work),
    in one statement; None when it is not there to take (claimed or finished by someone else, no
    longer its tenant's head, or another job of its tenant is running).

    *in_order*: only when it is the head of its tenant's queue and nothing of the tenant is held
    (the scheduled runs); ``orgsyncd import`` applies its file now, ahead of the queue.
    """
    session = session_id(conn)
    token = new_token()
    now = utcnow()
    until = now + timedelta(seconds=lease_s)
    conditions = [col(Job.id) == job_id, col(Job.status) == QUEUED]
    if in_order:
        job = Job.__table__  # type: ignore[attr-defined]
        head = job.alias("head")
        blocker = job.alias("blocker")
        head_id = (
            select(head.c.id)
            .where(head.c.tenant_id == job.c.tenant_id, head.c.status == QUEUED)
            .order_by(head.c.priority.desc(), head.c.received_at, head.c.id)
            .limit(1)
            .scalar_subquery()
        )
        held = exists().where(blocker.c.tenant_id == job.c.tenant_id, blocker.c.status == HELD)
        conditions += [col(Job.id) == head_id, ~held]
    statement = (
        update(Job)
        .where(*conditions)
        .values(
            status=RUNNING,
            instance=instance,
            claimed_at=now,
            lease_expires_at=until,
            claim_token=token,
            db_session=session,
        )
        .returning(col(Job.tenant_id))
    )
    try:
        with _immediate(conn):
            tenant_id = conn.execute(statement).scalar()
            if tenant_id is None:
                return None
            change = StateChange(
                job_id=job_id,
                tenant_id=tenant_id,
                from_status=QUEUED,
                to_status=RUNNING,
                actor=actor,
                code=None,
                message=None,
                at=now,
            )
            record_change(conn, change)
    except IntegrityError:  # uq_job_running_tenant: another job of the tenant is running
        return None
    return Claim(job_id=job_id, tenant_id=tenant_id, token=token, instance=instance, lease_expires_at=until)


@contextlib.contextmanager
def _immediate(conn: Connection) -> Iterator[None]:
    """A write transaction on *conn* (SQLite: BEGIN IMMEDIATE), committed at the end."""
    if conn.in_transaction():
        conn.commit()
    conn.execution_options(sqlite_immediate=True)
    try:
        with conn.begin():
            yield
    finally:
        conn.execution_options(sqlite_immediate=False)


def renew(conn: Connection, claim: Claim, lease_s: float) -> bool:
    """Push the lease on; False when another instance took the job over (a job that finished
    has nothing to renew: True)."""
    result = conn.execute(
        update(Job)
        .where(col(Job.id) == claim.job_id, col(Job.claim_token) == claim.token, col(Job.status) == RUNNING)
        .values(lease_expires_at=lease_until(lease_s))
    )
    if result.rowcount:
        return True
    token = conn.execute(select(col(Job.claim_token)).where(col(Job.id) == claim.job_id)).scalar()
    return token == claim.token


def release(
    conn: Connection, claim: Claim, to_status: str, *, actor: str, code: str | None, message: str | None,
    **values: object,
) -> None:  # fmt: skip
    """End our claim without an outcome (the attempt failed or was stopped): the job goes back to
    *to_status* (queued, or failed after its last attempt). Raises LeaseLost when it is not ours
    any more, StateConflict when it is no longer running."""
    change_state(
        conn, claim.job_id, to_status, actor=actor, allowed=(RUNNING,), token=claim.token, code=code,
        message=message, **values,
    )  # fmt: skip


# -- reclaiming -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """A running job's claim, as read."""

    id: int
    instance: str | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    claim_token: str | None
    db_session: str | None


def running_job(conn: Connection, tenant_id: int) -> Holder | None:
    row = conn.execute(
        select(
            col(Job.id), col(Job.instance), col(Job.claimed_at), col(Job.lease_expires_at),
            col(Job.claim_token), col(Job.db_session),
        ).where(col(Job.tenant_id) == tenant_id, col(Job.status) == RUNNING)
    ).first()  # fmt: skip
    if row is None:
        return None
    job_id, instance, claimed_at, lease, token, session = row
    assert job_id is not None
    return Holder(job_id, instance, claimed_at, lease, token, session)


def holder_gone(conn: Connection, db_session: str | None) -> bool:
    """True when the session that did the job's work provably no longer exists (then nothing of
    its attempt can commit): its PostgreSQL backend has ended, or (SQLite) its process on this host
    has died. False when it may still be there: then only the lease tells."""
    if not db_session:
        return False
    kind, _, rest = db_session.partition(":")
    if kind == "pg" and not is_sqlite(conn):
        pid, _, start = rest.partition(":")
        return _backend(conn, int(pid), int(start)) is None
    if kind == "sqlite":
        host, _, pid = rest.rpartition(":")
        return host == socket.gethostname() and not _process_alive(int(pid))
    return False


def _backend(conn: Connection, pid: int, start: int) -> str | None:
    """The state of backend *pid* started at *start* (µs), or None when it is gone."""
    state = conn.execute(
        text(
            "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = :pid "
            "AND (extract(epoch FROM backend_start) * 1000000)::bigint = :start"
        ),
        {"pid": pid, "start": start},
    ).scalar()
    conn.commit()
    return None if state is None else str(state)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:  # a zombie (killed, not yet reaped) is dead for our purposes
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return True


def reclaim(conn: Connection, job: Holder, *, actor: str) -> bool:
    """Put running *job* back in the queue if its holder is gone or its lease ran out; True if it
    was. The holder's attempt never committed; on PostgreSQL its session is ended first if it is
    still inside a transaction (a hung instance holding row locks)."""
    now = utcnow()
    gone = holder_gone(conn, job.db_session)
    expired = job.lease_expires_at is not None and job.lease_expires_at < now
    if not (gone or expired):
        return False
    if not gone and not is_sqlite(conn):
        _end_session(conn, job.db_session)
    since = job.claimed_at.isoformat(timespec="seconds") if job.claimed_at else "?"
    until = job.lease_expires_at.isoformat(timespec="seconds") if job.lease_expires_at else "?"
    if gone:
        why = f"the session of instance {job.instance}, which claimed it at {since}, is gone (it died or lost the database)"
    else:
        why = f"the lease of instance {job.instance} ran out at {until} (it hung or died)"
    assert job.claim_token is not None
    try:
        with _immediate(conn):
            row = conn.execute(
                select(col(Job.claim_token), col(Job.lease_expires_at))
                .where(col(Job.id) == job.id, col(Job.status) == RUNNING)
                .with_for_update()
            ).first()
            if row is None or row[0] != job.claim_token:
                return False  # finished, or reclaimed by someone else meanwhile
            if not gone and row[1] is not None and row[1] >= utcnow():
                return False  # it renewed meanwhile: alive after all
            change_state(
                conn,
                job.id,
                QUEUED,
                actor=actor,
                allowed=(RUNNING,),
                token=job.claim_token,
                code="instance_gone" if gone else "lease_expired",
                message=f"{why}; its attempt was rolled back, nothing of it applied; the job runs again",
                lease_expires_at=None,
                db_session=None,
            )
    except OperationalError:
        log.warning("job_reclaim_failed", job_id=job.id, exc_info=True)
        return False
    log.warning("job_reclaimed", job_id=job.id, holder=job.instance, gone=gone, expired=expired)
    return True


def _end_session(conn: Connection, db_session: str | None) -> None:
    """PostgreSQL: end the hung holder's backend if it is inside a transaction (it may hold row
    locks the re-run would wait for), and wait until it is gone. An idle one holds nothing; if it
    ever wakes up, fencing refuses its outcome."""
    if not db_session or not db_session.startswith("pg:"):
        return
    pid, _, start = db_session[3:].partition(":")
    state = _backend(conn, int(pid), int(start))
    if state is None or state == "idle":
        return
    try:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": int(pid)})
        conn.commit()
    except OperationalError:
        conn.rollback()
        log.warning("db_session_not_ended", db_session=db_session, exc_info=True)
        return
    log.warning("db_session_ended", db_session=db_session)
    deadline = time.monotonic() + _TERMINATE_WAIT_S
    while _backend(conn, int(pid), int(start)) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def reclaim_abandoned(engine: Engine, tenant_id: int, *, actor: str) -> bool:
    """Reclaim the tenant's running job if it is abandoned; True if one was."""
    with engine.connect() as conn:
        job = running_job(conn, tenant_id)
        conn.commit()
        return job is not None and reclaim(conn, job, actor=actor)


# -- slot claims ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotHold:
    id: int
    kind: str
    tenant_id: int
    slot: str
    instance: str


def claim_slot(
    engine: Engine, kind: str, tenant_id: int, slot: str, *, instance: str, lease_s: float
) -> SlotHold | None:
    """The slot's work is ours to do: the first instance to insert its row, or the taker of a
    claim abandoned before it was done (its lease ran out). None when someone else has it or did it."""
    now = utcnow()
    with write_transaction(engine) as conn:
        found = conn.execute(
            select(
                col(SlotClaim.id), col(SlotClaim.instance), col(SlotClaim.lease_expires_at), col(SlotClaim.done_at)
            ).where(
                col(SlotClaim.kind) == kind, col(SlotClaim.tenant_id) == tenant_id, col(SlotClaim.slot) == slot
            )
        ).first()  # fmt: skip
        if found is None:
            try:
                with conn.begin_nested():
                    slot_id: int = conn.execute(
                        insert(SlotClaim)
                        .values(
                            kind=kind,
                            tenant_id=tenant_id,
                            slot=slot,
                            instance=instance,
                            claimed_at=now,
                            lease_expires_at=now + timedelta(seconds=lease_s),
                        )
                        .returning(SlotClaim.__table__.c.id)  # type: ignore[attr-defined]
                    ).scalar_one()
            except IntegrityError:
                return None  # another instance inserted it first
            return SlotHold(slot_id, kind, tenant_id, slot, instance)
        assert found.id is not None
        if found.done_at is not None or found.lease_expires_at >= now:
            return None
        taken = conn.execute(
            update(SlotClaim)
            .where(
                col(SlotClaim.id) == found.id,
                col(SlotClaim.instance) == found.instance,
                col(SlotClaim.done_at).is_(None),
                col(SlotClaim.lease_expires_at) < now,
            )
            .values(instance=instance, claimed_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
        ).rowcount
        if not taken:
            return None
        log.warning("slot_claim_taken_over", kind=kind, slot=slot, holder=found.instance)
        return SlotHold(found.id, kind, tenant_id, slot, instance)


def renew_slot(conn: Connection, hold: SlotHold, lease_s: float) -> bool:
    result = conn.execute(
        update(SlotClaim)
        .where(col(SlotClaim.id) == hold.id, col(SlotClaim.instance) == hold.instance, col(SlotClaim.done_at).is_(None))
        .values(lease_expires_at=lease_until(lease_s))
    )  # fmt: skip
    return bool(result.rowcount)


def slot_done(engine: Engine, hold: SlotHold) -> bool:
    """Record the slot's work as done; False when our claim was taken over meanwhile."""
    with write_transaction(engine) as conn:
        result = conn.execute(
            update(SlotClaim)
            .where(col(SlotClaim.id) == hold.id, col(SlotClaim.instance) == hold.instance)
            .values(done_at=utcnow())
        )
        return bool(result.rowcount)


__all__ = [
    "Claim",
    "SlotHold",
    "claim_job",
    "claim_slot",
    "holder_gone",
    "reclaim",
    "reclaim_abandoned",
    "release",
    "renew",
    "renew_slot",
    "session_id",
    "slot_done",
]
