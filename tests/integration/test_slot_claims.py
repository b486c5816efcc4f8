"""Scheduled work that is not a job (a tenant's daily export and pruning, the outbox's pruning) is
done once per slot however many instances fire it: the instance that inserts the slot_claim row
first does it; a claim abandoned before it was done (its lease ran out) is taken over."""

from __future__ import annotations

import threading
from datetime import date, timedelta

from sqlalchemy import insert, text

from orgsyncd.service import Service
from orgsyncd.store.db import write_transaction
from orgsyncd.store.jobs import utcnow
from orgsyncd.store.tables import SlotClaim
from tests.helpers import Env, roster

DAY = date(2031, 5, 6)


def _other_instance(env: Env, name: str) -> Service:
    settings = env.settings()
    daemon = settings.daemon.model_copy(update={"instance_name": name})
    other = Service(settings.model_copy(update={"daemon": daemon}))
    other.migrate()
    return other


def _claims(env: Env, slot: str) -> list[tuple[str, str, bool]]:
    tenant_id = env.service.jobs.tenant_id(env.tenant)
    with env.service.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT kind, instance, done_at IS NOT NULL FROM slot_claim "
                "WHERE slot = :s AND tenant_id = :t ORDER BY kind"
            ),
            {"s": slot, "t": tenant_id},
        ).all()
    return [(kind, instance, bool(done)) for kind, instance, done in rows]


def test_two_instances_firing_the_same_slot_do_its_work_once(env: Env) -> None:
    env.run(roster(["primary_email_address"], [["a@example.com"]]), name="base.csv")
    others = [_other_instance(env, f"node-{i}") for i in range(2)]
    done: dict[str, list[str]] = {}
    start = threading.Barrier(len(others))

    def fire(service: Service) -> None:
        start.wait()
        done[service.instance] = service.daily_maintenance(DAY)

    try:
        threads = [threading.Thread(target=fire, args=(s,)) for s in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for service in others:
            service.close()
    mine = [item for items in done.values() for item in items if item == f"daily/{env.tenant}"]
    assert mine == [f"daily/{env.tenant}"]  # exactly one of them exported this tenant
    [(kind, instance, finished)] = _claims(env, DAY.isoformat())
    assert kind == "daily" and finished and f"daily/{env.tenant}" in done[instance]
    assert list(env.dirs.exports.glob("roster-*.csv"))
    # the slot is done: a third firing (the DST night's second 02:00, a restart) does nothing
    assert f"daily/{env.tenant}" not in env.service.daily_maintenance(DAY)


def test_an_abandoned_slot_claim_is_taken_over_and_a_live_one_left_alone(env: Env) -> None:
    tenant_id = env.service.jobs.tenant_id(env.tenant)
    now = utcnow()
    live, dead = DAY, DAY + timedelta(days=1)
    with write_transaction(env.service.engine) as conn:
        for day, lease in ((live, now + timedelta(hours=1)), (dead, now - timedelta(seconds=1))):
            conn.execute(
                insert(SlotClaim).values(
                    kind="daily", tenant_id=tenant_id, slot=day.isoformat(), instance="gone:1",
                    claimed_at=now - timedelta(minutes=5), lease_expires_at=lease,
                )
            )  # fmt: skip
    assert f"daily/{env.tenant}" not in env.service.daily_maintenance(live)  # still someone's
    assert f"daily/{env.tenant}" in env.service.daily_maintenance(dead)  # abandoned: ours now
    assert _claims(env, dead.isoformat()) == [("daily", env.service.instance, True)]
    assert _claims(env, live.isoformat()) == [("daily", "gone:1", False)]
