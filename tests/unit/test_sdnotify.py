"""sd_notify: datagrams land on a real AF_UNIX socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orgsyncd import sdnotify

Receive = Callable[[], str]


def _receiver(sock: socket.socket) -> Receive:
    sock.settimeout(2)
    return lambda: sock.recv(4096).decode()


@pytest.fixture(autouse=True)
def _no_inherited_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test run itself may sit under systemd (a CI runner service): start from a clean slate.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receive]:
    """A datagram socket at a file path, announced in NOTIFY_SOCKET."""
    # Not tmp_path: AF_UNIX paths are limited to 108 bytes and pytest's can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn") as short_dir:
        path = Path(short_dir) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            yield _receiver(sock)


@pytest.fixture
def abstract_systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receive]:
    """A datagram socket in the abstract namespace, announced as NOTIFY_SOCKET=@name."""
    name = f"orgsyncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        yield _receiver(sock)


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    assert sdnotify.stopping() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.status("idle") is False


def test_ready_on_a_path_socket(systemd: Receive) -> None:
    assert sdnotify.ready() is True
    assert systemd() == "READY=1"


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda: sdnotify.ready("serving 3 tenants"), "READY=1\nSTATUS=serving 3 tenants"),
        (sdnotify.stopping, "STOPPING=1"),
        (lambda: sdnotify.stopping("draining"), "STOPPING=1\nSTATUS=draining"),
        (sdnotify.watchdog, "WATCHDOG=1"),
        (lambda: sdnotify.status("job 7\nacme"), "STATUS=job 7 acme"),
        (lambda: sdnotify.notify("EXTEND_TIMEOUT_USEC=5000000"), "EXTEND_TIMEOUT_USEC=5000000"),
    ],
)
def test_messages(systemd: Receive, send: Callable[[], bool], expected: str) -> None:
    assert send() is True
    assert systemd() == expected


def test_reloading_carries_a_monotonic_timestamp(systemd: Receive) -> None:
    assert sdnotify.reloading() is True
    first, second = systemd().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert abs(int(value) - time.monotonic_ns() // 1000) < 5_000_000


def test_abstract_namespace_socket(abstract_systemd: Receive) -> None:
    assert sdnotify.ready() is True
    assert sdnotify.watchdog() is True
    assert abstract_systemd() == "READY=1"
    assert abstract_systemd() == "WATCHDOG=1"


def test_socket_with_no_listener_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.ready() is False


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234", ""])
def test_unsupported_addresses_are_ignored(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval_is_half_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 15.0


@pytest.mark.parametrize(
    ("usec", "pid"),
    [
        (None, None),  # no watchdog configured
        ("30000000", "1"),  # meant for another process
        ("0", None),
        ("-5", None),
        ("soon", None),
    ],
)
def test_no_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sdnotify.watchdog_interval_s() is None


def test_a_receiver_that_stops_reading_never_blocks_the_sender(systemd: Receive) -> None:
    sent: list[bool] = []

    def send_many() -> None:
        sent.extend(sdnotify.watchdog() for _ in range(5000))  # far more than a socket buffer holds

    sender = threading.Thread(target=send_many, daemon=True)
    sender.start()
    sender.join(10)
    assert not sender.is_alive(), "notify blocked on a receiver that does not read"
    assert sent[0] is True and sent[-1] is False  # the buffer filled; later ones were dropped
    assert systemd() == "WATCHDOG=1"
