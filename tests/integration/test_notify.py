"""Notifications end to end on a real database (SQLite and PostgreSQL), with a real HTTP receiver
and a real SMTP server on loopback: outbox written with the state change, sent after, once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orgsyncd.config import Settings
from orgsyncd.errors import InjectedFault
from orgsyncd.service import Service
from orgsyncd.store.jobs import utcnow
from tests.helpers import LIC, Env, roster
from tests.receivers import SECRET, WebhookReceiver, body_text, smtp_sink, webhook_receiver

HEADER = ["primary_email_address", f"{LIC}_status"]


def people(n: int, start: int = 0) -> str:
    return roster(HEADER, [[f"p{i}@example.com", "active"] for i in range(start, start + n)])


@pytest.fixture
def hook(env: Env, tmp_path: Path) -> Iterator[WebhookReceiver]:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")  # a trailing newline, as editors leave it
    with webhook_receiver() as receiver:
        env.notify_cfg.update(webhook_url=receiver.url, webhook_secret_file=str(secret), retry_base_s=0.2)
        yield receiver


def outbox(env: Env, sql: str) -> list[tuple[Any, ...]]:
    """*sql* over this test's tenant's rows: ``FROM notify_event`` or ``FROM notify_delivery``
    (the PostgreSQL test database is shared)."""
    scoped = sql.replace(
        "FROM notify_delivery",
        "FROM notify_delivery JOIN notify_event e ON e.id = notify_delivery.notify_event_id "
        "JOIN tenant t ON t.id = e.tenant_id WHERE t.name = :t",
    ).replace(
        "FROM notify_event",
        "FROM notify_event JOIN tenant t ON t.id = notify_event.tenant_id WHERE t.name = :t",
    )
    with env.service.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(scoped), {"t": env.tenant})]


def hold(env: Env) -> int:
    env.run(people(10))
    held = env.run(people(5), mode="full")
    assert held.status == "held"
    assert held.job_id is not None
    return held.job_id


def test_a_held_job_is_one_signed_webhook_with_every_field(env: Env, hook: WebhookReceiver) -> None:
    job_id = hold(env)
    assert env.service.send_notifications() == 1
    [body] = hook.delivered()
    [request] = hook.requests
    assert request.signed and request.headers["X-Orgsyncd-Event"] == "held"
    assert request.headers["X-Orgsyncd-Event-Id"] == body["event_id"]
    assert body["event"] == "held" and body["status"] == "held"
    assert (body["tenant"], body["job_id"], body["file"]) == (env.tenant, job_id, "file2.csv")
    assert body["code"] == "threshold_exceeded" and "5 of 10" in body["message"]
    assert body["counts"]["unchanged"] == 5
    assert body["results"] == f"/results/file2.{job_id}.results.csv"
    assert body["report"] == f"/results/file2.{job_id}.report.html"
    assert body["at"].endswith("Z")
    fields = {
        "event_id",
        "event",
        "tenant",
        "job_id",
        "file",
        "status",
        "counts",
        "code",
        "message",
        "results",
    }
    assert fields | {"at"} <= set(body)
    # Later runs find the job still held: no state change, so nothing more is said.
    for _ in range(3):
        env.service.run_due()
        env.service.send_notifications()
    assert len(hook.requests) == 1


def test_one_event_per_state_change_through_approval(env: Env, hook: WebhookReceiver) -> None:
    env.run(roster(HEADER, [["ok@example.com", "active"], ["bad", "active"]]))  # partially_succeeded
    job_id = hold(env)
    env.service.approve(job_id, "cli:test")
    env.service.run_due()  # the approved job applies: succeeded, which is not an event
    env.run("", name="empty.csv")  # failed
    env.service.send_notifications()
    events = [(b["event"], b["job_id"]) for b in hook.delivered()]
    assert [e for e, _ in events] == ["partially_succeeded", "held", "approved", "failed"]
    assert events[1][1] == events[2][1] == job_id
    assert len({b["event_id"] for b in hook.delivered()}) == 4


def test_rejected_is_an_event(env: Env, hook: WebhookReceiver) -> None:
    job_id = hold(env)
    env.service.reject(job_id, "cli:test")
    env.service.send_notifications()
    assert [b["event"] for b in hook.delivered()] == ["held", "rejected"]
    rejected = hook.delivered()[1]
    assert (rejected["actor"], rejected["code"], rejected["status"]) == ("cli:test", "rejected", "rejected")


def test_a_rolled_back_job_writes_no_event(
    env: Env, hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.run(people(10))
    (env.dirs.inbox / "full_x.csv").write_text(people(5), encoding="utf-8")
    env.service.scan_inboxes()
    monkeypatch.setenv("ORGSYNCD_FAULT", "before_commit")
    with pytest.raises(InjectedFault):
        env.service.run_due()
    monkeypatch.delenv("ORGSYNCD_FAULT")
    assert outbox(env, "SELECT event FROM notify_event") == []
    env.service.run_due()  # held this time, for real
    env.service.send_notifications()
    assert [b["event"] for b in hook.delivered()] == ["held"]


def test_a_failing_receiver_is_retried_with_backoff_and_gets_the_event_once(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    with webhook_receiver(fail_first=3) as receiver:
        env.notify_cfg.update(webhook_url=receiver.url, webhook_secret_file=str(secret), retry_base_s=0.3)
        env.run("", name="empty.csv")
        env.service.notifier.start()
        try:
            [body] = receiver.wait_for(1)
        finally:
            assert env.service.notifier.stop(5)
    assert body["event"] == "failed"
    assert [r.answered for r in receiver.requests] == [503, 503, 503, 204]
    assert len({r.json["event_id"] for r in receiver.requests}) == 1  # the same event every time
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    # 0.3 s, 0.6 s, 1.2 s after each failure (the poll may add a little, never less)
    for gap, least in zip(gaps, (0.3, 0.6, 1.2), strict=True):
        assert gap >= least * 0.95, gaps
    assert gaps[0] < gaps[1] < gaps[2]
    [(status, attempts, error)] = outbox(
        env, "SELECT notify_delivery.status, attempts, last_error FROM notify_delivery"
    )
    assert (status, attempts, error) == ("sent", 4, None)


def test_the_retry_schedule_is_in_the_database_and_survives_a_restart(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    with webhook_receiver(fail_first=1) as receiver:
        env.notify_cfg.update(webhook_url=receiver.url, webhook_secret_file=str(secret), retry_base_s=60)
        env.run("", name="empty.csv")
        env.service.send_notifications()  # fails; next try in 60 s
        [(next_at, attempts, error)] = outbox(
            env, "SELECT next_at, attempts, last_error FROM notify_delivery"
        )
        assert next_at is not None
        assert attempts == 1 and "HTTP 503" in error
        fresh = Service(env.settings())  # a restarted process, same database
        try:
            assert fresh.send_notifications() == 0  # not due yet: the schedule was kept
            with fresh.engine.begin() as conn:  # let the clock pass the retry time
                conn.execute(
                    text("UPDATE notify_delivery SET next_at = :t"), {"t": utcnow() - timedelta(seconds=1)}
                )
            assert fresh.send_notifications() == 1
        finally:
            fresh.close()
    assert [r.answered for r in receiver.requests] == [503, 204]


def test_email_through_apprise_reaches_a_real_smtp_server(env: Env) -> None:
    with smtp_sink() as smtp:
        env.notify_cfg.update(urls=[smtp.url("ops@example.com")])
        env.tenant_cfg.update(max_deactivation_ratio=0.1)
        job_id = hold(env)
        env.service.reject(job_id, "cli:test")
        env.service.send_notifications()
        messages = smtp.wait_for(2)
    assert [m["To"] for m in messages] == ["ops@example.com", "ops@example.com"]
    held, rejected = messages
    assert f"held: it waits for an operator (job {job_id})" in held["Subject"]
    text_body = body_text(held)
    assert "threshold_exceeded" in text_body and f"orgsyncd jobs approve {job_id}" in text_body
    assert f"/results/file2.{job_id}.report.html" in text_body
    assert "was rejected" in rejected["Subject"]


def test_an_unreachable_mail_server_is_a_recorded_failure(env: Env) -> None:
    with smtp_sink() as smtp:
        url = smtp.url()
    env.notify_cfg.update(urls=[url])  # nothing listens there any more
    env.run("", name="empty.csv")
    env.service.send_notifications()
    [(status, attempts, error)] = outbox(
        env, "SELECT notify_delivery.status, attempts, last_error FROM notify_delivery"
    )
    assert (status, attempts) == ("pending", 1)
    assert error.startswith("mailto: ")  # the scheme, never the URL (it may hold a password)
    assert "?from=" not in error


def test_tenant_overrides_replace_the_global_destinations(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    with webhook_receiver() as global_hook, webhook_receiver() as tenant_hook, smtp_sink() as smtp:
        env.notify_cfg.update(
            webhook_url=global_hook.url, webhook_secret_file=str(secret), urls=[smtp.url("ops@example.com")]
        )
        env.tenant_cfg.update(webhook_url=tenant_hook.url, notify_urls=[])
        env.run("", name="empty.csv")
        env.service.send_notifications()
        assert [b["event"] for b in tenant_hook.delivered()] == ["failed"]
        assert global_hook.requests == [] and smtp.messages == []


def test_events_not_listed_are_not_sent(env: Env, hook: WebhookReceiver) -> None:
    env.notify_cfg.update(events=["failed"])
    env.run(roster(HEADER, [["x@example.com", "active"], ["bad", "active"]]))  # partially_succeeded
    hold(env)
    env.service.send_notifications()
    assert hook.delivered() == []
    assert outbox(env, "SELECT notify_event.status FROM notify_event") == [("skipped",), ("skipped",)]


def test_a_destination_removed_from_the_config_is_dropped_not_retried(
    env: Env, hook: WebhookReceiver
) -> None:
    env.run("", name="empty.csv")
    env.service.notifier.outbox.expand(lambda e, t: ["webhook"], utcnow(), [env.tenant])  # for the webhook
    env.notify_cfg.pop("webhook_url")
    env.reconfigure()
    env.service.send_notifications()
    assert hook.requests == []
    assert outbox(env, "SELECT notify_delivery.status FROM notify_delivery") == [("dropped",)]


def test_silent_is_said_once_per_silence_and_cleared_by_a_file(env: Env, hook: WebhookReceiver) -> None:
    env.notify_cfg.update(silent_after_h=26)
    env.run(people(1))
    notifier = env.service.notifier
    now = utcnow()
    assert notifier.check_silence(now) == 0  # starts watching
    assert notifier.check_silence(now + timedelta(hours=25)) == 0
    assert notifier.check_silence(now + timedelta(hours=27)) == 1
    assert notifier.check_silence(now + timedelta(hours=28)) == 0  # not again every run
    env.service.send_notifications()
    [body] = hook.delivered()
    assert (body["event"], body["code"], body["job_id"]) == ("silent", "tenant_silent", None)
    assert "for more than 26 h" in body["message"]
    env.run(people(1, start=5))  # a file arrives: the silence is over
    later = utcnow()
    assert notifier.check_silence(later + timedelta(hours=1)) == 0
    assert notifier.check_silence(later + timedelta(hours=27)) == 1  # a new silence, a new alert


def test_two_instances_on_one_database_send_each_event_once(
    env: Env, hook: WebhookReceiver, tmp_path: Path
) -> None:
    env.tenant_cfg.update(max_deactivation_ratio=1.0)
    env.notify_cfg.update(retry_base_s=0.2)
    settings = env.service.settings
    other = Service(
        settings.model_copy(update={"daemon": settings.daemon.model_copy(update={"instance_name": "other"})})
    )
    try:
        env.service.notifier.start()
        other.notifier.start()
        for i in range(8):
            env.run("", name=f"empty{i}.csv")  # eight failed jobs, eight events
            other.notifier.wake()
        delivered = hook.wait_for(8)
        time.sleep(1.0)  # time for a duplicate to show up, if there were one
    finally:
        env.service.notifier.stop(5)
        other.notifier.stop(5)
        other.close()
    counts = Counter(b["event_id"] for b in hook.delivered())
    assert len(counts) == 8 and set(counts.values()) == {1}, counts
    assert len(delivered) == 8


def test_settings_refuse_an_unsigned_webhook() -> None:
    from orgsyncd.errors import ConfigError

    with pytest.raises(ValueError, match="webhook_secret_file"):
        Settings(notify={"webhook_url": "https://example.com/h"})
    with pytest.raises(ConfigError, match=r"notify\.urls entry 1"):
        from orgsyncd.notify.senders import check_apprise_urls

        check_apprise_urls(["nosuchscheme://x"], "notify.urls")
