"""Every file of the hostile corpus (tests/corpus.py) through the real import, on both databases: the
expected code with its specific message, nothing lost (the input archived byte for byte, one results
line per row), nothing applied by a failed file, and the next good file still imports."""

from __future__ import annotations

import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orgsyncd.core.reader import read_records
from orgsyncd.errors import NotFoundError
from orgsyncd.paths import archive_path
from tests.conftest import PG_SKIP
from tests.corpus import CASES, INBOX_ENTRIES, Case, roster
from tests.helpers import Env


def learners(env: Env) -> int:
    return env.service.learners.count(env.service.jobs.tenant_id(env.tenant))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def corpus_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_url: str | None
) -> Iterator[Env]:
    """One tenant per backend for the whole corpus (a service start is most of a case's cost); the
    cases run one after the other into it, as files arrive at a real tenant."""
    root = tmp_path_factory.mktemp(f"corpus-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'orgsyncd.db'}"
    elif pg_url is None:
        pytest.skip(PG_SKIP)
    else:
        url = pg_url
    env = Env(root=root, db_url=url, tenant=f"corpus-{uuid.uuid4().hex[:8]}")
    yield env
    env.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_file(corpus_env: Env, case: Case) -> None:
    env = corpus_env
    if case.daemon:  # its own service, with these [daemon] settings
        env = Env(
            root=env.root / case.name, db_url=env.db_url, tenant=env.tenant, daemon_cfg=dict(case.daemon)
        )
    try:
        _import_and_check(env, case)
    finally:
        if env is not corpus_env:
            env.close()


def _import_and_check(env: Env, case: Case) -> None:
    data = case.build()
    path = env.root / "in" / case.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    before = learners(env)

    summary = env.service.import_file(env.tenant, path)

    assert summary.status == case.status, summary.extra
    lines = env.results(summary)
    if case.code is not None:
        hits = [ln for ln in lines if ln["row"] == str(case.line) and ln["code"] == case.code]
        assert hits, lines[:3]
        assert case.message in hits[0]["message"], hits[0]["message"]
    if case.status == "failed" and case.line == 0:
        assert summary.extra["error"]["code"] == case.code
        assert [ln["row"] for ln in lines] == ["0"]  # no row was read, so none is reported
        assert learners(env) == before  # nothing of it applied
    else:
        rows = [ln["row"] for ln in lines if ln["row"] != "0"]
        assert rows == [str(line) for line, _ in list(read_records(path))[1:]]  # one line per row
    if case.check is not None:
        case.check(lines)
    archived = archive_path(env.dirs, case.name, summary.job_id)
    assert archived.read_bytes() == data  # the input is kept as it came
    assert _spooled(env) == []

    good = env.run(roster(f"After,It,after.{summary.job_id}@example.com,T,active").decode(), name="good.csv")
    assert good.status == "succeeded" and good.counts["created"] == 1  # the next file still imports


def _spooled(env: Env) -> list[str]:
    return [p.name for p in env.dirs.spool.iterdir() if not p.name.endswith(".tmp")]


def test_the_corpus_has_at_least_forty_files_with_distinct_names() -> None:
    names = [case.name for case in CASES]
    assert len(names) >= 40 and len(set(names)) == len(names)


def _make_entry(inbox: Path, name: str, outside: Path) -> None:
    target = inbox / name
    if name == "directory.csv":
        target.mkdir()
        (target / "inner.csv").write_text("primary_email_address\nx@example.com\n")
    elif name == "symlink_out.csv":
        target.symlink_to(outside)
    elif name == "symlink_passwd.csv":
        target.symlink_to("/etc/passwd")
    elif name == "fifo.csv":
        os.mkfifo(target)  # opening it for reading would block forever
    elif name == "socket.csv":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(target))
    else:
        raise AssertionError(name)


def test_inbox_entries_that_are_not_regular_files_are_never_opened_or_queued(env: Env) -> None:
    outside = env.root / "outside.csv"
    outside.write_text(roster("Eve,Out,eve@example.com,T,active").decode())
    inbox = env.dirs.inbox
    for name in INBOX_ENTRIES:
        _make_entry(inbox, name, outside)
    (inbox / "real.csv").write_bytes(roster("Ann,Lee,ann.lee@example.com,T,active"))

    queued = env.service.scan_inboxes(env.tenant)
    results = env.service.run_due("now", env.tenant)

    assert [r.file for r in results] == ["real.csv"] and len(queued) == 1
    assert results[0].status == "succeeded"
    assert sorted(p.name for p in inbox.iterdir()) == sorted(INBOX_ENTRIES)  # left alone
    assert stat.S_ISFIFO((inbox / "fifo.csv").lstat().st_mode)
    assert outside.read_text().startswith("preferred_first_name")  # a symlink's target is untouched
    with pytest.raises(NotFoundError):
        env.learner("eve@example.com")
    assert env.service.scan_inboxes(env.tenant) == []  # and a rescan does not queue them either
