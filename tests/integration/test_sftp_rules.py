"""The SFTP server's pure rules, without a network: bans, password hashes, client path mapping."""

from __future__ import annotations

import errno
import posixpath
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
