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
from orgsyncd.ingest.limits import Admission, ConnectionGate, GateLimits, WindowPool, WriteBudget
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


@pytest.mark.parametrize(
    "raw", [b"/inbox/a\x00b", b"/inbox/\xff\xfe.csv", b"/inbox/a\nb.csv", b"/inbox/\x1b[2J.csv"]
)
def test_nul_control_characters_and_bytes_that_are_not_utf8_are_invalid(raw: bytes) -> None:
    with pytest.raises(OSError) as refused:
        parse_vpath(raw)
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


def _writer(
    run: GatedRunner, applied: list[Chunk], budget: WriteBudget | None = None, **limits: int
) -> UploadWriter:
    flushes = limits.pop("flushes_into", None)
    return UploadWriter(
        run,
        applied.extend,
        (lambda: None) if flushes is None else (lambda: applied.append((-1, b"flush"))),
        budget=budget or WriteBudget(10**9),
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
        budget = WriteBudget(1000)
        writer = UploadWriter(
            GatedRunner(), disk_full, lambda: None, budget=budget, max_queued=1000, flush_every=10**9
        )
        await writer.write(0, b"abc")
        await asyncio.sleep(0.01)
        with pytest.raises(OSError) as later:
            await writer.write(3, b"def")
        assert later.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            await writer.settle()
        assert budget.in_use == 0  # what failed gave its share back

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


async def _spin() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_one_budget_holds_back_every_upload_until_bytes_are_on_disk() -> None:
    run = GatedRunner(open_=False)
    applied: list[Chunk] = []

    async def scenario() -> None:
        budget = WriteBudget(100)
        first, second = _writer(run, applied, budget), _writer(run, applied, budget)
        await first.write(0, b"a" * 100)  # the whole budget, acknowledged at once
        assert budget.in_use == 100
        blocked = asyncio.ensure_future(second.write(0, b"b"))  # another upload must wait
        await _spin()
        assert not blocked.done() and applied == []
        run.gate.set()
        await blocked
        await first.settle()
        await second.settle()
        assert budget.in_use == 0

    asyncio.run(scenario())
    assert sorted(applied) == [(0, b"a" * 100), (0, b"b")]


def test_the_budget_serves_waiters_in_order_and_a_write_larger_than_it_still_goes() -> None:
    async def scenario() -> None:
        budget = WriteBudget(10)
        await budget.acquire(8)
        order: list[str] = []

        async def take(name: str, size: int) -> None:
            await budget.acquire(size)
            order.append(name)

        big = asyncio.ensure_future(take("big", 50))  # costs the whole budget, not more
        small = asyncio.ensure_future(take("small", 1))  # fits now, but queues behind big
        await _spin()
        assert order == []
        budget.release(8)
        await _spin()
        assert order == ["big"]
        budget.release(50)
        await _spin()
        assert order == ["big", "small"] and budget.in_use == 1
        await asyncio.gather(big, small)

    asyncio.run(scenario())


def test_a_write_cancelled_while_waiting_for_budget_leaks_nothing() -> None:
    async def scenario() -> None:
        budget = WriteBudget(10)
        await budget.acquire(10)
        waiting = asyncio.ensure_future(budget.acquire(5))
        behind = asyncio.ensure_future(budget.acquire(5))
        await _spin()
        waiting.cancel()  # its session ended
        await _spin()
        budget.release(10)
        await behind
        assert budget.in_use == 5
        budget.release(5)
        assert budget.in_use == 0

    asyncio.run(scenario())


LIMITS = GateLimits(
    max_connections=6, max_connections_per_address=3, max_startups=4, max_startups_per_address=2
)


def test_one_address_cannot_take_more_than_its_share() -> None:
    gate = ConnectionGate(LIMITS)
    assert gate.admit("a1", "10.0.0.1").admitted and gate.admit("a2", "10.0.0.1").admitted
    assert gate.admit("a3", "10.0.0.1") == Admission(refused="max_startups_per_address")
    gate.logged_in("a1")
    assert gate.admit("a3", "10.0.0.1").admitted  # a login frees a startup slot ...
    gate.logged_in("a2")
    assert gate.admit("a4", "10.0.0.1") == Admission(refused="max_connections_per_address")
    gate.release("a1")
    gate.release("a1")  # ... and a closed connection its address slot, once
    assert gate.admit("a4", "10.0.0.1").admitted
    assert gate.admit("b1", "10.0.0.2").admitted  # other addresses are not affected


def test_a_full_server_drops_its_oldest_startup_for_a_newcomer_never_a_logged_in_one() -> None:
    gate = ConnectionGate(LIMITS)
    for index, peer in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]):
        assert gate.admit(f"flood{index}", peer).admitted
    assert gate.admit("tenant", "10.0.0.9") == Admission(evict="flood0")  # startups full
    gate.logged_in("tenant")
    assert gate.startups == 3 and gate.connections == 4
    for index in range(2):
        gate.logged_in(f"flood{index + 1}")
    assert gate.admit("x", "10.0.0.5") == Admission()
    assert gate.admit("y", "10.0.0.6") == Admission()  # 6 connections: the total is reached
    assert gate.admit("z", "10.0.0.7") == Admission(evict="flood3")  # oldest still logging in
    for key in ("x", "y", "z"):
        gate.logged_in(key)
    assert gate.admit("late", "10.0.0.8") == Admission(refused="max_connections")


@given(
    st.lists(st.tuples(st.sampled_from(["admit", "login", "close"]), st.integers(0, 15), st.integers(0, 3)))
)
def test_the_gate_never_exceeds_a_limit(steps: list[tuple[str, int, int]]) -> None:
    gate = ConnectionGate(LIMITS)
    peers: dict[int, str] = {}
    open_: set[int] = set()
    for action, key, address in steps:
        if action == "admit" and key not in open_:
            admission = gate.admit(key, f"10.0.0.{address}")
            if admission.evict is not None:
                open_.discard(admission.evict)  # type: ignore[arg-type]
            if admission.admitted:
                open_.add(key)
                peers[key] = f"10.0.0.{address}"
        elif action == "login" and key in open_:
            gate.logged_in(key)
        elif action == "close":
            gate.release(key)
            open_.discard(key)
        assert gate.connections == len(open_) <= LIMITS.max_connections
        assert gate.startups <= LIMITS.max_startups
        for peer in set(peers.values()):
            assert sum(1 for k in open_ if peers[k] == peer) <= LIMITS.max_connections_per_address


def test_windows_shrink_as_the_pool_is_used_and_come_back_when_given() -> None:
    pool = WindowPool(16 * 2**20, min_window=64 * 2**10, max_window=2 * 2**20)
    windows = [pool.take() for _ in range(40)]
    assert windows[0] == 2 * 2**20  # a lone upload gets the full window
    assert windows == sorted(windows, reverse=True) and windows[-1] == 64 * 2**10
    assert all(w % (64 * 2**10) == 0 for w in windows)
    assert pool.in_use <= pool.capacity + 40 * 64 * 2**10  # overdrawn by the floor at most
    for window in windows:
        pool.give(window)
    assert pool.in_use == 0 and pool.take() == 2 * 2**20
