"""The SFTP intake server: one login per tenant, confined to its tree, uploads that land atomically.

asyncssh does the SSH protocol. This module decides who may log in (:class:`_Login`, one per
connection), what an SFTP session may do (:class:`_TenantSftp`, one per SFTP channel, backed by
:class:`~orgsyncd.ingest.tenantfs.TenantFS`), and owns the listener's lifecycle
(:class:`SftpServer`). All disk work and password hashing run in thread pools, so one slow disk or
one brute-force attempt does not stall every session on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import posixpath
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar, TypeVarTuple, cast

import asyncssh
import structlog
from asyncssh.channel import SSHChannel
from asyncssh.stream import SSHServerStreamSession  # runs the SFTP server on a channel we open

from orgsyncd.config import Settings, SftpConfig, TenantConfig
from orgsyncd.ingest.auth import (
    KEY_FINGERPRINT,
    BanList,
    burn_password_check,
    hash_password,
    load_authorized_keys,
    normalize_peer,
    verify_password,
)
from orgsyncd.ingest.hostkey import ensure_host_key
from orgsyncd.ingest.limits import ConnectionGate, GateLimits, WindowPool, WriteBudget
from orgsyncd.ingest.tenantfs import (
    Download,
    Handle,
    OpenMode,
    TenantFS,
    Times,
    Upload,
    remove_expired_partials,
    remove_stale_staging,
    virtual_realpath,
)
from orgsyncd.ingest.writer import UploadWriter
from orgsyncd.paths import is_temporary_name, staging_dir, tenant_dirs

__all__ = [
    "ENCRYPTION_ALGS",
    "KEX_ALGS",
    "MAC_ALGS",
    "SIGNATURE_ALGS",
    "NullSftpMetrics",
    "SftpMetrics",
    "SftpServer",
    "ensure_host_key",
    "hash_password",
    "verify_password",
]

log = structlog.get_logger("orgsyncd.sftp")

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# Modern algorithms only, nothing built on SHA-1, strongest first (the client's order decides).
KEX_ALGS = (
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
)
ENCRYPTION_ALGS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
)
MAC_ALGS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
# Advertised to clients as server-sig-algs, so they sign with SHA-2 rather than ssh-rsa (SHA-1).
SIGNATURE_ALGS = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
SERVER_VERSION = "orgsyncd"  # the banner says SSH-2.0-orgsyncd, not which asyncssh release we run

# Dead peers (half-open TCP) are dropped after this many unanswered keepalives.
_KEEPALIVE_INTERVAL_S = 30.0
_KEEPALIVE_COUNT_MAX = 3
# Written bytes allowed to pile up in the page cache before a background fdatasync: the disk works
# while the network does, and the fsync at close has little left to do.
_FLUSH_EVERY = 32 * 1024 * 1024
# Write-behind queue per upload (see writer.py), within the server-wide upload_buffer_bytes.
_MAX_QUEUED_WRITES = 4 * 1024 * 1024
# Connections the kernel may hold before we accept them: a herd of HRIS jobs at the top of the hour
# waits here instead of seeing dropped SYNs and resets (asyncssh's default is 100).
_LISTEN_BACKLOG = 1024
# Session channels one connection may open (OpenSSH's MaxSessions is 10; SFTP clients use one).
_MAX_CHANNELS_PER_CONNECTION = 4
_IO_THREADS = 16
# Few: scrypt is deliberately slow and memory-hungry, and guessing must not starve file I/O.
_AUTH_THREADS = 2
_CLOSE_TIMEOUT_S = 10.0
# A staging file untouched this long belongs to no live session (they time out when idle).
_MIN_STALE_STAGING_S = 3600.0
# How often expired partial uploads are looked for, at most.
_PARTIAL_SWEEP_S = 60.0


class SftpMetrics(Protocol):
    """What the SFTP server reports; ``orgsyncd.metrics.Metrics`` fits as it is."""

    def sftp_session_opened(self) -> None: ...
    def sftp_session_closed(self) -> None: ...
    def bytes_received(self, n: int) -> None: ...
    def auth_failed(self) -> None: ...
    def peer_banned(self) -> None: ...
    def connection_refused(self, limit: str) -> None: ...


class NullSftpMetrics:
    """The default: counts nothing."""

    def sftp_session_opened(self) -> None:
        pass

    def sftp_session_closed(self) -> None:
        pass

    def bytes_received(self, n: int) -> None:
        pass

    def auth_failed(self) -> None:
        pass

    def peer_banned(self) -> None:
        pass

    def connection_refused(self, limit: str) -> None:
        pass


def gate_limits(sftp: SftpConfig) -> GateLimits:
    return GateLimits(
        max_connections=sftp.max_connections,
        max_connections_per_address=sftp.max_connections_per_address,
        max_startups=sftp.max_startups,
        max_startups_per_address=sftp.max_startups_per_address,
    )


class SftpServer:
    """The listener and everything it has accepted. Create, ``await start()``, ``await close()``."""

    def __init__(
        self,
        settings: Settings,
        on_upload: Callable[[str, Path, str], None],
        *,
        metrics: SftpMetrics | None = None,
    ) -> None:
        self._hub = _Hub(settings, on_upload, metrics or NullSftpMetrics())
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._stopped_accepting = False
        self._sweepers: list[asyncio.Task[None]] = []

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Prepare the directories and host key, then listen (``port=0``: any free port)."""
        hub = self._hub
        sftp = hub.settings.sftp
        await hub.run_io(hub.prepare_tree)
        key = await hub.run_io(ensure_host_key, hub.host_key_path)
        self._acceptor = await asyncssh.listen(
            sftp.host if host is None else host,
            sftp.port if port is None else port,
            reuse_address=True,
            backlog=_LISTEN_BACKLOG,
            config=None,  # never read /etc/ssh/sshd_config: every option is set here
            server_factory=hub.new_login,  # which opens SFTP channels itself, each with its window
            server_host_keys=[key],
            server_version=SERVER_VERSION,
            kex_algs=list(KEX_ALGS),
            encryption_algs=list(ENCRYPTION_ALGS),
            mac_algs=list(MAC_ALGS),
            signature_algs=list(SIGNATURE_ALGS),
            # SFTP only: asyncssh allows agent forwarding and PTYs unless told otherwise.
            allow_scp=False,
            agent_forwarding=False,
            allow_pty=False,
            x11_forwarding=False,
            gss_kex=False,
            gss_auth=False,
            host_based_auth=False,
            login_timeout=sftp.login_timeout_s,
            keepalive_interval=_KEEPALIVE_INTERVAL_S,
            keepalive_count_max=_KEEPALIVE_COUNT_MAX,
        )
        self._sweepers = [asyncio.create_task(hub.sweep_idle()), asyncio.create_task(hub.sweep_partials())]
        log.info("sftp_listening", host=host or sftp.host, port=self.port)

    @property
    def port(self) -> int:
        if self._acceptor is None:
            raise RuntimeError("SftpServer.start() has not been awaited")
        return self._acceptor.get_port()

    @property
    def session_count(self) -> int:
        return self._hub.session_count

    @property
    def listening(self) -> bool:
        """Accepting connections (started, and not stopped since)."""
        return self._acceptor is not None and bool(self._acceptor.is_serving())

    def reload(self, settings: Settings) -> None:
        """New tenants, keys and limits apply to new logins; open sessions keep what they had."""
        self._hub.reload(settings)

    async def stop_accepting(self) -> None:
        if self._acceptor is not None and not self._stopped_accepting:
            self._stopped_accepting = True  # close() calls this again after a graceful stop
            self._acceptor.close()
            log.info("sftp_stopped_accepting")

    async def close(self) -> None:
        """Stop listening, end every session (discarding unfinished uploads), free the threads."""
        await self.stop_accepting()
        for sweeper in self._sweepers:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self._hub.close_all()
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
        await self._hub.shutdown_threads()


class _Hub:
    """State shared by every connection of one server: settings, bans, sessions, thread pools."""

    def __init__(
        self, settings: Settings, on_upload: Callable[[str, Path, str], None], metrics: SftpMetrics
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._on_upload = on_upload
        # Fixed at construction: moving the data directory under live sessions needs a restart.
        self.data_dir = settings.daemon.data_dir
        self.bans = BanList(settings.sftp.max_auth_failures_per_ip, settings.sftp.ban_s)
        self.gate = ConnectionGate(gate_limits(settings.sftp))
        # Fixed at construction: the memory they bound is sized at start.
        self.budget = WriteBudget(settings.sftp.upload_buffer_bytes)
        self.windows = WindowPool(settings.sftp.upload_buffer_bytes)
        self.logins: dict[asyncssh.SSHServerConnection, _Login] = {}
        self.sftp_sessions: set[_TenantSftp] = set()
        self._sessions: Counter[str] = Counter()
        self._io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="sftp-io")
        self._auth = ThreadPoolExecutor(_AUTH_THREADS, thread_name_prefix="sftp-auth")

    @property
    def host_key_path(self) -> Path:
        return self.settings.sftp.host_key or self.data_dir / "ssh_host_ed25519_key"

    @property
    def passwords_enabled(self) -> bool:
        # The same answer for every user name, so the offered methods do not reveal who exists.
        return any(t.password_hash for t in self.settings.tenants.values())

    @property
    def session_count(self) -> int:
        return sum(self._sessions.values())

    async def run_io(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def run_auth(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._auth, fn, *args)

    # -- factories handed to asyncssh ----------------------------------------------------------

    def new_login(self) -> _Login:
        return _Login(self)

    def new_sftp(self, chan: SSHChannel[bytes]) -> _TenantSftp:
        chan = cast(asyncssh.SSHServerChannel[bytes], chan)
        login = self.logins.get(cast(asyncssh.SSHServerConnection, chan.get_connection()))
        session = _TenantSftp(chan, self, login)
        self.sftp_sessions.add(session)
        return session

    # -- sessions ------------------------------------------------------------------------------

    def try_open_session(self, tenant: str) -> bool:
        """Take a session slot for *tenant*; False when it already has the maximum."""
        if self._sessions[tenant] >= self.settings.sftp.max_sessions_per_tenant:
            return False
        self._sessions[tenant] += 1
        self.metrics.sftp_session_opened()
        return True

    def close_session(self, tenant: str) -> None:
        self._sessions[tenant] -= 1
        if self._sessions[tenant] <= 0:
            del self._sessions[tenant]
        self.metrics.sftp_session_closed()

    async def sweep_idle(self) -> None:
        """Disconnect logins with no SFTP request for ``idle_timeout_s``."""
        while True:
            idle_s = self.settings.sftp.idle_timeout_s
            await asyncio.sleep(min(max(idle_s / 4, 0.05), 15.0))
            now = time.monotonic()
            for login in list(self.logins.values()):
                if login.tenant is not None and now - login.last_activity > idle_s:
                    log.info("idle_timeout", tenant=login.tenant, peer=login.peer)
                    login.disconnect(asyncssh.DISC_BY_APPLICATION, "idle timeout")

    async def sweep_partials(self) -> None:
        """Delete dropped uploads nobody resumed within ``resume_window_s``."""
        while True:
            window_s = self.settings.sftp.resume_window_s
            await asyncio.sleep(min(max(window_s / 4, 0.05), _PARTIAL_SWEEP_S))
            await self.run_io(self.expire_partials)

    # -- disk work (runs in the I/O threads) ---------------------------------------------------

    def prepare_tree(self) -> None:
        """Create staging and every tenant's directories; drop staging files left by a crash."""
        staging_dir(self.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        (staging_dir(self.data_dir) / "partial").mkdir(exist_ok=True, mode=0o700)
        stale_s = max(2 * self.settings.sftp.idle_timeout_s, _MIN_STALE_STAGING_S)
        removed = remove_stale_staging(self.data_dir, stale_s, time.time())
        if removed:
            log.info("staging_cleaned", files=len(removed))
        self.expire_partials()
        for tenant in self.settings.tenants:
            tenant_dirs(self.data_dir, tenant).create()

    def expire_partials(self) -> None:
        removed = remove_expired_partials(self.data_dir, self.settings.sftp.resume_window_s, time.time())
        for path in removed:
            log.info("partial_upload_expired", tenant=path.parent.name, file=path.name)

    def prepare_tenant(
        self, tenant: str, config: TenantConfig
    ) -> tuple[asyncssh.SSHAuthorizedKeys | None, TenantFS]:
        """At login: the tenant's keys as the file says now, and its tree (created if new)."""
        tenant_dirs(self.data_dir, tenant).create()
        sftp = self.settings.sftp
        fs = TenantFS(self.data_dir, tenant, sftp.max_file_bytes, sftp.resume_window_s)
        if config.authorized_keys is None:
            return None, fs
        try:
            return load_authorized_keys(config.authorized_keys), fs
        except (OSError, ValueError) as exc:
            log.error(
                "authorized_keys_unreadable",
                tenant=tenant,
                path=str(config.authorized_keys),
                error=str(exc),
            )
            return None, fs

    async def notify_upload(self, tenant: str, path: Path, actor: str) -> None:
        """Tell the service a file is complete, and who sent it (``actor``, for audit records);
        its failure is logged, never the client's problem (the file is in the inbox and the
        watcher's rescan will queue it)."""
        try:
            await self.run_io(self._on_upload, tenant, path, actor)
        except Exception:
            log.exception("upload_notify_failed", tenant=tenant, file=path.name)

    # -- lifecycle -----------------------------------------------------------------------------

    def reload(self, settings: Settings) -> None:
        old = self.settings
        self.settings = settings
        self.bans.configure(settings.sftp.max_auth_failures_per_ip, settings.sftp.ban_s)
        self.gate.configure(gate_limits(settings.sftp))
        fixed = {
            "daemon.data_dir": (old.daemon.data_dir, settings.daemon.data_dir),
            "sftp.listen": (old.sftp.listen, settings.sftp.listen),
            "sftp.host_key": (old.sftp.host_key, settings.sftp.host_key),
            "sftp.login_timeout_s": (old.sftp.login_timeout_s, settings.sftp.login_timeout_s),
            "sftp.upload_buffer_bytes": (old.sftp.upload_buffer_bytes, settings.sftp.upload_buffer_bytes),
        }
        changed = sorted(key for key, (before, after) in fixed.items() if before != after)
        if changed:
            log.warning("sftp_reload_needs_restart", keys=changed)
        log.info("sftp_reloaded", tenants=len(settings.tenants))

    async def close_all(self) -> None:
        for login in list(self.logins.values()):
            login.disconnect(asyncssh.DISC_BY_APPLICATION, "server shutting down")
        # Each SFTP session discards its unfinished uploads as it ends; wait for that.
        waits: list[Awaitable[object]] = [s.ended.wait() for s in self.sftp_sessions]
        waits += [login.wait_closed() for login in self.logins.values()]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), _CLOSE_TIMEOUT_S)

    async def shutdown_threads(self) -> None:
        await asyncio.to_thread(self._io.shutdown, True)
        await asyncio.to_thread(self._auth.shutdown, True)


class _Login(asyncssh.SSHServer):
    """One SSH connection: who it is, whether it may stay, when it last did something."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self._conn: asyncssh.SSHServerConnection | None = None
        self.peer = "unknown"
        self._username = ""
        self._password_hash: str | None = None
        self._candidate_fs: TenantFS | None = None
        # Set once authenticated and admitted (session limit): only then can SFTP touch files.
        self.tenant: str | None = None
        self.fs: TenantFS | None = None
        self.last_activity = time.monotonic()
        self._windows: dict[asyncssh.SSHServerChannel[bytes], int] = {}  # taken from the pool
        self.credential = "password"  # or the key's fingerprint, once logged in with a key

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def disconnect(self, code: int, reason: str) -> None:
        if self._conn is not None:
            self._conn.disconnect(code, reason)

    async def wait_closed(self) -> None:
        if self._conn is not None:
            await self._conn.wait_closed()

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peername = conn.get_extra_info("peername") or ("unknown",)
        self.peer = normalize_peer(str(peername[0]))
        if self._hub.bans.is_banned(self.peer):
            # Before the SSH banner: a banned address gets nothing to talk to.
            log.info("peer_refused", peer=self.peer)
            conn.abort()
            return
        admission = self._hub.gate.admit(self, self.peer)
        if not admission.admitted:
            self._hub.metrics.connection_refused(admission.refused or "")
            log.info("connection_refused", peer=self.peer, limit=admission.refused)
            conn.abort()
            return
        if isinstance(admission.evict, _Login):
            admission.evict.evicted()
        self._hub.logins[conn] = self

    def evicted(self) -> None:
        """Dropped while still logging in, to make room for a newer connection."""
        self._hub.metrics.connection_refused("evicted")
        log.info("startup_evicted", peer=self.peer)
        if self._conn is not None:
            self._conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._hub.gate.release(self)
        for window in self._windows.values():
            self._hub.windows.give(window)
        self._windows.clear()
        if self._conn is not None:
            self._hub.logins.pop(self._conn, None)
        if self.tenant is not None:
            self._hub.close_session(self.tenant)
            log.info("sftp_logout", tenant=self.tenant, peer=self.peer)
            self.tenant = None

    # -- authentication ------------------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        self._username = username
        config = self._hub.settings.tenants.get(username)
        keys: asyncssh.SSHAuthorizedKeys | None = None
        fs: TenantFS | None = None
        if config is not None:
            keys, fs = await self._hub.run_io(self._hub.prepare_tenant, username, config)
        self._candidate_fs = fs
        self._password_hash = config.password_hash if config is not None else None
        if self._conn is not None:
            # Always set, even to None: keys of a name tried earlier on this connection must go.
            self._conn.set_authorized_keys(keys)
        return True  # every user must authenticate, known or not

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh has already checked the authorized_keys set on the connection; reaching here
        # means the key is not in it (or its options, e.g. from=, ruled it out).
        self._auth_failed("publickey")
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._auth_failed("publickey")
        return False

    def password_auth_supported(self) -> bool:
        return self._hub.passwords_enabled

    async def validate_password(self, username: str, password: str) -> bool:
        if self._hub.bans.is_banned(self.peer):
            return False
        stored = self._password_hash
        if stored is None:
            await self._hub.run_auth(burn_password_check, password)
            valid = False
        else:
            valid = await self._hub.run_auth(verify_password, stored, password)
        if not valid:
            self._auth_failed("password")
        return valid

    def _auth_failed(self, method: str) -> None:
        self._hub.metrics.auth_failed()
        log.info("auth_failed", peer=self.peer, user=self._username[:64], method=method)
        if self._hub.bans.record_failure(self.peer):
            self._hub.metrics.peer_banned()
            log.warning("peer_banned", peer=self.peer, ban_s=self._hub.settings.sftp.ban_s)
            self.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many failures")

    def auth_completed(self) -> None:
        tenant = self._username
        if self._candidate_fs is None or self._hub.bans.is_banned(self.peer):
            self.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "login refused")
            return
        if not self._hub.try_open_session(tenant):
            limit = self._hub.settings.sftp.max_sessions_per_tenant
            log.warning("session_limit", tenant=tenant, peer=self.peer, limit=limit)
            self.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many sessions for this login")
            return
        self.tenant, self.fs = tenant, self._candidate_fs
        self._hub.gate.logged_in(self)
        if self._conn is not None:
            self.credential = str(self._conn.get_key_option(KEY_FINGERPRINT) or "password")
        self.touch()
        log.info("sftp_login", tenant=tenant, peer=self.peer)

    # -- the SFTP channel ------------------------------------------------------------------------

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], SSHServerStreamSession[bytes]] | bool:
        """A session channel, with a receive window from the server-wide pool: what its client may
        send before it is asked for more is memory this server holds, so many sessions at once
        each get less (throughput of a single upload keeps the full window)."""
        if self._conn is None or self.tenant is None:
            return False
        if len(self._windows) >= _MAX_CHANNELS_PER_CONNECTION:
            log.warning("channel_limit", tenant=self.tenant, peer=self.peer)
            return False
        window = self._hub.windows.take()
        chan = self._conn.create_server_channel(window=window)
        self._windows[chan] = window
        # SFTP only: no shell or exec (no session factory), no scp.
        return chan, SSHServerStreamSession(None, self._hub.new_sftp, sftp_version=3, allow_scp=False)

    def release_window(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        window = self._windows.pop(chan, None)
        if window is not None:
            self._hub.windows.give(window)

    # -- everything but SFTP is refused ----------------------------------------------------------

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


class _TenantSftp(asyncssh.SFTPServer):
    """One SFTP session. Paths are mapped by TenantFS, never by asyncssh's chroot (text only)."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], hub: _Hub, login: _Login | None) -> None:
        super().__init__(chan)
        self._hub = hub
        self._login = login
        self._tenant = login.tenant if login is not None and login.tenant else ""
        self._peer = login.peer if login is not None else "unknown"
        credential = login.credential if login is not None else "unknown"
        self._actor = f"sftp:{self._tenant}@{self._peer} {credential}"  # who, in audit records
        self._writers: dict[Upload, UploadWriter] = {}
        self.ended = asyncio.Event()

    @property
    def _fs(self) -> TenantFS:
        if self._login is None or self._login.fs is None:
            raise asyncssh.SFTPPermissionDenied("not logged in")
        return self._login.fs

    def _touch(self) -> None:
        if self._login is not None:
            self._login.touch()

    async def _io(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        self._touch()
        try:
            return await self._hub.run_io(fn, *args)
        finally:
            self._touch()

    # Any asyncssh default that maps a path would reach the real filesystem: fail closed instead.
    def map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("operation not permitted")

    def reverse_map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("operation not permitted")

    # Listings show the tenant, not the daemon's account (and skip NSS lookups on the loop).
    def format_user(self, uid: int | None) -> str:
        return self._tenant

    def format_group(self, gid: int | None) -> str:
        return self._tenant

    # -- browsing ------------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        return virtual_realpath(path)

    async def stat(self, path: bytes) -> os.stat_result:
        return await self._io(self._fs.stat, path)

    async def lstat(self, path: bytes) -> os.stat_result:
        return await self._io(self._fs.stat, path)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        for name, st in await self._io(self._fs.listdir, path):
            yield asyncssh.SFTPName(os.fsencode(name), attrs=asyncssh.SFTPAttrs.from_local(st))

    async def statvfs(self, path: bytes) -> os.statvfs_result:
        return await self._io(self._fs.statvfs)

    async def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        return await self._io(self._fs.statvfs)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        handle = await self._io(self._fs.open, path, _open_mode(pflags))
        if isinstance(handle, Upload):
            self._writers[handle] = self._new_writer(handle)
            if handle.resumed_from:
                log.info(
                    "upload_resumed",
                    tenant=self._tenant,
                    file=handle.name,
                    offset=handle.resumed_from,
                    peer=self._peer,
                )
        return handle

    def _new_writer(self, upload: Upload) -> UploadWriter:
        fs = self._fs
        return UploadWriter(
            self._hub.run_io,
            functools.partial(fs.write_chunks, upload),
            functools.partial(fs.flush, upload),
            budget=self._hub.budget,
            max_queued=_MAX_QUEUED_WRITES,
            flush_every=_FLUSH_EVERY,
        )

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs) -> object:
        raise asyncssh.SFTPOpUnsupported("only SFTP version 3 is offered")

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        handle = _handle(file_obj)
        await self._settle_writes(handle)
        return await self._io(self._fs.read, handle, offset, size)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        upload = _upload(file_obj)
        self._touch()
        try:
            offset = self._fs.reserve(upload, offset, len(data))
        except OSError:
            await self._reject(upload)
            raise
        await self._writers[upload].write(offset, data)
        self._hub.metrics.bytes_received(len(data))
        return len(data)

    async def _reject(self, upload: Upload) -> None:
        """Over the size limit: throw the staging file away now, not at the client's close."""
        writer = self._writers.pop(upload, None)
        if writer is None:
            return  # rejected by an earlier write
        with contextlib.suppress(OSError):
            await writer.settle()  # no write may still be in flight on the fd
        await self._io(self._fs.discard, upload)
        self._log_discard(upload, "too_large")

    async def fstat(self, file_obj: object) -> os.stat_result:
        handle = _handle(file_obj)
        await self._settle_writes(handle)
        return await self._io(self._fs.fstat, handle)

    async def fsync(self, file_obj: object) -> None:
        handle = _handle(file_obj)
        if isinstance(handle, Upload):
            await self._settle_writes(handle)
            await self._io(self._fs.flush, handle)

    async def _settle_writes(self, handle: Handle) -> None:
        writer = self._writers.get(handle) if isinstance(handle, Upload) else None
        if writer is not None:
            await writer.settle()

    async def close(self, file_obj: object) -> None:
        handle = _handle(file_obj)
        if isinstance(handle, Download):
            await self._io(self._fs.close_download, handle)
            return
        failure = await self._finish_writes(handle)
        if _client_went_away(self.channel):
            # asyncssh also calls close() for every handle still open when the channel or the
            # connection goes away; only a close the client sent itself may publish the file.
            if failure is None:
                await self._keep_partial(handle)
            else:
                await self._discard(handle, "connection_lost")
        elif failure is not None:
            await self._discard(handle, "write_failed")
            raise failure
        else:
            await self._commit(handle)  # a rejected upload fails here, with its reason

    async def _finish_writes(self, upload: Upload) -> OSError | None:
        writer = self._writers.pop(upload, None)
        try:
            if writer is not None:
                await writer.settle()
        except OSError as exc:
            return exc
        return None

    async def _keep_partial(self, upload: Upload) -> None:
        rejected = upload.rejected is not None
        kept = await self._io(self._fs.keep_partial, upload)
        if rejected:
            return  # discarded and logged when it was rejected
        if not kept:
            self._log_discard(upload, "connection_lost")
            return
        log.info(
            "upload_interrupted",
            tenant=self._tenant,
            file=upload.name,
            bytes=kept,
            peer=self._peer,
            resume_window_s=self._hub.settings.sftp.resume_window_s,
        )

    async def _discard(self, upload: Upload, reason: str) -> None:
        await self._io(self._fs.discard, upload)
        if upload.rejected is None:  # a rejected upload was discarded and logged already
            self._log_discard(upload, reason)

    async def _commit(self, upload: Upload) -> None:
        try:
            final = await self._io(self._fs.commit, upload)
        except OSError:
            if upload.rejected is None:
                self._log_discard(upload, "commit_failed")
            raise
        temporary = is_temporary_name(upload.name)
        log.info(
            "upload_complete",
            tenant=self._tenant,
            file=upload.name,
            bytes=upload.size,
            peer=self._peer,
            temporary=temporary,
        )
        if not temporary:  # a temporary name is reported when renamed to its final one
            await self._hub.notify_upload(self._tenant, final, self._actor)
        self._touch()  # on_upload may have taken a while; that was not the client idling

    def _log_discard(self, upload: Upload, reason: str) -> None:
        log.info(
            "upload_discarded",
            tenant=self._tenant,
            file=upload.name,
            bytes=upload.size,
            peer=self._peer,
            reason=reason,
        )

    # -- inbox housekeeping --------------------------------------------------------------------

    async def remove(self, path: bytes) -> None:
        await self._io(self._fs.remove, path)
        log.info("file_removed", tenant=self._tenant, file=os.fsdecode(path), peer=self._peer)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, overwrite=False)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, overwrite=True)

    async def _rename(self, oldpath: bytes, newpath: bytes, *, overwrite: bool) -> None:
        rename = functools.partial(self._fs.rename, overwrite=overwrite)
        old_name, final = await self._io(rename, oldpath, newpath)
        log.info("file_renamed", tenant=self._tenant, file=final.name, previous=old_name)
        if is_temporary_name(old_name) and not is_temporary_name(final.name):
            await self._hub.notify_upload(self._tenant, final, self._actor)

    # -- attributes: times of one's own uploads are kept, the rest is accepted and ignored -------
    # Clients that preserve times (sftp put -p, pscp -p, rclone, lftp mirror, WinSCP) fail when
    # setstat fails; permissions, owners and sizes are ours to decide, so they are not applied.

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        if await self._io(self._fs.set_attributes, path, _times(attrs)):
            name = posixpath.basename(os.fsdecode(virtual_realpath(path)))
            log.info("file_times_set", tenant=self._tenant, file=name, mtime=attrs.mtime, peer=self._peer)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self.setstat(path, attrs)  # links are never followed anyway

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        handle = _handle(file_obj)
        if not isinstance(handle, Upload):
            await self.setstat(os.fsencode(handle.vpath.text), attrs)
            return
        times = _times(attrs)
        if times is not None:
            handle.times = times  # applied at commit, after the last write

    # -- refused outright ----------------------------------------------------------------------

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise _denied("creating directories")

    def rmdir(self, path: bytes) -> None:
        raise _denied("removing directories")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise _denied("creating links")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise _denied("creating links")

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile("no such link")

    def exit(self) -> None:
        self._hub.sftp_sessions.discard(self)
        if self._login is not None:
            self._login.release_window(self.channel)
        self.ended.set()


def _client_went_away(chan: asyncssh.SSHServerChannel[bytes]) -> bool:
    """Whether the client ended the channel (EOF or close) or the connection is gone.

    ``is_closing()`` only reflects our sending side: a client EOF leaves it open, so the receiving
    state is read too. asyncssh has no public accessor for it; if the attribute ever disappears
    this falls back to ``is_closing()`` (and the channel-EOF test fails loudly).
    A client that sends EOF right after FXP_CLOSE without waiting for the reply loses that upload;
    clients wait for the reply (OpenSSH, paramiko, libssh2, WinSCP).
    """
    return chan.is_closing() or getattr(chan, "_recv_state", "open") != "open"


def _times(attrs: asyncssh.SFTPAttrs) -> Times | None:
    """The times a setstat asks for (v3 sends seconds; later versions add nanoseconds)."""
    atime = _ns(attrs.atime, attrs.atime_ns)
    mtime = _ns(attrs.mtime, attrs.mtime_ns)
    return None if atime is None and mtime is None else (atime, mtime)


def _ns(seconds: int | None, nanos: int | None) -> int | None:
    return None if seconds is None else seconds * 1_000_000_000 + (nanos or 0)


def _open_mode(pflags: int) -> OpenMode:
    return OpenMode(
        read=bool(pflags & asyncssh.FXF_READ),
        write=bool(pflags & asyncssh.FXF_WRITE),
        append=bool(pflags & asyncssh.FXF_APPEND),
        create=bool(pflags & asyncssh.FXF_CREAT),
        truncate=bool(pflags & asyncssh.FXF_TRUNC),
        exclusive=bool(pflags & asyncssh.FXF_EXCL),
    )


def _handle(file_obj: object) -> Handle:
    if isinstance(file_obj, Upload | Download):
        return file_obj
    raise asyncssh.SFTPInvalidHandle("invalid file handle")


def _upload(file_obj: object) -> Upload:
    if isinstance(file_obj, Upload):
        return file_obj
    raise asyncssh.SFTPPermissionDenied("file was not opened for writing")


def _denied(what: str) -> asyncssh.SFTPPermissionDenied:
    return asyncssh.SFTPPermissionDenied(f"{what} is not allowed")
