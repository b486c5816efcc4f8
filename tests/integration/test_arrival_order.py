"""A tenant's files apply in the order they arrived, however the queuing raced: several watchers,
rescans and instances queue files concurrently, and whoever finishes hashing first inserts first.
(Found by the racing-instances suite: on SQLite and PostgreSQL alike, later files applied first.)"""

from __future__ import annotations

import os
import time

from tests.helpers import LIC, Env, roster

HEADER = ["primary_email_address", "work_title", f"{LIC}_status"]


def _upload(env: Env, name: str, title: str, mtime: float) -> None:
    path = env.dirs.inbox / name
    path.write_text(roster(HEADER, [["a@example.com", title, "active"]]), encoding="utf-8")
    os.utime(path, (mtime, mtime))


def test_a_later_file_queued_first_still_applies_second(env: Env) -> None:
    now = time.time()
    _upload(env, "second.csv", "second", now - 10)
    _upload(env, "first.csv", "first", now - 20)
    second = env.service.enqueue_file(env.tenant, env.dirs.inbox / "second.csv")  # its watcher won
    assert second is not None
    done = env.service.run_due("hourly", env.tenant)
    assert [r.file for r in done] == ["first.csv", "second.csv"]
    assert env.learner("a@example.com").title == "second"


def test_a_file_linked_but_not_yet_registered_is_waited_for(env: Env) -> None:
    """Another instance linked the earlier file into the spool and is still hashing it: the head
    must not run before it."""
    now = time.time()
    _upload(env, "first.csv", "first", now - 20)
    _upload(env, "second.csv", "second", now - 10)
    first = env.dirs.inbox / "first.csv"
    info = first.stat()
    os.link(first, env.dirs.spool / f"{info.st_ino:x}-{info.st_mtime_ns:x}__first.csv")  # no job row
    assert env.service.enqueue_file(env.tenant, env.dirs.inbox / "second.csv") is not None
    done = env.service.run_due("hourly", env.tenant)
    assert [r.file for r in done] == ["first.csv", "second.csv"]
    assert env.learner("a@example.com").title == "second"
    assert len(env.service.jobs.recent(tenant=env.tenant)) == 2  # one job per file, no more
