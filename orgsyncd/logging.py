"""Log setup: JSON lines for journald and log shippers, aligned text for a person at a terminal.

``machine_readable()`` decides which: JSON under systemd and whenever the stream is not a
terminal; structlog's console renderer otherwise.

Everything goes through the standard library's root logger, so structlog events and the records of
third-party libraries (asyncssh, apscheduler, watchdog, sqlalchemy, ``warnings``) share one handler,
one renderer and one redaction step. Callers bind ``tenant``, ``job_id``, ``file`` and ``peer`` with
``structlog.contextvars.bound_contextvars``; those land in every line logged inside the block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"

# Exact key names whose values never reach a log line. "row" is a roster row (personal data).
_SECRET_KEYS = frozenset({"password", "passphrase", "private_key", "secret", "row"})
# Credential-like suffixes also caught in compound names such as "db_password" or "key_passphrase".
_SECRET_SUFFIXES = ("_password", "_passphrase", "_private_key", "_secret")
_MAX_REDACT_DEPTH = 4

# Library loggers say at INFO what our own events say better ("Context impl SQLiteImpl.",
# "Adding job tentatively"); they speak from WARNING up, unless the level is debug.
_LIBRARIES = ("alembic", "apscheduler", "asyncssh", "watchdog")
# Floors that hold even under debug: asyncssh logs every packet at DEBUG; sqlalchemy.engine at
# INFO logs SQL parameters, which are roster data.
_DEBUG_FLOORS = {"asyncssh": logging.INFO, "sqlalchemy": logging.WARNING}
# systemd sets these for a service's processes; journald wants JSON even when it is a terminal
# (StandardOutput=tty) that the daemon writes to.
_SYSTEMD_VARIABLES = ("JOURNAL_STREAM", "INVOCATION_ID")


class LineGuard(Protocol):
    """Something drawn on the terminal's last line (a progress bar) that a log line would break."""

    def clear(self) -> None: ...
    def redraw(self) -> None: ...


_guard: LineGuard | None = None


class _OrgsyncdHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we install, so a second configure_logging() replaces it; writes log
    lines above a progress bar instead of into it."""

    def emit(self, record: logging.LogRecord) -> None:
        guard = _guard
        if guard is None:
            super().emit(record)
            return
        guard.clear()
        super().emit(record)
        guard.redraw()


def machine_readable(stream: Any) -> bool:
    """JSON lines for *stream*: under systemd, or when it is not a terminal (a pipe, a file)."""
    if any(os.environ.get(name) for name in _SYSTEMD_VARIABLES):
        return True
    return not _isatty(stream)


@contextmanager
def guarding(guard: LineGuard) -> Iterator[None]:
    """While active, every log line is written after ``guard.clear()`` and followed by
    ``guard.redraw()``, so a progress bar on the same terminal stays whole."""
    global _guard
    previous, _guard = _guard, guard
    try:
        yield
    finally:
        _guard = previous


def configure_logging(*, level: str = "info", json: bool = True, stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to *stream* (default: stdout), JSON or human-readable.

    Idempotent: calling it again replaces the previous handler instead of adding one.
    """
    numeric = _parse_level(level)
    handler = _OrgsyncdHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(_formatter(json=json, colors=_isatty(handler.stream)))
    _install_root_handler(handler, numeric)
    _set_library_levels(numeric)
    # warnings.warn() would otherwise print multi-line text on stderr, which journald splits up.
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests use structlog.testing.capture_logs(), which cached loggers ignore.
        cache_logger_on_first_use=False,
    )


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask values of secret-looking keys, also inside nested mappings (structlog processor)."""
    return _redact(event_dict, depth=0)


def _redact(mapping: EventDict, depth: int) -> EventDict:
    for key, value in mapping.items():
        if _is_secret_key(key):
            mapping[key] = REDACTED
        elif isinstance(value, Mapping) and depth < _MAX_REDACT_DEPTH:
            # Copy: the caller's dict (e.g. a config section) must not be modified by logging it.
            mapping[key] = _redact(dict(value), depth + 1)
    return mapping


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.lower()
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


def _shared_processors() -> list[Processor]:
    """Steps for every event, whether it came from structlog or from a stdlib logger."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        redact_secrets,
    ]


def _formatter(*, json: bool, colors: bool) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *(_json_renderers() if json else _console_renderers(colors)),
        ],
    )


def _json_renderers() -> list[Processor]:
    # format_exc_info renders with the traceback module: frames and source lines, never local
    # variables (structlog's dict_tracebacks and rich tracebacks default to showing locals, which
    # would put roster rows and credentials into the journal).
    return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]


def _console_renderers(colors: bool) -> list[Processor]:
    # plain_traceback for the same reason: the default rich formatter shows locals.
    return [
        _clock_time,
        structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback),
    ]


def _clock_time(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """A person at a terminal reads the local wall-clock time; the journal keeps the full UTC stamp."""
    stamp = event.get("timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            event["timestamp"] = datetime.fromisoformat(stamp).astimezone().strftime("%H:%M:%S")
    return event


def _install_root_handler(handler: logging.Handler, level: int) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OrgsyncdHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _set_library_levels(level: int) -> None:
    debug = level <= logging.DEBUG
    for name in _LIBRARIES:
        floor = _DEBUG_FLOORS.get(name, level) if debug else logging.WARNING
        logging.getLogger(name).setLevel(max(level, floor))
    logging.getLogger("sqlalchemy").setLevel(max(level, _DEBUG_FLOORS["sqlalchemy"]))


def _parse_level(level: str) -> int:
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (use debug, info, warning or error)")
    return numeric


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
