"""SFTP abuse against a real ``orgsyncd serve``: path tricks, links, floods of connections and
half-open handshakes, oversized packets, password guessing. Through all of it a legitimate tenant
logs in and uploads, the daemon stays up, and its memory stays bounded.

Several client hosts are played by loopback source addresses (all of 127/8 reaches lo on Linux),
so the per-address limits apply as they would to real hosts. The daemon runs with small limits
(environment overrides below) so that every flood is over in seconds; the defaults' numbers are
exercised by ``bench/sftp_bench.py`` and by the ``slow`` variant at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import paramiko
import pytest

from orgsyncd.ingest.auth import hash_password
from tests.acceptance.conftest import DaemonProcess, Daemons, Site, Tenant, wait_until
from tests.helpers import LIC, Keys, make_keys, sftp_session, ssh_client

PASSWORD = "initech-s3cret-passphrase"
LIMITS = {
    "ORGSYNCD_SFTP__MAX_CONNECTIONS": "200",
    "ORGSYNCD_SFTP__MAX_CONNECTIONS_PER_ADDRESS": "8",
    "ORGSYNCD_SFTP__MAX_STARTUPS": "50",
    "ORGSYNCD_SFTP__MAX_STARTUPS_PER_ADDRESS": "4",
    "ORGSYNCD_SFTP__LOGIN_TIMEOUT_S": "4",
    "ORGSYNCD_SFTP__MAX_AUTH_FAILURES_PER_IP": "4",
    "ORGSYNCD_SFTP__BAN_S": "300",
    "ORGSYNCD_SFTP__UPLOAD_BUFFER_BYTES": str(8 * 2**20),
}
# Memory the abuse may add to the daemon's own; the bound itself is docs/operations.md's "Memory".
RSS_GROWTH_MB = 150


@dataclass
class Target:
    site: Site
    daemon: DaemonProcess
    keys: Keys
    outside: Path
    baseline_rss_kib: int

    @property
    def port(self) -> int:
        return self.site.sftp_port

    def tenant_uploads(self, name: str, source: str = "127.0.0.1") -> None:
        """The legitimate tenant logs in, uploads *name*, and it is queued once."""
        data = f"primary_email_address\n{name}@example.com\n".encode()
        started = time.monotonic()
        with sftp_session(self.port, "acme", pkey=self.keys.pkey("acme"), source=source) as sftp:
            sftp.putfo(io.BytesIO(data), f"/inbox/{name}")
        assert time.monotonic() - started < 5.0, "the tenant's login and upload took too long"
        self.daemon.wait_event("job_queued", file=name)
        assert len(self.daemon.events("job_queued", file=name)) == 1
        assert (self.site.inbox() / name).read_bytes() == data

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.daemon.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError("the daemon is gone")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("abuse")
    keys = make_keys(root, ("acme", "globex", "stranger"))
    site = Site(root / "site")
    site.root.mkdir()
    initech = f'[tenants.initech]\npassword_hash = "{hash_password(PASSWORD)}"\nlicenses = {{ {LIC} = 0 }}\n'
    site.write_config([Tenant("acme", keys.public("acme")), Tenant("globex", keys.public("globex"))], initech)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET")
    daemons = Daemons(root)
    try:
        daemon = daemons.start(["--config", str(site.config)], env=LIMITS)
        found = Target(site, daemon, keys, outside, 0)
        found.tenant_uploads("warmup.csv")
        found.baseline_rss_kib = found.rss_kib()
        yield found
    finally:
        for started in daemons.started:
            started.kill()


# -- raw sockets ----------------------------------------------------------------------------------


def raw_connection(port: int, source: str, banner: bool = True) -> socket.socket:
    """A TCP connection that says who it is (or nothing) and then stalls: a half-open handshake."""
    sock = socket.create_connection(("127.0.0.1", port), 5.0, (source, 0))
    if banner:
        sock.sendall(b"SSH-2.0-halfopen\r\n")
    return sock


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass  # the server's banner and KEXINIT: still talking to us
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def source(block: int, index: int) -> str:
    return f"127.{block}.{index // 250}.{index % 250 + 1}"


@contextlib.contextmanager
def held(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


# -- paths and links ------------------------------------------------------------------------------

TRAVERSALS = [
    "/../../../../etc/passwd",
    "/inbox/../../globex/inbox/globex.csv",
    "../globex/inbox/globex.csv",
    "/inbox/./../../../outside/secret.txt",
    "/globex/inbox/globex.csv",
    "//globex//inbox//globex.csv",
    "/inbox/..%2f..%2fglobex/inbox/globex.csv",
    "/inbox/\u2025/\u2025/globex/inbox/globex.csv",  # a look-alike of ".."
    "~/../globex/inbox/globex.csv",
    "/proc/self/environ",
    "/inbox/" + "../" * 200 + "etc/passwd",
    "/inbox/" + "a/" * 2000 + "x.csv",
]


def test_path_traversal_variants_stay_inside_the_tenant_tree(target: Target) -> None:
    globex_file = target.site.inbox("globex") / "globex.csv"
    globex_file.write_text("globex only")
    secret = target.outside / "secret.txt"
    with sftp_session(target.port, "acme", pkey=target.keys.pkey("acme")) as sftp:
        for path in TRAVERSALS:
            with pytest.raises(OSError):
                sftp.open(path).read()
            with pytest.raises(OSError):
                sftp.putfo(io.BytesIO(b"planted"), path)
            with pytest.raises(OSError):
                sftp.remove(path)
            with pytest.raises(OSError):
                sftp.utime(path, (0, 0))
            with pytest.raises(OSError):
                sftp.rename("/inbox/warmup.csv", path)
        with pytest.raises(OSError):
            sftp.putfo(io.BytesIO(b"x"), "/inbox/" + "n" * 256)  # longer than a file name may be
        # A backslash is no separator here: one odd name, inside the inbox like any other.
        sftp.putfo(io.BytesIO(b"odd"), "/inbox/..\\..\\globex\\globex.csv")
        assert (target.site.inbox() / "..\\..\\globex\\globex.csv").read_bytes() == b"odd"
        sftp.remove("/inbox/..\\..\\globex\\globex.csv")
        assert sorted(sftp.listdir("/")) == ["archive", "exports", "inbox", "results"]
    asyncio.run(_bytes_names(target))
    assert globex_file.read_text() == "globex only" and secret.read_text() == "TOP SECRET"
    assert sorted(p.name for p in target.outside.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in target.site.inbox().iterdir()) == ["warmup.csv"]


async def _bytes_names(target: Target) -> None:
    """Names no text-only client can send: invalid UTF-8, control characters, NUL."""
    async with (
        asyncssh.connect(
            "127.0.0.1",
            target.port,
            username="acme",
            client_keys=[str(target.keys.private("acme"))],
            known_hosts=None,
            agent_path=None,
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        for name in (b"/inbox/\xff\xfe.csv", b"/inbox/a\nb.csv", b"/inbox/a\x00/../../x", b"/inbox/\x1b[2J"):
            with pytest.raises(asyncssh.SFTPError):
                async with sftp.open(name, "wb") as handle:
                    await handle.write(b"x")


def test_links_are_neither_made_nor_followed(target: Target) -> None:
    inbox, results = target.site.inbox(), target.site.data / "tenants" / "acme" / "results"
    secret = target.outside / "secret.txt"
    os.utime(secret, (1_500_000_000, 1_500_000_000))
    (inbox / "planted-link.csv").symlink_to(secret)  # planted on the server side
    (results / "planted-dir").symlink_to(target.outside)
    os.link(secret, inbox / "planted-hardlink.csv")
    try:
        with sftp_session(target.port, "acme", pkey=target.keys.pkey("acme")) as sftp:
            assert "planted-link.csv" not in sftp.listdir("/inbox")
            assert "planted-dir" not in sftp.listdir("/results")
            for path in ("/inbox/planted-link.csv", "/results/planted-dir/secret.txt"):
                with pytest.raises(OSError):
                    sftp.open(path).read()
            with pytest.raises(OSError):
                sftp.listdir("/results/planted-dir")
            with pytest.raises(OSError):
                sftp.putfo(io.BytesIO(b"overwrite"), "/inbox/planted-link.csv")
            with pytest.raises(OSError):
                sftp.utime("/inbox/planted-link.csv", (0, 0))
            with pytest.raises(OSError):
                sftp.symlink("/results/planted-dir/secret.txt", "/inbox/mine.csv")
            sftp.utime("/inbox/planted-hardlink.csv", (0, 0))  # accepted, but not applied ...
            sftp.putfo(
                io.BytesIO(b"replaced"), "/inbox/planted-hardlink.csv"
            )  # a new file, not a write into it
        for command in ("ln /inbox/warmup.csv /inbox/hard.csv", "ln -s /results/planted-dir /inbox/soft"):
            assert _openssh(target, command).returncode != 0
        assert (
            secret.read_text() == "TOP SECRET" and secret.stat().st_mtime == 1_500_000_000
        )  # ... to the outside file
        assert (inbox / "planted-hardlink.csv").read_bytes() == b"replaced"
        assert not (inbox / "hard.csv").exists() and not (inbox / "soft").exists()
        assert not target.daemon.events("job_queued", file="planted-link.csv")
    finally:
        for planted in (inbox / "planted-link.csv", results / "planted-dir", inbox / "planted-hardlink.csv"):
            planted.unlink(missing_ok=True)


def test_a_queued_file_cannot_be_changed_through_its_name(target: Target) -> None:
    target.tenant_uploads("queued.csv")
    spooled = [p for p in (target.site.data / "spool" / "acme").iterdir() if p.name.endswith("queued.csv")]
    assert len(spooled) == 1
    original = spooled[0].read_bytes()
    with sftp_session(target.port, "acme", pkey=target.keys.pkey("acme")) as sftp:
        with sftp.open("/inbox/queued.csv", "a") as handle:  # append: a copy, never the inode in place
            handle.write(b"appended@example.com\n")
        sftp.truncate("/inbox/queued.csv", 0)
        sftp.putfo(io.BytesIO(b"other\n"), "/inbox/queued.csv.part")
        sftp.posix_rename("/inbox/queued.csv.part", "/inbox/queued.csv")
    assert spooled[0].read_bytes() == original  # the job still has what was uploaded first


def _openssh(target: Target, command: str) -> object:
    import subprocess

    return subprocess.run(
        ["sftp", "-F", "/dev/null", "-i", str(target.keys.private("acme")), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-P", str(target.port), "-b", "-", "acme@127.0.0.1"],
        input=command + "\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


# -- floods ---------------------------------------------------------------------------------------


def test_500_connections_from_one_address_leave_room_for_everyone_else(target: Target) -> None:
    flood = "127.50.0.1"
    sockets = []
    for _ in range(500):
        with contextlib.suppress(OSError):  # refused outright: fine
            sockets.append(raw_connection(target.port, flood))
    with held(sockets):
        # max_startups_per_address: all but 4 are refused before the banner, once the daemon has
        # accepted them (on a busy machine they may wait in the listen backlog a while).
        wait_until(lambda: sum(1 for sock in sockets if still_open(sock)) <= 4, "the flood to be refused", 30)
        target.tenant_uploads("during-flood.csv")
    refused = target.daemon.events("connection_refused", peer=flood)
    assert len(refused) >= 490 and {e["limit"] for e in refused} == {"max_startups_per_address"}
    # Logged-in sessions from one address are capped too (max_connections_per_address = 8).
    with contextlib.ExitStack() as stack:
        for _ in range(8):
            stack.enter_context(
                sftp_session(target.port, "globex", pkey=target.keys.pkey("globex"), source="127.51.0.1")
            )
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            ssh_client(target.port, "globex", pkey=target.keys.pkey("globex"), source="127.51.0.1")
        target.tenant_uploads("during-sessions.csv")


def test_half_open_handshakes_held_open_do_not_lock_tenants_out(target: Target) -> None:
    # 300 hosts each holding one handshake open (twice max_startups): the oldest are dropped for
    # newcomers, so a tenant arriving last still gets in.
    sockets = [raw_connection(target.port, source(60, i), banner=i % 2 == 0) for i in range(300)]
    with held(sockets):
        wait_until(lambda: sum(1 for sock in sockets if still_open(sock)) <= 50, "max_startups to hold", 30)
        assert len(target.daemon.events("startup_evicted")) >= 250  # the oldest made room
        target.tenant_uploads("after-half-open.csv", source="127.61.0.1")
        # login_timeout_s (4 s): whatever is still held is closed by the daemon.
        wait_until(
            lambda: not any(still_open(sock) for sock in sockets), "half-open handshakes to time out", 15
        )


# -- malformed protocol ---------------------------------------------------------------------------


def test_oversized_packets_end_only_their_own_connection(target: Target) -> None:
    # SSH layer: after the banners, a binary packet claiming 4 GB.
    with raw_connection(target.port, "127.70.0.1") as sock:
        sock.sendall(struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 64)
        wait_until(lambda: not still_open(sock), "the daemon to drop the connection")
    # SFTP layer: a logged-in session sends a request longer than any SFTP packet may be.
    client = ssh_client(target.port, "acme", pkey=target.keys.pkey("acme"), source="127.70.0.2")
    try:
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session()
        channel.invoke_subsystem("sftp")
        channel.sendall(struct.pack(">IBI", 5, 1, 3))  # FXP_INIT, version 3
        channel.settimeout(10)
        assert channel.recv(4096)  # FXP_VERSION
        channel.sendall(struct.pack(">I", 0x7FFFFFFF) + b"\x06" + b"\x00" * 1024)  # "2 GB" FXP_WRITE
        wait_until(
            lambda: channel.closed or channel.exit_status_ready() or channel.eof_received,
            "the channel to end",
        )
    finally:
        client.close()
    target.tenant_uploads("after-oversized.csv")


def test_password_guessing_is_banned_while_the_tenant_logs_in(target: Target) -> None:
    guesser = "127.80.0.1"
    for attempt in range(4):
        with pytest.raises(paramiko.AuthenticationException):
            ssh_client(target.port, "initech", password=f"guess-{attempt}", source=guesser)
    target.daemon.wait_event("peer_banned", peer=guesser)
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        ssh_client(target.port, "initech", password=PASSWORD, source=guesser)  # even the right one
    target.tenant_uploads("during-ban.csv")
    with sftp_session(target.port, "initech", password=PASSWORD, source="127.80.0.2") as sftp:
        assert sftp.listdir("/inbox") == []  # initech itself is not locked out, only the address
    assert all(PASSWORD not in line for line in target.daemon.stdout_path.read_text().splitlines())


def test_the_daemon_is_still_up_with_its_memory_bounded(target: Target) -> None:
    assert target.daemon.proc.poll() is None
    target.tenant_uploads("last.csv")
    growth_mb = (target.rss_kib("VmHWM") - target.baseline_rss_kib) / 1024
    assert growth_mb < RSS_GROWTH_MB, f"peak RSS grew by {growth_mb:.0f} MB under abuse"


# -- long variant: the default limits, a larger flood --------------------------------------------


@pytest.mark.slow
def test_default_limits_hold_against_a_large_flood(daemons: Daemons, site: Site, keys: Keys) -> None:
    daemon = daemons.start(["--config", str(site.config)])
    target = Target(site, daemon, keys, site.root, 0)
    target.tenant_uploads("warmup.csv")
    target.baseline_rss_kib = target.rss_kib()
    sockets: list[socket.socket] = []
    with held(sockets):
        for i in range(1500):  # 1500 hosts, three times max_startups
            sockets.append(raw_connection(target.port, source(90, i), banner=i % 2 == 0))
        for _ in range(1000):  # and one host trying for a thousand
            with contextlib.suppress(OSError):
                sockets.append(raw_connection(target.port, "127.91.0.1"))
        wait_until(
            lambda: sum(1 for sock in sockets if still_open(sock)) <= 500, "at most max_startups held", 60
        )
        for attempt in range(5):
            target.tenant_uploads(f"flooded-{attempt}.csv", source=f"127.92.0.{attempt + 1}")
    assert daemon.proc.poll() is None
    growth_mb = (target.rss_kib("VmHWM") - target.baseline_rss_kib) / 1024
    assert growth_mb < RSS_GROWTH_MB, f"peak RSS grew by {growth_mb:.0f} MB under the flood"
