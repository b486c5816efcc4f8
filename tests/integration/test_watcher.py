"""InboxWatcher against real inotify on tmp_path directories.

Negative checks ("never reported") write a sentinel file afterwards and wait for it: the watcher
hands paths to one worker in event order, so once the sentinel is reported, anything written
before it has been decided on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orgsyncd.ingest import watcher as watcher_module
from orgsyncd.ingest.watcher import OPEN_GRACE_S, InboxWatcher
from orgsyncd.paths import tenant_dirs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify events are Linux-only")

LATENCY_S = 2.0
ROSTER = "email,first_name\nada@example.com,Ada\n"


class Calls:
    """A fake ``enqueue`` that records (tenant, file name) and lets a test wait for calls."""

    def __init__(self, fail_for: str | None = None, gate: threading.Event | None = None) -> None:
        self._cond = threading.Condition()
        self._fail_for = fail_for
        self._gate = gate
        self.calls: list[tuple[str, str]] = []
        self.times: list[float] = []

    def __call__(self, tenant: str, path: Path) -> None:
        with self._cond:
            self.calls.append((tenant, path.name))
            self.times.append(time.monotonic())
            self._cond.notify_all()
        if self._gate is not None:
            self._gate.wait(10)
        if path.name == self._fail_for:
            raise RuntimeError("database is down")

    def names(self) -> list[str]:
        with self._cond:
            return [name for _, name in self.calls]

    def wait_for(self, name: str, timeout: float = LATENCY_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: name in self.names(), timeout)

    def wait_for_count(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= count, timeout)


class Counter:
    """A fake ``rescan`` that counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self._cond = threading.Condition()
        self._fail = fail
        self.count = 0

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        if self._fail:
            raise RuntimeError("scan failed")

    def wait_for(self, count: int, timeout: float = LATENCY_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= count, timeout)


StartWatcher = Callable[..., InboxWatcher]


def wait_until(predicate: Callable[[], bool], timeout: float = LATENCY_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def start_watcher() -> Iterator[StartWatcher]:
    started: list[InboxWatcher] = []

    def start(
        inboxes: dict[str, Path],
        enqueue: Calls,
        rescan: Callable[[], object] = lambda: None,
        interval_s: float = 60.0,
    ) -> InboxWatcher:
        watcher = InboxWatcher(inboxes, enqueue, rescan, interval_s)
        watcher.start()
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()


def make_inbox(root: Path, tenant: str) -> Path:
    dirs = tenant_dirs(root, tenant)
    dirs.create()
    return dirs.inbox


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return make_inbox(tmp_path, "acme")


def write_via_part(final: Path, suffix: str = ".part") -> None:
    temp = final.with_name(final.name + suffix)
    temp.write_text(ROSTER)
    os.rename(temp, final)


def report_sentinel(inbox: Path, calls: Calls) -> None:
    (inbox / "sentinel.csv").write_text(ROSTER)
    assert calls.wait_for("sentinel.csv")


def test_closed_file_is_reported_once_within_two_seconds(start_watcher: StartWatcher, inbox: Path) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    (inbox / "roster.csv").write_text(ROSTER)
    closed_at = time.monotonic()
    assert calls.wait_for("roster.csv")
    assert calls.times[0] - closed_at < LATENCY_S
    # The file was also created; that must not count a second time once the grace has passed.
    assert not calls.wait_for_count(2, timeout=OPEN_GRACE_S * 3)
    assert calls.calls == [("acme", "roster.csv")]


def test_file_still_open_for_writing_waits_for_its_close(start_watcher: StartWatcher, inbox: Path) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    with (inbox / "slow.csv").open("w") as fh:
        fh.write(ROSTER)
        fh.flush()
        # Longer than a hard link waits for a writer: this one was seen opening the file.
        assert not calls.wait_for("slow.csv", timeout=OPEN_GRACE_S * 3)
    assert calls.wait_for("slow.csv")
    assert not calls.wait_for_count(2, timeout=OPEN_GRACE_S * 3)


def test_part_file_renamed_in_is_reported_under_its_final_name_only(
    start_watcher: StartWatcher, inbox: Path
) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    write_via_part(inbox / "x.csv")
    assert calls.wait_for("x.csv")
    report_sentinel(inbox, calls)
    assert calls.names() == ["x.csv", "sentinel.csv"]


def test_temporary_names_are_never_reported(start_watcher: StartWatcher, inbox: Path) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    for name in (".hidden.csv", "a.csv.tmp", "b.csv.filepart", "c.csv.partial", "D.CSV.PART"):
        (inbox / name).write_text(ROSTER)
    os.link(inbox / "a.csv.tmp", inbox / "linked.csv.part")
    os.rename(inbox / "b.csv.filepart", inbox / ".b.csv")
    report_sentinel(inbox, calls)
    assert calls.names() == ["sentinel.csv"]


def test_file_moved_in_from_another_directory_is_reported(
    start_watcher: StartWatcher, inbox: Path, tmp_path: Path
) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    outside = tmp_path / "staging" / "upload-1"
    outside.parent.mkdir()
    outside.write_text(ROSTER)
    os.rename(outside, inbox / "moved.csv")
    assert calls.wait_for("moved.csv")
    assert calls.calls == [("acme", "moved.csv")]


def test_hard_link_into_the_inbox_is_reported(
    start_watcher: StartWatcher, inbox: Path, tmp_path: Path
) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    source = tmp_path / "hris-out.csv"
    source.write_text(ROSTER)
    os.link(source, inbox / "linked.csv")  # IN_CREATE only: no open, no close, no move
    assert calls.wait_for("linked.csv")


def test_moving_a_file_out_or_making_a_directory_is_not_reported(
    start_watcher: StartWatcher, inbox: Path, tmp_path: Path
) -> None:
    (inbox / "old.csv").write_text(ROSTER)
    calls = Calls()
    start_watcher({"acme": inbox}, calls)
    os.rename(inbox / "old.csv", tmp_path / "old.csv")
    (inbox / "folder.csv").mkdir()
    report_sentinel(inbox, calls)
    assert calls.names() == ["sentinel.csv"]


def test_rescan_runs_once_at_start(start_watcher: StartWatcher, inbox: Path) -> None:
    rescan = Counter()
    start_watcher({"acme": inbox}, Calls(), rescan, interval_s=60.0)
    assert rescan.wait_for(1)


def test_rescan_runs_periodically(start_watcher: StartWatcher, inbox: Path) -> None:
    rescan = Counter()
    start_watcher({"acme": inbox}, Calls(), rescan, interval_s=0.2)
    assert rescan.wait_for(4)


def test_failing_rescan_is_logged_and_retried(start_watcher: StartWatcher, inbox: Path) -> None:
    rescan = Counter(fail=True)
    with capture_logs() as logs:
        start_watcher({"acme": inbox}, Calls(), rescan, interval_s=0.2)
        assert rescan.wait_for(2)
    assert any(e["event"] == "rescan_failed" and e["log_level"] == "error" for e in logs)


def test_enqueue_error_is_logged_and_the_next_file_still_reported(
    start_watcher: StartWatcher, inbox: Path
) -> None:
    calls = Calls(fail_for="bad.csv")
    with capture_logs() as logs:
        start_watcher({"acme": inbox}, calls)
        (inbox / "bad.csv").write_text(ROSTER)
        assert calls.wait_for("bad.csv")
        (inbox / "good.csv").write_text(ROSTER)
        assert calls.wait_for("good.csv")
    failures = [e for e in logs if e["event"] == "enqueue_failed"]
    assert failures == [
        {
            "event": "enqueue_failed",
            "log_level": "error",
            "tenant": "acme",
            "file": "bad.csv",
            "exc_info": True,
        }
    ]


def test_events_for_a_path_already_queued_are_coalesced(start_watcher: StartWatcher, inbox: Path) -> None:
    gate = threading.Event()
    calls = Calls(gate=gate)
    watcher = start_watcher({"acme": inbox}, calls)
    (inbox / "first.csv").write_text(ROSTER)
    assert calls.wait_for("first.csv")  # the worker is now held inside enqueue
    for _ in range(3):
        (inbox / "again.csv").write_text(ROSTER)
    (inbox / "sentinel.csv").write_text(ROSTER)
    # Events keep being read while enqueue is blocked: the sentinel reaches the queue.
    queued = watcher._worker._queued
    assert wait_until(lambda: ("acme", inbox / "sentinel.csv") in queued)
    gate.set()
    assert calls.wait_for("sentinel.csv")
    assert calls.names() == ["first.csv", "again.csv", "sentinel.csv"]


def test_update_adds_and_removes_tenant_inboxes(
    start_watcher: StartWatcher, inbox: Path, tmp_path: Path
) -> None:
    calls = Calls()
    other = make_inbox(tmp_path, "globex")
    watcher = start_watcher({"acme": inbox}, calls)
    watcher.update({"acme": inbox, "globex": other})
    (other / "g.csv").write_text(ROSTER)
    assert calls.wait_for("g.csv")
    assert calls.calls == [("globex", "g.csv")]

    watcher.update({"globex": other})
    (inbox / "dropped.csv").write_text(ROSTER)
    report_sentinel(other, calls)
    assert "dropped.csv" not in calls.names()


def test_update_that_adds_an_inbox_rescans_at_once(
    start_watcher: StartWatcher, inbox: Path, tmp_path: Path
) -> None:
    rescan = Counter()
    watcher = start_watcher({"acme": inbox}, Calls(), rescan, interval_s=60.0)
    assert rescan.wait_for(1)
    watcher.update({"acme": inbox, "globex": make_inbox(tmp_path, "globex")})
    assert rescan.wait_for(2)


def probe_until_reported(inbox: Path, calls: Calls, attempts: int = 30) -> bool:
    """Write fresh files until one is reported: the watch comes back on a rescan tick."""
    for attempt in range(attempts):
        name = f"probe-{attempt}.csv"
        (inbox / name).write_text(ROSTER)
        if calls.wait_for(name, timeout=0.1):
            return True
    return False


def test_inbox_missing_at_start_is_watched_once_it_exists(
    start_watcher: StartWatcher, tmp_path: Path
) -> None:
    calls = Calls()
    inbox = tenant_dirs(tmp_path, "acme").inbox
    with capture_logs() as logs:
        start_watcher({"acme": inbox}, calls, interval_s=0.2)
        assert any(e["event"] == "inbox_watch_failed" for e in logs)
    inbox.mkdir(parents=True)
    assert probe_until_reported(inbox, calls)


def test_inbox_deleted_and_created_again_is_watched_again(start_watcher: StartWatcher, inbox: Path) -> None:
    calls = Calls()
    start_watcher({"acme": inbox}, calls, interval_s=0.2)
    inbox.rmdir()
    inbox.mkdir()
    assert probe_until_reported(inbox, calls)


def test_stop_ends_every_thread_it_started(inbox: Path) -> None:
    before = set(threading.enumerate())
    watcher = InboxWatcher({"acme": inbox}, Calls(), lambda: None, 0.2)
    watcher.start()
    assert len(set(threading.enumerate()) - before) >= 3
    watcher.stop()
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(RuntimeError):
        watcher.start()


def test_without_inotify_only_rescans_run(
    monkeypatch: pytest.MonkeyPatch, start_watcher: StartWatcher, inbox: Path
) -> None:
    monkeypatch.setattr(watcher_module.sys, "platform", "darwin")
    rescan = Counter()
    with capture_logs() as logs:
        start_watcher({"acme": inbox}, Calls(), rescan, interval_s=0.2)
        assert rescan.wait_for(2)
    assert [e["event"] for e in logs if e["event"].startswith("inbox_")] == ["inbox_events_unavailable"]
