"""``/healthz`` and ``/readyz``: what a load balancer or an orchestrator asks the daemon.

* ``/healthz`` (liveness): the process is alive and its loops are ticking: the event loop (it
  serves SFTP) has ticked within ``LOOP_STALL_S``, and the inbox watcher's threads are running.
  It never depends on the database: restarting an instance does not bring a database back.
* ``/readyz`` (readiness): this instance should be given SFTP traffic and work: it has started,
  is not shutting down, SFTP listens, the database answers a ``SELECT 1`` (``DatabaseHealth``)
  and the data directory takes a write.

Both answer ``200`` with ``ok``, or ``503`` with one line per reason (``database unreachable:
connection refused``, ``shutting down``), as plain text. The checks run in the metrics server's
request threads; the database and disk checks are cached for ``PROBE_CACHE_S``, so a balancer
polling every instance every second costs each at most one query and one small write per
``PROBE_CACHE_S``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orgsyncd.dbhealth import PROBE_CACHE_S, DatabaseHealth

LOOP_STALL_S = 10.0
OK = 200
UNAVAILABLE = 503
Answer = tuple[int, str]


def answer(problems: list[str]) -> Answer:
    if not problems:
        return OK, "ok\n"
    return UNAVAILABLE, "".join(f"{problem}\n" for problem in problems)


@dataclass
class DataDirCheck:
    """Whether a small file can be written in the data directory (cached a moment)."""

    data_dir: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _checked_at: float = -PROBE_CACHE_S
    _problem: str | None = None

    def problem(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._checked_at >= PROBE_CACHE_S:
                self._problem = self._try_write()
                self._checked_at = time.monotonic()
            return self._problem

    def _try_write(self) -> str | None:
        # In the data directory's root: not a tenant's tree, and not a directory anything scans.
        probe = self.data_dir / f".readyz-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"ok\n")
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            return f"data directory not writable: {exc.strerror or exc}: {self.data_dir}"
        return None


@dataclass
class Probes:
    """The daemon's answers to /healthz and /readyz; the callables read its state."""

    database: DatabaseHealth
    data_dir: DataDirCheck
    started: Callable[[], bool]
    shutting_down: Callable[[], bool]
    sftp_listening: Callable[[], bool]
    stuck_threads: Callable[[], list[str]]
    # What /readyz says before start-up is done ("starting: waiting for the database").
    starting: Callable[[], str] = lambda: "starting"
    _loop_tick: float = field(default_factory=time.monotonic)

    def loop_ticked(self) -> None:
        """Called on the event loop every second or so."""
        self._loop_tick = time.monotonic()

    def live(self) -> Answer:
        problems = []
        stalled = time.monotonic() - self._loop_tick
        if stalled > LOOP_STALL_S:
            problems.append(f"event loop stalled for {stalled:.0f} s")
        if not self.shutting_down():
            problems += [f"thread stopped: {name}" for name in self.stuck_threads()]
        return answer(problems)

    def ready(self) -> Answer:
        if self.shutting_down():
            return answer(["shutting down"])
        problems = []
        if not self.started():
            problems.append(self.starting())
        elif not self.sftp_listening():
            problems.append("SFTP not listening")
        reason = self.database.probe()
        if reason is not None:
            problems.append(f"database unreachable: {reason}")
        disk = self.data_dir.problem()
        if disk is not None:
            problems.append(disk)
        return answer(problems)


__all__ = ["LOOP_STALL_S", "DataDirCheck", "Probes", "answer"]
