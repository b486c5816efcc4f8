"""The roster contract, row by row, against a real database (SQLite, and PostgreSQL when set)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.helpers import LIC, PRO, Env, roster

HEADER = [
    "preferred_first_name",
    "preferred_last_name",
    "primary_email_address",
    "work_title",
    f"{LIC}_status",
    "group/Engineering",
    "group/HR",
]
SPEC_EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "spec_examples"  # from the contract


def day1() -> str:
    return roster(
        HEADER,
        [
            ["John", "Doe", "john.doe@example.com", "Engineer", "active", 1, 0],
            ["Jane", "Smith", "jane.smith@example.com", "HR Partner", "active", 0, 1],
            ["Bob", "Bad", "not-an-email", "Engineer", "active", 1, 0],
        ],
    )


def test_worked_example_day1_then_day2(env: Env) -> None:
    first = env.run(day1(), name="day1.csv")
    assert first.status == "partially_succeeded"
    assert env.outcomes(first) == [
        ("2", "created", ""),
        ("3", "created", ""),
        ("4", "error", "invalid_email"),
    ]
    assert env.summary_json(first)["counts"] == {
        "created": 2, "updated": 0, "unchanged": 0, "deactivated": 0, "reactivated": 0, "error": 1, "warning": 0,
    }  # fmt: skip
    day2 = roster(
        HEADER,
        [
            ["Jonathan", "Doe", "john.doe@example.com", "Engineer", "active", 1, 0],
            ["Jane", "Smith", "jane.smith@example.com", "HR Partner", "active", 0, 0],
        ],
    )
    second = env.run(day2, name="day2.csv")
    assert [o for _, o, _ in env.outcomes(second)] == ["updated", "updated"]
    assert env.learner("john.doe@example.com").first_name == "Jonathan"
    assert env.learner("jane.smith@example.com").groups == []
    export = env.export()
    assert "Jonathan" in export and ",jane.smith@example.com,HR Partner,active,0,0" in export
    jane, john = (env.learner(e) for e in ("jane.smith@example.com", "john.doe@example.com"))
    # Leaving a group is the learner's only change: its own entry, no field entry saying nothing.
    assert [(e.action, e.after) for e in env.service.learners.audit(jane.id)][1:] == [("group_removed", "HR")]
    [renamed] = [e for e in env.service.learners.audit(john.id) if e.action == "updated"]
    assert renamed.before is not None and renamed.after is not None
    assert (renamed.before["first_name"], renamed.after["first_name"]) == ("John", "Jonathan")


def test_spec_example_file_gives_the_spec_results(env: Env) -> None:
    text = (SPEC_EXAMPLES / "day1.csv").read_text(encoding="utf-8")
    summary = env.run(text, name="day1.csv")
    expected = (SPEC_EXAMPLES / "day1.17.results.csv").read_text(encoding="utf-8").splitlines()
    got = (env.dirs.results / f"day1.{summary.job_id}.results.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[:3] for line in got] == [line.split(",")[:3] for line in expected]
    assert got[0] == expected[0]
    archived = env.dirs.archive / f"day1.{summary.job_id}.csv"
    assert archived.read_text(encoding="utf-8") == text


def test_reimporting_identical_content_is_unchanged(env: Env) -> None:
    env.run(day1())
    again = env.run(day1() + "\n")  # different bytes, same roster: not a duplicate file
    assert [o for _, o, _ in env.outcomes(again)] == ["unchanged", "unchanged", "error"]


def test_duplicate_in_file_first_occurrence_wins(env: Env) -> None:
    text = roster(
        ["primary_email_address", "preferred_first_name"],
        [["a@example.com", "First"], ["b@example.com", "B"], ["A@Example.com", "Second"]],
    )
    summary = env.run(text)
    assert env.outcomes(summary)[2] == ("4", "error", "duplicate_in_file")
    assert "line 2" in env.results(summary)[2]["message"]
    assert env.learner("a@example.com").first_name == "First"


def test_a_repeated_unchanged_row_is_still_a_duplicate(env: Env) -> None:
    """Unchanged rows are settled early on a re-import; a second copy must still be refused."""
    header = ["primary_email_address", "preferred_first_name"]
    env.run(roster(header, [["a@example.com", "A"], ["b@example.com", "B"]]))
    for mode in ("delta", "full"):
        again = env.run(
            roster(header, [["a@example.com", "A"], ["b@example.com", "B"], ["a@example.com", "A"]])
            + ("\n" if mode == "full" else ""),  # other bytes: not skipped as the same file
            mode=mode,
        )
        assert env.outcomes(again) == [
            ("2", "unchanged", ""),
            ("3", "unchanged", ""),
            ("4", "error", "duplicate_in_file"),
        ]
        assert again.counts["unchanged"] == 2 and again.counts["error"] == 1
        assert again.extra.get("deactivated_not_in_file", 0) == 0


def test_an_unchanged_row_reaching_a_learner_already_reached_by_email_is_a_duplicate(env: Env) -> None:
    header = ["unique_user_id", "primary_email_address", "preferred_first_name"]
    env.run(roster(header, [["U1", "a@example.com", "A"], ["U2", "b@example.com", "B"]]))
    # Line 2 has no uid and reaches U1 by email; line 3 is U1's own row, unchanged, and comes later.
    again = env.run(
        roster(
            header, [["", "a@example.com", "A"], ["U1", "a@example.com", "A"], ["U2", "b@example.com", "B"]]
        )
    )
    assert env.outcomes(again) == [
        ("2", "unchanged", ""),
        ("3", "error", "duplicate_in_file"),
        ("4", "unchanged", ""),
    ]
    assert "line 2" in env.results(again)[1]["message"]
    assert again.counts["unchanged"] == 2 and again.counts["error"] == 1


def test_a_reordered_file_that_changes_nothing_refreshes_the_fingerprints(env: Env) -> None:
    """Otherwise every later run of the new layout would take the slow, full comparison."""
    from sqlalchemy import text

    def fingerprints() -> list[int | None]:
        query = text("SELECT fp FROM learner WHERE tenant_id = :t ORDER BY email")
        with env.service.engine.connect() as conn:
            return [r[0] for r in conn.execute(query, {"t": env.service.jobs.tenant_id(env.tenant)})]

    header = ["primary_email_address", "preferred_first_name", "work_title"]
    env.run(roster(header, [["a@example.com", "A", "Dev"], ["b@example.com", "B", "Ops"]]))
    before = fingerprints()
    assert len(before) == 2 and None not in before
    reordered = roster(header[::-1], [["Dev", "A", "a@example.com"], ["Ops", "B", "b@example.com"]])
    again = env.run(reordered)
    assert [o for _, o, _ in env.outcomes(again)] == ["unchanged", "unchanged"]
    after = fingerprints()
    assert None not in after and all(x != y for x, y in zip(before, after, strict=True))
    third = env.run(reordered + "\n")  # other bytes, same rows: settled by the fingerprints
    assert [o for _, o, _ in env.outcomes(third)] == ["unchanged", "unchanged"]
    assert fingerprints() == after


def test_uid_changes_email_and_adopts_learner_without_uid(env: Env) -> None:
    env.run(roster(["primary_email_address"], [["old@example.com"], ["plain@example.com"]]))
    header = ["unique_user_id", "primary_email_address"]
    adopt = env.run(roster(header, [["U1", "old@example.com"], ["U2", "plain@example.com"]]))
    assert [(o, c) for _, o, c in env.outcomes(adopt)] == [
        ("updated", "uid_adopted"),
        ("updated", "uid_adopted"),
    ]
    moved = env.run(roster(header, [["U1", "new@example.com"]]))
    assert env.outcomes(moved) == [("2", "updated", "")]
    learner = env.learner("U1")
    assert learner.email == "new@example.com" and learner.uid == "U1"
    taken = env.run(roster(header, [["U1", "plain@example.com"]]))
    assert env.outcomes(taken) == [("2", "error", "email_taken")]
    assert env.learner("U1").email == "new@example.com"


def test_without_uid_a_changed_email_is_a_new_learner(env: Env) -> None:
    env.run(roster(["primary_email_address", "preferred_last_name"], [["x@example.com", "Doe"]]))
    summary = env.run(roster(["primary_email_address", "preferred_last_name"], [["y@example.com", "Doe"]]))
    assert env.outcomes(summary) == [("2", "created", "")]


def test_email_clash_inside_one_file(env: Env) -> None:
    header = ["unique_user_id", "primary_email_address"]
    summary = env.run(roster(header, [["U1", "same@example.com"], ["U2", "same@example.com"]]))
    assert env.outcomes(summary) == [("2", "created", ""), ("3", "error", "email_taken")]


def test_licence_lifecycle_deactivate_reactivate_history(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=1.0)  # a tenant of one: any deactivation is 100%
    header = ["primary_email_address", f"{LIC}_status"]
    env.run(roster(header, [["a@example.com", "active"]]))
    assert env.learner("a@example.com").status == "invited"
    off = env.run(roster(header, [["a@example.com", "inactive"]]))
    assert env.outcomes(off) == [("2", "deactivated", "")]
    learner = env.learner("a@example.com")
    assert (learner.status, learner.license_type) == ("deactivated", None)
    back = env.run(roster(header, [["a@example.com", "Active"]]))  # new bytes: not a duplicate file
    assert env.outcomes(back) == [("2", "reactivated", "")]
    history = env.service.learners.licence_history(learner.id)
    assert [(h.license_type, h.ended_at is None) for h in history] == [(LIC, False), (LIC, True)]
    assert history[0].ended_job_id == off.job_id and history[1].started_job_id == back.job_id


def test_active_column_true_false(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=1.0)  # a tenant of one: any deactivation is 100%
    header = ["primary_email_address", "active"]
    env.run(roster(header, [["a@example.com", "TRUE"], ["b@example.com", "no"]]))
    assert env.learner("a@example.com").license_type == LIC
    assert env.learner("b@example.com").status == "unassigned"
    summary = env.run(roster(header, [["a@example.com", "FALSE"]]))
    assert env.outcomes(summary) == [("2", "deactivated", "")]


def test_file_without_licence_column_leaves_licences_alone(env: Env) -> None:
    env.run(roster(["primary_email_address", f"{LIC}_status"], [["a@example.com", "active"]]))
    summary = env.run(
        roster(["primary_email_address", "work_title"], [["a@example.com", "CTO"], ["n@example.com", "New"]])
    )
    assert [o for _, o, _ in env.outcomes(summary)] == ["updated", "created"]
    assert env.learner("a@example.com").license_type == LIC
    assert env.learner("n@example.com").status == "unassigned"


def test_reassignment_keeps_one_licence(env: Env) -> None:
    env.reconfigure(licenses={LIC: 0, PRO: 0})
    header = ["primary_email_address", f"{LIC}_status", f"{PRO}_status"]
    env.run(roster(header, [["a@example.com", "active", ""]]))
    summary = env.run(roster(header, [["a@example.com", "", "active"]]))
    assert env.outcomes(summary) == [("2", "updated", "")]
    learner = env.learner("a@example.com")
    assert learner.license_type == PRO
    spans = env.service.learners.licence_history(learner.id)
    assert [(s.license_type, s.ended_at is None) for s in spans] == [(LIC, False), (PRO, True)]
    both = env.run(roster(header, [["b@example.com", "active", "active"]]))
    assert env.outcomes(both) == [("2", "error", "multiple_active_licenses")]


def test_seats_releases_before_activations(env: Env) -> None:
    env.reconfigure(licenses={LIC: 2}, max_deactivation_ratio=1.0)
    header = ["primary_email_address", f"{LIC}_status"]
    env.run(roster(header, [["a@example.com", "active"], ["b@example.com", "active"]]))
    full = env.run(roster(header, [["c@example.com", "active"], ["a@example.com", "inactive"]]))
    # a's seat is freed by this file first, so c gets it even though c comes earlier.
    assert env.outcomes(full) == [("2", "created", ""), ("3", "deactivated", "")]
    refused = env.run(roster(header, [["d@example.com", "active"], ["e@example.com", "active"]]))
    assert env.outcomes(refused) == [("2", "error", "no_seats"), ("3", "error", "no_seats")]
    message = env.results(refused)[0]["message"]
    assert "2 of 2 seats" in message
    assert env.service.learners.count(env.service.jobs.tenant_id(env.tenant)) == 3  # d, e not created


def test_groups_created_joined_left_and_inactive_group(env: Env) -> None:
    env.reconfigure(inactive_group="Inactive Learners", max_deactivation_ratio=1.0)
    header = ["primary_email_address", f"{LIC}_status", "group/Sales", "group/Berlin"]
    env.run(roster(header, [["a@example.com", "active", 1, 1]]))
    assert env.learner("a@example.com").groups == ["Berlin", "Sales"]
    env.run(roster(header, [["a@example.com", "active", 0, 1]]))
    assert env.learner("a@example.com").groups == ["Berlin"]
    env.run(roster(header, [["a@example.com", "inactive", 1, 1]]))
    assert env.learner("a@example.com").groups == ["Inactive Learners"]
    back = env.run(roster(header, [["a@example.com", "active", 1, ""]]))
    assert env.outcomes(back) == [("2", "reactivated", "")]
    assert env.learner("a@example.com").groups == ["Sales"]


def test_two_columns_naming_one_group_give_one_membership(env: Env) -> None:
    # Distinct headers, but group names compare casefolded: both columns are the group "Straße".
    header = ["primary_email_address", "group/Straße", "group/STRASSE"]
    first = env.run(roster(header, [["a@example.com", 1, 1], ["b@example.com", 0, 1]]))
    assert env.outcomes(first) == [("2", "created", ""), ("3", "created", "")]
    assert env.learner("a@example.com").groups == ["Straße"]
    assert env.learner("b@example.com").groups == ["Straße"]


def test_blank_means_modes(env: Env) -> None:
    header = ["primary_email_address", "preferred_first_name", "work_title"]
    env.run(roster(header, [["a@example.com", "Ann", "Dev"]]))
    kept = env.run(roster(header, [["a@example.com", "", "Dev"]]))
    assert env.outcomes(kept) == [("2", "unchanged", "")]
    env.reconfigure(blank_means="clear")
    cleared = env.run(roster(header, [["a@example.com", "", " Dev"]]))
    assert env.outcomes(cleared) == [("2", "updated", "")]
    assert env.learner("a@example.com").first_name is None
    env.reconfigure(blank_means="error")
    strict = env.run(roster(header, [["a@example.com", "", "Dev "]]))
    assert env.outcomes(strict) == [("2", "error", "blank_value")]


def test_every_row_level_code_and_one_line_per_row(env: Env) -> None:
    header = ["primary_email_address", "preferred_first_name", f"{LIC}_status", "group/X"]
    text = (
        roster(
            header,
            [
                ["ok@example.com", "Ok", "active", "1"],
                ["", "NoMail", "active", "1"],
                ["bad@", "Bad", "active", "1"],
                ["v@example.com", "V", "maybe", "1"],
                ["g@example.com", "G", "active", "yes"],
                ["long@example.com", "x" * 256, "active", "1"],
            ],
        )
        + "short@example.com,Short\n"
    )
    summary = env.run(text)
    assert [c for _, _, c in env.outcomes(summary)] == [
        "", "missing_email", "invalid_email", "invalid_value", "invalid_value", "value_too_long", "field_count",
    ]  # fmt: skip
    results = env.results(summary)
    assert "maybe" in results[3]["message"] and f"{LIC}_status" in results[3]["message"]
    assert "2" in results[6]["message"] and "4" in results[6]["message"]
    assert summary.status == "partially_succeeded"


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("", "empty_file", "no header"),
        ("\ufeff\n\n", "empty_file", "no header"),
        ("primary_email_address;name\na@x.com;b\n", "malformed_csv", "semicolon"),
        ("name,work_title\nx,y\n", "missing_required_column", "primary_email_address"),
        ("primary_email_address,Primary_Email\na@example.com,b@example.com\n", "duplicate_header", "repeats"),
        ("primary_email_address,group/\na@example.com,1\n", "invalid_header", "no group name"),
        ("primary_email_address,gold_status\na@example.com,active\n", "unknown_license", f"{LIC}_status"),
        ('primary_email_address,name\na@example.com,"unclosed\n', "malformed_csv", "line 2"),
    ],
)
def test_file_level_errors_apply_nothing(env: Env, text: str, code: str, needle: str) -> None:
    summary = env.run(text)
    assert summary.status == "failed"
    lines = env.results(summary)
    assert [(r["row"], r["outcome"], r["code"]) for r in lines] == [("0", "error", code)]
    assert needle in lines[0]["message"]
    assert env.service.learners.count(env.service.jobs.tenant_id(env.tenant)) == 0


def test_encoding_error_names_line_and_column(env: Env) -> None:
    path = env.root / "latin1.csv"
    path.write_bytes("primary_email_address,preferred_last_name\na@example.com,Ren\xe9\n".encode("latin-1"))
    summary = env.service.import_file(env.tenant, path)
    message = env.results(summary)[0]["message"]
    assert env.results(summary)[0]["code"] == "encoding_error"
    assert "line 2" in message and "column 18" in message and "CSV UTF-8" in message


def test_warnings_for_unknown_and_case_only_headers(env: Env) -> None:
    summary = env.run(roster(["Primary_Email_Address", "shoe_size"], [["a@example.com", "44"]]))
    lines = env.results(summary)
    assert {(r["row"], r["outcome"], r["code"]) for r in lines[:2]} == {
        ("0", "warning", "header_case"), ("0", "warning", "unknown_column"),
    }  # fmt: skip
    assert lines[2]["outcome"] == "created" and summary.counts["warning"] == 2
    env.reconfigure(strict_headers=True)
    strict = env.run(roster(["Primary_Email_Address"], [["b@example.com"]]))
    assert strict.status == "failed" and env.results(strict)[0]["code"] == "invalid_header"


def test_gzip_crlf_bom_and_quoted_newlines(env: Env) -> None:
    text = '\ufeffprimary_email_address,work_title\r\na@example.com,"Head of\r\nThings, ""Chief"""\r\nb@example.com,x\r\n'
    path = env.root / "roster.csv.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    summary = env.service.import_file(env.tenant, path)
    assert env.outcomes(summary) == [("2", "created", ""), ("4", "created", "")]
    assert env.learner("a@example.com").title == 'Head of\r\nThings, "Chief"'
    assert (env.dirs.archive / f"roster.{summary.job_id}.csv.gz").exists()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_results_use_the_input_line_endings_and_copy_records_byte_for_byte(env: Env, newline: str) -> None:
    records = [
        "primary_email_address,work_title,group/Sales",
        'ann@example.com,"Head of Sales, EMEA",1',
        "not-an-email,Engineer,0",
        'bo@example.com,"two\r\nlines",1',  # a quoted line end stays as sent, whatever the file uses
    ]
    summary = env.run(newline.join(records) + newline, name="endings.csv")
    raw = (env.dirs.results / f"endings.{summary.job_id}.results.csv").read_bytes().decode()
    assert raw.splitlines(keepends=True)[0].endswith(newline) and newline in raw
    assert f"2,created,,,{records[1]}{newline}" in raw  # the record as sent, quotes and all
    assert (newline == "\r\n") == ("\r\n" in raw.replace('"two\r\nlines"', ""))
    failed = env.run(newline.join(["primary_email_address;work_title", "a@example.com;x"]), name="semi.csv")
    head = (env.dirs.results / f"semi.{failed.job_id}.results.csv").read_bytes().decode()
    assert head.startswith(f"row,outcome,code,message{newline}0,error,malformed_csv,")


def test_formula_values_are_escaped_in_results_and_export_and_round_trip(env: Env) -> None:
    summary = env.run(roster(["primary_email_address", "work_title"], [["a@example.com", "=HYPERLINK(1)"]]))
    assert env.results(summary)[0]["work_title"] == "'=HYPERLINK(1)"
    assert env.learner("a@example.com").title == "=HYPERLINK(1)"
    export = env.export()
    assert "'=HYPERLINK(1)" in export
    again = env.run(export)
    assert [o for _, o, _ in env.outcomes(again)] == ["unchanged"]


def test_results_file_can_be_uploaded_again(env: Env) -> None:
    first = env.run(day1(), name="day1.csv")
    results_text = (env.dirs.results / f"day1.{first.job_id}.results.csv").read_text(encoding="utf-8")
    fixed = results_text.replace("not-an-email", "bob@example.com")
    summary = env.run(fixed, name="day1-fixed.csv")
    assert [o for _, o, _ in env.outcomes(summary)] == ["unchanged", "unchanged", "created"]
    assert env.results(summary)[0].keys() >= {"row", "outcome", "preferred_first_name"}


def test_a_big_roster_with_few_changes_applies_exactly_those(env: Env) -> None:
    env.reconfigure(inactive_group="Leavers")
    header = ["unique_user_id", "primary_email_address", "work_title", f"{LIC}_status", "group/A"]
    rows = [[f"U{i}", f"u{i}@example.com", "Dev", "active", 1] for i in range(40)]
    env.run(roster(header, rows))
    rows[3][2] = "Lead"  # title change
    rows[7][4] = 0  # leaves group A
    rows[9][3] = "inactive"  # deactivated: moves to Leavers
    rows[11][1] = "new11@example.com"  # email change by uid
    summary = env.run(roster(header, rows))
    changed = {r["row"]: r["outcome"] for r in env.results(summary) if r["outcome"] != "unchanged"}
    assert changed == {"5": "updated", "9": "updated", "11": "deactivated", "13": "updated"}
    assert env.learner("U3").title == "Lead" and env.learner("U0").title == "Dev"
    assert env.learner("U7").groups == [] and env.learner("U8").groups == ["A"]
    assert env.learner("U9").groups == ["Leavers"] and env.learner("U9").license_type is None
    assert env.learner("U11").email == "new11@example.com"


def test_group_names_with_quotes_are_data_not_sql(env: Env) -> None:
    """Group names come from the header, a tenant's text: a quote in one must not end an SQL literal."""
    sneaky = "group/x', (SELECT 'pwned')) --"
    summary = env.run(roster(["primary_email_address", "group/O'Brien team", sneaky], [["a@x.com", 1, 1]]))
    assert summary.status == "succeeded"
    assert sorted(env.learner("a@x.com").groups) == ["O'Brien team", sneaky.removeprefix("group/")]
    created = [a for a in env.service.learners.audit(env.learner("a@x.com").id) if a.action == "created"]
    assert created[0].after["group/O'Brien team"] == 1


def test_a_first_import_with_hundreds_of_group_columns(env: Env) -> None:
    """Both databases cap a function's arguments (PostgreSQL at 100); the audit of a created learner
    with every group flag must not run into it."""
    groups = [f"group/g{i}" for i in range(300)]
    summary = env.run(roster(["primary_email_address", *groups], [["a@x.com", *([1, 0] * 150)]]))
    assert summary.status == "succeeded" and summary.counts["created"] == 1
    assert len(env.learner("a@x.com").groups) == 150
    created = [a for a in env.service.learners.audit(env.learner("a@x.com").id) if a.action == "created"]
    assert created[0].after["group/g298"] == 1 and created[0].after["group/g299"] == 0
    assert created[0].after["email"] == "a@x.com"
