"""Tenant formats, the pure parts: configuration checks, delimiter choice, workbook cells, the
encoding guess, and header mapping."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orgsyncd.config import Settings, _describe
from orgsyncd.core.formats import build_mapping
from orgsyncd.core.header import HeaderRules, analyse_header
from orgsyncd.core.reader import guess_encoding, pick_delimiter
from orgsyncd.core.workbook import cell_text
from orgsyncd.errors import FileRejected

LIC = "lic"


def problem(**tenant: Any) -> str:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        Settings(tenants={"acme": {"licenses": {LIC: 1}, **tenant}})
    return _describe(caught.value)


@pytest.mark.parametrize(
    ("tenant", "needle"),
    [
        (
            {"columns": {"Work Email": "email"}},
            "tenants.acme: columns.'Work Email' = 'email': not a roster column",
        ),
        ({"columns": {"Status": "other_status"}}, "'other' is not one of this tenant's licenses"),
        ({"columns": {"A": "group/ "}}, "a group column needs a name"),
        ({"columns": {"Mail": "primary_email_address", " mail ": "unique_user_id"}}, "is listed twice"),
        (
            {"values": {"lic_status": {"A": "yes"}}},
            "values.'lic_status'.'A' = 'yes': use one of 'active', 'inactive'",
        ),
        ({"values": {"group/*": {"Y": "true"}}}, "use one of '0', '1'"),
        ({"values": {"primary_email_address": {"a": "b"}}}, "identity columns are never translated"),
        (
            {"columns": {"Worker Status": "lic_status"}, "values": {"Worker Status": {"A": "active"}}},
            "write values.'lic_status'",
        ),
        ({"groups_from": ["Dept"], "ignore_columns": ["dept"]}, "in both groups_from and ignore_columns"),
        ({"groups_from": ["Dept"], "columns": {"DEPT": "work_title"}}, "in both columns and groups_from"),
        ({"delimiter": ":"}, "tenants.acme.delimiter"),
        ({"encoding": "klingon"}, "'klingon' is not a codec"),
        ({"encoding": "rot13"}, "not a text encoding"),
        ({"pgp_passphrase_file": "/x"}, "pgp_private_key is not"),
    ],
)
def test_a_bad_mapping_is_a_config_error_naming_the_key(tenant: dict[str, Any], needle: str) -> None:
    assert needle in problem(**tenant)


def test_a_good_mapping_loads() -> None:
    settings = Settings(
        tenants={
            "acme": {
                "licenses": {LIC: 1},
                "delimiter": "\t",
                "encoding": "cp1252",
                "columns": {
                    "Work Email": "primary_email",
                    "Worker Status": "lic_status",
                    "Mentor": "group/Mentors",
                },
                "values": {
                    "lic_status": {"Terminated": "inactive"},
                    "group/*": {"Y": "1"},
                    "active": {"J": "yes"},
                },
                "groups_from": ["Location"],
            }
        }
    )
    assert settings.tenant("acme").columns["Work Email"] == "primary_email"


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [
        ("a,b;c\n", ","),  # a tie goes to the comma
        ("Personalnummer;Vorname;E-Mail\r\n", ";"),
        ("USERID|EMAIL|TITLE\n", "|"),
        ("id\temail\n", "\t"),
        ('"Last, First";Email\n', ";"),  # a quoted comma is no separator
        ("email\n", ","),
    ],
)
def test_auto_delimiter_splits_the_header_into_the_most_fields(line: str, delimiter: str) -> None:
    assert pick_delimiter(line) == delimiter


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (1001, "1001"),
        (1001.0, "1001"),
        (0.1, "0.1"),
        (True, "TRUE"),
        (False, "FALSE"),
        (dt.datetime(2020, 1, 31), "2020-01-31"),
        (dt.datetime(2020, 1, 31, 8, 30), "2020-01-31 08:30:00"),
        (dt.date(2021, 5, 1), "2021-05-01"),
        ("  Ada ", "  Ada "),
    ],
)
def test_workbook_cells_become_the_text_a_csv_would_hold(value: object, text: str) -> None:
    assert cell_text(value) == text


def test_the_encoding_guess_names_the_common_codec() -> None:
    western = "Vorname;Nachname\nJosé;Müller\nFrançois;Dupré\nZoë;Jürgen\n"
    assert guess_encoding(western.encode("cp1252")) == "cp1252"
    assert guess_encoding("Дмитрий;Анна;Сергей Иванов\n".encode("cp1251")) == "cp1251"
    assert guess_encoding(b"plain ascii only\n") is None


RULES = HeaderRules(license_types=[LIC], default_license=LIC, key="[tenants.acme]")


def mapping(**kw: Any) -> Any:
    return build_mapping(
        "[tenants.acme]",
        kw.get("columns", {}),
        kw.get("values", {}),
        kw.get("groups_from", ()),
        kw.get("ignore", ()),
    )


def test_mapped_header_names_keep_their_own_spelling_for_messages() -> None:
    m = mapping(columns={"Work Email": "primary_email_address", "Status": "lic_status"}, groups_from=["Dept"])
    layout = analyse_header(["  WORK email ", "Status", "dept", "Extra"], RULES, m)
    assert (layout.email, layout.statuses, layout.sources) == (0, [(1, LIC)], [(2, "dept")])
    assert layout.names[:2] == ["WORK email", "Status"]
    [warning] = layout.warnings  # no header_case warning for a mapped name
    assert warning.code == "unknown_column" and "[tenants.acme.columns]" in warning.message


def test_two_columns_mapped_to_one_is_duplicate_header() -> None:
    m = mapping(columns={"Work Email": "primary_email_address", "E-Mail": "primary_email"})
    with pytest.raises(FileRejected) as caught:
        analyse_header(["Work Email", "E-Mail"], RULES, m)
    assert caught.value.code == "duplicate_header"
    assert "'E-Mail'" in caught.value.message and "[tenants.acme.columns]" in caught.value.message
