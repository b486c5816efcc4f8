"""For any sequence of imports, reverting the last one restores the exact state from before it:
every learner's fields and status, licence holders and seat counts, memberships, the tenant's
groups and the export. Learners the last job created are the one difference: they stay,
deactivated, without licence or groups."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.helpers import LIC, PRO, Env, roster

OPTIONAL = [
    "unique_user_id",
    "preferred_first_name",
    "work_title",
    f"{LIC}_status",
    f"{PRO}_status",
    "group/Sales",
    "group/R&D",
    "Department",  # a groups_from column for tenants that have one: its value names the group
]
_counter = itertools.count()

licence = st.sampled_from(["active", "inactive", ""])
cells = {
    "unique_user_id": st.one_of(st.just(""), st.integers(0, 6).map(lambda n: f"U{n}")),
    "preferred_first_name": st.sampled_from(["", "Ann", "Bob", "Łukasz"]),
    "work_title": st.sampled_from(["", "Staff", "Lead", "=cmd"]),
    f"{LIC}_status": licence,
    f"{PRO}_status": licence,
    "group/Sales": st.sampled_from(["1", "0", ""]),
    "group/R&D": st.sampled_from(["1", "0", ""]),
    "Department": st.sampled_from(["", "Sales", "Ops", "r&d"]),
}


@st.composite
def import_file(draw: st.DrawFn) -> tuple[str, str]:
    columns = draw(st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=len(OPTIONAL)))
    header = ["primary_email_address", *columns]
    rows = draw(
        st.lists(
            st.tuples(st.integers(0, 5), *(cells[c] for c in columns)).map(
                lambda t: [f"p{t[0]}@example.com", *t[1:]]
            ),
            min_size=1,
            max_size=8,
        )
    )
    mode = draw(st.sampled_from(["delta", "full"]))
    return mode, roster(header, rows)


tenant_config = st.fixed_dictionaries(
    {
        "licenses": st.sampled_from([{LIC: 0, PRO: 0}, {LIC: 4, PRO: 2}]),
        "inactive_group": st.sampled_from([None, "Leavers"]),
        "deactivate_after_missing_runs": st.sampled_from([1, 2]),
        "blank_means": st.sampled_from(["unchanged", "clear"]),
        "groups_from": st.sampled_from([[], ["Department"]]),
    }
)


@pytest.fixture
def fresh_env(tmp_path: Path, db_url: str) -> Any:
    """A new tenant per example on the same database (the caller closes it: a hundred open
    engines would use up PostgreSQL's connections)."""

    def make(config: dict[str, Any]) -> Env:
        name = f"r{next(_counter)}-{uuid.uuid4().hex[:6]}"
        env = Env(root=tmp_path / name, db_url=db_url, tenant=name)
        env.tenant_cfg.update({**config, "max_deactivation_ratio": 1.0})
        return env

    return make


def snapshot(env: Env) -> dict[str, Any]:
    tenant_id = env.service.jobs.tenant_id(env.tenant)
    params = {"t": tenant_id}
    with env.service.engine.connect() as conn:
        learners = conn.execute(
            text(
                "SELECT id, email, uid, first_name, last_name, title, status, license_type, missing_runs, "
                "created_job_id FROM learner WHERE tenant_id = :t"
            ),
            params,
        ).all()
        open_seats = conn.execute(
            text(
                "SELECT learner_id, license_type FROM license_assignment WHERE tenant_id = :t AND ended_at IS NULL"
            ),
            params,
        ).all()
        members = conn.execute(
            text(
                "SELECT m.learner_id, g.name, m.source FROM membership m "
                "JOIN learner_group g ON g.id = m.group_id WHERE g.tenant_id = :t"
            ),
            params,
        ).all()
        groups = conn.execute(text("SELECT name FROM learner_group WHERE tenant_id = :t"), params).all()
    return {
        "learners": {row[0]: tuple(row[1:9]) for row in learners},
        "created_by": {row[0]: row[9] for row in learners},
        "holders": sorted(open_seats),
        "seats": Counter(row[7] for row in learners if row[7]),
        "members": sorted(members),
        "groups": sorted(row[0] for row in groups),
        "export": env.export(),
    }


def without(state: dict[str, Any], ids: set[int]) -> dict[str, Any]:
    return {
        "learners": {k: v for k, v in state["learners"].items() if k not in ids},
        "holders": [h for h in state["holders"] if h[0] not in ids],
        "seats": state["seats"],
        "members": [m for m in state["members"] if m[0] not in ids],
    }


def export_rows(export: str, drop_emails: set[str], drop_column: str | None) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(export)))
    keep = [i for i, name in enumerate(rows[0]) if name != drop_column]
    email = rows[0].index("primary_email_address")
    return [[row[i] for i in keep] for row in rows if row[email] not in drop_emails]


QUICK = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
THOROUGH = settings(QUICK, max_examples=300)
imports = st.lists(import_file(), min_size=2, max_size=4)


@QUICK
@given(config=tenant_config, files=imports)
def test_reverting_the_last_job_restores_the_state_before_it(
    fresh_env: Any, config: dict[str, Any], files: list[tuple[str, str]]
) -> None:
    env: Env = fresh_env(config)
    try:
        check_revert_of_last(env, config, files)
    finally:
        env.close()


@pytest.mark.slow
@THOROUGH
@given(config=tenant_config, files=imports)
def test_reverting_the_last_job_restores_the_state_before_it_thoroughly(
    fresh_env: Any, config: dict[str, Any], files: list[tuple[str, str]]
) -> None:
    """The same rule over 300 examples (--run-slow)."""
    env: Env = fresh_env(config)
    try:
        check_revert_of_last(env, config, files)
    finally:
        env.close()


def check_revert_of_last(env: Env, config: dict[str, Any], files: list[tuple[str, str]]) -> None:
    for mode, body in files[:-1]:
        env.run(body, mode=mode)
    before = snapshot(env)
    mode, body = files[-1]
    last = env.run(body + "\n", mode=mode)  # the extra line end: never a duplicate of an earlier file
    if last.status not in ("succeeded", "partially_succeeded"):
        event(f"last job {last.status}: nothing to revert")
        return
    assert last.job_id is not None
    result = env.service.revert(last.job_id, "cli:property")
    assert result.status == "succeeded", result.message
    event("restored some" if result.restored else "restored none")
    event("deactivated created" if result.deactivated else "created none")
    after = snapshot(env)
    created = {lid for lid, job in after["created_by"].items() if job == last.job_id}
    assert without(after, created) == without(before, set())
    for lid in created:  # deactivated, not deleted
        status, licence_type = after["learners"][lid][5:7]
        assert (status, licence_type) == ("deactivated", None)
    leavers = config["inactive_group"]
    assert {name for lid, name, _ in after["members"] if lid in created} <= ({leavers} if leavers else set())
    # The groups and the export are as before; only a new inactive group may be there for them.
    new_group = leavers if created and leavers and leavers not in before["groups"] else None
    assert [g for g in after["groups"] if g != new_group] == before["groups"]
    emails = {after["learners"][lid][0] for lid in created}
    drop = f"group/{new_group}" if new_group else None
    assert export_rows(after["export"], emails, drop) == export_rows(before["export"], set(), None)
