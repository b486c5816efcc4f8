"""The hourly and daily runs, fired by cron expressions in the daemon's time zone.

APScheduler (3.x ``BackgroundScheduler``) decides *when* a run starts; the database decides what
it does. Each run calls the service, which claims each job in the database (``store/claims.py``),
so a slot fired twice, or fired by every instance sharing one database, never processes a job twice.

Missed slots:

* Late because this process stalled (suspended, overloaded): the slots missed run once when
  it can (``coalesce``) if that is at most ``misfire_grace_s`` after the last of them; later than
  that they are skipped and logged (``scheduled_run_missed``).
* Due while the previous run of the same kind is still going: skipped (``max_instances=1``) and
  logged (``scheduled_run_skipped``); the next slot picks up whatever is still queued.
* Passed while the daemon was down: not known here. Jobs live in the in-memory job store only
  (our work is rows in the database, not pickled scheduler state), so a restarted process has no
  record of the slots it missed. The daemon covers that at start: it scans the inboxes and calls
  ``run_hourly`` once if jobs are due, before the first slot comes.

Cron expressions mean what they mean in crontab(5), wall clock in ``daemon.timezone``:

* Day of week 0 and 7 are Sunday. (APScheduler 3.x counts from Monday = 0; ``crontab_trigger``
  spells the days out as names so an operator's ``0 2 * * 0`` still runs on Sunday.)
* A slot in the hour skipped by the spring DST change fires one hour later by the clock
  (02:30 in Berlin on the last Sunday of March fires at 03:30 CEST), so a daily run still runs.
* A slot in the hour repeated by the autumn change fires in both occurrences, so a daily 02:00
  in Berlin fires twice that night. The second finds nothing left to process; daily work that is
  not claimed job by job (exports, pruning) is claimed per local date (``slot_claim``, see
  ``Service.daily_maintenance``), so it stays once a day, also across instances.
* Restricting both day of month and day of week (neither starts with ``*``) is refused: cron runs
  when *either* matches, APScheduler only when both do, and guessing what was meant is worse than
  saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from orgsyncd.config import Settings

log = structlog.get_logger("orgsyncd.scheduler")

HOURLY = "hourly"
DAILY = "daily"

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: sun = 0 = 7


class Scheduler:
    """Fires ``run_hourly`` and ``run_daily`` on the crons of ``settings.daemon``."""

    def __init__(
        self,
        settings: Settings,
        run_hourly: Callable[[], object],
        run_daily: Callable[[], object],
    ) -> None:
        self._runs = {HOURLY: _guarded(HOURLY, run_hourly), DAILY: _guarded(DAILY, run_daily)}
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            # One thread per run: hourly and daily may overlap (both fire at 02:00 by default),
            # and the database keeps them from taking the same job.
            executors={"default": ThreadPoolExecutor(max_workers=len(self._runs))},
            timezone=ZoneInfo(settings.daemon.timezone),
        )
        self._scheduler.add_listener(_log_missed, EVENT_JOB_MISSED)
        self._scheduler.add_listener(_log_skipped, EVENT_JOB_MAX_INSTANCES)
        self._set_jobs(settings)

    def start(self) -> None:
        self._scheduler.start()
        log.info("scheduler_started", **_describe(self.next_fire_times()))

    def reschedule(self, settings: Settings) -> None:
        """Apply changed crons, time zone or grace (on SIGHUP); a run in progress carries on."""
        self._set_jobs(settings)
        log.info("scheduler_rescheduled", **_describe(self.next_fire_times()))

    def shutdown(self, wait: bool = True) -> None:
        """Stop firing; with ``wait``, return only after a run in progress has finished."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
            log.info("scheduler_stopped")

    def next_fire_times(self) -> dict[str, datetime | None]:
        now = datetime.now(UTC)
        return {job.id: _next_fire_time(job, now) for job in self._scheduler.get_jobs()}

    def _set_jobs(self, settings: Settings) -> None:
        daemon = settings.daemon
        crons = {HOURLY: daemon.hourly_cron, DAILY: daemon.daily_cron}
        for name, run in self._runs.items():
            self._scheduler.add_job(
                run,
                crontab_trigger(crons[name], daemon.timezone),
                id=name,
                name=f"{name} run",
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=daemon.misfire_grace_s,
            )


def crontab_trigger(expr: str, tz: str) -> Any:
    """A ``CronTrigger`` for a 5-field crontab(5) expression; ValueError if it is not one."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r} is not a 5-field cron expression (minute hour dom mon dow)")
    minute, hour, day, month, day_of_week = fields
    # crontab(5) ORs the two day fields only when neither starts with "*"; APScheduler always ANDs.
    if not day.startswith("*") and not day_of_week.startswith("*"):
        raise ValueError(
            f"{expr!r} restricts both day of month and day of week; cron would run when either "
            "matches: set one of them to '*'"
        )
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekday_names(day_of_week),
            timezone=ZoneInfo(tz),
        )
    except ValueError as exc:
        # APScheduler names the bad value, not the expression it came from.
        raise ValueError(f"{expr!r}: {exc}") from None


def next_runs(cron: str, tz: str, after: datetime, n: int) -> list[datetime]:
    """The first ``n`` times ``cron`` fires strictly after ``after``, as wall-clock times in ``tz``.

    Pure (the clock is a parameter): for ``tenants check``, status output and table tests.
    """
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(tz)
    trigger = crontab_trigger(cron, tz)
    runs: list[datetime] = []
    previous: datetime | None = None
    now = after.astimezone(UTC) + timedelta(microseconds=1)
    while len(runs) < n:
        # Same call sequence as the scheduler: the previous fire time steers the next one.
        fire: datetime | None = trigger.get_next_fire_time(previous, now)
        if fire is None:
            break
        runs.append(_real_time(fire, zone))
        previous = now = fire
    return runs


def _weekday_names(field: str) -> str:
    """Crontab day-of-week field -> comma-separated names, which APScheduler cannot misnumber."""
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        days.update(_weekday_numbers(item))
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def _weekday_numbers(item: str) -> set[int]:
    span, slash, step_text = item.partition("/")
    if span == "*":
        first, last = 0, 7
    else:
        first_text, dash, last_text = span.partition("-")
        first = _weekday_number(first_text)
        # "N/step" counts from N to the end of the week.
        last = _weekday_number(last_text) if dash else (7 if slash else first)
    step = int(step_text) if step_text.isdigit() else 0 if slash else 1
    if step < 1 or last < first:
        raise ValueError(f"day of week {item!r} is not a valid crontab field")
    return {day % 7 for day in range(first, last + 1, step)}


def _weekday_number(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text in _WEEKDAYS:
        return _WEEKDAYS.index(text)
    raise ValueError(f"day of week {text!r}: use 0-7 (0 and 7 are Sunday) or sun-sat")


def _real_time(fire: datetime, zone: ZoneInfo) -> datetime:
    # A slot in the skipped DST hour comes back as a wall time that does not exist (02:30+01:00
    # on the spring-forward day); the round trip names the instant it fires at (03:30+02:00).
    return fire.astimezone(UTC).astimezone(zone)


def _next_fire_time(job: Any, now: datetime) -> datetime | None:
    # Before start() jobs are pending and have no next_run_time yet; ask their trigger instead.
    fire: datetime | None = job.trigger.get_next_fire_time(None, now) if job.pending else job.next_run_time
    return None if fire is None else _real_time(fire, job.trigger.timezone)


def _describe(fire_times: dict[str, datetime | None]) -> dict[str, str | None]:
    return {f"next_{name}": None if t is None else t.isoformat() for name, t in fire_times.items()}


def _guarded(name: str, run: Callable[[], object]) -> Callable[[], None]:
    """``run``, logged; an exception is logged and swallowed so later slots still fire."""

    def scheduled_run() -> None:
        started = time.monotonic()
        log.info("scheduled_run_started", run=name)
        try:
            run()
        except Exception:
            log.exception("scheduled_run_failed", run=name)
            return
        log.info("scheduled_run_finished", run=name, seconds=round(time.monotonic() - started, 3))

    return scheduled_run


def _log_missed(event: Any) -> None:
    log.warning("scheduled_run_missed", run=event.job_id, slot=event.scheduled_run_time.isoformat())


def _log_skipped(event: Any) -> None:
    slots = [slot.isoformat() for slot in event.scheduled_run_times]
    log.warning("scheduled_run_skipped", run=event.job_id, slots=slots, reason="still_running")
