"""The daemon: start the pieces in order, run until a signal, stop them in reverse within a bound.

The lifecycle follows uvicorn's: signal handlers only set flags and wake the main loop; reload and
shutdown are methods awaited on the event loop. Nothing slow runs on the loop: jobs run in the
scheduler's threads or a worker thread, database and disk calls go through ``asyncio.to_thread``.
The loop serves SFTP and sends the watchdog heartbeats, so a stalled loop is what systemd's
watchdog catches.

Start: tenant directories -> demo key pair -> metrics -> SFTP listener (none of these needs the
database) -> the database answers (if it is unreachable: one ``database_unavailable`` warning,
READY=1 with a STATUS= saying so, and a wait with backoff; a refused ``database_url`` fails at once)
-> migrations, crash recovery -> notifier -> inbox scan -> inbox watcher -> catch-up run ->
scheduler -> READY=1. Uploads taken before the inbox scan wait in inbox/ for it. Stop (SIGTERM, SIGINT):
STOPPING=1 -> no new logins -> watcher -> scheduler and catch-up (a running job commits or rolls
back) -> notifier -> SFTP sessions -> metrics -> database, all within ``stop_timeout_s``; a second SIGTERM or
SIGINT stops waiting, and the job in progress rolls back (it runs again at the next start).
Reload (SIGHUP): tenants, keys, limits and crons change; open sessions carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncssh
import structlog

from orgsyncd import sdnotify
from orgsyncd.config import Settings, load_settings
from orgsyncd.dbhealth import WHILE_RUNNING, DatabaseHealth, DatabaseUnavailable
from orgsyncd.errors import OrgsyncError
from orgsyncd.health import DataDirCheck, Probes
from orgsyncd.ingest.sftp import SftpServer
from orgsyncd.ingest.watcher import InboxWatcher
from orgsyncd.logging import machine_readable
from orgsyncd.metrics import Metrics, MetricsServer
from orgsyncd.scheduler import Scheduler
from orgsyncd.service import Service

RESCAN_MIN_AGE_S = 2.0
# A spooled input with no job this long after it was linked lost its queuer (to a database
# outage, or a crash); younger ones may still be being hashed by theirs.
ORPHAN_MIN_AGE_S = 5.0
TICK_S = 1.0
# The database_unavailable warning of a daemon that starts while the database is away.
WHILE_STARTING = (
    "SFTP accepts uploads (they wait in inbox/); start-up waits for the database, retrying, "
    "then migrates it and queues them"
)
log = structlog.get_logger("orgsyncd.daemon")
T = TypeVar("T")

# Below TimeoutStopSec=60 in orgsyncd.service: we finish (or give up on a job) before SIGKILL.
STOP_TIMEOUT_S = 50.0
STATUS_INTERVAL_S = 5.0
# What config.load_settings names its source when no config file was found.
BUILT_IN_SOURCE = "built-in defaults"
DEMO_TENANT = "demo"
_KEY_MODE = 0o600
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Changing these needs a restart: the database, the trees the SFTP server serves, the metrics
# socket and the watcher's timer are set up once. A reload keeps their old values.
_DAEMON_RESTART_KEYS = ("data_dir", "database_url", "rescan_interval_s")


def run_daemon(
    settings: Settings,
    config_path: str | os.PathLike[str] | None = None,
    *,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> int:
    """Run until SIGTERM/SIGINT. Exit code: 0 after a stop (also one that gave up on a job at the
    bound: the job rolls back and runs again at the next start), 1 if start-up failed, 2 if
    start-up found a config problem."""
    try:
        daemon = Daemon(settings, config_path, stop_timeout_s=stop_timeout_s)
    except OrgsyncError:
        raise  # a bad database URL is a config error: the CLI prints it and exits 2
    except Exception as exc:
        return _startup_failed("cannot open the database", exc)
    with asyncio.Runner() as runner:
        code = runner.run(daemon.serve())
        if daemon.unfinished:
            # A job thread is still inside its transaction and would hold up interpreter exit
            # (worker threads are joined) until systemd's SIGKILL. Leaving now rolls it back, and
            # the next start runs it again: the documented outcome of a stop.
            daemon.service.runner.release_all("the daemon stopped before the job finished")
            _exit_now(code)
    return code


class Daemon:
    """The running pieces and the flags the signal handlers set."""

    def __init__(
        self,
        settings: Settings,
        config_path: str | os.PathLike[str] | None = None,
        *,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.stop_timeout_s = stop_timeout_s
        self.should_exit = False
        self.force_exit = False
        self.reload_requested = False
        self.exit_signal: str | None = None
        self.unfinished: list[str] = []  # steps still running when the stop bound ran out
        self._wake = asyncio.Event()
        self._force = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._catch_up: asyncio.Task[None] | None = None
        self._metrics_server: MetricsServer | None = None
        self._started = False
        self._waiting = False  # for the database, at start-up
        self._queuing = False  # the schema is up to date: uploads can be queued
        # Constructing the pieces starts nothing; start-up below does, in order.
        self.service = Service(settings)
        self.db = DatabaseHealth(self.service.engine)
        self.db.on_restored = self._database_restored
        self.service.db_health = self.db  # queuing waits for the database instead of failing
        self.service.notifier.db_health = self.db
        self.metrics = Metrics(self._queue_depth)
        self.metrics.set_database_up_fn(lambda: self.db.reason is None)
        self.service.on_job_finished = self.metrics.job_finished
        self.watcher = InboxWatcher(
            self._inboxes(settings),
            self.service.enqueue_file,
            self._rescan,
            settings.daemon.rescan_interval_s,
        )
        self.scheduler = Scheduler(settings, self._run_hourly, self._run_daily)
        self.sftp = SftpServer(settings, self._on_upload, metrics=self.metrics)
        self.probes = Probes(
            database=self.db,
            data_dir=DataDirCheck(settings.daemon.data_dir),
            started=lambda: self._started,
            starting=lambda: "starting: waiting for the database" if self._waiting else "starting",
            shutting_down=lambda: self.should_exit,
            sftp_listening=lambda: self.sftp.listening,
            stuck_threads=self.watcher.stopped_threads,
        )

    # -- signals (the handlers only set flags) -------------------------------------------------

    def handle_exit(self, sig: signal.Signals) -> None:
        if self.should_exit:
            self.force_exit = True
            self._force.set()
        self.should_exit = True
        if not self._started:
            # Start-up's waits for the database (reaching it, migrating, the inbox scan) end at
            # once. Once started, _shutdown sets it, after the run in hand has taken its job.
            self.service.stop_requested.set()
        self.exit_signal = self.exit_signal or sig.name
        self._wake.set()

    def handle_reload(self) -> None:
        self.reload_requested = True
        self._wake.set()

    @contextlib.contextmanager
    def _captured_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in _EXIT_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.handle_reload)
        try:
            yield
        finally:
            for sig in (*_EXIT_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    # -- the whole life ------------------------------------------------------------------------

    async def serve(self) -> int:
        code = 1
        with self._captured_signals():
            self._spawn(self._heartbeat())
            self._spawn(self._tick())
            try:
                code = await self._startup()
                if code == 0 and not self.should_exit:
                    await self._main_loop()
            finally:
                await self._shutdown()
                for task in self._tasks:
                    task.cancel()
        return code

    async def _main_loop(self) -> None:
        self._spawn(self._report_status())
        while not self.should_exit:
            await self._wake.wait()
            self._wake.clear()
            if self.reload_requested and not self.should_exit:
                self.reload_requested = False
                await self._reload()

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    # -- start-up ------------------------------------------------------------------------------

    async def _startup(self) -> int:
        """0 when every piece started (or a signal asked to stop first), else the exit code.

        What needs no database starts first (SFTP among it), so a daemon started while the
        database is away still takes uploads: it says so once, tells systemd it is up (waiting,
        in STATUS=) and waits, then starts what needs the database. A database that answers
        but refuses ``database_url`` (password, role, database name) fails the start at once.
        """
        steps = [*self._local_steps(), ("cannot open the database", self._reach_database)]
        for what, step in [*steps, *self._database_steps()]:
            if self.should_exit:
                return 0
            try:
                await step()
            except Exception as exc:
                if self.should_exit:  # a stop ended a wait for the database
                    return 0
                return _startup_failed(what, exc)
        self._started = True
        self._announce()
        return 0

    def _local_steps(self) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        settings = self.settings
        return [
            ("cannot create the tenant directories", lambda: asyncio.to_thread(self.service.create_dirs)),
            ("cannot create the demo key pair", lambda: asyncio.to_thread(ensure_demo_keys, settings)),
            (f"cannot serve metrics on {settings.metrics.listen}", self._start_metrics),
            # Uploads are taken from here on; they wait in inbox/ until the inbox scan below.
            (f"cannot listen for SFTP on {settings.sftp.listen}", self.sftp.start),
        ]

    def _database_steps(self) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        return [
            (
                "cannot open or migrate the database",
                lambda: asyncio.to_thread(self.service.patiently, self.service.migrate),
            ),
            ("cannot start the notifier", lambda: asyncio.to_thread(self.service.notifier.start)),
            # Files that arrived while we were down (or waiting), queued before the watcher
            # starts: its own start-up scan runs in its thread, and the catch-up must see their jobs.
            ("cannot scan the inboxes", self._scan_inboxes),
            ("cannot watch the inboxes", lambda: asyncio.to_thread(self.watcher.start)),
            ("cannot start the catch-up run", self._start_catch_up),
            ("cannot start the scheduler", lambda: asyncio.to_thread(self.scheduler.start)),
        ]

    async def _reach_database(self) -> None:
        """Return once the database answers. While it is unreachable: say so once, report ready
        to systemd (SFTP serves; a unit that never signalled would be killed at TimeoutStartSec,
        and its SFTP with it) with a STATUS= saying what it waits for, and wait with backoff
        until it answers or we stop. A refusal of database_url or another error is raised at once."""
        self.db.while_down = WHILE_STARTING
        try:
            await asyncio.to_thread(
                self.db.wait_until_up, self.service.stop_requested, self._waiting_for_database
            )
        finally:
            self.db.while_down = WHILE_RUNNING
        if self._waiting:
            self._waiting = False
            log.info("database_reached", action="migrating it, then queuing what arrived meanwhile")

    def _waiting_for_database(self, reason: str) -> None:
        """(In the waiting thread.) The database is unreachable: we wait for it, SFTP serving."""
        self._waiting = True
        sdnotify.ready(f"waiting for the database: {reason}; {self._status_text()}")

    async def _scan_inboxes(self) -> None:
        self._queuing = True  # the schema is there: an upload from now on is queued at once
        await asyncio.to_thread(self.service.scan_inboxes)

    async def _start_metrics(self) -> None:
        if self.settings.metrics.enabled:
            routes = {"/healthz": self.probes.live, "/readyz": self.probes.ready}
            self._metrics_server = await asyncio.to_thread(
                self.metrics.start_http, self.settings.metrics.listen, routes
            )

    async def _start_catch_up(self) -> None:
        self._catch_up = asyncio.create_task(self._run_catch_up())

    def _announce(self) -> None:
        sdnotify.ready(self._status_text())
        log.info(
            "daemon_ready",
            sftp_port=self.sftp.port,
            metrics=self._metrics_server.url if self._metrics_server else None,
            tenants=sorted(self.settings.tenants),
            config=self.settings.source,
        )
        command = demo_sftp_command(self.settings, self.sftp.port)
        if command is None:
            return
        if machine_readable(sys.stderr):
            log.info("sftp_ready", tenant=DEMO_TENANT, command=command)
        else:  # a person at a terminal: said once, in words, with commands to paste
            print(
                demo_welcome(command, self.sftp.port, self.settings.daemon.data_dir),
                file=sys.stderr,
                flush=True,
            )

    # -- running -------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(interval)

    async def _tick(self) -> None:
        """The event loop's pulse for /healthz; while the database is away, a probe a second
        (in a thread), so its return is noticed, logged and acted on at once."""
        probe: asyncio.Future[str | None] | None = None
        while True:
            self.probes.loop_ticked()
            idle = probe is None or probe.done()
            if self.db.reason is not None and idle and not self.should_exit:
                probe = asyncio.ensure_future(asyncio.to_thread(self.db.probe))
            await asyncio.sleep(TICK_S)

    def _database_restored(self) -> None:
        """(In a probe thread.) Queue now what waited: files whose queuing lost the database."""
        self.watcher.rescan_now()

    async def _report_status(self) -> None:
        while True:
            try:
                text = await asyncio.to_thread(self.service.status_text)
            except Exception as exc:
                if not self.db.failed(exc):
                    log.warning("status_unavailable", exc_info=True)
                text = f"database unavailable: {self.db.reason}" if self.db.reason else "status unavailable"
            sdnotify.status(f"{text}; {self.sftp.session_count} SFTP session(s)")
            await asyncio.sleep(STATUS_INTERVAL_S)

    def _queue_depth(self) -> int:
        """For the metrics gauge (at scrape time); an outage is noted, not logged per scrape."""
        try:
            return self.service.queue_depth()
        except Exception as exc:
            if self.db.failed(exc):
                raise DatabaseUnavailable(self.db.reason or "unreachable") from exc
            raise

    def _rescan(self) -> None:
        # Periodic rescans leave files alone that were written in the last seconds: a local
        # writer (not SFTP, which publishes by rename) may still be filling them.
        self.service.scan_inboxes(min_age_s=RESCAN_MIN_AGE_S)
        self.service.register_orphans(min_age_s=ORPHAN_MIN_AGE_S)

    def _status_text(self) -> str:
        return f"SFTP on {self.settings.sftp.host}:{self.sftp.port}; {len(self.settings.tenants)} tenant(s)"

    async def _run_catch_up(self) -> None:
        try:
            await asyncio.to_thread(self._catch_up_run)
        except Exception:
            log.exception("catch_up_failed")

    def _catch_up_run(self) -> None:
        """The hourly run a daemon that was down missed, once, if anything is queued (in a worker
        thread; the scheduler keeps no record of slots that passed while we were down)."""
        queued = self._patiently("catch_up", self.service.queue_depth)
        if not queued:
            return
        log.info("catch_up_started", queued=queued)
        results = self._patiently("catch_up", lambda: self.service.run_due("hourly"))
        log.info("catch_up_finished", jobs=len(results or []))

    def _run_hourly(self) -> None:
        self._patiently("hourly", lambda: self.service.run_due("hourly"))

    def _run_daily(self) -> None:
        try:
            self._patiently("daily", lambda: self.service.run_due("daily"))
        finally:
            # Exports and pruning do not depend on the imports having gone well.
            self._patiently("daily_maintenance", self.service.daily_maintenance)

    def _patiently(self, run: str, fn: Callable[[], T]) -> T | None:
        """A run that waits out a database outage (retrying with backoff, then going on where it
        stopped: a job it interrupted runs again); None if the daemon stopped meanwhile."""
        try:
            return self.service.patiently(fn)
        except DatabaseUnavailable as exc:
            if not self.service.stop_requested.is_set():
                raise
            log.warning("run_abandoned", run=run, reason=exc.reason)
        except Exception as exc:
            if not (self.service.stop_requested.is_set() and self.db.failed(exc)):
                raise
            log.warning("run_abandoned", run=run, reason=self.db.reason)
        return None

    def _on_upload(self, tenant: str, path: Path, actor: str) -> None:
        if not self._queuing or self.db.reason is not None:
            return  # starting, or the database is away: the inbox scan or the watcher queues it
        try:
            self.service.enqueue_file(tenant, path, actor, patient=False)
        except Exception as exc:
            if not self.db.failed(exc):
                raise
            # Lost it just now: the file is in the inbox (or the spool, without a job yet); the
            # watcher's rescans queue it once the database answers.

    def _inboxes(self, settings: Settings) -> dict[str, Path]:
        return {name: self.service.dirs(name).inbox for name in settings.tenants}

    # -- reload (SIGHUP) -----------------------------------------------------------------------

    async def _reload(self) -> None:
        sdnotify.reloading()
        log.info("reload_started", config=str(self.config_path or BUILT_IN_SOURCE))
        try:
            new = await asyncio.to_thread(load_settings, self.config_path)
        except Exception as exc:
            # Keep running on the old config: a typo must not take the intake down.
            log.error("reload_failed", error=str(exc))
        else:
            await self._apply(keep_restart_keys(self.settings, new))
        sdnotify.ready(self._status_text())

    async def _apply(self, new: Settings) -> None:
        try:
            await asyncio.to_thread(self.service.reload, new)
            self.sftp.reload(new)  # on the loop: the SFTP server's state lives there
            await asyncio.to_thread(self.watcher.update, self._inboxes(new))
            await asyncio.to_thread(self.scheduler.reschedule, new)
        except Exception as exc:
            log.exception("reload_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.settings = new
        log.info("reload_finished", tenants=sorted(new.tenants))

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.stop_timeout_s
        log.info("shutdown_started", signal=self.exit_signal, timeout_s=self.stop_timeout_s)
        sdnotify.stopping()
        self.service.stop_requested.set()  # a run finishes the job in hand and takes no other
        deadline_only = asyncio.Event()  # never set: only the deadline cuts these steps short
        steps: list[tuple[str, Callable[[], Awaitable[object]], asyncio.Event]] = [
            ("sftp_listener", self.sftp.stop_accepting, deadline_only),
            ("watcher", lambda: asyncio.to_thread(self.watcher.stop), deadline_only),
            # wait=True: a job in progress commits or rolls back before we go on; a second signal
            # stops only these two waits, the clean-up after them still runs.
            ("scheduled_run", lambda: asyncio.to_thread(self.scheduler.shutdown, True), self._force),
            ("catch_up_run", self._wait_catch_up, self._force),
            # After the runs: their last outcomes' events are in the outbox; what is not sent yet
            # (or was in flight, its lease then runs out) is sent after the next start.
            ("notifier", lambda: asyncio.to_thread(self.service.notifier.stop), deadline_only),
            ("sftp_sessions", self.sftp.close, deadline_only),
            ("metrics", self._stop_metrics, deadline_only),
            ("database", lambda: asyncio.to_thread(self._close_database), deadline_only),
        ]
        for name, step, give_up in steps:
            await self._bounded(name, step(), deadline, give_up)
        if self.unfinished:
            log.warning("shutdown_timeout", still_running=self.unfinished, forced=self.force_exit)
        log.info("daemon_stopped")

    def _close_database(self) -> None:
        self.db.close()
        self.service.close()

    async def _wait_catch_up(self) -> None:
        if self._catch_up is not None:
            await self._catch_up

    async def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)

    async def _bounded(
        self, name: str, step: Awaitable[object], deadline: float, give_up: asyncio.Event
    ) -> None:
        """Await *step* until *deadline* or *give_up* is set; note it if it did not finish."""
        task = asyncio.ensure_future(step)
        waiter = asyncio.ensure_future(give_up.wait())
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task not in done:
            task.cancel()
            self.unfinished.append(name)
        elif not task.cancelled() and task.exception() is not None:
            log.error("shutdown_step_failed", step=name, exc_info=task.exception())


# -- demo defaults --------------------------------------------------------------------------------


def ensure_demo_keys(settings: Settings) -> Path | None:
    """On the built-in defaults, make the demo tenant's client key pair if there is none.

    Returns the private key's path, or None when there is none to offer (not on the defaults, or
    the operator put a public key of their own in place, which is left alone).
    """
    public = _demo_public_key(settings)
    if public is None:
        return None
    private = public.with_suffix("")
    if not private.exists():
        if public.exists():
            return None
        key = asyncssh.generate_private_key("ssh-ed25519", comment="orgsyncd-demo")
        _write_new_file(private, key.export_private_key(), _KEY_MODE)
        log.info("demo_key_created", path=str(private))
    if not public.exists():
        # Written after the private key, so a crash in between is repaired here on the next start.
        _write_new_file(public, asyncssh.read_private_key(private).export_public_key(), 0o644)
    return private


def demo_sftp_command(settings: Settings, port: int) -> str | None:
    """The sftp command line that logs in as the demo tenant, when running on the defaults."""
    public = _demo_public_key(settings)
    if public is None:
        return None
    private = public.with_suffix("")
    identity = ["-i", str(private)] if private.exists() else []
    host = _client_host(settings.sftp.host)
    # The host key is pinned on first use in a known_hosts beside the demo key: every demo data
    # directory has its own host key, and ~/.ssh/known_hosts would refuse the next one on :2222.
    known_hosts = public.parent / "known_hosts"
    return shlex.join(
        ["sftp", *identity, "-P", str(port), "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "StrictHostKeyChecking=accept-new", f"demo@{host}"]
    )  # fmt: skip


def demo_welcome(sftp_command: str, port: int, data_dir: Path) -> str:
    """What a newcomer running the demo on a terminal reads once the daemon is ready: commands
    that work exactly as printed, in the directory named (the demo's paths are relative to it)."""
    example = Path("examples/day2.csv")
    upload = str(example) if example.is_file() else "ROSTER.csv"
    return (
        f"\norgsyncd is ready: SFTP on port {port} for the demo tenant (data in {data_dir.resolve()}).\n"
        f"In another shell, in {Path.cwd()}, upload a roster:\n"
        f"  {sftp_command}\n"
        f"  sftp> put {upload} inbox/\n"
        "Then apply it now, instead of at the top of the hour, and read the results:\n"
        f"  {self_command('run-now')}\n"
        "  sftp> ls results\n"
        "Stop the daemon with Ctrl-C.\n"
    )


def self_command(*args: str) -> str:
    """This orgsyncd, invoked as it was for this process, with the settings a second command
    needs to find the same data (daemon keys set in the environment)."""
    argv0 = sys.argv[0] if sys.argv else "orgsyncd"
    # python -m orgsyncd runs __main__.py; the console script is the path the shell ran.
    program = [sys.executable, "-m", "orgsyncd"] if argv0.endswith("__main__.py") else [argv0]
    env = [
        f"{key}={shlex.quote(value)}"
        for key, value in sorted(os.environ.items())
        if key.upper().startswith("ORGSYNCD_DAEMON__")
    ]
    return " ".join([*env, shlex.join([*program, *args])])


def keep_restart_keys(old: Settings, new: Settings) -> Settings:
    """*new*, with the settings a reload cannot apply kept at their running values (logged)."""
    changed = [f"daemon.{key}" for key in _DAEMON_RESTART_KEYS if _differs(old.daemon, new.daemon, key)]
    if old.metrics != new.metrics:
        changed.append("metrics")
    if not changed:
        return new
    log.warning("reload_needs_restart", keys=changed)
    kept = {key: getattr(old.daemon, key) for key in _DAEMON_RESTART_KEYS}
    return new.model_copy(update={"daemon": new.daemon.model_copy(update=kept), "metrics": old.metrics})


def _differs(old: object, new: object, key: str) -> bool:
    return bool(getattr(old, key) != getattr(new, key))


def _demo_public_key(settings: Settings) -> Path | None:
    if settings.source != BUILT_IN_SOURCE:
        return None
    tenant = settings.tenants.get(DEMO_TENANT)
    return None if tenant is None else tenant.authorized_keys


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a listener bound to *host*."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create *path* with *mode* (never through a symlink, never over an existing file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; the mode set is the one meant
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- exits ----------------------------------------------------------------------------------------


def _startup_failed(what: str, exc: Exception) -> int:
    """One logged event and one sentence on stderr; the exit code (config problems say 2)."""
    reason = _first_line(exc)
    log.error("startup_failed", step=what, error=reason)
    # Our own errors are already written for the reader; others need saying what we were doing.
    sentence = reason if isinstance(exc, OrgsyncError) else f"{what}: {reason}"
    print(f"orgsyncd: {sentence}", file=sys.stderr, flush=True)
    return exc.exit_code if isinstance(exc, OrgsyncError) else 1


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends the statement and a documentation link on further lines.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _exit_now(code: int) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


__all__ = [
    "STOP_TIMEOUT_S",
    "Daemon",
    "demo_sftp_command",
    "ensure_demo_keys",
    "keep_restart_keys",
    "run_daemon",
]
