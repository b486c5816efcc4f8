"""Whether the database answers, and waiting for it when it does not.

PostgreSQL restarts (an upgrade, a failover) and networks drop. The daemon must ride that out: the
SFTP server never needs the database, and whatever does (queuing a complete upload, a run of jobs,
the status line) waits and retries with backoff (tenacity) until the database is back, instead
of failing or crashing. ``DatabaseHealth`` is the one place that knows the database's state:

* everything that meets a lost connection reports it (``failed``); the first report logs one
  ``database_unavailable`` warning, later ones are quiet (no line per retry);
* ``probe`` is a cheap ``SELECT 1`` with short timeouts, cached for ``PROBE_CACHE_S``, for
  ``/readyz`` and the daemon's watch while the database is away; the first probe that gets an
  answer after an outage logs one ``database_restored`` warning (with how long it was away) and
  calls ``on_restored`` (the daemon rescans the inboxes then).

Only a lost or refused connection counts as "unavailable" (``database_unavailable``): a
constraint violation, a statement cancelled by a timeout or a full disk are errors of their own
and are handled where they happen, never retried for ever. A server that answers and turns
``database_url`` down (``database_refused``: a wrong password, an unknown role or database, no
``pg_hba.conf`` entry) fails a start-up at once (``wait_until_up``): waiting cannot fix the
configuration. Once the daemon has run on it, it is waited out like an outage.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
import tenacity
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from orgsyncd.errors import OrgsyncError
from orgsyncd.store.db import is_sqlite

log = structlog.get_logger("orgsyncd.db")
T = TypeVar("T")

PROBE_CACHE_S = 1.5
PROBE_TIMEOUT_S = 2  # libpq's connect_timeout has a floor of 2 seconds
# Backoff of the retries: 0.5 s, 1 s, 2 s, ... up to RETRY_MAX_S, with jitter so that several
# instances (and several loops in one) do not knock on a restarting server in step.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 5.0
# What the database_unavailable warning says happens meanwhile (the daemon's start-up says more).
WHILE_RUNNING = "SFTP keeps accepting; queuing and jobs wait and retry until it answers"
# SQLSTATEs of a connection that is gone or refused: class 08 (connection exception),
# admin_shutdown, crash_shutdown, cannot_connect_now (starting up or shutting down).
_GONE_STATES = frozenset({"57P01", "57P02", "57P03"})
# The server answered a connection attempt and refused it for a reason in database_url: class 28
# (invalid authorization: password, role, pg_hba.conf), 3D000 (no such database), 42501 (no
# CONNECT privilege).
_REFUSED_STATES = frozenset({"3D000", "42501"})
# libpq gives no SQLSTATE for a failed connection attempt (psycopg's sqlstate is None), only the
# server's message: these are the refusals above as PostgreSQL words them (in English: a server
# with lc_messages in another language has them counted as an outage, waited out, and named on
# /readyz), and libpq's own "a password is needed and database_url has none".
_REFUSED_MESSAGE = re.compile(
    r"authentication failed for user|no pg_hba\.conf entry|pg_hba\.conf rejects connection"
    r'|(role|database) ".*" does not exist|permission denied for database|no password supplied',
    re.IGNORECASE,
)


class DatabaseRefused(OrgsyncError):
    """The server answered and refused ``database_url`` (credentials, role, database name):
    retrying cannot help, so a starting daemon stops here (exit 2, systemd does not restart it)."""

    code = "database_refused"
    exit_code = 2

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the database refused database_url: {reason} "
            "(check the user, password and database name in database_url, then start again)"
        )
        self.reason = reason


class DatabaseUnavailable(OrgsyncError):
    """The database did not answer (its connection was refused or lost); what needed it waits."""

    code = "database_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the database is unreachable: {reason}")
        self.reason = reason


def database_unavailable(exc: BaseException) -> str | None:
    """Why the database is unreachable, when that is what *exc* (or an exception it came from)
    says; None for any other error.

    A refusal of ``database_url`` (``database_refused``) counts too, once running: it worked
    before, so it is the server's doing (a password rotated, a failover to a server without the
    role) and may be undone; the pool then mixes working and refused connections, and a job must
    not use up its attempts on that. Only a start-up, which has never connected, fails on it."""
    if isinstance(exc, DatabaseRefused):  # that start-up's verdict: not to be waited out
        return None
    for err in exception_chain(exc):
        if isinstance(err, DatabaseUnavailable):
            return err.reason
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            return _first_line(err.orig or err)
        if _is_gone(err):
            return _first_line(err)
    return None


def database_refused(exc: BaseException) -> str | None:
    """Why the server refused ``database_url`` (a wrong password, an unknown role or database),
    when that is what *exc* (or an exception it came from) says; None for any other error."""
    for err in exception_chain(exc):
        if _is_refusal(err):
            return _first_line(err)
    return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """*exc* and what it came from (causes, contexts, a DBAPIError's driver error), each once."""
    seen: set[int] = set()
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        found.append(err)
        todo += [err.__cause__, err.__context__, getattr(err, "orig", None)]
    return found


def _is_refusal(err: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if not isinstance(err, psycopg.Error):
        return False
    state = getattr(err, "sqlstate", None)
    if state is not None:
        return state.startswith("28") or state in _REFUSED_STATES
    return _REFUSED_MESSAGE.search(str(err)) is not None


def _is_gone(err: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = err.sqlstate
    # No SQLSTATE: libpq's own failure (refused, reset, timed out, server closed the connection).
    return state is None or state.startswith("08") or state in _GONE_STATES


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class DatabaseHealth:
    """The database's state as this process last found it; thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self._probe_engine = _probe_engine(engine)
        self._lock = threading.Lock()  # guards the state below
        self._probe_lock = threading.Lock()  # one probe at a time; the others use its answer
        self._reason: str | None = None
        self._down_since: float | None = None
        self._probed_at = -PROBE_CACHE_S
        self._probed: str | None = None
        self.on_restored: Callable[[], None] | None = None
        self.while_down = WHILE_RUNNING  # the warning's "action"

    @property
    def reason(self) -> str | None:
        """Why the database is unavailable, or None when it was last found answering."""
        return self._reason

    def failed(self, exc: BaseException) -> bool:
        """Note *exc* if it says the database is unreachable (True), logging the first one."""
        reason = database_unavailable(exc)
        if reason is None:
            return False
        with self._lock:
            first = self._reason is None
            self._reason = reason
            if first:
                self._down_since = time.monotonic()
        if first:
            log.warning(
                "database_unavailable",
                error=reason,
                action=self.while_down,
            )
        return True

    def wait_until_up(self, stop: threading.Event, on_waiting: Callable[[str], None] | None = None) -> None:
        """Return once the database answers a ``SELECT 1``, retrying with backoff while it is
        unreachable (the first failure logs ``database_unavailable`` and calls *on_waiting* with
        the reason, the answer after it logs ``database_restored``). Any other error is raised at
        once: ``DatabaseRefused`` when the server turned ``database_url`` down. Once *stop* is
        set, the last ``DatabaseUnavailable``."""

        waiting = False

        def select_1() -> None:
            nonlocal waiting
            with self._probe_lock:
                try:
                    self._select_1()
                except Exception as exc:
                    refused = database_refused(exc)
                    if refused is not None:
                        raise DatabaseRefused(refused) from None
                    reason = database_unavailable(exc)
                    if reason is None:
                        raise
                    self.failed(exc)  # logs the first
                    self._set_probed(reason)  # /readyz meanwhile: this answer, not a new try
                    if not waiting and on_waiting is not None:
                        on_waiting(reason)
                    waiting = True
                    raise DatabaseUnavailable(reason) from None
                self._set_probed(None)
            self._restored()

        self.call(select_1, stop)

    def _select_1(self) -> None:
        with self._probe_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def probe(self) -> str | None:
        """None when the database answers a ``SELECT 1``, else why not (cached a moment)."""
        with self._probe_lock:
            if time.monotonic() - self._probed_at < PROBE_CACHE_S:
                return self._probed
            try:
                self._select_1()
            except Exception as exc:
                if not self.failed(exc):  # another error (bad credentials...): still not ready
                    self._set_probed(_first_line(getattr(exc, "orig", None) or exc))
                    return self._probed
                self._set_probed(self._reason)
                return self._probed
            self._set_probed(None)
        self._restored()
        return None

    def _set_probed(self, reason: str | None) -> None:
        self._probed, self._probed_at = reason, time.monotonic()

    def _restored(self) -> None:
        with self._lock:
            if self._reason is None:
                return
            self._reason = None
            down_s = time.monotonic() - (self._down_since or time.monotonic())
        log.warning("database_restored", down_s=round(down_s, 1), action="catching up")
        if self.on_restored is not None:
            try:
                self.on_restored()
            except Exception:
                log.exception("database_restored_hook_failed")

    def call(self, fn: Callable[[], T], stop: threading.Event) -> T:
        """``fn()``, retried with backoff while the database is unavailable, until it answers or
        *stop* is set (then the last error is raised). Other errors are raised at once."""

        def sleep(seconds: float) -> None:
            stop.wait(seconds)  # a stop ends the wait at once

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.failed),
            wait=tenacity.wait_exponential_jitter(initial=RETRY_INITIAL_S, max=RETRY_MAX_S),
            stop=tenacity.stop_when_event_set(stop),
            sleep=sleep,
            reraise=True,
        )
        return retrying(fn)

    def close(self) -> None:
        self._probe_engine.dispose()


def _probe_engine(engine: Engine) -> Engine:
    """For PostgreSQL an engine of its own (one pooled connection, short timeouts), so a probe
    never waits behind jobs for a connection of the main pool, nor for long on a dead server."""
    if is_sqlite(engine):
        return engine
    return create_engine(
        engine.url,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=PROBE_TIMEOUT_S,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": PROBE_TIMEOUT_S,
            "options": f"-c statement_timeout={PROBE_TIMEOUT_S * 1000}",
            "application_name": "orgsyncd-probe",
        },
    )


__all__ = [
    "DatabaseHealth",
    "DatabaseRefused",
    "DatabaseUnavailable",
    "database_refused",
    "database_unavailable",
]
