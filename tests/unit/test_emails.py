"""orgsyncd.core.emails: the regex fast path must never accept what email_validator rejects, and
both paths must give the same normalized address."""

from __future__ import annotations

import string

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from orgsyncd.core.emails import _fast_ok, email_problem, normalize_email

# -- table tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("john.doe@example.com", "john.doe@example.com"),
        ("John.Doe@Example.COM", "john.doe@example.com"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x_y-z@a-b.example", "x_y-z@a-b.example"),
        ("!#$%&'*+/=?^_`{|}~-@example.org", "!#$%&'*+/=?^_`{|}~-@example.org"),
        ("a@1.example.com", "a@1.example.com"),
        ("josé@example.com", "josé@example.com"),
        ("JOSÉ@EXAMPLE.COM", "josé@example.com"),
        ("user@bücher.de", "user@bücher.de"),
        # One canonical form per mailbox: the punycode spelling is stored as its Unicode form.
        ("user@xn--bcher-kva.de", "user@bücher.de"),
        ("a@b.c", "a@b.c"),  # single-letter TLD: not fast, but email_validator allows it
    ],
)
def test_valid(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "plainaddress",
        "@example.com",
        "a@",
        "a@localhost",
        "a..b@x.com",
        ".a@x.com",
        "a.@x.com",
        "a@x..com",
        "a@-x.com",
        "a@x-.com",
        "a@x.com.",
        "a b@x.com",
        "a@b@x.com",
        "a@x.test",
        "a@host.local",
        "a@x.localhost",
        "a@x.invalid",
        "a@x.onion",
        "a@home.arpa",
        "a@x.c0m1",
        "a@example.123",
        "a@" + "b" * 64 + ".com",
        "a@" + ".".join(["b" * 60] * 5) + ".com",  # over 254 characters
        '"quoted"@example.com',
        "a@[192.0.2.1]",
    ],
)
def test_invalid(raw: str) -> None:
    assert normalize_email(raw) is None


def test_local_part_at_64_characters_is_valid() -> None:
    assert normalize_email("a" * 64 + "@example.com") == "a" * 64 + "@example.com"


@pytest.mark.parametrize("raw", ["a@ab--cd.com", "a@xn--zz.com", "a@mail.cd--ef.example.com"])
def test_hyphens_in_third_and_fourth_position_are_invalid(raw: str) -> None:
    assert normalize_email(raw) is None


def test_fast_path_is_used_for_plain_addresses() -> None:
    assert _fast_ok("john.doe@example.com")
    assert not _fast_ok("josé@example.com")  # falls back to email_validator
    assert not _fast_ok("a@x.test")  # special-use: email_validator decides (and rejects)
    assert _fast_ok("a@x.testing") and _fast_ok("a@x.locals")  # only the special label itself
    assert _fast_ok("a" * 64 + "@example.com") and not _fast_ok("a" * 65 + "@example.com")
    assert not _fast_ok("a@b--c.example.com") and _fast_ok("a--b@example.com")  # "--" matters in the domain


# -- property: fast path is a strict subset of email_validator -------------------------------

ATOM_CHARS = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
SPECIAL_TLDS = ["test", "local", "localhost", "invalid", "onion", "arpa"]
TLDS = ["com", "org", "io", "de", "co", "example", "internal", "museum", *SPECIAL_TLDS]

atom = st.text(alphabet=ATOM_CHARS, min_size=1, max_size=10)
local_part = st.one_of(
    st.lists(atom, min_size=1, max_size=4).map(".".join),
    st.text(alphabet=ATOM_CHARS + ".", min_size=1, max_size=12),  # stray / doubled dots
    st.integers(60, 70).map(lambda n: "a" * n),  # around the 64-character limit
)
label = st.one_of(
    st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True),
    st.from_regex(r"[a-z0-9]{2}--[a-z0-9]{1,6}", fullmatch=True),  # 'xn--'-like labels
    st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True),  # leading/trailing hyphens
    st.integers(60, 66).map(lambda n: "d" * n),  # around the 63-character label limit
)
tld = st.one_of(
    st.sampled_from(TLDS),
    st.sampled_from(TLDS).map(str.upper),
    st.from_regex(r"[a-zA-Z]{1,8}", fullmatch=True),
    st.from_regex(r"[a-z0-9]{2,4}", fullmatch=True),
)
domain = st.builds(lambda labels, top: ".".join([*labels, top]), st.lists(label, min_size=0, max_size=4), tld)
plausible = st.builds(lambda local, dom: f"{local}@{dom}", local_part, domain)
candidates = st.one_of(
    plausible,
    plausible.map(str.upper),
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=12), st.text(max_size=12)),
)


def reference(raw: str) -> str | None:
    """What email_validator alone says: the normalized address lower-cased, or None."""
    try:
        return validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def has_hyphen_pair_label(raw: str) -> bool:
    _, _, dom = raw.lower().rpartition("@")
    return any(len(part) >= 4 and part[2:4] == "--" for part in dom.split("."))


def check_fast_path(raw: str) -> None:
    if _fast_ok(raw.lower()):
        result = validate_email(raw, check_deliverability=False)  # raises if it disagrees
        assert result.normalized.lower() == normalize_email(raw) == raw.lower()
    assert normalize_email(raw) == reference(raw)


@settings(max_examples=300, deadline=None)
@given(candidates)
@example("a@ab--cd.com")
def test_fast_path_agrees_with_email_validator(raw: str) -> None:
    check_fast_path(raw)


@settings(max_examples=400, deadline=None)
@given(candidates)
@example("John.Doe@Example.COM")
@example("\u212a@example.com")  # KELVIN SIGN lower-cases to ASCII 'k'
@example("a@\u212a.com")
@example("a@x.TEST")
@example("a@mail.Local")
@example("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com")
def test_fast_path_agrees_with_email_validator_apart_from_hyphen_pairs(raw: str) -> None:
    assume(not has_hyphen_pair_label(raw))
    check_fast_path(raw)


# -- look-alikes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("j\u043ehn@example.com", "U+043E CYRILLIC SMALL LETTER O"),  # Latin j, Cyrillic о
        ("john@ex\u0430mple.com", "U+0430 CYRILLIC SMALL LETTER A"),
        ("\u03bfscar@example.com", "U+03BF GREEK SMALL LETTER OMICRON"),
        ("\uff4aohn@example.com", "U+FF4A FULLWIDTH LATIN SMALL LETTER J"),
        ("john\uff20example.com", "U+FF20 FULLWIDTH COMMERCIAL AT"),
        ("jo\u200bhn@example.com", "U+200B ZERO WIDTH SPACE"),
    ],
)
def test_look_alike_addresses_are_refused_and_the_reason_names_the_character(raw: str, why: str) -> None:
    assert normalize_email(raw) is None
    problem = email_problem(raw)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    "raw", ["иван@пример.рф", "αβγ@example.com", "jöhn@example.com", "tanaka太郎@example.jp", "a@b\uff0ecom"]
)
def test_one_script_and_scripts_that_imitate_nothing_stay_valid(raw: str) -> None:
    assert normalize_email(raw) is not None


def test_a_plain_invalid_address_has_nothing_more_to_say() -> None:
    assert email_problem("not-an-email") is None
