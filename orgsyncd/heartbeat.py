"""A lease kept alive while work runs: a thread with its own database connection renews it every
third of the lease, so a live instance keeps its job and a dead or hung one loses it in one lease.

SQLite: while the job's own write transaction holds the database lock the renewal cannot write,
and is skipped; nobody else can write either (a takeover is a write), so the claim is safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from orgsyncd.store.db import is_sqlite, write_transaction

log = structlog.get_logger("orgsyncd.heartbeat")
Renew = Callable[[Connection], bool]


class Heartbeat:
    """``with Heartbeat(engine, lease_s, renew, what=...):`` renews until the block ends.
    ``lost`` is set once a renewal found the claim no longer ours."""

    def __init__(self, engine: Engine, lease_s: float, renew: Renew, **what: object) -> None:
        self.engine = engine
        self.interval = max(lease_s / 3, 0.05)
        self.renew = renew
        self.what = what
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orgsyncd-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self._beat():
                    self.lost.set()
                    log.warning("lease_lost", **self.what)
                    return
            except SQLAlchemyError as exc:  # busy (SQLite), or the database is away: try again
                log.debug("lease_renewal_skipped", error=str(exc).splitlines()[0], **self.what)

    def _beat(self) -> bool:
        if is_sqlite(self.engine):
            # Not longer than a beat: our own job's transaction may hold the lock (see above).
            with write_transaction(self.engine, busy_ms=int(self.interval * 500)) as conn:
                return self.renew(conn)
        # Autocommit: the row is locked only while the server runs the statement, never while
        # this process could be stopped between the statement and its commit.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return self.renew(conn)
