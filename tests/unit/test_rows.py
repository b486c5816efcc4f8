"""orgsyncd.core.rows: one record -> one staged tuple, with the row codes of the contract."""

from __future__ import annotations

from typing import Any

import pytest

from orgsyncd.core.header import HeaderRules, analyse_header
from orgsyncd.core.rows import (
    MAX_EMAIL,
    MAX_VALUE,
    STAGE_FIXED,
    Rejected,
    RowRules,
    RowValidator,
    clean,
)

LIC = "lic_a"
OTHER = "lic_b"
HEADER = [
    "unique_user_id",
    "primary_email_address",
    "preferred_first_name",
    "preferred_last_name",
    "work_title",
    f"{LIC}_status",
    f"{OTHER}_status",
    "group/HR",
    "group/Engineering",
]
NO_UID = HEADER[1:]
ACTIVE_HEADER = ["primary_email", "active", f"{OTHER}_status"]


def validator(header: list[str] = HEADER, blank: str = "unchanged") -> RowValidator:
    layout = analyse_header(header, HeaderRules([LIC, OTHER], LIC))
    return RowValidator(layout, RowRules(blank_means=blank, default_license=LIC))


def staged(
    fields: list[str], header: list[str] = HEADER, blank: str = "unchanged", line: int = 7
) -> dict[str, Any]:
    """The staged row as a dict: a valid row's columns, err/msg None and its group flags under
    'groups'; or a rejected row's fields."""
    row = validator(header, blank).validate(line, fields)
    if isinstance(row, Rejected):
        return row._asdict()
    n = len(STAGE_FIXED)
    out = dict(zip(STAGE_FIXED, row[:n], strict=True))
    out.update(err=None, msg=None, groups=list(row[n:]))
    return out


def row(**values: str) -> list[str]:
    """A record for HEADER; unnamed columns are empty."""
    names = {
        "uid": 0,
        "email": 1,
        "first": 2,
        "last": 3,
        "title": 4,
        "lic_a": 5,
        "lic_b": 6,
        "hr": 7,
        "eng": 8,
    }
    fields = [""] * len(HEADER)
    for key, value in values.items():
        fields[names[key]] = value
    return fields


# -- a valid row -----------------------------------------------------------------------------


def test_valid_row_is_staged_in_stage_fixed_order() -> None:
    fields = ["U-1", "John.Doe@Example.COM", "John", "Doe", "Engineer", "active", "inactive"]
    got = validator().validate(12, [*fields, "1", "0"])
    assert len(got) == len(STAGE_FIXED) + 2
    named = dict(zip(STAGE_FIXED, got, strict=False))
    assert isinstance(named.pop("fp"), int)
    assert named == {
        "line": 12,
        "uid": "U-1",
        "email": "john.doe@example.com",
        "first": "John",
        "last": "Doe",
        "title": "Engineer",
        "lic_on": LIC,
        "lic_off": f"|{OTHER}|",
    }
    assert got[len(STAGE_FIXED) :] == (1, 0)


def test_values_are_trimmed() -> None:
    got = staged(
        row(
            uid="  U-1 ",
            email="  a@example.com ",
            first=" John ",
            title="\tEngineer  ",
            lic_a=" active ",
            hr=" 1 ",
        )
    )
    assert got["uid"] == "U-1"
    assert got["email"] == "a@example.com"
    assert got["first"] == "John"
    assert got["title"] == "Engineer"
    assert got["lic_on"] == LIC
    assert got["groups"] == [1, None]
    assert got["err"] is None


def test_email_is_lower_cased() -> None:
    got = staged(row(email="Jane.SMITH@Example.Com"), header=HEADER)
    assert got["email"] == "jane.smith@example.com"


def test_a_blank_uid_is_none_so_the_email_identifies_the_row() -> None:
    assert staged(row(uid="HR-42", email="A@x.com"))["uid"] == "HR-42"
    no_uid = staged(row(uid="  ", email="A@x.com"))
    assert (no_uid["uid"], no_uid["email"]) == (None, "a@x.com")
    fields = ["a@x.com", "", "", "", "", "", "", ""]
    assert staged(fields, header=NO_UID)["uid"] is None


def test_uid_keeps_its_case() -> None:
    assert staged(row(uid="Ab-C", email="a@x.com"))["uid"] == "Ab-C"


def test_no_licence_turned_off_is_an_empty_string_not_none() -> None:
    """None costs a slow adapter lookup per value in the bulk insert; "" never matches a licence."""
    assert staged(row(email="a@x.com", lic_a="active"))["lic_off"] == ""


# -- clean() and formula unescaping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("'=1+1", "=1+1"),
        ("'+1", "+1"),
        ("'-5", "-5"),
        ("'@sum", "@sum"),
        ("'\tx", "x"),  # the escape goes, and so does the whitespace it protected
        ("'\rx", "x"),
        ("  '=1+1  ", "=1+1"),
        ("'abc", "'abc"),
        ("'", "'"),
        ("''=1", "''=1"),
        ("O'Brien", "O'Brien"),
        ("=1+1", "=1+1"),
        ("  plain  ", "plain"),
        ("", ""),
    ],
)
def test_clean(raw: str, expected: str) -> None:
    assert clean(raw) == expected


def test_formula_unescape_in_a_row() -> None:
    got = staged(row(email="a@x.com", first="'=1+1", last="'abc", title="'-Lead"))
    assert (got["first"], got["last"], got["title"]) == ("=1+1", "'abc", "-Lead")


# -- field_count -----------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "word"), [(1, "field"), (8, "fields"), (10, "fields")])
def test_field_count(count: int, word: str) -> None:
    got = staged(["a@x.com"] + ["x"] * (count - 1))
    assert got["err"] == "field_count"
    assert got["msg"] == f"the row has {count} {word}, the header has 9"
    assert got["line"] == 7


def test_failed_row_carries_only_its_identity() -> None:
    got = staged(row(uid="U1", email="a@x.com", first="John", lic_a="maybe", hr="1"))
    assert got == {
        "line": 7,
        "err": "invalid_value",
        "msg": "lic_a_status is 'maybe'; use active or inactive",
        "uid": "U1",
        "email": None,
    }


def test_failed_row_without_uid_is_identified_by_its_email() -> None:
    got = staged(row(email=" A@X.com ", lic_a="maybe"))
    assert (got["err"], got["uid"], got["email"]) == ("invalid_value", None, "a@x.com")
    bad_email = staged(row(email="not-an-email"))
    assert (bad_email["err"], bad_email["uid"], bad_email["email"]) == ("invalid_email", None, None)


# -- email -----------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["unchanged", "clear", "error"])
def test_missing_email_whatever_blank_means(blank: str) -> None:
    got = staged(row(uid="U1", email="   ", first="x"), blank=blank)
    assert got["err"] == "missing_email"
    assert got["msg"] == "primary_email_address is empty"


def test_missing_email_message_uses_the_alias_as_given() -> None:
    got = staged(["", "TRUE", ""], header=ACTIVE_HEADER)
    assert got["err"] == "missing_email"
    assert "primary_email" in got["msg"]


@pytest.mark.parametrize("email", ["not-an-email", "a@localhost", "a..b@x.com", "a@x@y.com"])
def test_invalid_email(email: str) -> None:
    got = staged(row(email=email))
    assert got["err"] == "invalid_email"
    assert got["msg"] == f"primary_email_address {email!r} is not a valid email address"


def test_email_too_long_is_value_too_long() -> None:
    email = "a" * 64 + "@" + "b" * (MAX_EMAIL - 64) + ".com"
    got = staged(row(email=email))
    assert got["err"] == "value_too_long"
    assert got["msg"] == f"primary_email_address is {len(email)} characters long; the limit is 320"


# -- value_too_long --------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["first", "last", "title", "uid"])
def test_value_too_long(column: str) -> None:
    name = {"first": 2, "last": 3, "title": 4, "uid": 0}[column]
    got = staged(row(email="a@x.com", **{column: "x" * (MAX_VALUE + 1)}))
    assert got["err"] == "value_too_long"
    assert got["msg"] == f"{HEADER[name]} is 256 characters long; the limit is 255"


def test_value_at_the_limit_is_fine() -> None:
    got = staged(row(email="a@x.com", title="x" * MAX_VALUE))
    assert got["err"] is None
    assert got["title"] == "x" * MAX_VALUE


def test_length_is_measured_after_trimming() -> None:
    got = staged(row(email="a@x.com", title="  " + "x" * MAX_VALUE + "  "))
    assert got["err"] is None


@pytest.mark.parametrize("column", ["first", "title", "uid"])
def test_length_is_measured_after_formula_unescaping(column: str) -> None:
    value = "=" + "x" * (MAX_VALUE - 1)
    got = staged(row(email="a@x.com", **{column: "'" + value}))
    assert got["err"] is None
    assert got[column] == value


# -- statuses, active, groups ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "on", "off"),
    [
        ("active", "", LIC, ""),
        ("ACTIVE", "inactive", LIC, f"|{OTHER}|"),
        ("Inactive", "Active", OTHER, f"|{LIC}|"),
        ("inactive", "INACTIVE", None, f"|{LIC}|{OTHER}|"),
        ("", "", None, ""),
    ],
)
def test_status_columns(a: str, b: str, on: str | None, off: str) -> None:
    got = staged(row(email="a@x.com", lic_a=a, lic_b=b))
    assert got["err"] is None
    assert (got["lic_on"], got["lic_off"]) == (on, off)


@pytest.mark.parametrize("value", ["yes", "enabled", "1", "activ"])
def test_invalid_status_value(value: str) -> None:
    got = staged(row(email="a@x.com", lic_b=value))
    assert got["err"] == "invalid_value"
    assert got["msg"] == f"{OTHER}_status is {value!r}; use active or inactive"


def test_multiple_active_licenses() -> None:
    got = staged(row(email="a@x.com", lic_a="active", lic_b="active"))
    assert got["err"] == "multiple_active_licenses"
    assert got["msg"].startswith("2 licenses are active in this row")
    assert LIC in got["msg"]
    assert OTHER in got["msg"]


def test_active_column_and_another_active_status_are_multiple_active_licenses() -> None:
    got = staged(["a@x.com", "TRUE", "active"], header=ACTIVE_HEADER)
    assert got["err"] == "multiple_active_licenses"


@pytest.mark.parametrize(
    ("value", "on", "off"),
    [
        ("TRUE", LIC, ""),
        ("true", LIC, ""),
        ("Yes", LIC, ""),
        ("YES", LIC, ""),
        ("1", LIC, ""),
        ("FALSE", None, f"|{LIC}|"),
        ("false", None, f"|{LIC}|"),
        ("no", None, f"|{LIC}|"),
        ("No", None, f"|{LIC}|"),
        ("0", None, f"|{LIC}|"),
        ("", None, ""),
    ],
)
def test_active_column(value: str, on: str | None, off: str) -> None:
    got = staged(["a@x.com", value, ""], header=ACTIVE_HEADER)
    assert got["err"] is None
    assert (got["lic_on"], got["lic_off"]) == (on, off)


@pytest.mark.parametrize("value", ["maybe", "Y", "active", "2"])
def test_invalid_active_value(value: str) -> None:
    got = staged(["a@x.com", value, ""], header=ACTIVE_HEADER)
    assert got["err"] == "invalid_value"
    assert f"active is {value!r}" in got["msg"]
    assert "TRUE or FALSE" in got["msg"]


def test_active_false_with_another_license_active_is_a_reassignment() -> None:
    got = staged(["a@x.com", "FALSE", "active"], header=ACTIVE_HEADER)
    assert got["err"] is None
    assert (got["lic_on"], got["lic_off"]) == (OTHER, f"|{LIC}|")


@pytest.mark.parametrize(("hr", "eng", "flags"), [("1", "0", [1, 0]), ("0", "1", [0, 1])])
def test_group_flags(hr: str, eng: str, flags: list[int]) -> None:
    assert staged(row(email="a@x.com", hr=hr, eng=eng))["groups"] == flags


@pytest.mark.parametrize("value", ["2", "yes", "TRUE", "-1", "01"])
def test_invalid_group_flag(value: str) -> None:
    got = staged(row(email="a@x.com", eng=value))
    assert got["err"] == "invalid_value"
    assert got["msg"] == f"group/Engineering is {value!r}; use 1 (member) or 0 (not a member)"


# -- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_is_stable_and_depends_on_every_field_and_the_seed() -> None:
    layout = analyse_header(HEADER, HeaderRules([LIC, OTHER], LIC))
    rules = RowRules(blank_means="unchanged", default_license=LIC)
    fields = row(uid="U1", email="a@x.com", first="F", lic_a="active")
    one, again = RowValidator(layout, rules, seed=1), RowValidator(layout, rules, seed=1)
    fp = one.fingerprint(fields)
    assert fp == again.fingerprint(list(fields))
    assert -(1 << 63) <= fp < (1 << 63)  # fits a signed BIGINT column
    assert one.validate(2, fields)[STAGE_FIXED.index("fp")] == fp
    assert RowValidator(layout, rules, seed=2).fingerprint(fields) != fp
    for i in range(len(fields)):
        changed = [*fields]
        changed[i] += "z"
        assert one.fingerprint(changed) != fp, HEADER[i]
    # field boundaries matter: ("ab", "") and ("a", "b") differ
    assert one.fingerprint(["ab", ""]) != one.fingerprint(["a", "b"])


def test_failed_row_has_no_fingerprint() -> None:
    got = staged(row(email="not-an-email"))
    assert "fp" not in got and got["err"] == "invalid_email"


# -- blank_means ------------------------------------------------------------------------------


def test_blank_unchanged_leaves_everything_as_is() -> None:
    got = staged(row(uid="U1", email="a@x.com"), blank="unchanged")
    assert got["err"] is None
    assert (got["first"], got["last"], got["title"]) == (None, None, None)
    assert (got["lic_on"], got["lic_off"]) == (None, "")
    assert got["groups"] == [None, None]


def test_blank_clear_erases_text_and_group_membership() -> None:
    got = staged(row(uid="U1", email="a@x.com"), blank="clear")
    assert got["err"] is None
    assert (got["first"], got["last"], got["title"]) == ("", "", "")
    assert got["groups"] == [0, 0]  # empty group cell under "clear" = not a member


def test_blank_clear_does_not_touch_licenses() -> None:
    # An empty status cell never revokes: revoking takes an explicit "inactive" / FALSE.
    got = staged(row(uid="U1", email="a@x.com"), blank="clear")
    assert (got["lic_on"], got["lic_off"]) == (None, "")
    got = staged(["a@x.com", "", ""], header=ACTIVE_HEADER, blank="clear")
    assert (got["err"], got["lic_on"], got["lic_off"]) == (None, None, "")


def test_blank_clear_never_clears_the_identity() -> None:
    got = staged(row(uid="", email="a@x.com"), blank="clear")
    assert (got["uid"], got["email"]) == (None, "a@x.com")


FULL = ["U1", "a@x.com", "F", "L", "T", "active", "inactive", "1", "0"]


@pytest.mark.parametrize("index", [0, 2, 3, 4, 5, 6, 7, 8], ids=lambda i: HEADER[i])
def test_blank_error_reports_blank_value_naming_the_column(index: int) -> None:
    fields = [*FULL]
    fields[index] = "  "
    got = staged(fields, blank="error")
    assert got["err"] == "blank_value"
    assert got["msg"] == f"{HEADER[index]} is empty and this tenant requires a value"


@pytest.mark.parametrize("index", [0, 2, 3, 4, 5, 6, 7, 8], ids=lambda i: HEADER[i])
def test_blank_unchanged_and_clear_accept_any_single_blank(index: int) -> None:
    fields = [*FULL]
    fields[index] = ""
    assert staged(fields, blank="unchanged")["err"] is None
    assert staged(fields, blank="clear")["err"] is None


def test_blank_error_on_active_column() -> None:
    got = staged(["a@x.com", "", "active"], header=ACTIVE_HEADER, blank="error")
    assert got["err"] == "blank_value"
    assert got["msg"].startswith("active is empty")


def test_blank_error_with_every_cell_filled_is_fine() -> None:
    assert staged(FULL, blank="error")["err"] is None


def test_blank_error_only_concerns_provided_columns() -> None:
    # work_title etc. are not in this header, so they cannot be blank
    got = staged(["a@x.com", "TRUE", "inactive"], header=ACTIVE_HEADER, blank="error")
    assert got["err"] is None


# -- identity of an invalid row --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "uid", "email"),
    [
        (row(uid="U1", email="not-an-email"), "U1", None),
        (row(uid="U1", email=""), "U1", None),
        (row(uid="U1", email="A@x.com", lic_a="bogus"), "U1", None),
        (row(uid="U1", email="a@x.com", hr="7"), "U1", None),
        (row(email="A@X.com", lic_a="bogus"), None, "a@x.com"),
        (row(email="a@x.com", lic_a="active", lic_b="active"), None, "a@x.com"),
        (row(email="a@x.com", title="x" * 300), None, "a@x.com"),
        (row(email="not-an-email", lic_a="bogus"), None, None),
        (row(email=""), None, None),
    ],
    ids=[
        "uid+bad-email",
        "uid+no-email",
        "uid+bad-status",
        "uid+bad-group",
        "email+bad-status",
        "email+two-licenses",
        "email+long-title",
        "nothing-derivable",
        "nothing-at-all",
    ],
)
def test_invalid_row_keeps_its_identity(fields: list[str], uid: str | None, email: str | None) -> None:
    got = staged(fields)
    assert got["err"] is not None
    assert (got["uid"], got["email"]) == (uid, email)


@pytest.mark.parametrize(
    ("fields", "blank"),
    [
        (row(uid="U1", email="a@x.com", title="x" * 300), "unchanged"),
        (row(uid="U1", email="a@x.com", last="L", title="T", lic_a="active"), "error"),
    ],
    ids=["long-title", "blank-first-name"],
)
def test_invalid_row_with_uid_is_keyed_by_uid_even_when_a_text_column_fails(
    fields: list[str], blank: str
) -> None:
    got = staged(fields, blank=blank)
    assert got["err"] in {"value_too_long", "blank_value"}
    assert (got["uid"], got["email"]) == ("U1", None)
