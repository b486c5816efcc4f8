"""Harness for running the real daemon as a subprocess: free ports, client keys, a config file, an
sd_notify socket to wait on, and the JSON log lines it writes to stdout.

Every wait is bounded; every daemon started here is killed at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paramiko
import pytest

from tests.helpers import LIC, Keys, make_keys, sftp_session

T = TypeVar("T")
WAIT_S = 10.0
# Environment that would leak the test runner's own setup into the daemon or the clients.
_LEAKY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "SSH_AUTH_SOCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll *condition* until it returns something truthy; fail naming *what* at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_") and k not in _LEAKY_ENV}
    env.update(extra)
    return env


# -- keys -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("client-keys"), ("acme", "globex"))


# -- sd_notify ------------------------------------------------------------------------------------


class NotifySocket:
    """What systemd would be: an AF_UNIX datagram socket collecting the daemon's messages."""

    def __init__(self) -> None:
        # Short path: AF_UNIX addresses are limited to 108 bytes, pytest's tmp_path can be longer.
        self._dir = Path(tempfile.mkdtemp(prefix="osd-"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self.messages: list[list[str]] = []

    def lines(self) -> list[str]:
        self._drain(0.0)
        return [line for message in self.messages for line in message]

    def wait_for(self, line: str, *, after: int = 0, timeout: float = WAIT_S) -> int:
        """Index of the first message from *after* on that has *line*; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(after, len(self.messages)):
                if line in self.messages[index]:
                    return index
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line!r} on the notify socket; got {self.messages}")
            self._drain(min(left, 0.1))

    def _drain(self, timeout: float) -> None:
        """Collect the datagrams waiting; wait up to *timeout* for the first (0: do not wait)."""
        self._sock.settimeout(max(timeout, 0.0))  # a timeout of 0.0 means non-blocking
        while True:
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, TimeoutError):
                return
            self.messages.append(data.decode().splitlines())
            self._sock.settimeout(0.0)

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# -- the daemon -----------------------------------------------------------------------------------


@dataclass
class Tenant:
    name: str
    authorized_keys: Path


@dataclass
class Site:
    """A temporary installation: a config file, a data directory, two free ports."""

    root: Path
    sftp_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def config(self) -> Path:
        return self.root / "orgsyncd.toml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def inbox(self, tenant: str = "acme") -> Path:
        return self.data / "tenants" / tenant / "inbox"

    def write_config(self, tenants: list[Tenant], extra: str = "") -> Path:
        # Slots twelve hours away: the scheduler is running but never fires during a test.
        hour = (datetime.now(UTC).hour + 12) % 24
        text = (
            f'[daemon]\ndata_dir = "{self.data}"\ntimezone = "UTC"\n'
            f'hourly_cron = "0 {hour} * * *"\ndaily_cron = "30 {hour} * * *"\n\n'
            f'[sftp]\nlisten = "127.0.0.1:{self.sftp_port}"\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n\n'
        )
        for tenant in tenants:
            text += (
                f"[tenants.{tenant.name}]\n"
                f'authorized_keys = "{tenant.authorized_keys}"\n'
                f"licenses = {{ {LIC} = 0 }}\nmax_deactivation_ratio = 1.0\n\n"
            )
        self.config.write_text(text + extra, encoding="utf-8")
        return self.config

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An ``orgsyncd --config ... COMMAND`` run as a separate process, next to the daemon."""
        return subprocess.run(
            [sys.executable, "-m", "orgsyncd", "--config", str(self.config), *args],
            cwd=self.root,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def db(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.data / "orgsyncd.db", timeout=WAIT_S)) as conn:
            return conn.execute(sql, params).fetchall()

    def job(self, file_name: str) -> tuple[int, str, str] | None:
        """(id, tenant, status) of the newest job for *file_name*, or None."""
        rows = self.db(
            "SELECT job.id, tenant.name, job.status FROM job JOIN tenant ON tenant.id = job.tenant_id "
            "WHERE job.file_name = ? ORDER BY job.id DESC LIMIT 1",
            file_name,
        )
        return rows[0] if rows else None


class DaemonProcess:
    """The daemon in a subprocess; stdout (JSON logs) and stderr go to files."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.notify = NotifySocket()
        self.stdout_path = cwd / f"daemon-{id(self)}.out"
        self.stderr_path = cwd / f"daemon-{id(self)}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                command,
                cwd=cwd,
                env={**env, "NOTIFY_SOCKET": str(self.notify.path)},
                stdout=out,
                stderr=err,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while "READY=1" not in self.notify.lines():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.stderr}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not ready after {timeout}s:\n{self.stderr}\n{self.tail()}")
            time.sleep(0.05)

    def logs(self) -> list[dict[str, Any]]:
        """Every complete log line, parsed; a line that is not JSON fails the test."""
        text = self.stdout_path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # the daemon may be half-way through a line
        return [json.loads(line) for line in complete.splitlines()]

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.logs() if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_event(self, name: str, timeout: float = WAIT_S, **match: Any) -> dict[str, Any]:
        return wait_until(lambda: self.events(name, **match), f"log event {name} {match}", timeout)[0]

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.stdout_path.read_text(encoding="utf-8").splitlines()[-n:])

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        self.notify.close()


@dataclass
class Daemons:
    """Starts daemons for a test and kills every one of them at teardown."""

    tmp_path: Path
    started: list[DaemonProcess] = field(default_factory=list)

    def start(
        self,
        args: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        ready: bool = True,
    ) -> DaemonProcess:
        """``orgsyncd ARGS serve``, as the unit's ExecStart runs it."""
        command = [sys.executable, "-m", "orgsyncd", *args, "serve"]
        return self.start_command(command, cwd, env, ready)

    def start_command(
        self,
        command: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        ready: bool = True,
    ) -> DaemonProcess:
        # WATCHDOG_USEC as systemd sets it with WatchdogSec=1: a heartbeat every half second.
        environment = clean_env(WATCHDOG_USEC="1000000", **(env or {}))
        daemon = DaemonProcess(command, cwd or self.tmp_path, environment)
        self.started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    runner = Daemons(tmp_path)
    try:
        yield runner
    finally:
        for daemon in runner.started:
            daemon.kill()


@pytest.fixture
def site(tmp_path: Path, keys: Keys) -> Site:
    installation = Site(tmp_path)
    installation.write_config([Tenant("acme", keys.public("acme"))])
    return installation


# -- SFTP clients ---------------------------------------------------------------------------------


def paramiko_sftp(port: int, user: str, keys: Keys) -> contextlib.AbstractContextManager[paramiko.SFTPClient]:
    return sftp_session(port, user, pkey=keys.pkey(user))


def openssh_sftp(
    port: int, user: str, key: Path, commands: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """OpenSSH's sftp in batch mode (``-b`` file), as an HRIS export script would run it."""
    batch = cwd / "batch.sftp"
    batch.write_text("\n".join(commands) + "\n", encoding="utf-8")
    return subprocess.run(
        [
            "sftp",
            "-F",
            "/dev/null",
            "-b",
            str(batch),
            "-i",
            str(key),
            "-P",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            f"{user}@127.0.0.1",
        ],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
