"""Scheduler: next_runs by table (pure, clock as a parameter), then the wiring of a real
BackgroundScheduler, fired on demand with ``modify_job(next_run_time=...)``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from structlog.testing import capture_logs

from orgsyncd.config import DaemonConfig, Settings
from orgsyncd.scheduler import DAILY, HOURLY, Scheduler, crontab_trigger, next_runs

WAIT_S = 5.0


def iso(cron: str, tz: str, after: str, n: int) -> list[str]:
    return [t.isoformat() for t in next_runs(cron, tz, datetime.fromisoformat(after), n)]


@pytest.mark.parametrize(
    ("cron", "tz", "after", "expected"),
    [
        pytest.param(
            "0 * * * *",
            "UTC",
            "2025-01-01T10:00:00+00:00",
            ["2025-01-01T11:00:00+00:00", "2025-01-01T12:00:00+00:00"],
            id="hourly-strictly-after-a-slot",
        ),
        pytest.param(
            "0 * * * *",
            "UTC",
            "2025-01-01T09:59:59.999999+00:00",
            ["2025-01-01T10:00:00+00:00", "2025-01-01T11:00:00+00:00"],
            id="hourly-just-before-a-slot",
        ),
        pytest.param(
            "0 * * * *",
            "UTC",
            "2024-12-31T23:30:00+00:00",
            ["2025-01-01T00:00:00+00:00", "2025-01-01T01:00:00+00:00"],
            id="hourly-over-new-year",
        ),
        pytest.param(
            "0 2 * * *",
            "UTC",
            "2024-02-28T03:00:00+00:00",
            ["2024-02-29T02:00:00+00:00", "2024-03-01T02:00:00+00:00"],
            id="daily-utc-leap-day",
        ),
        pytest.param(
            "0 2 * * *",
            "Europe/Berlin",
            "2025-06-01T00:30:00+00:00",
            ["2025-06-02T02:00:00+02:00", "2025-06-03T02:00:00+02:00"],
            id="daily-berlin-after-given-in-utc",
        ),
        pytest.param(
            "0 2 * * *",
            "Europe/Berlin",
            "2025-03-29T12:00:00+01:00",
            ["2025-03-30T03:00:00+02:00", "2025-03-31T02:00:00+02:00"],
            id="daily-berlin-spring-forward-runs-an-hour-later",
        ),
        pytest.param(
            "30 2 * * *",
            "Europe/Berlin",
            "2025-03-29T12:00:00+01:00",
            ["2025-03-30T03:30:00+02:00", "2025-03-31T02:30:00+02:00"],
            id="daily-0230-berlin-spring-forward",
        ),
        pytest.param(
            "0 2 * * *",
            "Europe/Berlin",
            "2025-10-25T12:00:00+02:00",
            [
                "2025-10-26T02:00:00+02:00",
                "2025-10-26T02:00:00+01:00",
                "2025-10-27T02:00:00+01:00",
            ],
            id="daily-berlin-fall-back-fires-in-both-0200s",
        ),
        pytest.param(
            "0 * * * *",
            "Europe/Berlin",
            "2025-03-30T00:30:00+01:00",
            [
                "2025-03-30T01:00:00+01:00",
                "2025-03-30T03:00:00+02:00",
                "2025-03-30T04:00:00+02:00",
            ],
            id="hourly-berlin-spring-forward-no-0200",
        ),
        pytest.param(
            "0 * * * *",
            "Europe/Berlin",
            "2025-10-26T00:30:00+02:00",
            [
                "2025-10-26T01:00:00+02:00",
                "2025-10-26T02:00:00+02:00",
                "2025-10-26T02:00:00+01:00",
                "2025-10-26T03:00:00+01:00",
            ],
            id="hourly-berlin-fall-back-every-real-hour",
        ),
        pytest.param(
            "0 2 * * 0",
            "UTC",
            "2025-01-01T00:00:00+00:00",  # a Wednesday
            ["2025-01-05T02:00:00+00:00", "2025-01-12T02:00:00+00:00"],
            id="weekday-0-is-sunday",
        ),
        pytest.param(
            "0 2 * * 7",
            "UTC",
            "2025-01-01T00:00:00+00:00",
            ["2025-01-05T02:00:00+00:00"],
            id="weekday-7-is-sunday",
        ),
        pytest.param(
            "0 2 * * 1-5",
            "UTC",
            "2025-01-03T03:00:00+00:00",  # a Friday, after its slot
            ["2025-01-06T02:00:00+00:00", "2025-01-07T02:00:00+00:00"],
            id="weekdays-1-5-are-monday-to-friday",
        ),
        pytest.param(
            "0 2 * * */3",
            "UTC",
            "2025-01-01T00:00:00+00:00",
            ["2025-01-01T02:00:00+00:00", "2025-01-04T02:00:00+00:00", "2025-01-05T02:00:00+00:00"],
            id="weekday-step-counts-from-sunday",
        ),
        pytest.param(
            "0 2 * * SAT,sun",
            "UTC",
            "2025-01-01T00:00:00+00:00",
            ["2025-01-04T02:00:00+00:00", "2025-01-05T02:00:00+00:00"],
            id="weekday-names",
        ),
        pytest.param(
            "0 2 */2 * 1",
            "UTC",
            "2025-01-01T00:00:00+00:00",
            ["2025-01-13T02:00:00+00:00", "2025-01-27T02:00:00+00:00"],
            id="starred-day-of-month-and-weekday-both-apply",
        ),
    ],
)
def test_next_runs(cron: str, tz: str, after: str, expected: list[str]) -> None:
    assert iso(cron, tz, after, len(expected)) == expected


def test_next_runs_of_zero_is_empty() -> None:
    assert next_runs("0 * * * *", "UTC", datetime(2025, 1, 1, tzinfo=UTC), 0) == []


def test_next_runs_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_runs("0 * * * *", "UTC", datetime(2025, 1, 1), 1)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 * * *", "5-field"),
        ("0 2 1 * 1", "either"),
        ("0 2 * * 8", "day of week"),
        ("0 2 * * fri-mon", "day of week"),
        ("0 2 * * */0", "day of week"),
        ("0 2 * * funday", "day of week"),
        ("61 * * * *", "'61 \\* \\* \\* \\*': .*maximum value"),
    ],
)
def test_bad_cron_is_a_value_error(cron: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        crontab_trigger(cron, "UTC")


# --- the scheduler itself --------------------------------------------------------------------


def settings(**daemon: Any) -> Settings:
    return Settings(daemon=DaemonConfig(**daemon))


class Run:
    """A fake run_hourly/run_daily: counts calls, can block on a gate or raise."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self._cond = threading.Condition()
        self._gate = gate
        self._fail = fail
        self.calls = 0
        self.finished = 0

    def __call__(self) -> None:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
        if self._gate is not None:
            self._gate.wait(WAIT_S)
        if self._fail:
            raise RuntimeError("database is down")
        self.finished += 1

    def wait_for(self, calls: int, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.calls >= calls, timeout)


MakeScheduler = Callable[..., Scheduler]


@pytest.fixture
def make_scheduler() -> Iterator[MakeScheduler]:
    made: list[Scheduler] = []

    def make(
        config: Settings | None = None, hourly: Run | None = None, daily: Run | None = None
    ) -> Scheduler:
        scheduler = Scheduler(config or settings(), hourly or Run(), daily or Run())
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown()


def fire(scheduler: Scheduler, job_id: str, at: datetime | None = None) -> None:
    scheduler._scheduler.modify_job(job_id, next_run_time=at or datetime.now(UTC))


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


CRON_FIELDS = ("minute", "hour", "day", "month", "day_of_week")


def fields(job: Any) -> tuple[str, ...]:
    by_name = {field.name: str(field) for field in job.trigger.fields}
    return tuple(by_name[name] for name in CRON_FIELDS)


def test_jobs_are_wired_from_config(make_scheduler: MakeScheduler) -> None:
    config = settings(
        timezone="Europe/Berlin",
        hourly_cron="5 * * * *",
        daily_cron="0 3 * * 0",
        misfire_grace_s=900,
    )
    scheduler = make_scheduler(config)
    scheduler.start()
    jobs = {job.id: job for job in scheduler._scheduler.get_jobs()}
    assert set(jobs) == {HOURLY, DAILY}
    assert fields(jobs[HOURLY]) == ("5", "*", "*", "*", "*")
    assert fields(jobs[DAILY]) == ("0", "3", "*", "*", "sun")
    for job in jobs.values():
        assert job.trigger.timezone == ZoneInfo("Europe/Berlin")
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 900)
    assert isinstance(scheduler._scheduler._lookup_jobstore("default"), MemoryJobStore)


@pytest.mark.parametrize("started", [False, True], ids=["before-start", "running"])
def test_next_fire_times(make_scheduler: MakeScheduler, started: bool) -> None:
    scheduler = make_scheduler(settings(timezone="Asia/Tokyo", daily_cron="30 2 * * *"))
    if started:
        scheduler.start()
    now = datetime.now(UTC)
    times = scheduler.next_fire_times()
    assert set(times) == {HOURLY, DAILY}
    hourly, daily = times[HOURLY], times[DAILY]
    assert hourly is not None and daily is not None
    assert hourly.minute == 0 and now < hourly <= now + timedelta(hours=1)
    assert (daily.hour, daily.minute) == (2, 30) and now < daily <= now + timedelta(days=1)
    assert daily.tzinfo == ZoneInfo("Asia/Tokyo")


def test_reschedule_replaces_triggers_and_grace(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler()
    scheduler.start()
    scheduler.reschedule(settings(timezone="Asia/Tokyo", hourly_cron="15 * * * *", misfire_grace_s=60))
    jobs = {job.id: job for job in scheduler._scheduler.get_jobs()}
    assert set(jobs) == {HOURLY, DAILY}
    assert fields(jobs[HOURLY]) == ("15", "*", "*", "*", "*")
    assert jobs[HOURLY].trigger.timezone == ZoneInfo("Asia/Tokyo")
    assert jobs[DAILY].misfire_grace_time == 60
    hourly = scheduler.next_fire_times()[HOURLY]
    assert hourly is not None and hourly.minute == 15


def test_a_due_slot_calls_the_run(make_scheduler: MakeScheduler) -> None:
    hourly, daily = Run(), Run()
    scheduler = make_scheduler(hourly=hourly, daily=daily)
    scheduler.start()
    with capture_logs() as logs:
        fire(scheduler, HOURLY)
        assert hourly.wait_for(1)
        assert wait_until(lambda: any(e["event"] == "scheduled_run_finished" for e in logs))
    assert (hourly.calls, daily.calls) == (1, 0)
    assert [e["run"] for e in logs if e["event"].startswith("scheduled_run_")] == [HOURLY, HOURLY]
    next_hourly = scheduler.next_fire_times()[HOURLY]
    assert next_hourly is not None and next_hourly > datetime.now(UTC)  # back on the cron


def test_a_failing_run_is_logged_and_the_scheduler_keeps_firing(
    make_scheduler: MakeScheduler,
) -> None:
    daily = Run(fail=True)
    scheduler = make_scheduler(daily=daily)
    scheduler.start()
    with capture_logs() as logs:
        fire(scheduler, DAILY)
        assert daily.wait_for(1)
        assert wait_until(lambda: any(e["event"] == "scheduled_run_failed" for e in logs))
        fire(scheduler, DAILY)
        assert daily.wait_for(2)
    failed = [e for e in logs if e["event"] == "scheduled_run_failed"]
    assert failed[0] == {
        "event": "scheduled_run_failed",
        "run": DAILY,
        "log_level": "error",
        "exc_info": True,
    }


def test_missed_slots_run_once(make_scheduler: MakeScheduler) -> None:
    hourly = Run()
    scheduler = make_scheduler(settings(misfire_grace_s=6 * 3600), hourly=hourly)
    scheduler.start()
    fire(scheduler, HOURLY, at=datetime.now(UTC) - timedelta(hours=3))  # three slots behind
    assert hourly.wait_for(1)
    assert not hourly.wait_for(2, timeout=0.5)


def test_a_slot_older_than_the_grace_is_skipped_and_logged(make_scheduler: MakeScheduler) -> None:
    hourly = Run()
    scheduler = make_scheduler(settings(misfire_grace_s=60), hourly=hourly)
    scheduler.start()
    with capture_logs() as logs:
        fire(scheduler, HOURLY, at=datetime.now(UTC) - timedelta(minutes=5))
        assert wait_until(lambda: any(e["event"] == "scheduled_run_missed" for e in logs))
    assert hourly.calls == 0


def test_a_slot_due_while_the_run_is_going_is_skipped_and_logged(
    make_scheduler: MakeScheduler,
) -> None:
    gate = threading.Event()
    hourly = Run(gate=gate)
    scheduler = make_scheduler(hourly=hourly)
    scheduler.start()
    try:
        with capture_logs() as logs:
            fire(scheduler, HOURLY)
            assert hourly.wait_for(1)
            fire(scheduler, HOURLY)
            assert wait_until(lambda: any(e["event"] == "scheduled_run_skipped" for e in logs))
    finally:
        gate.set()
    assert wait_until(lambda: hourly.finished == 1)
    assert hourly.calls == 1


def test_shutdown_waits_for_a_running_job(make_scheduler: MakeScheduler) -> None:
    gate = threading.Event()
    daily = Run(gate=gate)
    scheduler = make_scheduler(daily=daily)
    scheduler.start()
    fire(scheduler, DAILY)
    assert daily.wait_for(1)
    stopper = threading.Thread(target=scheduler.shutdown)
    stopper.start()
    try:
        stopper.join(0.3)
        assert stopper.is_alive()  # still waiting for the daily run
    finally:
        gate.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert daily.finished == 1
