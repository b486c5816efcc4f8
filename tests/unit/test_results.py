"""orgsyncd.core.results: formula escaping, the results CSV, the summary and its status."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orgsyncd.core.header import HeaderRules, Issue, analyse_header
from orgsyncd.core.reader import read_records
from orgsyncd.core.results import (
    OUTCOMES,
    RESULT_HEADER,
    ResultsWriter,
    Summary,
    escape,
    iso,
    summary_status,
    write_json,
)
from orgsyncd.core.rows import Rejected, RowRules, RowValidator, clean, roster_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "spec_examples"  # from the contract
LIC = "default_license_learning_proalllanguages"
FORMULA = "=+-@\t\r"


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


# -- escape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+49 30 1234", "'+49 30 1234"),
        ("-5", "'-5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("=", "'="),
        ("", ""),
        ("plain", "plain"),
        ("a=b", "a=b"),
        (" =1", " =1"),
        ("'=1", "'=1"),
        ("\nx", "\nx"),
        ("%x", "%x"),
        ("|x", "|x"),
        ("0", "0"),
    ],
)
def test_escape(value: str, expected: str) -> None:
    assert escape(value) == expected


@pytest.mark.parametrize("char", [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\r", "\n", "\x00"])
def test_escape_prefixes_exactly_the_formula_characters(char: str) -> None:
    assert (escape(char + "x") == "'" + char + "x") is (char in FORMULA)


# Values clean() can produce: stripped, and not a quote followed by a formula character.
cleaned_values = (
    st.one_of(
        st.text(max_size=30),
        st.builds(lambda c, t: c + t, st.sampled_from([*FORMULA, "'", "''"]), st.text(max_size=10)),
    )
    .map(str.strip)
    .filter(lambda v: not (len(v) > 1 and v[0] == "'" and v[1] in FORMULA))
)


@settings(max_examples=300, deadline=None)
@given(cleaned_values)
@example("=1+1")
@example("-")
@example("@")
@example("'")
@example("'abc")
@example("''=1")
def test_clean_undoes_escape(value: str) -> None:
    assert clean(value) == value  # really is a value clean() can produce
    assert clean(escape(value)) == value


@pytest.mark.parametrize("raw", ["\tabc", "\t=1", "\r-5", "\t Manager"])
def test_reuploaded_echo_of_a_raw_value_imports_the_same(raw: str) -> None:
    assert clean(escape(raw)) == clean(raw)


# -- ResultsWriter ---------------------------------------------------------------------------


def written(header: list[str] | None, issues=(), outcomes=(), records=(), count=None) -> list[list[str]]:
    out = io.StringIO(newline="")
    writer = ResultsWriter(out, header)
    writer.issues(issues)
    assert writer.rows(outcomes, iter(records)) == (len(outcomes) if count is None else count)
    text = out.getvalue()
    assert text.endswith("\r\n")
    return parse(text)


def test_worked_example_is_reproduced(tmp_path: Path) -> None:
    expected = parse((EXAMPLES / "day1.17.results.csv").read_text(encoding="utf-8"))
    records = list(read_records(EXAMPLES / "day1.csv"))
    header = records[0][1]
    outcomes = [(int(r[0]), r[1], r[2] or None, r[3] or None) for r in expected[1:]]
    assert written(header, outcomes=outcomes, records=records[1:]) == expected


def test_records_without_an_outcome_take_the_given_default() -> None:
    """A first import leaves its commonest outcome implicit the same way."""
    out = io.StringIO(newline="")
    writer = ResultsWriter(out, ["primary_email_address"])
    outcomes = [(3, "error", "invalid_email", "bad")]
    assert writer.rows(outcomes, iter([(2, ["a@x.com"]), (3, ["b"])]), default="created") == 2
    assert parse(out.getvalue())[1:] == [
        ["2", "created", "", "", "a@x.com"],
        ["3", "error", "invalid_email", "bad", "b"],
    ]


def test_header_and_rows_echo_input_with_row_zero_issues_first() -> None:
    header = ["primary_email_address", "work_title", "department"]
    issues = [
        Issue("warning", "unknown_column", "column 3 'department' is not a roster column; ignored"),
        Issue("warning", "header_case", "column 'X' was matched to 'x' by ignoring case"),
    ]
    outcomes = [(2, "created", None, None), (4, "error", "invalid_email", "bad address")]
    records = [(2, ["a@x.com", "Engineer", "R&D"]), (4, ["nope", " Sales ", ""])]
    assert written(header, issues, outcomes, records) == [
        ["row", "outcome", "code", "message", "primary_email_address", "work_title", "department"],
        ["0", "warning", "unknown_column", "column 3 'department' is not a roster column; ignored"],
        ["0", "warning", "header_case", "column 'X' was matched to 'x' by ignoring case"],
        ["2", "created", "", "", "a@x.com", "Engineer", "R&D"],
        ["4", "error", "invalid_email", "bad address", "nope", " Sales ", ""],
    ]


def test_results_columns_in_the_input_are_not_echoed() -> None:
    header = ["row", "Outcome", " CODE ", "message", "primary_email_address", "work_title"]
    outcomes = [(2, "unchanged", None, None)]
    records = [(2, ["5", "error", "invalid_email", "old message", "a@x.com", "Eng"])]
    assert written(header, outcomes=outcomes, records=records) == [
        [*RESULT_HEADER, "primary_email_address", "work_title"],
        ["2", "unchanged", "", "", "a@x.com", "Eng"],
    ]


def test_echoed_values_and_header_names_are_formula_escaped() -> None:
    header = ["primary_email_address", "=cmd", "work_title"]
    outcomes = [(2, "created", None, None), (3, "created", None, None)]
    records = [
        (2, ["a@x.com", "+1", "=HYPERLINK(1)"]),
        (3, ["b@x.com", "x\x1f=y", "-"]),
    ]
    assert written(header, outcomes=outcomes, records=records) == [
        [*RESULT_HEADER, "primary_email_address", "'=cmd", "work_title"],
        ["2", "created", "", "", "a@x.com", "'+1", "'=HYPERLINK(1)"],
        ["3", "created", "", "", "b@x.com", "x\x1f=y", "'-"],
    ]


def test_multiline_values_survive_the_round_trip() -> None:
    outcomes = [(2, "created", None, None)]
    records = [(2, ["a@x.com", 'line one\nline "two", more'])]
    rows = written(["primary_email_address", "work_title"], outcomes=outcomes, records=records)
    assert rows[1] == ["2", "created", "", "", "a@x.com", 'line one\nline "two", more']


def test_header_none_writes_only_the_results_columns() -> None:
    rows = written(None, [Issue("error", "encoding_error", "bad byte")])
    assert rows == [list(RESULT_HEADER), ["0", "error", "encoding_error", "bad byte"]]


def test_rows_out_of_step_with_the_input_are_refused() -> None:
    writer = ResultsWriter(io.StringIO(), ["primary_email_address"])
    with pytest.raises(RuntimeError, match="no input row for line 2"):
        writer.rows([(2, "created", None, None)], iter([(3, ["a@x.com"])]))


def test_fewer_records_than_outcomes_is_refused() -> None:
    writer = ResultsWriter(io.StringIO(), ["primary_email_address"])
    with pytest.raises(RuntimeError, match="no input row for line 3"):
        writer.rows([(2, "created", None, None), (3, "created", None, None)], iter([(2, ["a"])]))


def test_records_without_an_outcome_are_unchanged() -> None:
    """The plan lists only rows that are not unchanged; the writer fills in the rest."""
    outcomes = [(3, "updated", None, None)]
    records = [(2, ["a@x.com"]), (3, ["b@x.com"]), (5, ["c@x.com"])]
    assert written(["primary_email_address"], outcomes=outcomes, records=records, count=3)[1:] == [
        ["2", "unchanged", "", "", "a@x.com"],
        ["3", "updated", "", "", "b@x.com"],
        ["5", "unchanged", "", "", "c@x.com"],
    ]


def test_results_file_with_warnings_uploads_again_without_new_errors(tmp_path: Path) -> None:
    header = ["primary_email_address", "department"]
    rules = HeaderRules([LIC], LIC)
    layout = analyse_header(header, rules)
    assert [w.code for w in layout.warnings] == ["unknown_column"]
    out = io.StringIO(newline="")
    writer = ResultsWriter(out, header)
    writer.issues(layout.warnings)
    writer.rows([(2, "created", None, None)], iter([(2, ["a@x.com", "R&D"])]))
    again = tmp_path / "day1.17.results.csv"
    again.write_text(out.getvalue(), encoding="utf-8", newline="")

    records = list(read_records(again))
    layout2 = analyse_header(records[0][1], rules)
    validator = RowValidator(layout2, RowRules("unchanged", LIC))
    rows = roster_rows(iter(records[1:]), layout2)
    rejected = [row for line, fields in rows if isinstance(row := validator.validate(line, fields), Rejected)]
    assert rejected == [], "every line of the uploaded results file should import cleanly"


# -- summary status --------------------------------------------------------------------------


def counts(**values: int) -> dict[str, int]:
    return {key: values.get(key, 0) for key in OUTCOMES}


@pytest.mark.parametrize(
    ("given", "file_error", "status"),
    [
        (counts(created=2, updated=1), False, "succeeded"),
        (counts(unchanged=5), False, "succeeded"),
        (counts(created=1, warning=3), False, "succeeded"),
        (counts(), False, "succeeded"),  # header-only file
        (counts(warning=1), False, "succeeded"),  # header-only file with a header warning
        (counts(created=2, error=1), False, "partially_succeeded"),
        (counts(deactivated=1, error=1, warning=1), False, "partially_succeeded"),
        (counts(error=3), False, "failed"),
        (counts(error=3, warning=2), False, "failed"),
        (counts(), True, "failed"),
        (counts(created=5), True, "failed"),
    ],
)
def test_summary_status(given: dict[str, int], file_error: bool, status: str) -> None:
    assert summary_status(given, file_error) == status


def test_summary_status_accepts_sparse_counts() -> None:
    assert summary_status({"error": 1}, False) == "failed"
    assert summary_status({"created": 1, "error": 1}, False) == "partially_succeeded"
    assert summary_status({}, False) == "succeeded"


# -- summary ---------------------------------------------------------------------------------

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def test_summary_has_exactly_the_keys_of_the_worked_example() -> None:
    example_json = json.loads((EXAMPLES / "day1.17.summary.json").read_text(encoding="utf-8"))
    t0 = datetime(2026, 11, 23, 8, 59, 41, 123456, tzinfo=UTC)
    summary = Summary(
        job_id=17,
        tenant="acme",
        file="day1.csv",
        sha256="ab" * 32,
        mode="delta",
        status="partially_succeeded",
        counts={"created": 2, "error": 1},
        received_at=t0,
        started_at=t0 + timedelta(seconds=19),
        finished_at=t0 + timedelta(seconds=19, microseconds=500000),
    )
    data = summary.as_dict()
    assert list(data) == list(example_json)
    assert list(data["counts"]) == list(example_json["counts"])
    assert data["counts"] == {**dict.fromkeys(example_json["counts"], 0), "created": 2, "error": 1}
    assert data["received_at"] == "2026-11-23T08:59:41Z"
    assert data["started_at"] == "2026-11-23T09:00:00Z"
    assert data["finished_at"] == "2026-11-23T09:00:00Z"
    for key in ("received_at", "started_at", "finished_at"):
        assert ISO_Z.match(example_json[key])
        assert ISO_Z.match(data[key])
    assert {k: data[k] for k in ("job_id", "tenant", "file", "mode", "status")} == {
        "job_id": 17,
        "tenant": "acme",
        "file": "day1.csv",
        "mode": "delta",
        "status": "partially_succeeded",
    }


def test_summary_extra_keys_are_added() -> None:
    summary = Summary(
        job_id=18,
        tenant="acme",
        file="day1.csv",
        sha256="0" * 64,
        mode="delta",
        status="duplicate",
        extra={"duplicate_of": 17},
    )
    data = summary.as_dict()
    assert data["duplicate_of"] == 17
    assert data["received_at"] is None
    assert data["counts"] == dict.fromkeys(OUTCOMES, 0)
    assert len(data) == 11


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05Z"),  # naive = UTC
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))), "2026-01-02T01:04:05Z"),
        (datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5))), "2025-12-31T19:30:00Z"),
        ("2026-01-02 03:04:05.678901", "2026-01-02T03:04:05Z"),  # SQLite text
        ("2026-01-02T03:04:05+01:00", "2026-01-02T02:04:05Z"),
        (None, None),
    ],
)
def test_iso(moment: datetime | str | None, expected: str | None) -> None:
    assert iso(moment) == expected


def test_write_json(tmp_path: Path) -> None:
    path = tmp_path / "x.summary.json"
    write_json(path, {"tenant": "acme", "file": "Zoë.csv", "counts": {"created": 1}})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert "Zoë.csv" in text  # not \u-escaped
    assert json.loads(text) == {"tenant": "acme", "file": "Zoë.csv", "counts": {"created": 1}}


def test_echo_fast_path_matches_the_csv_path(tmp_path: Path) -> None:
    """Copying one-line records verbatim must give the values the CSV writer would, with the same
    escaping, and keep plain lines byte for byte."""
    from orgsyncd.core.reader import read_echo_records

    text = (
        "primary_email_address,work_title,group/A\r\n"
        "a@x.com,Dev,1\r\n"
        'b@x.com,"Head, ""Ops""\r\nand more",0\r\n'
        "\r\n"
        "c@x.com,=SUM(1),1\r\n"
        "d@x.com,-5,\r\n"
        'e@x.com,"Lead, ""QA""",0\r\n'
        '"f@x.com","=1+1",1\r\n'
        '""\r\n'
        'g@x.com,a"b,1\r\n'
        '"=h@x.com",x,1\r\n'
    )
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8", newline="")
    header = ["primary_email_address", "work_title", "group/A"]
    outcomes = [(2, "created", None, None), (3, "error", "invalid_value", 'x "y", z'), (6, "created", None, None),
                (8, "updated", None, None), (11, "error", "invalid_email", "no")]  # fmt: skip
    slow, fast = io.StringIO(newline=""), io.StringIO(newline="")
    records = read_records(path)
    next(records)
    assert ResultsWriter(slow, header).rows(outcomes, records) == 8
    echoes = read_echo_records(path)
    next(echoes)
    assert ResultsWriter(fast, header).echo_rows(outcomes, echoes) == 8
    assert parse(fast.getvalue()) == parse(slow.getvalue())
    lines = fast.getvalue().split("\r\n")
    assert "2,created,,,a@x.com,Dev,1" in lines
    assert '8,updated,,,e@x.com,"Lead, ""QA""",0' in lines  # quoted, one line: copied as it is
    assert [row[:2] for row in parse(fast.getvalue())[1:]] == [
        ["2", "created"], ["3", "error"], ["6", "created"], ["7", "unchanged"], ["8", "updated"],
        ["9", "unchanged"], ["11", "error"], ["12", "unchanged"],
    ]  # fmt: skip
    values = [row[4:] for row in parse(fast.getvalue())[1:]]
    assert ["c@x.com", "'=SUM(1)", "1"] in values and ["d@x.com", "'-5", ""] in values
    assert ["f@x.com", "'=1+1", "1"] in values and ["'=h@x.com", "x", "1"] in values
    assert ["g@x.com", 'a"b', "1"] in values
