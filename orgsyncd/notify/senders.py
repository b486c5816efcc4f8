"""The two ways out: a signed JSON POST (requests) and human messages through Apprise.

Both block (they run in the notifier's thread, never on the event loop), are bounded by a
timeout, and raise ``SendFailed`` with a reason a person can act on. Neither logs a URL: Apprise
URLs carry credentials.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orgsyncd.errors import ConfigError
from orgsyncd.notify.messages import SIGNATURE_HEADER, human_message, signature, webhook_body

_ERROR_CHARS = 300
_URL_IN_ERROR = re.compile(r"url: \S+")
_apprise_lock = threading.Lock()  # the capture handler below is per logger, not per thread


class SendFailed(Exception):
    """One attempt failed; the message says why (no URL in it)."""


def post_webhook(url: str, payload: Mapping[str, Any], secret_file: Path, timeout_s: float) -> None:
    import requests  # a tenth of a second at start-up; only a process that sends pays for it

    try:
        secret = secret_file.read_bytes().strip()
    except OSError as exc:
        raise SendFailed(f"cannot read webhook_secret_file {secret_file}: {exc.strerror}") from None
    if not secret:
        raise SendFailed(f"webhook_secret_file {secret_file} is empty")
    body = webhook_body(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "orgsyncd",
        SIGNATURE_HEADER: signature(secret, body),
        "X-Orgsyncd-Event": str(payload.get("event")),
        "X-Orgsyncd-Event-Id": str(payload.get("event_id")),
    }
    try:
        # No redirects: requests would turn a 301/302 POST into a GET and lose the body.
        response = requests.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as exc:
        raise SendFailed(f"webhook: {type(exc).__name__}: {_short(exc)}") from None
    if not 200 <= response.status_code < 300:
        raise SendFailed(f"webhook answered HTTP {response.status_code}: {_short(response.text)}")


def send_apprise(url: str, payload: Mapping[str, Any]) -> None:
    import apprise  # slow to import; only a process that sends pays for it

    message = human_message(payload)
    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise SendFailed(f"{_scheme(url)}:// is not a URL Apprise can send to")
    with _apprise_errors() as errors:
        ok = notifier.notify(title=message.title, body=message.body, body_format=apprise.NotifyFormat.TEXT)
    if not ok:
        reason = "; ".join(errors) or "Apprise reported a failure"
        raise SendFailed(f"{_scheme(url)}: {_short(reason)}")


def check_apprise_urls(urls: list[str], where: str) -> None:
    """Every URL must be one Apprise knows (a daemon start and ``tenants check`` call this)."""
    if not urls:
        return
    import apprise

    for i, url in enumerate(urls, 1):
        if apprise.Apprise.instantiate(url) is None:
            raise ConfigError(f"{where} entry {i} ({_scheme(url)}://...) is not a URL Apprise can send to")


@contextmanager
def _apprise_errors() -> Iterator[list[str]]:
    """Apprise's own warnings during one send, as our failure reason (not echoed to the log)."""
    collected: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append(record.getMessage())

    logger = logging.getLogger("apprise")
    handler = _Collect(level=logging.WARNING)
    with _apprise_lock:
        logger.addHandler(handler)
        propagate, logger.propagate = logger.propagate, False
        try:
            yield collected
        finally:
            logger.propagate = propagate
            logger.removeHandler(handler)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


def _short(value: object) -> str:
    # requests names the URL's path and query in its errors; they may hold a token.
    text = _URL_IN_ERROR.sub("url: …", " ".join(str(value).split()))
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"
