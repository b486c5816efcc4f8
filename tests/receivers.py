"""Real receivers for notification tests, on loopback ports: an HTTP webhook endpoint that checks
the signature, and an SMTP server (aiosmtpd) that keeps what it is sent."""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

SECRET = b"s3cret-for-tests"


@dataclass
class Hook:
    """One request the webhook endpoint got."""

    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature matched the body
    answered: int
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Answers 503 to the first ``fail_first`` requests, 204 after; records every request."""

    fail_first: int = 0
    secret: bytes = SECRET
    requests: list[Hook] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies of the requests that were answered with success, in order."""
        with self.lock:
            return [hook.json for hook in self.requests if hook.answered < 300]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"webhook got {len(self.delivered())} of {count} deliveries: {self.requests}"
                )
            time.sleep(0.02)
        return self.delivered()


@contextlib.contextmanager
def webhook_receiver(fail_first: int = 0, secret: bytes = SECRET) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(fail_first=fail_first, secret=secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
            signed = hmac.compare_digest(expected, self.headers.get("X-Orgsyncd-Signature", ""))
            with receiver.lock:
                failing = len(receiver.requests) < receiver.fail_first
                code = 503 if failing else (204 if signed else 401)
                receiver.requests.append(Hook(dict(self.headers), body, signed, code, time.monotonic()))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/orgsyncd"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class SmtpSink:
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def url(self, to: str = "ops@example.com") -> str:
        """The Apprise URL that sends here (plain SMTP on loopback)."""
        return f"mailto://127.0.0.1:{self.port}?from=orgsyncd@example.com&to={to}&mode=insecure"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"SMTP server got {len(self.messages)} of {count} messages")
            time.sleep(0.02)
        return list(self.messages)


@contextlib.contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    with socket.socket() as probe:  # aiosmtpd's readiness check needs the port up front
        probe.bind(("127.0.0.1", 0))
        sink.port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())
