"""Inbox watcher: each complete file in a tenant's ``inbox/`` becomes an ``enqueue(tenant, path)``.

A file is complete when (Linux inotify, through watchdog's ``InotifyObserver``) it was

* closed after writing (IN_CLOSE_WRITE): a local process that writes the file in place;
* moved in (IN_MOVED_TO): renamed from a temporary name, or moved from another directory, which
  is how SFTP uploads arrive (from ``staging/``);
* created with no writer (IN_CREATE and no IN_OPEN): a hard link. A writer's ``open(O_CREAT)``
  reports IN_CREATE and IN_OPEN from one system call, so a new name that nobody opens within
  ``OPEN_GRACE_S`` was linked in whole; one that is opened waits for its close instead.

Temporary names (``paths.is_temporary_name``) and directories are ignored. ``enqueue`` runs on one
worker thread fed by a queue, never on watchdog's threads: it hashes files and writes to the
database, and a slow call there would stop event reading until the kernel queue overflows. A path
already waiting in the queue is not queued twice.

Events alone can miss files: the kernel drops them when its queue overflows, and on shared storage
(NFS) nothing written by another host is seen. So ``rescan`` runs once at start, then
``rescan_interval_s`` after the previous rescan ended, and at once when ``update`` adds an inbox.
Reporting a file twice is harmless: queuing the same file twice never makes two jobs (the
service's guarantee). Each rescan tick also re-watches inboxes that were missing or were deleted
and created again.

Without inotify (not Linux) there are no events; the watcher logs ``inbox_events_unavailable``
and relies on the rescans alone.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch

from orgsyncd.paths import is_temporary_name

log = structlog.get_logger("orgsyncd.watcher")

# How long a newly created name waits for the IN_OPEN of a writer before it counts as complete.
# Both events come from the same system call, so this only has to cover scheduling delays.
OPEN_GRACE_S = 0.25

# Only these reach us: the inotify mask is built from the filter, so the kernel never queues the
# IN_MODIFY stream of a large write (which would fill its queue and drop events).
_EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileMovedEvent,
    FileCreatedEvent,
    FileOpenedEvent,
]

_Key = tuple[str, Path]


class InboxWatcher:
    """Watches every tenant's inbox and calls ``enqueue`` for each complete file; see the module."""

    def __init__(
        self,
        inboxes: Mapping[str, Path],
        enqueue: Callable[[str, Path], object],
        rescan: Callable[[], object],
        rescan_interval_s: float,
    ) -> None:
        self._inboxes = dict(inboxes)
        self._rescan = rescan
        self._worker = _EnqueueWorker(enqueue)
        self._ticker = _Ticker(self._tick, rescan_interval_s)
        self._lock = threading.Lock()  # guards _inboxes, _observer and _watches
        self._observer: BaseObserver | None = None
        self._watches: dict[str, tuple[Path, ObservedWatch]] = {}
        self._state = "new"

    def start(self) -> None:
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"InboxWatcher cannot start: it is {self._state}")
            self._state = "running"
            self._worker.start()
            self._observer = _new_observer()
            self._sync_watches()
        # The first tick rescans at once, after the watches exist: no gap a file could slip into.
        self._ticker.start()

    def update(self, inboxes: Mapping[str, Path]) -> None:
        """Watch exactly ``inboxes`` from now on (on SIGHUP); rescan if an inbox was added."""
        new = dict(inboxes)
        with self._lock:
            added = new.items() - self._inboxes.items()
            self._inboxes = new
            if self._state == "running":
                self._sync_watches()
        if added:
            # A new tenant's inbox may already hold files that no event will ever report.
            self._ticker.poke()

    def rescan_now(self) -> None:
        """Rescan at once rather than at the next tick (the database is back: queue what waited)."""
        self._ticker.poke()

    def stopped_threads(self) -> list[str]:
        """The watcher's threads that should be running and are not (for ``/healthz``)."""
        with self._lock:
            if self._state != "running":
                return []
            observer = self._observer
        threads = {"watcher enqueue": self._worker.alive(), "watcher rescan": self._ticker.alive()}
        if observer is not None:
            threads["inotify observer"] = observer.is_alive()
        return [name for name, alive in threads.items() if not alive]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; wait up to ``timeout`` seconds for a running callback to return."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        deadline = time.monotonic() + timeout
        stuck = [] if self._ticker.stop(_left(deadline)) else ["rescan"]
        if not self._stop_observer(deadline):
            stuck.append("observer")
        if not self._worker.stop(_left(deadline)):
            stuck.append("enqueue")
        if stuck:
            log.warning("watcher_stop_timeout", still_running=stuck, timeout_s=timeout)
        log.info("watcher_stopped")

    def _stop_observer(self, deadline: float) -> bool:
        with self._lock:
            observer, self._observer = self._observer, None
            self._watches.clear()
        if observer is None:
            return True
        observer.stop()
        observer.join(_left(deadline))
        return not observer.is_alive()

    def _tick(self) -> None:
        with self._lock:
            self._sync_watches()
        try:
            self._rescan()
        except Exception:
            log.exception("rescan_failed")

    def _sync_watches(self) -> None:
        """Make the watches match ``_inboxes``. Caller holds ``_lock``."""
        if self._observer is None:
            return
        alive = {emitter.watch for emitter in list(self._observer.emitters) if emitter.is_alive()}
        for tenant, (inbox, watch) in list(self._watches.items()):
            if self._inboxes.get(tenant) != inbox:
                self._unwatch(tenant, watch)
                log.info("inbox_unwatched", tenant=tenant, inbox=str(inbox))
            elif watch not in alive:
                # The emitter ends itself when the inbox is deleted; watch the new one, if any.
                self._unwatch(tenant, watch)
                log.warning("inbox_watch_lost", tenant=tenant, inbox=str(inbox))
        for tenant, inbox in self._inboxes.items():
            if tenant not in self._watches:
                self._watch(self._observer, tenant, inbox)

    def _watch(self, observer: BaseObserver, tenant: str, inbox: Path) -> None:
        handler = _InboxHandler(tenant, inbox, self._worker)
        try:
            watch = observer.schedule(handler, str(inbox), event_filter=_EVENT_TYPES)
        except OSError as exc:
            # Retried on every rescan tick; the rescans still cover this inbox meanwhile.
            log.warning("inbox_watch_failed", tenant=tenant, inbox=str(inbox), error=str(exc))
            return
        self._watches[tenant] = (inbox, watch)
        log.info("inbox_watched", tenant=tenant, inbox=str(inbox))

    def _unwatch(self, tenant: str, watch: ObservedWatch) -> None:
        del self._watches[tenant]
        if self._observer is not None:
            self._observer.unschedule(watch)


def _new_observer() -> BaseObserver | None:
    if sys.platform != "linux":
        log.warning("inbox_events_unavailable", platform=sys.platform, fallback="rescan")
        return None
    from watchdog.observers.inotify import InotifyObserver  # imports only where inotify exists

    # Full events: a file moved in from an unwatched directory then arrives as a move with no
    # source, not as a creation, so it cannot be mistaken for a writer's open(O_CREAT).
    observer = InotifyObserver(generate_full_events=True)
    observer.start()
    return observer


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class _InboxHandler(FileSystemEventHandler):
    """One tenant's inbox events -> worker calls. Runs on watchdog's thread, so it never blocks."""

    def __init__(self, tenant: str, inbox: Path, worker: _EnqueueWorker) -> None:
        self._tenant = tenant
        self._inbox = inbox
        self._worker = worker

    def dispatch(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            super().dispatch(event)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._route(event.src_path, self._worker.complete)

    def on_moved(self, event: FileSystemEvent) -> None:
        # A move out of the inbox has no destination here (dest_path is empty).
        self._route(event.dest_path, self._worker.complete)

    def on_created(self, event: FileSystemEvent) -> None:
        self._route(event.src_path, self._worker.created)

    def on_opened(self, event: FileSystemEvent) -> None:
        self._route(event.src_path, self._worker.opened)

    def _route(self, raw_path: bytes | str, action: Callable[[_Key], None]) -> None:
        if not raw_path:
            return
        path = Path(os.fsdecode(raw_path))
        if path.parent == self._inbox and not is_temporary_name(path.name):
            action((self._tenant, path))


class _EnqueueWorker:
    """The one thread that calls ``enqueue``; other threads only hand it paths."""

    def __init__(self, enqueue: Callable[[str, Path], object]) -> None:
        self._enqueue = enqueue
        # None only wakes the thread up: to stop, or to wait for a new created-file deadline.
        self._queue: queue.SimpleQueue[_Key | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued: set[_Key] = set()
        self._unopened: dict[_Key, float] = {}  # created, no writer seen yet -> deadline
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orgsyncd-watcher-enqueue", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Stop after the running call, if any; queued paths are left to the start-up scan."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def complete(self, key: _Key) -> None:
        with self._lock:
            self._unopened.pop(key, None)
            if key in self._queued:
                return
            self._queued.add(key)
        self._queue.put(key)

    def created(self, key: _Key) -> None:
        with self._lock:
            self._unopened[key] = time.monotonic() + OPEN_GRACE_S
        self._queue.put(None)

    def opened(self, key: _Key) -> None:
        with self._lock:
            self._unopened.pop(key, None)

    def _run(self) -> None:
        while True:
            try:
                key = self._queue.get(timeout=self._wait_s())
            except queue.Empty:
                key = None
            if self._stopping.is_set():
                return
            if key is not None:
                self._call(key)
            for due in self._take_due():
                self.complete(due)

    def _wait_s(self) -> float | None:
        with self._lock:
            if not self._unopened:
                return None
            return max(0.0, min(self._unopened.values()) - time.monotonic())

    def _take_due(self) -> list[_Key]:
        now = time.monotonic()
        with self._lock:
            due = [key for key, deadline in self._unopened.items() if deadline <= now]
            for key in due:
                del self._unopened[key]
        return due

    def _call(self, key: _Key) -> None:
        with self._lock:
            # From here on a new event for this path queues it again (e.g. a re-upload).
            self._queued.discard(key)
        tenant, path = key
        try:
            # Gone already (moved to the spool by an earlier call, or deleted), or not a regular
            # file: a FIFO would block the reader, and with it this thread, for good.
            if path.is_file():
                log.debug("inbox_file_ready", tenant=tenant, file=path.name)
                self._enqueue(tenant, path)
        except Exception:
            log.exception("enqueue_failed", tenant=tenant, file=path.name)


class _Ticker:
    """Calls ``tick`` at once, then ``interval_s`` after each call ended, or sooner when poked."""

    def __init__(self, tick: Callable[[], None], interval_s: float) -> None:
        self._tick = tick
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orgsyncd-watcher-rescan", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def poke(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the tick: a poke that arrives during it causes one more tick.
            self._wake.clear()
            try:
                self._tick()
            except Exception:
                log.exception("watcher_tick_failed")
            self._wake.wait(self._interval_s)
