"""The SFTP server's pure rules, without a network: bans, password hashes, client path mapping."""

from __future__ import annotations

import asyncio
import errno
import posixpath
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orgsyncd.ingest.auth import (
    BanList,
    hash_password,
    normalize_peer,
    parse_password_hash,
    verify_password,
)
from orgsyncd.ingest.tenantfs import VPath, parse_vpath, virtual_realpath
from orgsyncd.ingest.writer import Chunk, UploadWriter
from orgsyncd.paths import VISIBLE_DIRS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ban_starts_at_the_nth_failure_and_ends_after_ban_s() -> None:
    clock = FakeClock()
    bans = BanList(max_failures=3, ban_s=60, clock=clock)
    assert [bans.record_failure("10.0.0.1") for _ in range(3)] == [False, False, True]
    assert bans.is_banned("10.0.0.1") and not bans.is_banned("10.0.0.2")
    clock.now += 59.9
    assert bans.is_banned("10.0.0.1")
    clock.now += 0.2
    assert not bans.is_banned("10.0.0.1")


def test_failures_spread_wider_than_the_window_are_forgotten() -> None:
    clock = FakeClock()
    bans = BanList(max_failures=3, ban_s=60, clock=clock)
    for _ in range(5):
        assert not bans.record_failure("10.0.0.1")
        clock.now += 61
    assert not bans.is_banned("10.0.0.1")


def test_reconfigured_limits_apply_to_later_failures() -> None:
    bans = BanList(max_failures=10, ban_s=60, clock=FakeClock())
    bans.configure(max_failures=1, ban_s=60)
    assert bans.record_failure("10.0.0.1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_one_spelling_per_peer_address(raw: str, expected: str) -> None:
    assert normalize_peer(raw) == expected


def test_password_hash_is_self_describing_and_salted() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second
    parsed = parse_password_hash(first)
    assert (parsed.n, parsed.r, parsed.p) == (2**14, 8, 1)
    assert verify_password(first, "s3cret") and verify_password(second, "s3cret")
    assert not verify_password(first, "S3cret")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "bcrypt$12$abc",
        "scrypt$16384$8$1$!!notbase64$AAAA",
        "scrypt$16385$8$1$c2FsdHNhbHQ=$" + "A" * 44,  # n not a power of two
        "scrypt$2147483648$8$1$c2FsdHNhbHQ=$" + "A" * 44,  # n far too large
        "scrypt$16384$8$1$$" + "A" * 44,  # no salt
    ],
)
def test_malformed_hashes_never_match(stored: str) -> None:
    with pytest.raises(ValueError):
        parse_password_hash(stored)
    assert not verify_password(stored, "anything")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", VPath(None)),
        (b"", VPath(None)),
        (b".", VPath(None)),
        (b"../../..", VPath(None)),
        (b"inbox", VPath("inbox")),
        (b"//inbox//a.csv", VPath("inbox", ("a.csv",))),
        (b"/results/../inbox/./a.csv", VPath("inbox", ("a.csv",))),
        (b"/../../inbox/a.csv", VPath("inbox", ("a.csv",))),
        (b"/archive/2024/x.csv", VPath("archive", ("2024", "x.csv"))),
    ],
)
def test_client_paths_normalise_against_root(raw: bytes, expected: VPath) -> None:
    assert parse_vpath(raw) == expected


@pytest.mark.parametrize("raw", [b"/etc/passwd", b"/globex/inbox", b"/../globex", b"tenants"])
def test_paths_outside_the_four_areas_do_not_exist(raw: bytes) -> None:
    with pytest.raises(OSError) as refused:
        parse_vpath(raw)
    assert refused.value.errno == errno.ENOENT


def test_nul_in_a_path_is_invalid() -> None:
    with pytest.raises(OSError) as refused:
        parse_vpath(b"/inbox/a\x00b")
    assert refused.value.errno == errno.EINVAL


_SEGMENTS = st.sampled_from(["..", ".", "", "inbox", "results", "globex", "a.csv", "..."])


@given(st.lists(_SEGMENTS, max_size=8), st.booleans())
def test_no_client_path_maps_outside_the_tenant_root(segments: list[str], absolute: bool) -> None:
    raw = ("/" if absolute else "") + "/".join(segments)
    try:
        vpath = parse_vpath(raw.encode())
    except OSError:
        return
    root = Path("/data/tenants/acme")
    local = root.joinpath(*(p for p in (vpath.area, *vpath.parts) if p))
    assert posixpath.normpath(local) == str(local)  # no "..", "." or "//" survived
    assert local.is_relative_to(root)
    assert vpath.area is None or vpath.area in VISIBLE_DIRS
    assert virtual_realpath(raw.encode()).decode() == vpath.text


# --------------------------------------------------------------------------------------------
# write-behind


class GatedRunner:
    """Stands in for the thread pool: runs each job when the gate is open, counting jobs."""

    def __init__(self, open_: bool = True) -> None:
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.jobs = 0

    async def __call__(self, fn: Callable[[], None]) -> None:
        await self.gate.wait()
        self.jobs += 1
        fn()


def _writer(run: GatedRunner, applied: list[Chunk], **limits: int) -> UploadWriter:
    flushes = limits.pop("flushes_into", None)
    return UploadWriter(
        run,
        applied.extend,
        (lambda: None) if flushes is None else (lambda: applied.append((-1, b"flush"))),
        max_queued=limits.get("max_queued", 1000),
        flush_every=limits.get("flush_every", 10**9),
    )


def test_queued_writes_land_in_order_in_few_jobs() -> None:
    applied: list[Chunk] = []
    run = GatedRunner(open_=False)

    async def scenario() -> None:
        writer = _writer(run, applied)
        for i in range(10):
            await writer.write(i * 3, b"abc")  # acknowledged while nothing has been written
        assert applied == []
        run.gate.set()
        await writer.settle()

    asyncio.run(scenario())
    assert applied == [(i * 3, b"abc") for i in range(10)]
    assert run.jobs == 1  # all ten were queued before the job started: one batch


def test_a_full_queue_makes_write_wait() -> None:
    run = GatedRunner(open_=False)

    async def scenario() -> None:
        writer = _writer(run, [], max_queued=100)
        await writer.write(0, b"x" * 100)
        blocked = asyncio.ensure_future(writer.write(100, b"y"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not blocked.done()
        run.gate.set()
        await blocked
        await writer.settle()

    asyncio.run(scenario())


def test_a_failed_write_is_raised_by_the_next_write_and_by_settle() -> None:
    def disk_full(chunks: list[Chunk]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> None:
        writer = UploadWriter(GatedRunner(), disk_full, lambda: None, max_queued=1000, flush_every=10**9)
        await writer.write(0, b"abc")
        await asyncio.sleep(0.01)
        with pytest.raises(OSError) as later:
            await writer.write(3, b"def")
        assert later.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            await writer.settle()

    asyncio.run(scenario())


def test_written_bytes_are_flushed_in_the_background() -> None:
    applied: list[Chunk] = []

    async def scenario() -> None:
        writer = _writer(GatedRunner(), applied, flush_every=5, flushes_into=1)
        await writer.write(0, b"abc")
        await writer.settle()
        assert (-1, b"flush") not in applied
        await writer.write(3, b"def")
        await writer.settle()

    asyncio.run(scenario())
    assert applied[-1] == (-1, b"flush")
