"""What is sent, as data: the signed webhook body, the human message, the retry schedule,
and which destinations an event goes to. No I/O here."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orgsyncd.config import Settings, TenantConfig

SIGNATURE_HEADER = "X-Orgsyncd-Signature"
WEBHOOK = "webhook"
_URL_PREFIX = "url:"
_TITLES = {
    "failed": "failed",
    "held": "is held: it waits for an operator",
    "partially_succeeded": "partially succeeded",
    "approved": "was approved",
    "rejected": "was rejected",
    "reverted": "was reverted",
}


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str


def webhook_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes posted (and signed): compact JSON, keys sorted."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(secret: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body>``, as GitHub and others sign their webhooks."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def human_message(payload: Mapping[str, Any]) -> Message:
    event = str(payload.get("event"))
    tenant = payload.get("tenant")
    if event == "silent":
        return Message(f"orgsyncd: tenant {tenant} is silent", str(payload.get("message") or ""))
    title = f"orgsyncd: {tenant} · {payload.get('file')} {_TITLES.get(event, event)} (job {payload.get('job_id')})"
    lines = []
    if payload.get("message"):
        code = payload.get("code")
        lines.append(f"{code}: {payload['message']}" if code else str(payload["message"]))
    counts = payload.get("counts") or {}
    if counts:
        lines.append("Rows: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n) + ".")
    for label, key in (("Report", "report"), ("Results", "results")):
        if payload.get(key):
            lines.append(f"{label}: {payload[key]} (in the tenant's SFTP tree)")
    if event == "held":
        job = payload.get("job_id")
        lines.append(f"Approve: orgsyncd jobs approve {job}    Reject: orgsyncd jobs reject {job}")
    lines.append(f"Event {payload.get('event_id')} at {payload.get('at')}.")
    return Message(title, "\n".join(lines))


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the *attempts*-th failed try: base, 2·base, 4·base ... up to max."""
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)))


def url_key(url: str) -> str:
    """A destination's name in the database: a hash, so no credential in a URL is stored there."""
    return _URL_PREFIX + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def webhook_url(settings: Settings, tenant: TenantConfig) -> str | None:
    return tenant.webhook_url or settings.notify.webhook_url


def human_urls(settings: Settings, tenant: TenantConfig) -> list[str]:
    return list(tenant.notify_urls if tenant.notify_urls is not None else settings.notify.urls)


def silent_after_h(settings: Settings, tenant: TenantConfig) -> float | None:
    return tenant.silent_after_h or settings.notify.silent_after_h


def destinations(settings: Settings, event: str, tenant_name: str) -> list[str]:
    """Where an event goes, by the configuration of now."""
    tenant = settings.tenants.get(tenant_name)
    if tenant is None or event not in settings.notify.events:
        return []
    keys = [WEBHOOK] if webhook_url(settings, tenant) else []
    return keys + [url_key(url) for url in human_urls(settings, tenant)]


def resolve(settings: Settings, tenant_name: str, destination: str) -> str | None:
    """The URL behind a destination key, or None when it is no longer configured."""
    tenant = settings.tenants.get(tenant_name)
    if tenant is None:
        return None
    if destination == WEBHOOK:
        return webhook_url(settings, tenant)
    return next((u for u in human_urls(settings, tenant) if url_key(u) == destination), None)
