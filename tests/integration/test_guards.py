"""Guards hold a job (with its code and plan file) instead of applying it; approval applies it."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from orgsyncd.core.results import Summary
from tests.helpers import LIC, PRO, Env, read_csv, roster

HEADER = ["unique_user_id", "primary_email_address", "preferred_first_name", "work_title", f"{LIC}_status"]
CLI = "cli:tester"


def people(n: int, status: str = "active", start: int = 0, title: str = "Staff") -> list[list[str]]:
    return [[f"U{i}", f"p{i}@example.com", f"P{i}", title, status] for i in range(start, start + n)]


def plan_lines(env: Env, summary: Summary) -> list[dict[str, str]]:
    stem = summary.file.rsplit(".csv", 1)[0]
    return read_csv(env.dirs.results / f"{stem}.{summary.job_id}.plan.csv")


def approve_and_run(env: Env, summary: Summary) -> str:
    assert summary.job_id is not None
    env.service.approve(summary.job_id, CLI)
    [result] = env.service.run_due()
    assert result.job_id == summary.job_id
    return result.status


def licensed(env: Env) -> int:
    return sum(1 for row in csv.DictReader(io.StringIO(env.export())) if row[f"{LIC}_status"] == "active")


def test_delta_threshold_holds_a_mass_deactivation(env: Env) -> None:
    env.run(roster(HEADER, people(20)), name="base.csv")
    held = env.run(roster(HEADER, people(5, status="inactive")), name="leavers.csv")
    assert held.status == "held"
    assert env.outcomes(held)[0] == ("0", "error", "threshold_exceeded")
    assert "this delta import would deactivate 5 of 20 licensed learners" in held.extra["message"]
    assert licensed(env) == 20  # nothing applied
    lines = plan_lines(env, held)
    assert [line["action"] for line in lines] == ["deactivate"] * 5
    assert held.extra["plan"] == {"file": f"results/leavers.{held.job_id}.plan.csv", "learners": 5}
    assert approve_and_run(env, held) == "succeeded"
    assert licensed(env) == 15


def test_delta_under_the_threshold_applies(env: Env) -> None:
    env.run(roster(HEADER, people(20)), name="base.csv")
    assert env.run(roster(HEADER, people(2, status="inactive")), name="two.csv").status == "succeeded"


def test_plan_file_lists_every_kind_of_change(env: Env) -> None:
    env.reconfigure(licenses={LIC: 0, PRO: 0}, max_deactivation_ratio=1.0, inactive_group="Leavers")
    header = [*HEADER, f"{PRO}_status", "group/Sales"]
    base = [
        ["U1", "a@example.com", "Ann", "Staff", "active", "", 1],
        ["U2", "b@example.com", "Bob", "Staff", "active", "", 0],
        ["U3", "c@example.com", "Cy", "Staff", "active", "", 0],
        ["U4", "d@example.com", "Di", "Staff", "active", "", 0],
        ["U5", "e@example.com", "Ed", "Staff", "active", "", 0],
    ]
    env.run(roster(header, base), name="base.csv", mode="full")
    env.run(roster(HEADER, [["U4", "d@example.com", "Di", "Staff", "inactive"]]), name="d_leaves.csv")
    env.reconfigure(max_deactivations=0)  # from now on any deactivation holds
    today = [
        ["U1", "a@example.com", "Ann", "Lead", "active", "", 0],  # title, leaves Sales
        ["U2", "b@example.com", "Bob", "Staff", "", "active", 0],  # licence moves to PRO
        ["U3", "c@example.com", "Cy", "Staff", "inactive", "", 0],  # licence off
        ["U4", "d@example.com", "Di", "Staff", "active", "", 0],  # licence back
        ["U6", "new@example.com", "Neu", "Intern", "active", "", 1],  # a new hire
    ]  # U5 is left out of the full file
    held = env.run(roster(header, today), name="today.csv", mode="full")
    assert held.status == "held"
    lines = {line["primary_email_address"]: line for line in plan_lines(env, held)}
    assert {email: line["action"] for email, line in lines.items()} == {
        "a@example.com": "update",
        "b@example.com": "reassign",
        "c@example.com": "deactivate",
        "d@example.com": "reactivate",
        "new@example.com": "create",
        "e@example.com": "deactivate",
    }
    assert lines["a@example.com"]["changes"] == "work_title: Staff -> Lead; group/Sales: 1 -> 0"
    assert lines["b@example.com"]["changes"] == (
        f"{LIC}_status: active -> inactive; {PRO}_status: inactive -> active"
    )
    assert lines["c@example.com"]["changes"] == (
        f"{LIC}_status: active -> inactive; status: invited -> deactivated; "
        "group/Leavers: 0 -> 1; (leaves its other groups for 'Leavers')"
    )
    assert lines["d@example.com"]["changes"] == (
        f"{LIC}_status: inactive -> active; status: deactivated -> invited; group/Leavers: 1 -> 0"
    )
    assert lines["new@example.com"]["changes"] == (
        "primary_email_address: (empty) -> new@example.com; unique_user_id: (empty) -> U6; "
        f"preferred_first_name: (empty) -> Neu; work_title: (empty) -> Intern; {LIC}_status: inactive -> active; "
        "group/Sales: 0 -> 1"
    )
    assert lines["e@example.com"]["changes"].endswith(
        "(not in the full file, leaves its other groups for 'Leavers')"
    )
    assert (lines["e@example.com"]["unique_user_id"], lines["e@example.com"]["preferred_first_name"]) == (
        "U5",
        "Ed",
    )
    assert lines["b@example.com"]["action"] == "reassign"
    assert env.learner("c@example.com").license_type == LIC  # held: nothing applied


def test_deactivate_after_missing_runs_gives_grace(env: Env) -> None:
    env.reconfigure(deactivate_after_missing_runs=3, max_deactivation_ratio=1.0)
    env.run(roster(HEADER, people(4)), name="base.csv", mode="full")
    for day in (1, 2):
        summary = env.run(roster(HEADER, people(3, title=f"day{day}")), name=f"day{day}.csv", mode="full")
        assert summary.status == "succeeded"
        assert (summary.extra["missing_in_grace"], summary.extra["deactivated_not_in_file"]) == (1, 0)
        assert env.learner("p3@example.com").license_type == LIC
    back = env.run(
        roster(HEADER, people(4, title="back")), name="back.csv", mode="full"
    )  # present again: count resets
    assert back.extra["missing_in_grace"] == 0
    for day in (3, 4):
        summary = env.run(roster(HEADER, people(3, title=f"day{day}")), name=f"day{day}.csv", mode="full")
        assert summary.extra["missing_in_grace"] == 1
    third = env.run(roster(HEADER, people(3, title="day5")), name="day5.csv", mode="full")
    assert (third.extra["missing_in_grace"], third.extra["deactivated_not_in_file"]) == (0, 1)
    assert env.learner("p3@example.com").status == "deactivated"
    # A delta file never counts as a run that left anyone out.
    assert "missing_in_grace" not in env.run(roster(HEADER, people(1)), name="delta.csv").extra


def test_header_change_holds_a_full_file(env: Env) -> None:
    env.reconfigure(hold_on_header_change=True)
    env.run(roster(HEADER, people(3)), name="base.csv", mode="full")
    assert env.run(roster(HEADER[::-1], [row[::-1] for row in people(3)]), mode="full").status == "succeeded"
    changed = [h for h in HEADER if h != "work_title"] + ["group/HR"]
    held = env.run(roster(changed, [[*row[:3], row[4], 1] for row in people(3)]), name="new.csv", mode="full")
    assert held.status == "held" and held.extra["held"] == ["header_changed"]
    code, message = env.results(held)[0]["code"], env.results(held)[0]["message"]
    assert code == "header_changed"
    assert "added 'group/HR'" in message and "removed 'work_title'" in message
    assert len(plan_lines(env, held)) == 3  # each joins group HR
    assert approve_and_run(env, held) == "succeeded"
    # The approved file's header is the new baseline; delta files are never compared.
    again = env.run(roster(changed, people_hr(title="x")), name="next.csv", mode="full")
    assert again.status == "succeeded", again.extra
    assert env.run(roster(HEADER, people(1)), name="d.csv", mode="delta").status == "succeeded"


def people_hr(title: str = "") -> list[list[object]]:
    return [[f"U{i}", f"p{i}@example.com", f"P{i}{title}", "active", 1] for i in range(3)]


def test_stale_file_by_name_is_held(env: Env) -> None:
    env.reconfigure(hold_stale_files=True)
    assert env.run(roster(HEADER, people(2)), name="roster_20240502.csv").status == "succeeded"
    held = env.run(roster(HEADER, people(3)), name="roster_20240501.csv")
    assert held.status == "held" and env.results(held)[0]["code"] == "stale_file"
    assert "2024-05-01" in held.extra["message"] and "2024-05-02" in held.extra["message"]
    assert [line["action"] for line in plan_lines(env, held)] == ["create"]
    assert approve_and_run(env, held) == "succeeded"


def test_stale_file_by_mtime_is_held(env: Env, tmp_path: Path) -> None:
    env.reconfigure(hold_stale_files=True)
    fresh = env.write(roster(HEADER, people(1)), name="fresh.csv")
    os.utime(fresh, (1_700_000_000, 1_700_000_000))
    assert env.service.import_file(env.tenant, fresh).status == "succeeded"
    old = env.write(roster(HEADER, people(2)), name="old.csv")
    os.utime(old, (1_600_000_000, 1_600_000_000))
    assert env.service.import_file(env.tenant, old).status == "held"


def test_stale_guard_is_off_by_default(env: Env) -> None:
    env.run(roster(HEADER, people(2)), name="roster_20240502.csv")
    assert env.run(roster(HEADER, people(3)), name="roster_20240501.csv").status == "succeeded"


def test_an_empty_full_file_fails_and_deactivates_nobody(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=1.0)
    env.run(roster(HEADER, people(3)), name="base.csv")
    empty = env.run(roster(HEADER, []), name="full_empty.csv")
    assert empty.status == "failed"
    assert env.outcomes(empty) == [("0", "error", "empty_roster")]
    assert licensed(env) == 3
    assert env.run(roster(HEADER, []), name="delta_empty.csv").status == "succeeded"  # delta: nothing to do
    dry = env.service.import_file(env.tenant, env.write(roster(HEADER, []), name="full_x.csv"), dry_run=True)
    assert dry.extra["error"]["code"] == "empty_roster"
