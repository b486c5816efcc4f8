"""The notifier: a thread of its own in the daemon that empties the outbox.

Each round: new events become deliveries (for the destinations configured now), due deliveries
are claimed with a lease and sent, outcomes recorded (sent; or retried later, the time kept in
the database; or given up after ``max_attempts``), and now and then each tenant's silence is
checked. It never runs on the event loop and never holds a transaction while it sends, so it
cannot block an import; a stop waits at most for the send in hand.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from orgsyncd.config import Settings
from orgsyncd.dbhealth import DatabaseHealth
from orgsyncd.notify.messages import WEBHOOK, destinations, human_urls, resolve, retry_delay_s, silent_after_h
from orgsyncd.notify.senders import SendFailed, check_apprise_urls, post_webhook, send_apprise
from orgsyncd.store.jobs import JobStore, utcnow
from orgsyncd.store.outbox import DEAD, DROPPED, PENDING, SENT, Delivery, OutboxStore

log = structlog.get_logger("orgsyncd.notify")
POLL_S = 2.0
MIN_SLEEP_S = 0.2
SILENCE_CHECK_S = 60.0
# Claimed at a time: few, so the lease (sized for them) never runs out while they are sent.
BATCH = 5


class Notifier:
    def __init__(self, settings: Settings, engine: Engine, jobs: JobStore, owner: str) -> None:
        self.settings = settings
        self.jobs = jobs
        self.outbox = OutboxStore(engine, owner)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._silence_checked = 0.0
        # The daemon's: an unreachable database is then noted there (one warning for the whole
        # outage) instead of a line per round.
        self.db_health: DatabaseHealth | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse URLs Apprise cannot use (at start, before anything is sent)."""
        check_apprise_urls(self.settings.notify.urls, "notify.urls")
        for name, tenant in sorted(self.settings.tenants.items()):
            check_apprise_urls(tenant.notify_urls or [], f"tenants.{name}.notify_urls")

    def start(self) -> None:
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="orgsyncd-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Ask the thread to end after the send in hand; True when it has."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s if timeout_s is not None else self.settings.notify.timeout_s + 5)
        return not self._thread.is_alive()

    def wake(self) -> None:
        """Something may have been written to the outbox: look now rather than at the next poll."""
        self._wake.set()

    def reload(self, settings: Settings) -> None:
        self.settings = settings

    # -- the work -------------------------------------------------------------------------------

    def _run(self) -> None:
        log.info("notifier_started")
        while not self._stop.is_set():
            try:
                self.round(silence=True)
            except OperationalError as exc:  # the database is busy or away: next round
                if self.db_health is None or not self.db_health.failed(exc):
                    log.warning("notify_round_failed", error=str(exc.orig or exc).splitlines()[0])
            except Exception as exc:
                if self.db_health is None or not self.db_health.failed(exc):
                    log.exception("notify_round_failed")
            self._wake.wait(self._sleep_s())
            self._wake.clear()
        log.info("notifier_stopped")

    def round(self, *, silence: bool = False) -> int:
        """One pass over the outbox; returns how many deliveries were attempted."""
        settings = self.settings
        tenants = sorted(settings.tenants)
        if silence and time.monotonic() - self._silence_checked >= SILENCE_CHECK_S:
            self._silence_checked = time.monotonic()
            self.check_silence(utcnow())
        self.outbox.expand(lambda event, tenant: destinations(settings, event, tenant), utcnow(), tenants)
        attempted = 0
        while not self._stop.is_set() and (
            claimed := self.outbox.claim(utcnow(), self._lease_s(), tenants, BATCH)
        ):
            for index, delivery in enumerate(claimed):
                if self._stop.is_set():
                    for rest in claimed[index:]:  # another round (or instance) may have them now
                        self.outbox.finish(rest.id, PENDING, utcnow(), retry_at=utcnow())
                    break
                self._deliver(delivery)
                attempted += 1
        return attempted

    def check_silence(self, now: datetime) -> int:
        found = 0
        for name, tenant in sorted(self.settings.tenants.items()):
            hours = silent_after_h(self.settings, tenant)
            if hours is None:
                continue
            if self.outbox.check_silence(self.jobs.tenant_id(name), name, timedelta(hours=hours), now):
                log.warning("tenant_silent", tenant=name, silent_after_h=hours)
                found += 1
        return found

    def _deliver(self, delivery: Delivery) -> None:
        settings = self.settings
        facts = {
            "notify_event": delivery.event,
            "event_id": delivery.event_id,
            "tenant": delivery.tenant,
            "job_id": delivery.payload.get("job_id"),
            "destination": delivery.destination,
            "attempt": delivery.attempts,
        }
        url = resolve(settings, delivery.tenant, delivery.destination)
        if url is None:
            self.outbox.finish(delivery.id, DROPPED, utcnow(), error="destination no longer configured")
            log.warning("notify_dropped", reason="destination no longer configured", **facts)
            return
        try:
            self._send(delivery, url)
        except SendFailed as exc:
            self._failed(delivery, str(exc), facts)
            return
        self.outbox.finish(delivery.id, SENT, utcnow())
        log.info("notify_sent", **facts)

    def _send(self, delivery: Delivery, url: str) -> None:
        notify = self.settings.notify
        if delivery.destination == WEBHOOK:
            assert notify.webhook_secret_file is not None  # config validation requires it
            post_webhook(url, delivery.payload, notify.webhook_secret_file, notify.timeout_s)
        else:
            send_apprise(url, delivery.payload)

    def _failed(self, delivery: Delivery, error: str, facts: dict[str, object]) -> None:
        notify = self.settings.notify
        now = utcnow()
        if delivery.attempts >= notify.max_attempts:
            self.outbox.finish(delivery.id, DEAD, now, error=error)
            log.error("notify_gave_up", error=error, **facts)
            return
        delay = retry_delay_s(delivery.attempts, notify.retry_base_s, notify.retry_max_s)
        self.outbox.finish(delivery.id, PENDING, now, error=error, retry_at=now + timedelta(seconds=delay))
        log.warning("notify_failed", error=error, retry_in_s=delay, **facts)

    def _lease_s(self) -> float:
        # Long enough for the sends of one batch, so a live sender never loses its claim.
        return 30.0 + BATCH * (self.settings.notify.timeout_s + 5.0)

    def _sleep_s(self) -> float:
        try:
            due = self.outbox.next_due(sorted(self.settings.tenants))
        except Exception:  # the database is away: the next round says so
            return POLL_S
        if due is None:
            return POLL_S
        return max(MIN_SLEEP_S, min(POLL_S, (due - utcnow()).total_seconds()))

    def configured(self) -> bool:
        notify = self.settings.notify
        return bool(
            notify.webhook_url
            or notify.urls
            or any(t.webhook_url or human_urls(self.settings, t) for t in self.settings.tenants.values())
        )
