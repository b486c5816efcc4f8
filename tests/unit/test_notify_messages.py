"""orgsyncd.notify.messages and store.outbox.event_for: pure rules, by table."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orgsyncd.config import Settings
from orgsyncd.notify.messages import (
    WEBHOOK,
    destinations,
    human_message,
    resolve,
    retry_delay_s,
    signature,
    url_key,
    webhook_body,
)
from orgsyncd.store.outbox import event_for

LIC = "default_license_learning_proalllanguages"


@pytest.mark.parametrize(
    ("before", "after", "event"),
    [
        ("running", "failed", "failed"),
        ("queued", "failed", "failed"),
        ("queued", "held", "held"),
        ("running", "partially_succeeded", "partially_succeeded"),
        ("held", "queued", "approved"),
        ("held", "rejected", "rejected"),
        ("queued", "succeeded", None),
        ("queued", "duplicate", None),
        (None, "queued", None),
        ("queued", "running", None),
        ("running", "queued", None),  # an attempt rolled back: no outcome yet
        ("failed", "queued", None),  # retried
    ],
)
def test_which_state_changes_are_events(before: str | None, after: str, event: str | None) -> None:
    assert event_for(before, after) == event


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 30), (2, 60), (3, 120), (4, 240), (7, 1920), (8, 3600), (20, 3600)]
)
def test_retry_schedule_doubles_up_to_the_cap(attempts: int, delay: float) -> None:
    assert retry_delay_s(attempts, 30, 3600) == delay


@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=5), st.binary(min_size=1, max_size=40)
)
def test_signature_is_the_hmac_of_the_exact_body(payload: dict[str, str], secret: bytes) -> None:
    body = webhook_body(payload)
    assert json.loads(body) == payload
    assert signature(secret, body) == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def settings(**tenant: object) -> Settings:
    return Settings(
        notify={"webhook_url": "https://hooks.example.com/g", "webhook_secret_file": "/s", "urls": ["mailto://a"],
                "events": ["failed", "held", "silent"]},
        tenants={"acme": {"licenses": {LIC: 0}, **tenant}},
    )  # fmt: skip


def test_destinations_follow_the_events_list_and_the_tenant_overrides() -> None:
    plain = settings()
    assert destinations(plain, "failed", "acme") == [WEBHOOK, url_key("mailto://a")]
    assert destinations(plain, "approved", "acme") == []  # not in events
    assert destinations(plain, "failed", "globex") == []  # not configured here
    own = settings(notify_urls=["slack://x/y/z"], webhook_url="https://acme.example/h")
    assert destinations(own, "held", "acme") == [WEBHOOK, url_key("slack://x/y/z")]
    assert resolve(own, "acme", WEBHOOK) == "https://acme.example/h"
    assert resolve(own, "acme", url_key("slack://x/y/z")) == "slack://x/y/z"
    assert resolve(own, "acme", url_key("mailto://a")) is None  # replaced by the tenant's own
    muted = settings(notify_urls=[])
    assert destinations(muted, "held", "acme") == [WEBHOOK]


def test_a_destination_key_does_not_hold_the_url() -> None:
    key = url_key("mailtos://user:hunter2@smtp.example.com")
    assert "hunter2" not in key and key.startswith("url:") and len(key) == 20


def test_the_human_message_says_what_to_do_about_a_held_job() -> None:
    message = human_message(
        {"event": "held", "tenant": "acme", "file": "full.csv", "job_id": 12, "code": "threshold_exceeded",
         "message": "would deactivate 5 of 10", "counts": {"unchanged": 5, "error": 0},
         "report": "/results/full.12.report.html", "results": "/results/full.12.results.csv",
         "event_id": "e-1", "at": "2026-01-01T00:00:00Z"}
    )  # fmt: skip
    assert message.title == "orgsyncd: acme · full.csv is held: it waits for an operator (job 12)"
    assert "threshold_exceeded: would deactivate 5 of 10" in message.body
    assert "Rows: 5 unchanged." in message.body
    assert "orgsyncd jobs approve 12" in message.body and "/results/full.12.report.html" in message.body


def test_config_refuses_bad_notification_settings() -> None:
    with pytest.raises(ValueError, match="http"):
        Settings(notify={"webhook_url": "ftp://x", "webhook_secret_file": "/s"})
    with pytest.raises(ValueError, match="entry 2 is not an Apprise URL"):
        Settings(notify={"urls": ["mailto://a", "user:secret@host"]})
    with pytest.raises(ValueError, match="webhook_secret_file"):
        Settings(tenants={"acme": {"webhook_url": "https://a.example/h"}})
    with pytest.raises(ValueError, match="events"):
        Settings(notify={"events": ["exploded"]})
