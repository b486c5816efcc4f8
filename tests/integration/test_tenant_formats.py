"""A tenant's own export format: column and value mapping, groups from a column, delimiters,
encodings, workbooks. Each HRIS style imports with tenant configuration only."""

from __future__ import annotations

import codecs
import io
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.helpers import LIC, Env, roster

STATUS = f"{LIC}_status"
# Reading (delimiters, encodings, workbooks) happens before the database sees a row: one backend
# is enough for those tests; the mapping and groups_from ones run on both.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
WORKDAY_HEADER = [
    "Employee ID", "Legal First Name", "Legal Last Name", "Work Email", "Business Title",
    "Supervisory Organization", "Worker Status",
]  # fmt: skip
WORKDAY: dict[str, Any] = {
    "columns": {
        "Employee ID": "unique_user_id",
        "Legal First Name": "preferred_first_name",
        "Legal Last Name": "preferred_last_name",
        "Work Email": "primary_email_address",
        "Business Title": "work_title",
        "Worker Status": STATUS,
    },
    "values": {STATUS: {"Active": "active", "On Leave": "active", "Terminated": "inactive"}},
    "groups_from": ["Supervisory Organization"],
}


def workday(rows: list[list[str]]) -> str:
    return roster(WORKDAY_HEADER, rows, newline="\r\n")


ADA = ["1001", "Ada", "Lovelace", "ada@example.com", "Engineer", "Engineering", "Active"]
BOB = ["1002", "Bob", "Byte", "bob@example.com", "Account Executive", "Sales, EMEA", "On Leave"]


def test_a_workday_report_imports_and_the_results_echo_it(env: Env) -> None:
    env.reconfigure(**WORKDAY)
    text = workday([ADA, BOB, ["1003", "Cy", "Bad", "cy@example.com", "Rep", "Sales, EMEA", "Retired"]])
    summary = env.run(text, name="workday.csv")
    lines = env.results_text(summary).splitlines()
    assert lines[0] == "row,outcome,code,message," + ",".join(WORKDAY_HEADER)
    assert lines[1] == "2,created,,,1001,Ada,Lovelace,ada@example.com,Engineer,Engineering,Active"
    assert lines[2].endswith(',"Sales, EMEA",On Leave')  # their row as sent, its quoting kept
    error = env.results(summary)[2]
    assert (error["code"], error["Worker Status"]) == ("invalid_value", "Retired")
    assert "'Active', 'On Leave', 'Terminated'" in error["message"]
    assert "[tenants.acme.values]" in error["message"].replace(env.tenant, "acme")
    ada = env.learner("ada@example.com")
    assert (ada.uid, ada.title, ada.status, ada.groups) == ("1001", "Engineer", "invited", ["Engineering"])
    assert env.learner("bob@example.com").license_type == LIC  # On Leave keeps the licence


def test_terminated_deactivates_and_a_mapped_tenant_reimports_its_export(env: Env) -> None:
    env.reconfigure(**WORKDAY, max_deactivation_ratio=1.0)  # one of two: over any delta threshold
    env.run(workday([ADA, BOB]))
    gone = env.run(workday([ADA, [*BOB[:6], "Terminated"]]))
    assert [r["outcome"] for r in env.results(gone)] == ["unchanged", "deactivated"]
    assert env.learner("bob@example.com").status == "deactivated"
    again = env.run(env.export(), name="export.csv")  # our own column names are accepted too
    assert again.counts["unchanged"] == 2 and again.status == "succeeded"
    assert env.summary_json(again)["counts"]["warning"] == 0


def test_groups_from_moves_the_learner_and_leaves_other_groups_alone(env: Env) -> None:
    env.reconfigure(**{**WORKDAY, "groups_from": ["Supervisory Organization", "Location"]})
    header = [*WORKDAY_HEADER, "Location", "group/Mentors"]
    env.run(roster(header, [[*ADA, "Berlin", "1"]]))
    assert env.learner("ada@example.com").groups == ["Berlin", "Engineering", "Mentors"]
    moved = env.run(roster(header, [[*ADA[:5], "Research", "Active", "Berlin", "1"]]))
    assert env.outcomes(moved) == [("2", "updated", "")]
    assert env.learner("ada@example.com").groups == ["Berlin", "Mentors", "Research"]
    emptied = env.run(roster(header, [[*ADA[:5], "", "Active", "Paris", ""]]))
    assert env.outcomes(emptied) == [("2", "updated", "")]
    assert env.learner("ada@example.com").groups == ["Mentors", "Paris"]  # an empty cell: no group
    assert "group/Research" in env.export().splitlines()[0]  # groups export like any other
    same = env.run(roster(header, [[*ADA[:5], "", "Active", "paris", ""]]))  # names ignore case
    assert env.outcomes(same) == [("2", "unchanged", "")]


def test_groups_from_keeps_a_membership_a_flag_gave(env: Env) -> None:
    env.reconfigure(**WORKDAY)
    env.run(roster(["Work Email", "group/Sales"], [["ada@example.com", "1"]]))
    env.run(workday([[*ADA[:5], "Sales", "Active"]]))  # the column names a group she is already in
    env.run(workday([ADA]))  # the column moves on; the flag's membership stays
    assert env.learner("ada@example.com").groups == ["Engineering", "Sales"]
    assert env.run(workday([ADA]) + "\r\n", name="again.csv").counts["unchanged"] == 1


def test_a_mapping_that_makes_two_columns_one_is_duplicate_header(env: Env) -> None:
    env.reconfigure(columns={"Work Email": "primary_email_address", "E-Mail": "primary_email_address"})
    summary = env.run(roster(["Work Email", "E-Mail"], [["a@example.com", "a@example.com"]]))
    error = env.summary_json(summary)["error"]
    assert error["code"] == "duplicate_header"
    assert "'E-Mail'" in error["message"] and "'Work Email'" in error["message"]
    assert f"[tenants.{env.tenant}.columns]" in error["message"]
    env.reconfigure(columns={"Work Email": "primary_email_address"})
    ours_too = env.run(roster(["Work Email", "primary_email_address"], [["a@example.com", "a@example.com"]]))
    assert env.summary_json(ours_too)["error"]["code"] == "duplicate_header"


@SQLITE_ONLY
def test_missing_email_column_names_the_columns_key(env: Env) -> None:
    env.reconfigure(columns={"Employee ID": "unique_user_id"})
    summary = env.run(roster(["Employee ID", "Email Address"], [["1", "a@example.com"]]))
    error = env.summary_json(summary)["error"]
    assert error["code"] == "missing_required_column"
    assert f"[tenants.{env.tenant}.columns]" in error["message"]


@SQLITE_ONLY
def test_ignore_columns_silences_known_extras(env: Env) -> None:
    env.reconfigure(columns={"Email": "primary_email_address"}, ignore_columns=["Cost Center"])
    summary = env.run(roster(["Email", "Cost Center", "Shoe Size"], [["a@example.com", "4711", "9"]]))
    warnings = [r for r in env.results(summary) if r["row"] == "0"]
    assert [(w["code"], "'Shoe Size'" in w["message"]) for w in warnings] == [("unknown_column", True)]
    assert "ignore_columns" in warnings[0]["message"]


def test_group_flag_values_and_text_values_are_translated(env: Env) -> None:
    env.reconfigure(
        columns={"Email": "primary_email_address", "Is Mentor": "group/Mentors", "Title": "work_title"},
        values={"group/*": {"Y": "1", "N": "0"}, "work_title": {"SWE": "Software Engineer"}},
    )
    summary = env.run(
        roster(["Email", "Is Mentor", "Title"], [["a@example.com", "y", "swe"], ["b@x.org", "N", "PM"]])
    )
    assert [r["outcome"] for r in env.results(summary)] == ["created", "created"]
    ada = env.learner("a@example.com")
    assert (ada.groups, ada.title) == (["Mentors"], "Software Engineer")
    assert env.learner("b@x.org").groups == []
    bad = env.run(roster(["Email", "Is Mentor"], [["a@example.com", "maybe"]]))
    message = env.results(bad)[0]["message"]
    assert "'Y', 'N'" in message and "group/mentors" in message


def test_a_bamboohr_export_imports(env: Env) -> None:
    env.reconfigure(
        columns={
            "Employee #": "unique_user_id", "First Name": "preferred_first_name", "Last Name": "preferred_last_name",
            "Work Email": "primary_email_address", "Job Title": "work_title", "Status": STATUS,
        },
        values={STATUS: {"Active": "active", "Inactive": "inactive"}},
        groups_from=["Department", "Division"],
        ignore_columns=["Hire Date", "Supervisor"],
    )  # fmt: skip
    header = ["Employee #", "First Name", "Last Name", "Work Email", "Job Title", "Department", "Division",
              "Hire Date", "Supervisor", "Status"]  # fmt: skip
    rows = [
        ["4", "Charlotte", "Abbott", "cabbott@example.com", "Sr. HR Administrator", "Human Resources",
         "North America", "2019-02-14", "Jennifer Caldwell", "Active"],
        ["9", "Ashley", "Adams", "aadams@example.com", "HR Administrator", "Human Resources", "Europe",
         "2021-07-01", "Charlotte Abbott", "Inactive"],
    ]  # fmt: skip
    summary = env.run(roster(header, rows, newline="\r\n"), name="bamboohr.csv")
    assert summary.status == "succeeded" and summary.counts["warning"] == 0, env.results_text(summary)
    charlotte = env.learner("cabbott@example.com")
    assert (charlotte.uid, charlotte.groups) == ("4", ["Human Resources", "North America"])
    assert env.learner("aadams@example.com").status == "unassigned"  # arrived inactive


# -- delimiters and encodings -------------------------------------------------------------------

EURO_HEADER = "Personalnummer;Vorname;Nachname;E-Mail;Status\r\n"
EURO_ROWS = "7;José;Müller;jose@example.com;aktiv\r\n8;Zoë;Dupré;zoe@example.com;inaktiv\r\n"
EURO: dict[str, Any] = {
    "delimiter": ";",
    "encoding": "cp1252",
    "columns": {
        "Personalnummer": "unique_user_id", "Vorname": "preferred_first_name",
        "Nachname": "preferred_last_name", "E-Mail": "primary_email_address", "Status": STATUS,
    },
    "values": {STATUS: {"aktiv": "active", "inaktiv": "inactive"}},
}  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        (EURO_HEADER + EURO_ROWS).encode("cp1252"),
        codecs.BOM_UTF8 + (EURO_HEADER + EURO_ROWS).encode("utf-8"),  # Excel's "CSV UTF-8"
    ],
    ids=["cp1252", "utf-8-bom"],
)
@SQLITE_ONLY
def test_a_european_excel_semicolon_file_imports(env: Env, data: bytes) -> None:
    env.reconfigure(**EURO)
    summary = env.run_bytes(data, "mitarbeiter.csv")
    assert summary.status == "succeeded", env.results_text(summary)
    assert env.learner("jose@example.com").first_name == "José"
    assert env.learner("zoe@example.com").last_name == "Dupré"
    lines = env.results_text(summary).splitlines()
    assert lines[0] == "row,outcome,code,message,Personalnummer,Vorname,Nachname,E-Mail,Status"
    assert lines[1] == "2,created,,,7,José,Müller,jose@example.com,aktiv"  # their row, comma-separated


@SQLITE_ONLY
def test_a_successfactors_pipe_file_imports_and_auto_says_which_delimiter(env: Env) -> None:
    env.reconfigure(
        delimiter="auto",
        columns={
            "USERID": "unique_user_id",
            "EMAIL": "primary_email_address",
            "TITLE": "work_title",
            "STATUS": STATUS,
            "DEPARTMENT": "group/Sales",
        },
        values={STATUS: {"Active": "active", "Inactive": "inactive"}, "group/*": {"Sales": "1", "": "0"}},
    )
    text = (
        "USERID|EMAIL|TITLE|STATUS|DEPARTMENT\n"
        'u1|a@example.com|Lead, "Ops"|Active|Sales\n'
        "u2|b@example.com|Rep|Inactive|\n"
    )
    summary = env.run(text, name="sf_users.csv")
    assert summary.status == "succeeded", env.results_text(summary)
    assert env.summary_json(summary)["delimiter"] == "|"
    assert env.learner("a@example.com").title == 'Lead, "Ops"'
    assert env.learner("a@example.com").groups == ["Sales"]
    row = env.results(summary)[0]
    assert (row["USERID"], row["TITLE"]) == ("u1", 'Lead, "Ops"')


@SQLITE_ONLY
def test_a_semicolon_file_for_a_comma_tenant_names_the_delimiter_key(env: Env) -> None:
    summary = env.run("primary_email_address;preferred_first_name\na@example.com;A\n")
    error = env.summary_json(summary)["error"]
    assert error["code"] == "malformed_csv"
    assert 'delimiter = ";"' in error["message"] and f"[tenants.{env.tenant}]" in error["message"]


@SQLITE_ONLY
def test_a_cp1252_file_for_a_utf8_tenant_names_the_likely_encoding_and_the_key(env: Env) -> None:
    text = "primary_email_address,preferred_first_name\na@example.com,Renée Müller-Lüdenscheid\n"
    summary = env.run_bytes(text.encode("cp1252"), "legacy.csv")
    error = env.summary_json(summary)["error"]
    assert error["code"] == "encoding_error"
    assert "line 2, column 18" in error["message"]
    assert 'encoding = "cp1252"' in error["message"] and f"[tenants.{env.tenant}]" in error["message"]


@SQLITE_ONLY
def test_an_explicit_encoding_that_does_not_decode_is_encoding_error(env: Env) -> None:
    env.reconfigure(encoding="utf-16")
    summary = env.run_bytes(b"\xff\xfep\x00r\x00i\x00\x00\xd8\n\x00", "odd.csv")  # a lone surrogate
    error = env.summary_json(summary)["error"]
    assert error["code"] == "encoding_error" and "utf-16" in error["message"]


# -- workbooks ------------------------------------------------------------------------------------


def workbook(rows: list[list[Any]], protect: bool = False) -> bytes:
    wb = openpyxl.Workbook()
    sheet = wb.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    wb.create_sheet("Notes").append(["this sheet is not read"])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


@SQLITE_ONLY
def test_an_xlsx_workbook_imports_from_its_first_sheet(env: Env) -> None:
    import datetime as dt

    env.reconfigure(**WORKDAY, ignore_columns=["Hire Date", "Full Time"])
    data = workbook(
        [
            [*WORKDAY_HEADER, "Hire Date", "Full Time"],
            [1001, "Ada", "Lovelace", "ada@example.com", "Engineer", "Engineering", "Active", dt.date(2020, 1, 31), True],
            [],  # a blank row is skipped, and row numbers stay the sheet's
            [1002.0, "Bob", None, "bob@example.com", None, "Sales", "Terminated", dt.datetime(2021, 5, 1), False],
            [1003, "Cy", "Bad", "not-an-email", "Rep", "Sales", "Active"],
        ]
    )  # fmt: skip
    summary = env.run_bytes(data, "report.xlsx")
    results = env.results(summary)
    assert [(r["row"], r["outcome"]) for r in results] == [("2", "created"), ("4", "created"), ("5", "error")]
    assert (results[0]["Employee ID"], results[0]["Hire Date"], results[0]["Full Time"]) == (
        "1001", "2020-01-31", "TRUE",
    )  # fmt: skip
    assert (results[1]["Employee ID"], results[1]["Hire Date"]) == ("1002", "2021-05-01")
    assert env.learner("ada@example.com").uid == "1001"
    assert env.learner("bob@example.com").status == "unassigned"
    assert (env.dirs.archive / f"report.{summary.job_id}.xlsx").read_bytes() == data
    assert not list(env.dirs.spool.glob("*.sheet.csv.tmp"))  # the echo copy is gone with the job


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"Employee ID,Email\n1,a@example.com\n", "not an Excel workbook"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "password-protected"),
        (b"PK\x05\x06" + bytes(18), "cannot be opened"),  # an empty zip
    ],
    ids=["csv-renamed", "protected", "empty-zip"],
)
@SQLITE_ONLY
def test_a_bad_or_protected_workbook_is_unreadable_workbook(env: Env, data: bytes, needle: str) -> None:
    summary = env.run_bytes(data, "report.xlsx")
    error = env.summary_json(summary)["error"]
    assert (error["code"], needle in error["message"]) == ("unreadable_workbook", True), error
    assert env.service.learners.count(env.service.jobs.tenant_id(env.tenant)) == 0


@SQLITE_ONLY
def test_a_workbook_with_a_damaged_sheet_is_unreadable_and_applies_nothing(env: Env, tmp_path: Path) -> None:
    import zipfile

    good = workbook([["primary_email_address"], *([f"p{i}@example.com"] for i in range(50))])
    src, out = io.BytesIO(good), io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            body = zin.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                body = body[: len(body) * 2 // 3]  # cut mid-sheet: rows parse, then the XML breaks
            zout.writestr(item, body)
    summary = env.run_bytes(out.getvalue(), "cut.xlsx")
    assert env.summary_json(summary)["error"]["code"] == "unreadable_workbook"
    assert env.service.learners.count(env.service.jobs.tenant_id(env.tenant)) == 0


# -- suggest-mapping -----------------------------------------------------------------------------


@SQLITE_ONLY
def test_suggest_mapping_drafts_a_block_that_imports_the_file(env: Env, tmp_path: Path) -> None:
    import tomllib

    from orgsyncd.suggest import render, suggest

    text = workday([ADA, BOB, ["1003", "Cy", "Sea", "cy@example.com", "Rep", "Sales", "Terminated"]])
    source = tmp_path / "report.csv"
    source.write_text(
        text.replace("\r\n", ",4711\r\n").replace("Worker Status,4711", "Worker Status,Cost Center")
    )
    drafted = render(suggest(source, env.tenant, STATUS))
    assert '# "Cost Center": not placed' in drafted
    block = tomllib.loads(f"[tenants.{env.tenant}]\n" + drafted)["tenants"][env.tenant]
    assert block["columns"]["Work Email"] == "primary_email_address"
    assert block["groups_from"] == ["Supervisory Organization"]
    assert block["values"][STATUS] == {"On Leave": "active", "Terminated": "inactive"}
    env.reconfigure(**block, ignore_columns=["Cost Center"])
    summary = env.service.import_file(env.tenant, source)
    assert summary.status == "succeeded" and summary.counts["created"] == 3


def test_suggest_mapping_names_delimiter_and_encoding_of_a_european_file(tmp_path: Path) -> None:
    from orgsyncd.suggest import render, suggest

    source = tmp_path / "mitarbeiter.csv"
    source.write_bytes((EURO_HEADER + EURO_ROWS).encode("cp1252"))
    drafted = render(suggest(source, "acme", None))
    assert 'delimiter = ";"' in drafted and 'encoding = "cp1252"' in drafted
    assert '"E-Mail" = "primary_email_address"' in drafted and '"Vorname" = "preferred_first_name"' in drafted


@SQLITE_ONLY
def test_the_readme_workday_example_gives_the_readme_results(env: Env) -> None:
    import re
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    example = repo / "examples" / "workday"
    cfg = tomllib.loads((example / "orgsyncd.toml").read_text())["tenants"]["acme"]
    env.tenant_cfg = {k: v for k, v in cfg.items() if k != "licenses"}
    env.reconfigure()
    readme = (repo / "README.md").read_text(encoding="utf-8")
    shown = readme.split("results.csv          # their header and rows, echoed\n", 1)[1].split("\n$ ", 1)[0]
    first = env.service.import_file(env.tenant, example / "day1.csv")
    got = env.results_text(first).replace("\r\n", "\n").replace(f"tenants.{env.tenant}.", "tenants.acme.")
    assert got.strip() == shown.strip()
    env.service.import_file(env.tenant, example / "day2.csv")
    exported = readme.split("export --tenant acme\n", 1)[1].split("\n```", 1)[0]
    assert re.sub(r"\r\n", "\n", env.export()).strip() == exported.strip()
