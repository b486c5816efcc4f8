"""Rules that hold for every roster: export -> import is a no-op, importing twice changes nothing
the second time, and results always have exactly one line per input row."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import LIC, Env, roster

HEADER = [
    "unique_user_id",
    "preferred_first_name",
    "preferred_last_name",
    "primary_email_address",
    "work_title",
    f"{LIC}_status",
    "group/Sales",
    "group/R&D, Berlin",
]
_counter = itertools.count()

# Values an HRIS really sends: accents, CJK, commas, quotes, line breaks, formula-looking text.
cell = st.text(
    alphabet=st.sampled_from(list("abcXYZ éøßŁ山田 ,\"'=+-@\n\r")),
    max_size=12,
)
row = st.tuples(
    st.one_of(st.none(), st.integers(0, 40).map(lambda n: f"U{n}")),
    cell,
    cell,
    st.integers(0, 60),
    cell,
    st.sampled_from(["active", "inactive", "", "ACTIVE"]),
    st.sampled_from(["1", "0", ""]),
    st.sampled_from(["1", "0", ""]),
)
rosters = st.lists(row, max_size=25)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def fresh_env(tmp_path: Path, db_url: str) -> Iterator[object]:
    """A new tenant per example on the same database (and a data directory of its own)."""
    envs: list[Env] = []

    def make() -> Env:
        name = f"p{next(_counter)}-{uuid.uuid4().hex[:6]}"
        env = Env(root=tmp_path / name, db_url=db_url, tenant=name)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def to_csv(rows: list[tuple[object, ...]], newline: str = "\r\n") -> str:
    return roster(
        HEADER,
        [[uid, f, la, f"person{n}@example.com", t, s, g1, g2] for uid, f, la, n, t, s, g1, g2 in rows],
        newline=newline,
    )


def outcomes(env: Env, summary: object) -> list[str]:
    return [r["outcome"] for r in env.results(summary)]  # type: ignore[arg-type]


@SETTINGS
@given(rows=rosters)
def test_export_then_import_is_a_no_op(fresh_env: object, rows: list[tuple[object, ...]]) -> None:
    env = fresh_env()  # type: ignore[operator]
    env.run(to_csv(rows))
    exported = env.export()
    empty = env.service.learners.count(env.service.jobs.tenant_id(env.tenant)) == 0
    for mode in ("delta", "full"):
        again = env.run(exported + ("\n" if mode == "full" else ""), name=f"export-{mode}.csv", mode=mode)
        if empty and mode == "full":  # a full file with no rows never deactivates anyone
            assert again.extra["error"]["code"] == "empty_roster"
            continue
        assert set(outcomes(env, again)) <= {"unchanged"}, outcomes(env, again)
        assert again.extra.get("deactivated_not_in_file", 0) == 0
    assert env.export() == exported


@SETTINGS
@given(rows=rosters)
def test_importing_the_same_roster_twice_changes_nothing_the_second_time(
    fresh_env: object, rows: list[tuple[object, ...]]
) -> None:
    env = fresh_env()  # type: ignore[operator]
    text = to_csv(rows)
    first = env.run(text)
    state = env.export()
    second = env.run(text + "\n")  # other bytes, same roster: not skipped as a duplicate file
    firsts, seconds = outcomes(env, first), outcomes(env, second)
    assert len(firsts) == len(seconds)
    for before, after in zip(firsts, seconds, strict=True):
        assert after == ("error" if before == "error" else "unchanged")
    assert env.export() == state


@SETTINGS
@given(rows=rosters, crlf=st.booleans(), trailing_blank=st.booleans())
def test_results_have_exactly_one_line_per_input_row(
    fresh_env: object, rows: list[tuple[object, ...]], crlf: bool, trailing_blank: bool
) -> None:
    env = fresh_env()  # type: ignore[operator]
    text = to_csv(rows, newline="\r\n" if crlf else "\n")
    if trailing_blank:
        text += "\n"
    summary = env.run(text)
    lines = [r for r in env.results(summary) if r["row"] != "0"]
    starts = _record_start_lines(text)
    assert [int(r["row"]) for r in lines] == starts
    assert sum(summary.counts[k] for k in summary.counts if k != "warning") == len(rows)
    echoed = [r["primary_email_address"] for r in lines]
    assert echoed == [f"person{r[3]}@example.com" for r in rows]
    # The results file ends its lines as the input does (line ends inside quoted cells aside).
    stem = summary.file.rsplit(".csv", 1)[0]
    raw = (env.dirs.results / f"{stem}.{summary.job_id}.results.csv").read_bytes()
    header_end = raw.split(b"row,outcome,code,message", 1)[1].split(b"\n", 1)[0]
    assert header_end.endswith(b"\r") == crlf


def _record_start_lines(text: str) -> list[int]:
    """Where each data record starts, computed independently of orgsyncd's reader."""
    reader = csv.reader(io.StringIO(text, newline=""))
    starts, previous = [], 0
    for fields in reader:
        if fields and previous > 0:
            starts.append(previous + 1)
        previous = reader.line_num
    return starts


# Their names for our columns: anything an HRIS might print (no leading BOM; not one of our names).
their_name = st.text(alphabet=st.sampled_from(list("abcdeXYZ é_-#/.:()")), min_size=1, max_size=14).filter(
    lambda n: (
        n.strip() and n.strip().lower() not in {*map(str.lower, HEADER), "row", "outcome", "code", "message"}
    )
)
renamings = st.lists(
    their_name, min_size=len(HEADER), max_size=len(HEADER), unique_by=lambda n: n.strip().lower()
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # renaming happens before the database
@SETTINGS
@given(rows=rosters, names=renamings, twice=st.booleans())
def test_a_renamed_roster_with_its_columns_block_applies_what_the_original_applies(
    fresh_env: object, rows: list[tuple[object, ...]], names: list[str], twice: bool
) -> None:
    ours, theirs = fresh_env(), fresh_env()  # type: ignore[operator]
    theirs.reconfigure(columns=dict(zip(names, HEADER, strict=True)))
    original = to_csv(rows)
    renamed = _renamed(original, names)
    runs = [(original, renamed), (original + "\n", renamed + "\n")] if twice else [(original, renamed)]
    for mine, yours in runs:
        a, b = ours.run(mine), theirs.run(yours)
        assert [(r["row"], r["outcome"], r["code"]) for r in ours.results(a)] == [
            (r["row"], r["outcome"], r["code"]) for r in theirs.results(b)
        ]
        assert a.counts == b.counts
    assert ours.export() == theirs.export()
    for env in (ours, theirs):  # two tenants per example: free their connections now
        env.close()


def _renamed(text: str, names: list[str]) -> str:
    """The same file with its header line replaced by ``names`` (the rows byte for byte)."""
    header_end = text.index("\r\n") + 2
    return roster(names, [], newline="\r\n") + text[header_end:]
