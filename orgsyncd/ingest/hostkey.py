"""The server's SSH host key: ed25519, made once on first start, private to the daemon's user."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import asyncssh
import structlog

log = structlog.get_logger("orgsyncd.sftp")

_KEY_MODE = 0o600


def ensure_host_key(path: Path) -> asyncssh.SSHKey:
    """Load the host key at *path*, creating it (mode 0600) if it does not exist yet."""
    if not path.exists():
        _create(path)
    key = asyncssh.read_private_key(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # Not fatal: the operator may have a reason; but a readable host key is worth a warning.
        log.warning("host_key_permissions", path=str(path), mode=oct(mode))
    return key


def _create(path: Path) -> None:
    """Write a new key under a unique name, then link it into place.

    Linking fails if another instance (shared data directory) won the race, in which case its key
    is kept, so every instance behind a load balancer presents the same host key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _KEY_MODE)
    try:
        os.fchmod(fd, _KEY_MODE)  # the umask cannot widen it, but a mode set explicitly is clearer
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            log.info("host_key_created", path=str(path))
    finally:
        tmp.unlink()
