"""The notification outbox: events written with the state change that caused them, deliveries
claimed by one instance at a time and retried on a schedule kept in the database.

An event row (``notify_event``) is written on the caller's connection, inside the transaction of
the job's state change (``store.jobs.record_change`` calls ``record_job_event``), so it exists
if and only if the change committed: a job rolled back and run again makes no second event.
Sending happens after, elsewhere (``orgsyncd.notify``): an instance turns a new event into one
delivery per destination (``expand``), then claims due deliveries with a lease (``claim``);
PostgreSQL skips rows another instance has locked (``FOR UPDATE SKIP LOCKED``), SQLite has one
writer at a time (``BEGIN IMMEDIATE``), so each delivery is sent by one instance. A delivery
whose sender died is claimed again once its lease has run out: at least once, never lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from orgsyncd.core.results import iso
from orgsyncd.paths import tree_paths
from orgsyncd.store.db import write_transaction
from orgsyncd.store.tables import Job, NotifyDelivery, NotifyEvent, Tenant, TenantSilence

if TYPE_CHECKING:
    from orgsyncd.store.jobs import StateChange

NEW, EXPANDED, SKIPPED = "new", "expanded", "skipped"
PENDING, SENT, DEAD, DROPPED = "pending", "sent", "dead", "dropped"
_BATCH = 50
# A busy SQLite database (an import holds the write lock for its whole apply) must not stall the
# sender for the engine's long busy timeout: it tries again at its next round instead.
_SENDER_BUSY_MS = 2000
_OUTCOME_EVENTS = {"failed": "failed", "held": "held", "partially_succeeded": "partially_succeeded"}


def event_for(from_status: str | None, to_status: str) -> str | None:
    """The notification a state change makes, if any. One per change, so never one per run: a
    held job that stays held through later runs changes nothing and says nothing."""
    if from_status == "held" and to_status == "queued":
        return "approved"
    if from_status == "held" and to_status == "rejected":
        return "rejected"
    if to_status == "reverted":  # an applied job undone by `jobs revert`
        return "reverted"
    if from_status == "running" or from_status == "queued":
        return _OUTCOME_EVENTS.get(to_status)
    return None


def record_job_event(conn: Connection, change: StateChange) -> None:
    """The outbox row for *change*, on the caller's connection (its transaction)."""
    event = event_for(change.from_status, change.to_status)
    if event is None:
        return
    row = conn.execute(
        select(
            col(Tenant.name),
            col(Job.file_name),
            col(Job.status),
            col(Job.counts),
            col(Job.error_code),
            col(Job.error_message),
        )
        .join(Tenant, col(Tenant.id) == col(Job.tenant_id))
        .where(col(Job.id) == change.job_id)
    ).one()
    tenant, file_name, status, counts, code, message = row
    results, report = tree_paths(file_name, change.job_id)
    payload = {
        "event": event,
        "tenant": tenant,
        "job_id": change.job_id,
        "file": file_name,
        "status": status,
        "counts": json.loads(counts) if counts else None,
        # The change's own reason first: a rejected job still carries the code that held it.
        "code": change.code or code,
        "message": change.message or message,
        "results": results,
        "report": report,
        "actor": change.actor,
        "at": iso(change.at),
    }
    _insert_event(conn, event, change.tenant_id, change.job_id, payload, change.at)


def _insert_event(
    conn: Connection, event: str, tenant_id: int, job_id: int | None, payload: dict[str, Any], at: datetime
) -> None:
    event_id = str(uuid.uuid4())
    body = {"event_id": event_id, **payload}
    conn.execute(
        insert(NotifyEvent).values(
            event_id=event_id,
            event=event,
            tenant_id=tenant_id,
            job_id=job_id,
            payload=json.dumps(body, sort_keys=True, ensure_ascii=False),
            status=NEW,
            created_at=at,
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A claimed delivery: what to send, where, and how many tries it has had (this one too)."""

    id: int
    destination: str
    attempts: int
    event: str
    event_id: str
    tenant: str
    payload: dict[str, Any]


# Given (event name, tenant name): the destination keys to deliver it to.
Resolver = Callable[[str, str], Sequence[str]]


class OutboxStore:
    def __init__(self, engine: Engine, owner: str) -> None:
        self.engine = engine
        self.owner = owner[:64]

    def expand(self, destinations: Resolver, now: datetime, tenants: Sequence[str]) -> int:
        """Turn new events of *tenants* (those this instance is configured for) into deliveries,
        each event by exactly one instance."""
        with self._tx() as conn:
            query = (
                select(col(NotifyEvent.id), col(NotifyEvent.event), col(Tenant.name))
                .join(Tenant, col(Tenant.id) == col(NotifyEvent.tenant_id))
                .where(col(NotifyEvent.status) == NEW, col(Tenant.name).in_(list(tenants)))
                .order_by(col(NotifyEvent.id))
                .limit(_BATCH)
                .with_for_update(skip_locked=True, of=NotifyEvent)
            )
            found = conn.execute(query).all()
            for event_pk, event, tenant in found:
                keys = list(dict.fromkeys(destinations(event, tenant)))
                for key in keys:
                    conn.execute(
                        insert(NotifyDelivery).values(
                            notify_event_id=event_pk, destination=key, status=PENDING, attempts=0, next_at=now
                        )
                    )
                conn.execute(
                    update(NotifyEvent)
                    .where(col(NotifyEvent.id) == event_pk)
                    .values(status=EXPANDED if keys else SKIPPED)
                )
        return len(found)

    def claim(
        self, now: datetime, lease_s: float, tenants: Sequence[str], limit: int = _BATCH
    ) -> list[Delivery]:
        """Due deliveries of *tenants* nobody holds, leased to us; each attempt is counted when
        claimed, so a message that crashes its sender still runs out of attempts."""
        due = (
            select(col(NotifyDelivery.id))
            .join(NotifyEvent, col(NotifyEvent.id) == col(NotifyDelivery.notify_event_id))
            .join(Tenant, col(Tenant.id) == col(NotifyEvent.tenant_id))
            .where(
                col(Tenant.name).in_(list(tenants)),
                col(NotifyDelivery.status) == PENDING,
                col(NotifyDelivery.next_at) <= now,
                or_(col(NotifyDelivery.claim_until).is_(None), col(NotifyDelivery.claim_until) < now),
            )
            .order_by(col(NotifyDelivery.next_at), col(NotifyDelivery.id))
            .limit(limit)
            .with_for_update(skip_locked=True, of=NotifyDelivery)
        )
        with self._tx() as conn:
            ids = [row[0] for row in conn.execute(due)]
            if not ids:
                return []
            conn.execute(
                update(NotifyDelivery)
                .where(col(NotifyDelivery.id).in_(ids))
                .values(
                    claimed_by=self.owner,
                    claim_until=now + timedelta(seconds=lease_s),
                    attempts=col(NotifyDelivery.attempts) + 1,
                )
            )
            rows = conn.execute(
                select(
                    col(NotifyDelivery.id),
                    col(NotifyDelivery.destination),
                    col(NotifyDelivery.attempts),
                    col(NotifyEvent.event),
                    col(NotifyEvent.event_id),
                    col(Tenant.name),
                    col(NotifyEvent.payload),
                )
                .join(NotifyEvent, col(NotifyEvent.id) == col(NotifyDelivery.notify_event_id))
                .join(Tenant, col(Tenant.id) == col(NotifyEvent.tenant_id))
                .where(col(NotifyDelivery.id).in_(ids))
                .order_by(col(NotifyDelivery.next_at), col(NotifyDelivery.id))
            ).all()
        return [
            Delivery(
                id=int(r[0] or 0),
                destination=r[1],
                attempts=r[2],
                event=r[3],
                event_id=r[4],
                tenant=r[5],
                payload=json.loads(r[6]),
            )
            for r in rows
        ]

    def finish(
        self,
        delivery_id: int,
        status: str,
        now: datetime,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        """Record the outcome of our attempt; False when our lease was lost (someone else has it)."""
        values: dict[str, Any] = {"claimed_by": None, "claim_until": None, "last_error": error}
        if status == SENT:
            values["sent_at"] = now
        values["status"] = status
        if retry_at is not None:
            values["next_at"] = retry_at
        with self._tx() as conn:
            changed = conn.execute(
                update(NotifyDelivery)
                .where(col(NotifyDelivery.id) == delivery_id, col(NotifyDelivery.claimed_by) == self.owner)
                .values(**values)
            ).rowcount
        return bool(changed)

    def next_due(self, tenants: Sequence[str]) -> datetime | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(func.min(NotifyDelivery.next_at))
                .join(NotifyEvent, col(NotifyEvent.id) == col(NotifyDelivery.notify_event_id))
                .join(Tenant, col(Tenant.id) == col(NotifyEvent.tenant_id))
                .where(col(NotifyDelivery.status) == PENDING, col(Tenant.name).in_(list(tenants)))
            ).scalar()
        return _aware(found)

    def deliveries(self, tenant: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Recent deliveries, newest first, for ``orgsyncd notify list``."""
        query = (
            select(
                col(NotifyEvent.event_id),
                col(NotifyEvent.event),
                col(Tenant.name),
                col(NotifyEvent.job_id),
                col(NotifyDelivery.destination),
                col(NotifyDelivery.status),
                col(NotifyDelivery.attempts),
                col(NotifyDelivery.next_at),
                col(NotifyDelivery.sent_at),
                col(NotifyDelivery.last_error),
            )
            .join(NotifyEvent, col(NotifyEvent.id) == col(NotifyDelivery.notify_event_id))
            .join(Tenant, col(Tenant.id) == col(NotifyEvent.tenant_id))
            .order_by(col(NotifyDelivery.id).desc())
            .limit(limit)
        )
        if tenant:
            query = query.where(col(Tenant.name) == tenant)
        keys = ("event_id", "event", "tenant", "job_id", "destination", "status", "attempts", "next_at",
                "sent_at", "last_error")  # fmt: skip
        with self.engine.connect() as conn:
            return [dict(zip(keys, row, strict=True)) for row in conn.execute(query)]

    def prune(self, before: datetime) -> int:
        """Forget events older than *before* whose deliveries are all done."""
        with self._tx() as conn:
            open_events = select(col(NotifyDelivery.notify_event_id)).where(
                col(NotifyDelivery.status) == PENDING
            )
            # (A "new" event that old is one no instance is configured for.)
            old = select(col(NotifyEvent.id)).where(
                col(NotifyEvent.created_at) < before, col(NotifyEvent.id).not_in(open_events)
            )
            ids = [row[0] for row in conn.execute(old)]
            if not ids:
                return 0
            conn.execute(delete(NotifyDelivery).where(col(NotifyDelivery.notify_event_id).in_(ids)))
            conn.execute(delete(NotifyEvent).where(col(NotifyEvent.id).in_(ids)))
        return len(ids)

    # -- the silent alert -------------------------------------------------------------------

    def check_silence(self, tenant_id: int, tenant: str, quiet_after: timedelta, now: datetime) -> bool:
        try:
            return self._check_silence(tenant_id, tenant, quiet_after, now)
        except IntegrityError:
            return False  # another instance started watching this tenant at the same moment

    def _check_silence(self, tenant_id: int, tenant: str, quiet_after: timedelta, now: datetime) -> bool:
        """Record a ``silent`` event when the tenant's last file (or, if it never sent one, the
        start of watching it) is older than *quiet_after* and this silence was not alerted yet.
        Once per silence: the next file starts a new one. True when an event was recorded."""
        with self._tx() as conn:
            watch = conn.execute(
                select(col(TenantSilence.watching_since), col(TenantSilence.alerted_for))
                .where(col(TenantSilence.tenant_id) == tenant_id)
                .with_for_update()
            ).first()
            if watch is None:
                conn.execute(insert(TenantSilence).values(tenant_id=tenant_id, watching_since=now))
                return False
            since, alerted = _aware(watch[0]), _aware(watch[1])
            last = _aware(
                conn.execute(
                    select(func.max(Job.received_at)).where(col(Job.tenant_id) == tenant_id)
                ).scalar()
            )
            quiet_since = max(filter(None, (since, last)))
            if now - quiet_since < quiet_after or (alerted is not None and alerted >= quiet_since):
                return False
            conn.execute(
                update(TenantSilence)
                .where(col(TenantSilence.tenant_id) == tenant_id)
                .values(alerted_for=quiet_since)
            )
            hours = quiet_after.total_seconds() / 3600
            message = (
                f"no file from tenant {tenant} for more than {hours:g} h; the last one arrived at {iso(last)}"
                if last is not None
                else f"tenant {tenant} has sent no file since orgsyncd started watching it at {iso(since)}"
            )
            payload = {
                "event": "silent",
                "tenant": tenant,
                "job_id": None,
                "file": None,
                "status": "silent",
                "counts": None,
                "code": "tenant_silent",
                "message": message,
                "results": None,
                "report": None,
                "last_file_at": iso(last),
                "at": iso(now),
            }
            _insert_event(conn, "silent", tenant_id, None, payload, now)
        return True

    def _tx(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine, busy_ms=_SENDER_BUSY_MS)


def _aware(moment: datetime | str | None) -> datetime | None:
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
