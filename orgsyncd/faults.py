"""Named fault points, so tests can prove a crash at any given moment loses nothing.

``ORGSYNCD_FAULT=<point>[:<action>][@<n>]`` (several, comma-separated) acts at that point:
``raise`` (the default) raises InjectedFault, ``kill`` kills the process outright with SIGKILL (no
cleanup, like ``kill -9``), ``stop`` stops it with SIGSTOP (a hung
instance, until someone sends SIGCONT; it then carries on from the point),
``pause<seconds>`` (``pause3``) logs ``fault_paused`` and sleeps, so a
test can act at that very moment (stop the database in the middle of a transaction); ``@n`` acts
only the n-th time this process reaches the point (default: every time). Tests that run in-process
can also ``hook`` a function onto a point, to fill a disk or remount it read-only at that very
moment. Unset in production: a check is two dict lookups.

The points, in the order a file passes them: ``after_spool_link`` (queuing), ``during_stage``,
``after_stage``, ``after_plan``, ``after_apply``, ``during_results``, ``before_commit``,
``after_commit``, ``after_results_moved``, ``after_archive`` (finalizing).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

from orgsyncd.errors import InjectedFault

T = TypeVar("T")
_ENV = "ORGSYNCD_FAULT"
_hits: Counter[str] = Counter()
_hooks: dict[str, Callable[[], None]] = {}


def checkpoint(point: str) -> None:
    hook = _hooks.get(point)
    if hook is not None:
        hook()
    spec = os.environ.get(_ENV)
    if not spec:
        return
    for name, action, nth in _parsed(spec):
        if name == point:
            _hits[point] += 1
            if nth is None or _hits[point] == nth:
                _act(point, action)
            return


def armed(point: str) -> bool:
    spec = os.environ.get(_ENV)
    return point in _hooks or (bool(spec) and any(name == point for name, _, _ in _parsed(spec or "")))


def stream(items: Iterator[T], point: str, at: int = 100) -> Iterator[T]:
    """``items``, reaching ``point`` after the ``at``-th (or after the last, if fewer): a moment in
    the middle of a stream, such as staging or writing results. Untouched unless the point is armed."""
    if not armed(point):
        return items
    return _counted(items, point, at)


def _counted(items: Iterator[T], point: str, at: int) -> Iterator[T]:
    count = 0
    for item in items:
        yield item
        count += 1
        if count == at:
            checkpoint(point)
    if count < at:
        checkpoint(point)


@contextlib.contextmanager
def hook(point: str, action: Callable[[], None]) -> Iterator[None]:
    """Call ``action`` whenever this process reaches ``point`` (in-process tests)."""
    _hooks[point] = action
    try:
        yield
    finally:
        _hooks.pop(point, None)


@functools.lru_cache(maxsize=8)
def _parsed(spec: str) -> tuple[tuple[str, str, int | None], ...]:
    parsed = []
    for one in spec.split(","):
        body, _, nth = one.strip().partition("@")
        name, _, action = body.partition(":")
        parsed.append((name, action or "raise", int(nth) if nth else None))
    return tuple(parsed)


def _act(point: str, action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if action.startswith("pause"):
        import structlog  # only here: the module stays import-free for the common case

        seconds = float(action.removeprefix("pause") or 1)
        structlog.get_logger("orgsyncd.faults").info("fault_paused", point=point, seconds=seconds)
        time.sleep(seconds)
        return
    raise InjectedFault(f"fault injected at {point}")
