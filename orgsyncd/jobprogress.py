"""How far a running job is: its phase, rows done of rows total, and an ETA.

The job's thread calls ``JobProgress`` every few thousand rows (the reader's progress callback,
never once per row); at most every ``WRITE_EVERY_S`` and at each phase change the state goes to a
small JSON file in the tenant's spool, written and renamed outside the import's transaction:
while an import applies, SQLite admits no other writer, so progress cannot be a database row.
``orgsyncd jobs show`` reads the file; the daemon's systemd status line reads the objects of the
jobs running in its own process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

WRITE_EVERY_S = 2.0
STALE_AFTER_S = 60.0
EVERY_ROWS = 1 << 14  # rows between two reports while the results are written
PHASES = ("staging", "planning", "applying", "writing_results")
T = TypeVar("T")


def progress_path(spool: Path, job_id: int) -> Path:
    return spool / f"{job_id}.progress.json"


class JobProgress:
    def __init__(self, *, job_id: int, tenant: str, file: str, size: int, path: Path | None) -> None:
        self.job_id, self.tenant, self.file, self.size = job_id, tenant, file, size
        self.path = path
        self.phase = "staging"
        self.rows_done = 0
        self.rows_total: int | None = None
        self.bytes_done = 0
        self._phase_clock = time.monotonic()
        self._written = 0.0
        self._lock = threading.Lock()

    # -- fed by the job -------------------------------------------------------------------------

    def phase_started(self, phase: str, rows_total: int | None = None) -> None:
        with self._lock:
            self.phase, self.rows_done = phase, 0
            if rows_total is not None:
                self.rows_total = rows_total
            self._phase_clock = time.monotonic()
        self._write(force=True)

    def bytes_read(self, done: int) -> None:
        """The reader's callback while staging: how much of the file (as stored) was read. The
        rows are counted only once staged, so staging reports bytes."""
        with self._lock:
            self.bytes_done = done
        self._write()

    def rows(self, done: int) -> None:
        with self._lock:
            self.rows_done = done
        self._write()

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """*items*, reporting every EVERY_ROWS of them (a chunk at a time, not a call per row)."""
        it = iter(items)
        done = 0
        while chunk := list(islice(it, EVERY_ROWS)):
            yield from chunk
            done += len(chunk)
            self.rows(done)

    def finished(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    # -- read ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            elapsed = time.monotonic() - self._phase_clock
            eta = _eta(self.phase, self.rows_done, self.rows_total, self.bytes_done, self.size, elapsed)
            staging = self.phase == "staging"
            return {
                "job_id": self.job_id,
                "tenant": self.tenant,
                "file": self.file,
                "phase": self.phase,
                "bytes_done": self.bytes_done if staging else None,
                "bytes_total": self.size if staging else None,
                "rows_done": self.rows_done if self.phase == "writing_results" else None,
                "rows_total": self.rows_total,
                "eta_s": eta,
                "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self._written < WRITE_EVERY_S):
            return
        self._written = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot()), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is a courtesy: a full disk must not fail the import


def _eta(
    phase: str, rows_done: int, rows_total: int | None, bytes_done: int, size: int, elapsed: float
) -> float | None:
    """Seconds left in this phase, from its own rate so far; None when there is no rate yet."""
    if phase == "staging" and bytes_done and size:
        return round(elapsed * (size - bytes_done) / bytes_done, 1)
    if phase == "writing_results" and rows_done and rows_total:
        return round(elapsed * max(0, rows_total - rows_done) / rows_done, 1)
    return None


def read_progress(path: Path) -> dict[str, Any] | None:
    """A job's last progress as written, with ``stale`` when it was not updated for a while (the
    job's process may be gone)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    data["stale"] = age > STALE_AFTER_S
    return data


def status_line(snapshot: dict[str, Any]) -> str:
    """One phrase for systemd's status: which tenant, which file, how far."""
    words = f"{snapshot['tenant']}: {snapshot['phase'].replace('_', ' ')} {snapshot['file']}"
    done, total = snapshot.get("rows_done"), snapshot.get("rows_total")
    if snapshot.get("bytes_total"):
        words += f", {snapshot['bytes_done'] / 1e6:,.1f} of {snapshot['bytes_total'] / 1e6:,.1f} MB read"
    elif total:
        words += f", {done:,} of {total:,} rows" if done is not None else f", {total:,} rows"
    if snapshot.get("eta_s") is not None:
        words += f", ~{snapshot['eta_s']:.0f} s left"
    return words
