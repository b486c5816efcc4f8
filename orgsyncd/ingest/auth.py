"""SFTP login checks: scrypt password hashes, authorized_keys files, per-address bans.

Everything here is synchronous and free of asyncssh's event loop; ``sftp.py`` runs the slow parts
(scrypt, file reads) in threads.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

_SCHEME = "scrypt"
# OWASP's scrypt floor (N=2^17 is the stronger pick but costs 128 MiB per concurrent login attempt).
_DEFAULT_N, _DEFAULT_R, _DEFAULT_P = 2**14, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
# Bounds on parameters read back from config: a typo must not make one login eat gigabytes.
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
# Entries kept before the ban list prunes expired ones; bounds memory under address spraying.
_PRUNE_AT = 4096


@dataclass(frozen=True, slots=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def hash_password(password: str) -> str:
    """A self-describing scrypt hash: ``scrypt$n$r$p$salt_b64$hash_b64``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _DEFAULT_N, _DEFAULT_R, _DEFAULT_P, _HASH_BYTES)
    return "$".join((_SCHEME, str(_DEFAULT_N), str(_DEFAULT_R), str(_DEFAULT_P), _b64(salt), _b64(digest)))


def verify_password(stored: str, password: str) -> bool:
    """Whether *password* matches *stored*; a malformed *stored* never matches."""
    try:
        parsed = parse_password_hash(stored)
    except ValueError:
        return False
    candidate = _scrypt(password, parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.digest))
    return hmac.compare_digest(candidate, parsed.digest)


def parse_password_hash(stored: str) -> ScryptHash:
    """Decode a hash made by :func:`hash_password`; ValueError says what is wrong with it."""
    fields = stored.split("$")
    if len(fields) != 6 or fields[0] != _SCHEME:
        raise ValueError("not a scrypt$n$r$p$salt$hash string")
    try:
        n, r, p = (int(field) for field in fields[1:4])
        salt, digest = _unb64(fields[4]), _unb64(fields[5])
    except (ValueError, binascii.Error):
        raise ValueError("scrypt parameters or base64 fields are malformed") from None
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        raise ValueError("scrypt parameters out of range")
    if not salt or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return ScryptHash(n=n, r=r, p=p, salt=salt, digest=digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL refuses unless maxmem covers its two buffers (128*r*(n+2) and 128*r*p bytes).
    maxmem = 128 * r * (n + 2 + p) + 1024 * 1024
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def burn_password_check(password: str) -> None:
    """Spend what a real check costs, so a login for an unknown user is not told apart by timing."""
    verify_password(_dummy_hash(), password)


def load_authorized_keys(path: Path) -> asyncssh.SSHAuthorizedKeys:
    """Parse an OpenSSH authorized_keys file; asyncssh honours options such as ``from=``."""
    return _FingerprintedKeys(path.read_text(encoding="utf-8"))


# The option under which the matched key's fingerprint is kept (see _FingerprintedKeys).
KEY_FINGERPRINT = "x-orgsyncd-key-fingerprint"


class _FingerprintedKeys(asyncssh.SSHAuthorizedKeys):
    """authorized_keys that also say which key logged in: asyncssh keeps the matched entry's
    options for the connection (``get_key_option``), so the key's fingerprint rides along as one
    more option. Audit records (who approved a job over SFTP) name the key this way."""

    def validate(
        self,
        key: asyncssh.SSHKey,
        client_host: str,
        client_addr: str,
        cert_principals: Sequence[str] | None = None,
        ca: bool = False,
    ) -> Mapping[str, object] | None:
        options = super().validate(key, client_host, client_addr, cert_principals, ca)
        if options is None:
            return None
        return {**options, KEY_FINGERPRINT: key.get_fingerprint()}


def normalize_peer(address: str) -> str:
    """One spelling per client address, so ``::ffff:10.0.0.1`` and ``10.0.0.1`` share a ban."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    banned_until: float = 0.0


class BanList:
    """Counts failed logins per client address; *max_failures* within *ban_s* bans it for *ban_s*.

    Not thread-safe: it lives on the event loop. The clock is a parameter so tests need no sleeping.
    """

    def __init__(self, max_failures: int, ban_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_failures = max_failures
        self._ban_s = ban_s
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def configure(self, max_failures: int, ban_s: float) -> None:
        """New limits (SIGHUP); bans already in force keep their end time."""
        self._max_failures = max_failures
        self._ban_s = ban_s

    def is_banned(self, peer: str) -> bool:
        record = self._records.get(peer)
        return record is not None and record.banned_until > self._clock()

    def record_failure(self, peer: str) -> bool:
        """Count one failure; True when this failure starts a ban."""
        now = self._clock()
        if len(self._records) >= _PRUNE_AT:
            self._prune(now)
        record = self._records.setdefault(peer, _Record())
        if now - record.last_failure > self._ban_s:
            # Failures spread wider than the ban window are forgotten, like fail2ban's findtime.
            record.failures = 0
        record.failures += 1
        record.last_failure = now
        if record.failures < self._max_failures:
            return False
        record.failures = 0
        record.banned_until = now + self._ban_s
        return True

    def _prune(self, now: float) -> None:
        stale = [
            peer
            for peer, record in self._records.items()
            if record.banned_until <= now and now - record.last_failure > self._ban_s
        ]
        for peer in stale:
            del self._records[peer]
