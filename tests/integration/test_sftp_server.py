"""The SFTP intake server against real clients (paramiko and OpenSSH's sftp/ssh) over loopback.

Each test runs its own ``SftpServer`` on an ephemeral port, in a background thread with its own
event loop, over a temporary data directory with two tenants (``acme`` and ``globex``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import paramiko
import pytest
from structlog.testing import capture_logs

from orgsyncd.config import Settings
from orgsyncd.ingest.sftp import (
    ENCRYPTION_ALGS,
    KEX_ALGS,
    MAC_ALGS,
    SftpServer,
    ensure_host_key,
    hash_password,
    verify_password,
)
from orgsyncd.ingest.tenantfs import TenantFS, Upload
from orgsyncd.paths import VISIBLE_DIRS, partial_dir, staging_dir, tenant_dirs
from tests.helpers import Keys, make_keys, sftp_session, ssh_client

pytestmark = pytest.mark.skipif(shutil.which("sftp") is None, reason="needs the OpenSSH client")

T = TypeVar("T")
WAIT_S = 10.0
PASSWORD = "correct horse battery staple"


# --------------------------------------------------------------------------------------------
# harness


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), ("acme", "globex", "stranger"))


class CountingMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def sftp_session_opened(self) -> None:
        self.counts["opened"] += 1

    def sftp_session_closed(self) -> None:
        self.counts["closed"] += 1

    def bytes_received(self, n: int) -> None:
        self.counts["bytes"] += n

    def auth_failed(self) -> None:
        self.counts["auth_failed"] += 1

    def peer_banned(self) -> None:
        self.counts["banned"] += 1

    def connection_refused(self, limit: str) -> None:
        self.counts[f"refused:{limit}"] += 1


class LoopThread:
    """An event loop in a daemon thread, like the daemon's, driven from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@dataclass
class Env:
    tmp: Path
    keys: Keys
    loop: LoopThread
    metrics: CountingMetrics = field(default_factory=CountingMetrics)
    uploads: list[tuple[str, Path, bytes]] = field(default_factory=list)
    actors: list[str] = field(default_factory=list)  # who sent each upload, as the audit names them
    server: SftpServer | None = None
    on_upload_hook: Callable[[], None] | None = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def inbox(self, tenant: str = "acme") -> Path:
        return tenant_dirs(self.data_dir, tenant).inbox

    def tenant_root(self, tenant: str = "acme") -> Path:
        return tenant_dirs(self.data_dir, tenant).root

    def staged(self) -> list[str]:
        """Uploads in flight (staging files), not the kept parts of dropped ones."""
        staging = staging_dir(self.data_dir)
        return sorted(p.name for p in staging.iterdir() if p.is_file()) if staging.exists() else []

    def partials(self, tenant: str = "acme") -> dict[str, bytes]:
        """The kept parts of dropped uploads, by inbox name."""
        directory = partial_dir(self.data_dir, tenant)
        return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}

    def settings(self, tenants: dict[str, Any] | None = None, **sftp: Any) -> Settings:
        if tenants is None:
            tenants = {
                "acme": {"authorized_keys": str(self.keys.public("acme"))},
                "globex": {"authorized_keys": str(self.keys.public("globex"))},
            }
        return Settings(daemon={"data_dir": str(self.data_dir)}, sftp=sftp, tenants=tenants)

    def on_upload(self, tenant: str, path: Path, actor: str) -> None:
        # Read at notification time: the file must already be complete when we are told.
        self.uploads.append((tenant, path, path.read_bytes()))
        self.actors.append(actor)
        if self.on_upload_hook is not None:
            self.on_upload_hook()

    def start(self, settings: Settings | None = None) -> Env:
        server = SftpServer(settings or self.settings(), self.on_upload, metrics=self.metrics)
        self.loop.run(server.start("127.0.0.1", 0))
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.loop.run(self.server.close())
            self.server = None

    def session_count(self) -> int:
        assert self.server is not None
        server = self.server

        async def count() -> int:
            return server.session_count

        return self.loop.run(count())


@pytest.fixture
def env(tmp_path: Path, keys: Keys) -> Iterator[Env]:
    loop = LoopThread()
    environment = Env(tmp_path, keys, loop)
    try:
        yield environment
    finally:
        environment.stop()
        loop.close()


@pytest.fixture
def server(env: Env) -> Env:
    return env.start()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def connect(
    env: Env, user: str = "acme", *, key: str | None = None, password: str | None = None
) -> contextlib.AbstractContextManager[paramiko.SFTPClient]:
    """A paramiko SFTP session; *key* defaults to the user's own key unless a password is given."""
    pkey = None if password is not None and key is None else env.keys.pkey(key or user)
    return sftp_session(env.port, user, pkey=pkey, password=password)


def openssh(
    env: Env, commands: list[str], user: str = "acme", key: str | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's sftp in batch mode (commands on stdin); returns the finished process."""
    return subprocess.run(
        [
            "sftp",
            *_ssh_options(env, key or user),
            "-P",
            str(env.port),
            *extra,
            "-b",
            "-",
            f"{user}@127.0.0.1",
        ],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=_client_env(),
    )


def _ssh_options(env: Env, key: str) -> list[str]:
    return [
        "-F",
        "/dev/null",
        "-i",
        str(env.keys.private(key)),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ]


def _client_env() -> dict[str, str]:
    # No agent: only the key given with -i may be offered.
    return {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}


def payload(size: int, seed: int = 1) -> bytes:
    line = f"email,first_name,last_name,seed{seed}\n".encode()
    return (line * (size // len(line) + 1))[:size]


# --------------------------------------------------------------------------------------------
# uploads


def test_paramiko_upload_lands_in_inbox_and_is_reported_once(server: Env) -> None:
    data = payload(300_000)
    with capture_logs() as logs, connect(server) as sftp:
        sftp.putfo(io.BytesIO(data), "/inbox/day1.csv")

    assert server.uploads == [("acme", server.inbox() / "day1.csv", data)]
    assert (server.inbox() / "day1.csv").read_bytes() == data
    # The upload says who sent it: tenant, address and the fingerprint of the key that logged in.
    fingerprint = asyncssh.read_public_key(server.keys.public("acme")).get_fingerprint()
    assert server.actors == [f"sftp:acme@127.0.0.1 {fingerprint}"]
    assert server.staged() == []
    assert server.metrics.counts["bytes"] == len(data)
    complete = [e for e in logs if e["event"] == "upload_complete"]
    assert complete and complete[0]["file"] == "day1.csv" and complete[0]["bytes"] == len(data)


def test_openssh_upload_lands_in_inbox_and_is_reported_once(server: Env) -> None:
    data = payload(1_000_000, seed=2)
    local = server.tmp / "day2.csv"
    local.write_bytes(data)

    result = openssh(server, ["cd inbox", f"put {local}", "ls -l"])

    assert result.returncode == 0, result.stderr
    assert "day2.csv" in result.stdout
    assert server.uploads == [("acme", server.inbox() / "day2.csv", data)]
    assert server.staged() == []


def drop_mid_upload(env: Env, name: str, data: bytes, *, mode: str = "wb") -> None:
    """Write *data* to /inbox/NAME, wait until the server has it, then cut the network."""
    client = ssh_client(env.port, "acme", pkey=env.keys.pkey("acme"))
    sftp = client.open_sftp()
    before = env.metrics.counts["bytes"]
    handle = sftp.open(f"/inbox/{name}", mode)
    handle.write(data)
    handle.flush()
    wait_until(lambda: env.metrics.counts["bytes"] >= before + len(data), "the bytes to arrive")
    transport = client.get_transport()
    assert transport is not None and transport.sock is not None
    transport.sock.shutdown(socket.SHUT_RDWR)  # the network goes away; no SFTP close is sent
    client.close()
    wait_until(lambda: env.session_count() == 0, "the session to end")
    wait_until(lambda: env.staged() == [], "the upload to be kept or discarded")


def test_a_dropped_upload_is_kept_hidden_then_resumed_and_reported_once(server: Env) -> None:
    data = payload(300_000, seed=4)
    with capture_logs() as logs:
        drop_mid_upload(server, "day1.csv", data[:200_000])
        wait_until(lambda: any(e["event"] == "upload_interrupted" for e in logs), "upload_interrupted")

    assert server.partials() == {"day1.csv": data[:200_000]}
    assert server.uploads == [] and list(server.inbox().iterdir()) == []
    interrupted = [e for e in logs if e["event"] == "upload_interrupted"]
    assert [(e["file"], e["bytes"]) for e in interrupted] == [("day1.csv", 200_000)]
    with connect(server) as sftp:
        assert sftp.listdir("/inbox") == []  # hidden from listings ...
        assert sftp.stat("/inbox/day1.csv").st_size == 200_000  # ... but stat shows what arrived
        with sftp.open("/inbox/day1.csv", "a") as handle:  # sftp reput: APPEND, no truncation
            handle.write(data[200_000:])
        assert sftp.stat("/inbox/day1.csv").st_size == len(data)
    assert server.uploads == [("acme", server.inbox() / "day1.csv", data)]
    assert server.partials() == {} and server.staged() == []


def test_a_resumed_upload_continues_at_the_offsets_the_client_gives(server: Env) -> None:
    data = payload(120_000, seed=5)
    drop_mid_upload(server, "day2.csv", data[:50_000])
    with connect(server) as sftp:
        offset = sftp.stat("/inbox/day2.csv").st_size
        with sftp.open("/inbox/day2.csv", "r+") as handle:  # lftp put -c: WRITE, no TRUNC/APPEND
            handle.seek(offset)
            handle.write(data[offset:])
    assert server.uploads == [("acme", server.inbox() / "day2.csv", data)]


def test_a_kept_part_survives_a_restart_and_can_be_resumed_after_it(server: Env) -> None:
    data = payload(80_000, seed=7)
    drop_mid_upload(server, "restart.csv", data[:20_000])
    server.stop()
    server.start()  # a restart, or another instance on the same shared data directory
    with connect(server) as sftp:
        assert sftp.stat("/inbox/restart.csv").st_size == 20_000
        with sftp.open("/inbox/restart.csv", "a") as handle:
            handle.write(data[20_000:])
    assert server.uploads == [("acme", server.inbox() / "restart.csv", data)]


def test_a_resumed_upload_dropped_again_keeps_everything_so_far(server: Env) -> None:
    data = payload(90_000, seed=6)
    drop_mid_upload(server, "day3.csv", data[:30_000])
    drop_mid_upload(server, "day3.csv", data[30_000:60_000], mode="ab")
    assert server.partials() == {"day3.csv": data[:60_000]}
    assert server.uploads == []


def test_a_fresh_upload_replaces_the_kept_part_and_remove_deletes_it(server: Env) -> None:
    drop_mid_upload(server, "day4.csv", payload(40_000))
    drop_mid_upload(server, "gone.csv", payload(40_000))
    with connect(server) as sftp:
        sftp.putfo(io.BytesIO(b"new,file\n"), "/inbox/day4.csv")  # put: WRITE|CREAT|TRUNC
        assert "day4.csv" not in server.partials()
        sftp.remove("/inbox/gone.csv")  # the client gives up on the dropped upload
        with pytest.raises(FileNotFoundError):
            sftp.stat("/inbox/gone.csv")
    assert server.partials() == {}
    assert [(p.name, d) for _, p, d in server.uploads] == [("day4.csv", b"new,file\n")]


def test_a_kept_part_expires_after_the_resume_window(env: Env) -> None:
    env.start(env.settings(resume_window_s=0.5))
    with capture_logs() as logs:
        drop_mid_upload(env, "late.csv", payload(10_000))
        assert list(env.partials()) == ["late.csv"]
        wait_until(lambda: env.partials() == {}, "the sweeper to delete the expired part")
    assert [e["file"] for e in logs if e["event"] == "partial_upload_expired"] == ["late.csv"]
    with connect(env) as sftp:
        with pytest.raises(FileNotFoundError):
            sftp.stat("/inbox/late.csv")
        with sftp.open("/inbox/late.csv", "a") as handle:  # nothing left to continue: a new file
            handle.write(b"x\n")
    assert [d for _, _, d in env.uploads] == [b"x\n"]


def test_without_a_resume_window_a_dropped_upload_is_discarded(env: Env) -> None:
    env.start(env.settings(resume_window_s=0))
    with capture_logs() as logs:
        drop_mid_upload(env, "half.csv", payload(200_000))
        wait_until(lambda: any(e["event"] == "upload_discarded" for e in logs), "the upload to be discarded")
    assert env.partials() == {} and env.uploads == []
    assert list(env.inbox().iterdir()) == []
    assert [e["reason"] for e in logs if e["event"] == "upload_discarded"] == ["connection_lost"]


def test_channel_closed_mid_upload_keeps_the_part_hidden(server: Env) -> None:
    with connect(server) as sftp:
        handle = sftp.open("/inbox/half.csv", "wb")
        handle.write(payload(100_000))
        handle.flush()
        wait_until(lambda: len(server.staged()) == 1, "the staging file")
        sftp.get_channel().close()  # the SFTP channel ends with the file still open
        wait_until(lambda: server.staged() == [], "the upload to leave staging")
    assert server.partials() == {"half.csv": payload(100_000)}
    assert server.uploads == []
    assert list(server.inbox().iterdir()) == []


def test_temporary_name_is_reported_only_when_renamed(server: Env) -> None:
    data = payload(50_000, seed=3)
    with connect(server) as sftp:
        sftp.putfo(io.BytesIO(data), "/inbox/day3.csv.part")
        assert server.uploads == []
        assert "day3.csv.part" in sftp.listdir("/inbox")
        sftp.rename("/inbox/day3.csv.part", "/inbox/day3.csv")
        sftp.putfo(io.BytesIO(data), "/inbox/.day4.csv")
        sftp.posix_rename("/inbox/.day4.csv", "/inbox/day4.csv")
        sftp.rename("/inbox/day4.csv", "/inbox/day5.csv")  # final to final: already reported

    assert server.uploads == [
        ("acme", server.inbox() / "day3.csv", data),
        ("acme", server.inbox() / "day4.csv", data),
    ]
    assert sorted(p.name for p in server.inbox().iterdir()) == ["day3.csv", "day5.csv"]


def test_openssh_temporary_upload_then_rename(server: Env) -> None:
    local = server.tmp / "roster.csv"
    local.write_bytes(payload(10_000))
    result = openssh(
        server,
        [f"put {local} /inbox/roster.filepart", "rename /inbox/roster.filepart /inbox/roster.csv"],
    )
    assert result.returncode == 0, result.stderr
    assert [(t, p.name) for t, p, _ in server.uploads] == [("acme", "roster.csv")]


def test_plain_rename_does_not_replace_but_posix_rename_does(server: Env) -> None:
    with connect(server) as sftp:
        sftp.putfo(io.BytesIO(b"old"), "/inbox/a.csv")
        sftp.putfo(io.BytesIO(b"new"), "/inbox/a.csv.tmp")
        with pytest.raises(OSError):
            sftp.rename("/inbox/a.csv.tmp", "/inbox/a.csv")
        assert (server.inbox() / "a.csv").read_bytes() == b"old"
        sftp.posix_rename("/inbox/a.csv.tmp", "/inbox/a.csv")
    assert (server.inbox() / "a.csv").read_bytes() == b"new"
    assert [p.name for _, p, _ in server.uploads] == ["a.csv", "a.csv"]


def test_uploads_over_the_size_limit_are_refused_and_discarded(env: Env) -> None:
    env.start(env.settings(max_file_bytes=100_000))
    with connect(env) as sftp:
        with sftp.open("/inbox/big.csv", "wb") as handle:
            handle.write(payload(90_000))
            with pytest.raises(OSError, match="exceeds the maximum file size of 100000 bytes"):
                handle.write(payload(60_000))  # unpipelined: each write's status is checked
        with pytest.raises(OSError):
            sftp.putfo(io.BytesIO(payload(150_000)), "/inbox/big1.csv")  # pipelined
        sftp.putfo(io.BytesIO(payload(100_000)), "/inbox/exact.csv")
    local = env.tmp / "big.csv"
    local.write_bytes(payload(150_000))
    result = openssh(env, [f"put {local} /inbox/big2.csv"])

    assert result.returncode != 0
    assert [p.name for _, p, _ in env.uploads] == ["exact.csv"]
    assert [p.name for p in env.inbox().iterdir()] == ["exact.csv"]
    assert env.staged() == []


def test_upload_handles_read_back_what_was_written_at_any_offset(
    server: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_chunks = TenantFS.write_chunks

    def slow_disk(fs: TenantFS, upload: Upload, chunks: list[tuple[int, bytes]]) -> None:
        time.sleep(0.2)  # writes are acknowledged before they land; reads must wait for them
        write_chunks(fs, upload, chunks)

    monkeypatch.setattr(TenantFS, "write_chunks", slow_disk)
    with connect(server) as sftp:
        with sftp.open("/inbox/scattered.csv", "w+") as handle:
            handle.seek(6)
            handle.write(b"world\n")
            handle.seek(0)
            handle.write(b"hello ")
            handle.flush()
            handle.seek(0)
            assert handle.read(12) == b"hello world\n"
            assert handle.stat().st_size == 12
        with sftp.open("/inbox/scattered.csv", "a") as handle:  # append: no truncation
            handle.write(b"again\n")
    content = b"hello world\n"
    assert [data for _, _, data in server.uploads] == [content, content + b"again\n"]


def test_tenant_can_remove_its_own_inbox_files(server: Env) -> None:
    with connect(server) as sftp:
        sftp.putfo(io.BytesIO(b"x"), "/inbox/oops.csv")
        sftp.remove("/inbox/oops.csv")
        with pytest.raises(FileNotFoundError):
            sftp.remove("/inbox/oops.csv")
    assert list(server.inbox().iterdir()) == []


def test_slow_on_upload_does_not_stall_other_sessions(server: Env) -> None:
    release = threading.Event()

    def block() -> None:
        release.wait(WAIT_S)

    server.on_upload_hook = block
    uploader_done = threading.Event()

    def upload() -> None:
        with connect(server) as sftp:
            sftp.putfo(io.BytesIO(b"a,b\n"), "/inbox/slow.csv")
        uploader_done.set()

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        wait_until(lambda: len(server.uploads) == 1, "on_upload to be called")
        started = time.monotonic()
        with connect(server, "globex") as sftp:
            assert sftp.listdir("/inbox") == []
        assert time.monotonic() - started < 5
        assert not uploader_done.is_set()  # its close waits for on_upload, which is still blocked
    finally:
        release.set()
        thread.join(WAIT_S)
    assert uploader_done.is_set()


# --------------------------------------------------------------------------------------------
# confinement


def test_root_lists_the_four_areas_only(server: Env) -> None:
    with connect(server) as sftp:
        assert sorted(sftp.listdir("/")) == sorted(VISIBLE_DIRS)
        assert sftp.normalize(".") == "/"
        assert sftp.normalize("../../..") == "/"
    result = openssh(server, ["ls /"])
    assert result.returncode == 0, result.stderr
    listed = [line for line in result.stdout.splitlines() if not line.startswith("sftp>")]
    assert sorted(" ".join(listed).split()) == sorted(f"/{d}" for d in VISIBLE_DIRS)


def test_paths_cannot_escape_the_tenant_tree(server: Env) -> None:
    outside = server.tmp / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("TOP SECRET")
    (server.inbox("globex") / "globex.csv").write_text("globex only")
    (server.inbox() / "escape").symlink_to(secret)
    (server.tenant_root() / "results" / "outdir").symlink_to(outside)

    unreadable = [
        str(secret),
        "/../../../../.." + str(secret),
        "/inbox/../../globex/inbox/globex.csv",
        "../globex/inbox/globex.csv",
        "/globex/inbox/globex.csv",
        "/inbox/escape",
        "/results/outdir/secret.txt",
    ]
    with connect(server) as sftp:
        for path in unreadable:
            with pytest.raises(OSError):
                sftp.open(path).read()
        for directory in ("/results/outdir", "/globex", "/globex/inbox", str(outside)):
            with pytest.raises(OSError):
                sftp.listdir(directory)
        assert "escape" not in sftp.listdir("/inbox")
        assert "outdir" not in sftp.listdir("/results")
        with pytest.raises(OSError):
            sftp.putfo(io.BytesIO(b"overwrite"), "/inbox/escape")
        with pytest.raises(OSError):
            sftp.putfo(io.BytesIO(b"planted"), "/../globex/inbox/planted.csv")
        with pytest.raises(OSError):
            sftp.putfo(io.BytesIO(b"planted"), "/results/outdir/planted.csv")
        with pytest.raises(OSError):
            sftp.remove("/inbox/escape")

    assert secret.read_text() == "TOP SECRET"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in server.inbox("globex").iterdir()) == ["globex.csv"]
    assert (server.inbox() / "escape").is_symlink()
    assert server.uploads == []
    result = openssh(server, [f"get /inbox/../../globex/inbox/globex.csv {server.tmp / 'got'}"])
    assert result.returncode != 0 and not (server.tmp / "got").exists()


def test_read_only_areas_refuse_changes_but_allow_downloads(server: Env) -> None:
    report = server.tenant_root() / "results" / "day1.1.results.csv"
    report.write_bytes(payload(70_000, seed=9))
    with connect(server) as sftp:
        assert sftp.open("/results/day1.1.results.csv").read() == report.read_bytes()
        for area in ("results", "exports", "archive"):
            with pytest.raises(PermissionError):
                sftp.putfo(io.BytesIO(b"x"), f"/{area}/new.csv")
        with pytest.raises(PermissionError):
            sftp.remove("/results/day1.1.results.csv")
        with pytest.raises(PermissionError):
            sftp.rename("/results/day1.1.results.csv", "/inbox/stolen.csv")
        with pytest.raises(PermissionError):
            sftp.open("/results/day1.1.results.csv", "r+")
    local = server.tmp / "downloaded.csv"
    result = openssh(server, [f"get /results/day1.1.results.csv {local}"])
    assert result.returncode == 0, result.stderr
    assert local.read_bytes() == report.read_bytes()
    assert report.exists() and not (server.inbox() / "stolen.csv").exists()


def test_mkdir_and_links_are_refused(server: Env) -> None:
    with connect(server) as sftp:
        sftp.putfo(io.BytesIO(b"a"), "/inbox/a.csv")
        refused: list[Callable[[], object]] = [
            lambda: sftp.mkdir("/inbox/sub"),
            lambda: sftp.rmdir("/inbox"),
            lambda: sftp.symlink("/inbox/a.csv", "/inbox/link.csv"),
        ]
        for operation in refused:
            with pytest.raises(PermissionError):
                operation()
    for command in ("ln /inbox/a.csv /inbox/hard.csv", "ln -s /inbox/a.csv /inbox/soft.csv"):
        assert openssh(server, [command]).returncode != 0
    assert sorted(p.name for p in server.inbox().iterdir()) == ["a.csv"]
    assert (server.inbox() / "a.csv").read_bytes() == b"a"
    # Group may read (operators), nobody else; a stricter umask may take more away.
    assert stat.S_IMODE((server.inbox() / "a.csv").stat().st_mode) & ~0o640 == 0


HRIS_TIME = 1_600_000_000  # 2020-09-13, the export's own mtime


def test_times_set_on_an_open_upload_are_applied_before_it_is_published(server: Env) -> None:
    mtimes: list[float] = []
    server.on_upload_hook = lambda: mtimes.append((server.inbox() / "a.csv").stat().st_mtime)
    with connect(server) as sftp, sftp.open("/inbox/a.csv", "wb") as handle:  # sftp put -p, pscp -p
        handle.write(b"a\n")
        handle.utime((HRIS_TIME, HRIS_TIME))  # fsetstat
        handle.chmod(0o777)  # accepted, ignored
        handle.write(b"b\n")  # a later write must not undo the times
    assert mtimes == [HRIS_TIME]  # already so when the service was told
    info = (server.inbox() / "a.csv").stat()
    assert (info.st_mtime, info.st_size) == (HRIS_TIME, 4)  # atime moved: the service read it
    assert stat.S_IMODE(info.st_mode) & ~0o640 == 0


def test_setstat_applies_times_to_own_files_and_ignores_modes_owners_and_sizes(server: Env) -> None:
    root_mode = server.tenant_root().stat().st_mode
    with connect(server) as sftp:
        sftp.putfo(io.BytesIO(b"b,c\n"), "/inbox/b.csv")
        sftp.utime("/inbox/b.csv", (HRIS_TIME, HRIS_TIME))  # rclone, lftp mirror -R
        sftp.chmod("/inbox/b.csv", 0o4777)
        sftp.chown("/inbox/b.csv", 0, 0)
        sftp.truncate("/inbox/b.csv", 0)
        assert sftp.stat("/inbox/b.csv").st_mtime == HRIS_TIME
        future = time.time() + 10 * 365 * 86400
        sftp.putfo(io.BytesIO(b"d\n"), "/inbox/d.csv")
        sftp.utime("/inbox/d.csv", (future, future))  # no file was written in the future
        inbox_mtime = server.inbox().stat().st_mtime_ns
        sftp.utime("/inbox", (0, 0))  # directories keep their times
        sftp.chmod("/", 0o777)
    info = (server.inbox() / "b.csv").stat()
    assert (info.st_mtime, info.st_size) == (HRIS_TIME, 4)
    assert stat.S_IMODE(info.st_mode) & ~0o640 == 0
    assert (server.inbox() / "b.csv").read_bytes() == b"b,c\n"
    assert (server.inbox() / "d.csv").stat().st_mtime <= time.time()
    assert server.inbox().stat().st_mtime_ns == inbox_mtime
    assert server.tenant_root().stat().st_mode == root_mode
    assert [p.name for _, p, _ in server.uploads] == ["b.csv", "d.csv"]  # setstat queues nothing


def test_setstat_cannot_reach_read_only_areas_links_or_missing_files(server: Env) -> None:
    report = server.tenant_root() / "results" / "r.results.csv"
    report.write_text("row,outcome\n")
    outside = server.tmp / "outside.txt"
    outside.write_text("not yours")
    os.utime(outside, (HRIS_TIME, HRIS_TIME))
    (server.inbox() / "link.csv").symlink_to(outside)  # planted on the server side
    with connect(server) as sftp:
        for path in ("/results/r.results.csv", "/archive/x.csv", "/inbox/../results/r.results.csv"):
            with pytest.raises(PermissionError):
                sftp.utime(path, (0, 0))
            with pytest.raises(PermissionError):
                sftp.chmod(path, 0o777)
        for path in ("/inbox/link.csv", "/inbox/missing.csv", "/nowhere"):
            with pytest.raises(FileNotFoundError):
                sftp.utime(path, (0, 0))
        with sftp.open("/results/r.results.csv") as download, pytest.raises(PermissionError):
            download.utime((0, 0))  # fsetstat on a download: the same rules
    assert outside.stat().st_mtime == HRIS_TIME and outside.read_text() == "not yours"
    assert report.stat().st_mtime != 0


def test_setstat_on_a_kept_part_does_not_move_its_resume_window(server: Env) -> None:
    drop_mid_upload(server, "half.csv", payload(10_000))
    kept = partial_dir(server.data_dir, "acme") / "half.csv"
    before = kept.stat().st_mtime_ns
    with connect(server) as sftp:
        sftp.utime("/inbox/half.csv", (0, 0))  # would expire it at once if applied
        sftp.chmod("/inbox/half.csv", 0o777)
    assert kept.stat().st_mtime_ns == before
    assert server.partials() == {"half.csv": payload(10_000)}


def test_shell_exec_scp_and_forwarding_are_refused(server: Env) -> None:
    client = ssh_client(server.port, "acme", pkey=server.keys.pkey("acme"))
    try:
        transport = client.get_transport()
        assert transport is not None
        with pytest.raises(paramiko.SSHException):
            client.exec_command("id")
        with pytest.raises(paramiko.SSHException):
            client.invoke_shell()  # asks for a PTY first, then a shell
        channel = transport.open_session()
        with pytest.raises(paramiko.SSHException):
            channel.get_pty()
        with pytest.raises(paramiko.SSHException):
            channel.invoke_shell()
        channel.close()
        channel = transport.open_session()
        with pytest.raises(paramiko.SSHException):
            channel.invoke_subsystem("shell")
        channel.close()
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", server.port), ("127.0.0.1", 0))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
    finally:
        client.close()
    ssh = subprocess.run(
        ["ssh", *_ssh_options(server, "acme"), "-p", str(server.port), "acme@127.0.0.1", "id"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_client_env(),
    )
    assert ssh.returncode != 0 and "uid=" not in ssh.stdout
    local = server.tmp / "scp.csv"
    local.write_text("a,b\n")
    scp = subprocess.run(
        [
            "scp",
            "-O",  # the legacy SCP protocol: an exec of "scp -t", which must be refused
            *_ssh_options(server, "acme"),
            "-P",
            str(server.port),
            str(local),
            "acme@127.0.0.1:/inbox/scp.csv",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_client_env(),
    )
    assert scp.returncode != 0
    assert server.uploads == []


# --------------------------------------------------------------------------------------------
# authentication


def test_wrong_key_and_unknown_user_are_refused_alike(server: Env) -> None:
    for user, key in (("acme", "stranger"), ("acme", "globex"), ("nobody", "acme")):
        with pytest.raises(paramiko.AuthenticationException), connect(server, user, key=key):
            pass
        assert openssh(server, ["ls"], user=user, key=key).returncode != 0
    assert _offered_methods(server, "acme") == _offered_methods(server, "nobody")
    assert server.metrics.counts["auth_failed"] >= 6
    assert server.session_count() == 0


def _offered_methods(env: Env, user: str) -> list[str]:
    with socket.create_connection(("127.0.0.1", env.port)) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=WAIT_S)
            with pytest.raises(paramiko.BadAuthenticationType) as refused:
                transport.auth_none(user)
            return sorted(refused.value.allowed_types)
        finally:
            transport.close()


def test_peer_is_banned_after_repeated_failures(env: Env) -> None:
    env.start(env.settings(max_auth_failures_per_ip=3, ban_s=1.5))
    for _ in range(3):
        with pytest.raises(paramiko.SSHException), connect(env, key="stranger"):
            pass
    assert env.metrics.counts["banned"] == 1
    with (
        socket.create_connection(("127.0.0.1", env.port), timeout=WAIT_S) as sock,
        contextlib.suppress(ConnectionResetError),
    ):
        assert sock.recv(64) == b""  # closed before the SSH banner: nothing to talk to
    with pytest.raises((paramiko.SSHException, EOFError, OSError)), connect(env):
        pass  # the right key, but the address is banned: refused before the SSH banner
    assert openssh(env, ["ls"]).returncode != 0

    time.sleep(1.6)
    with connect(env) as sftp:
        assert sorted(sftp.listdir("/")) == sorted(VISIBLE_DIRS)


def test_password_login_with_scrypt_hash(env: Env) -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    assert verify_password(stored, PASSWORD) and not verify_password(stored, PASSWORD + "!")
    tenants = {
        "acme": {"authorized_keys": str(env.keys.public("acme"))},
        "initech": {"password_hash": stored},
    }
    env.start(env.settings(tenants))
    with capture_logs() as logs:
        with connect(env, "initech", password=PASSWORD) as sftp:
            sftp.putfo(io.BytesIO(b"a,b\n"), "/inbox/pw.csv")
        for user, password in (("initech", "wrong"), ("acme", PASSWORD), ("ghost", PASSWORD)):
            with (
                pytest.raises(paramiko.AuthenticationException),
                connect(env, user, password=password),
            ):
                pass
    assert [(t, p.name) for t, p, _ in env.uploads] == [("initech", "pw.csv")]
    assert env.actors == ["sftp:initech@127.0.0.1 password"]
    assert env.metrics.counts["auth_failed"] == 3
    assert [e["method"] for e in logs if e["event"] == "auth_failed"] == ["password"] * 3
    assert all(PASSWORD not in repr(e) and "wrong" not in repr(e) for e in logs)


# --------------------------------------------------------------------------------------------
# limits, timeouts, lifecycle


def test_sessions_per_tenant_are_limited(env: Env) -> None:
    env.start(env.settings(max_sessions_per_tenant=2))
    with connect(env) as first, connect(env) as second:
        assert first.listdir("/inbox") == second.listdir("/inbox") == []
        assert env.session_count() == 2
        with pytest.raises((paramiko.SSHException, EOFError, OSError)), connect(env) as third:
            third.listdir("/")
        with connect(env, "globex") as other:
            assert other.listdir("/inbox") == []
    wait_until(lambda: env.session_count() == 0, "sessions to close")
    with connect(env) as again:
        assert again.listdir("/inbox") == []
    assert env.metrics.counts["opened"] == 4


def test_sessions_share_one_window_pool_and_give_their_window_back(env: Env) -> None:
    env.start(env.settings(upload_buffer_bytes=2**20, max_sessions_per_tenant=20))
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(connect(env)) for _ in range(6)]
        # What the server granted, in 64 KiB steps (the SFTP handshake has used a few bytes).
        windows = [-(-sftp.get_channel().out_window_size // 65536) * 64 for sftp in sessions]
        assert windows == [128, 64, 64, 64, 64, 64]  # an eighth of the free pool, down to a floor
        for index, sftp in enumerate(sessions):
            sftp.putfo(io.BytesIO(payload(300_000)), f"/inbox/w{index}.csv")  # small windows work
    assert len(env.uploads) == 6
    wait_until(lambda: env.session_count() == 0, "sessions to close")
    with connect(env) as sftp:
        assert -(-sftp.get_channel().out_window_size // 65536) * 64 == 128  # given back at the end


def test_one_connection_cannot_open_channels_without_end(server: Env) -> None:
    client = ssh_client(server.port, "acme", pkey=server.keys.pkey("acme"))
    try:
        transport = client.get_transport()
        assert transport is not None
        channels = [transport.open_session() for _ in range(4)]
        with pytest.raises(paramiko.ChannelException):
            transport.open_session()
        for channel in channels:
            channel.close()
    finally:
        client.close()


def test_idle_sessions_are_disconnected(env: Env) -> None:
    env.start(env.settings(idle_timeout_s=0.4))
    with connect(env) as sftp:
        sftp.listdir("/")
        wait_until(lambda: env.session_count() == 0, "the idle session to be dropped")
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            sftp.listdir("/")


def test_unauthenticated_connections_time_out(env: Env) -> None:
    env.start(env.settings(login_timeout_s=0.4))
    with socket.create_connection(("127.0.0.1", env.port), timeout=WAIT_S) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-orgsyncd")
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(4096):
                pass
        assert time.monotonic() - started < 5


def test_reload_applies_to_new_logins_only(env: Env) -> None:
    acme_only = {"acme": {"authorized_keys": str(env.keys.public("acme"))}}
    env.start(env.settings(acme_only))
    with pytest.raises(paramiko.AuthenticationException), connect(env, "globex"):
        pass
    with connect(env) as acme_session:
        globex_only = {"globex": {"authorized_keys": str(env.keys.public("globex"))}}
        assert env.server is not None
        env.server.reload(env.settings(globex_only))
        with connect(env, "globex") as sftp:
            assert sftp.listdir("/inbox") == []
        assert acme_session.listdir("/") != []  # an open session is untouched by the reload
        with pytest.raises(paramiko.AuthenticationException), connect(env):
            pass


def test_authorized_keys_are_read_at_each_login(server: Env) -> None:
    with connect(server) as sftp:
        sftp.listdir("/")
    keyfile = server.keys.dir / "acme-rotating.pub"
    keyfile.write_text(server.keys.public("stranger").read_text())
    server.stop()
    tenants = {"acme": {"authorized_keys": str(keyfile)}}
    server.start(server.settings(tenants))
    with connect(server, key="stranger") as sftp:
        sftp.listdir("/")
    keyfile.write_text(server.keys.public("acme").read_text())  # rotated without a reload
    with pytest.raises(paramiko.AuthenticationException), connect(server, key="stranger"):
        pass
    with connect(server) as sftp:
        sftp.listdir("/")


def test_stop_accepting_then_close_ends_sessions_and_keeps_unfinished_uploads_hidden(server: Env) -> None:
    assert server.server is not None
    with connect(server) as sftp:
        handle = sftp.open("/inbox/unfinished.csv", "wb")
        handle.write(payload(50_000))
        handle.flush()
        wait_until(lambda: len(server.staged()) == 1, "the staging file")
        server.loop.run(server.server.stop_accepting())
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S).close()
        assert sorted(sftp.listdir("/")) == sorted(VISIBLE_DIRS)
        server.loop.run(server.server.close())
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            sftp.listdir("/")
    assert server.staged() == [] and server.uploads == []
    assert list(server.inbox().iterdir()) == []
    # A restart is a drop like any other: the client may resume against the next start.
    assert server.partials() == {"unfinished.csv": payload(50_000)}


def test_host_key_is_created_private_and_reused(env: Env) -> None:
    env.start()
    path = env.data_dir / "ssh_host_ed25519_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert asyncssh.read_private_key(path).algorithm == b"ssh-ed25519"
    first = _server_key(env)
    env.stop()
    env.start()
    assert _server_key(env) == first
    assert ensure_host_key(path).public_data == asyncssh.read_private_key(path).public_data


def _server_key(env: Env) -> str:
    with socket.create_connection(("127.0.0.1", env.port)) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=WAIT_S)
            return str(transport.get_remote_server_key().get_base64())
        finally:
            transport.close()


def test_only_modern_algorithms_are_negotiated(server: Env) -> None:
    supported = {
        "kex": {a.decode() for a in asyncssh.kex.get_kex_algs()},
        "enc": {a.decode() for a in asyncssh.encryption.get_encryption_algs()},
        "mac": {a.decode() for a in asyncssh.mac.get_mac_algs()},
    }
    assert set(KEX_ALGS) <= supported["kex"] and set(ENCRYPTION_ALGS) <= supported["enc"]
    assert set(MAC_ALGS) <= supported["mac"]
    assert not any("sha1" in a for a in (*KEX_ALGS, *MAC_ALGS))
    for cipher in ENCRYPTION_ALGS:
        result = openssh(server, ["ls /"], "acme", None, "-c", cipher)
        assert result.returncode == 0, (cipher, result.stderr)
    weak = [
        ("-o", "KexAlgorithms=diffie-hellman-group14-sha1"),
        ("-o", "KexAlgorithms=diffie-hellman-group-exchange-sha1"),
        ("-c", "aes128-cbc"),
        ("-o", "MACs=hmac-sha1"),
    ]
    for option, value in weak:
        extra = [option, value] + (["-c", "aes128-ctr"] if "MACs" in value else [])
        result = openssh(server, ["ls /"], "acme", None, *extra)
        assert result.returncode != 0 and "no matching" in result.stderr, value
