"""The sd_notify protocol without libsystemd: one datagram to ``$NOTIFY_SOCKET`` per message.

Every call is a no-op returning False when the daemon is not run by systemd (no ``NOTIFY_SOCKET``),
so callers need no "are we under systemd?" checks. See sd_notify(3) for the message keys.
"""

from __future__ import annotations

import os
import socket
import time

_USEC_PER_S = 1_000_000


def notify(message: str) -> bool:
    """Send *message* (``KEY=VALUE`` lines) to systemd; True if it was handed to the socket."""
    address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never wait: this runs on the event loop, and a receiver that stopped reading (a full
            # socket buffer) must not stall every SFTP session. A dropped heartbeat is harmless.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        # systemd gone, not reading, or not reachable (e.g. a stale variable in a shell).
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Start-up done: systemd marks the unit active and ``systemctl start`` returns."""
    return notify(_with_status("READY=1", status_text))


def reloading() -> bool:
    """A reload began; call ready() when done. ``MONOTONIC_USEC`` dates the request."""
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")


def stopping(status_text: str | None = None) -> bool:
    return notify(_with_status("STOPPING=1", status_text))


def status(text: str) -> bool:
    """Free-form text shown by ``systemctl status``."""
    return notify(_status_line(text))


def watchdog() -> bool:
    """Heartbeat; must come more often than ``WatchdogSec=`` or systemd restarts the service."""
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """How often to send watchdog(): half the watchdog timeout, or None when none applies to us."""
    pid = os.environ.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process the timeout is meant for; a child that inherited the
    # environment must not answer for its parent.
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / _USEC_PER_S / 2 if usec > 0 else None


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL instead of "@", no file on disk.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def _with_status(line: str, status_text: str | None) -> str:
    return line if status_text is None else f"{line}\n{_status_line(status_text)}"


def _status_line(text: str) -> str:
    # The protocol is newline-separated, so a newline in free text would start a bogus key.
    return "STATUS=" + " ".join(text.splitlines())
