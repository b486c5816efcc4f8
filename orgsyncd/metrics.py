"""Prometheus metrics, on a registry of our own, served at ``/metrics`` by a small HTTP thread.

A private ``CollectorRegistry`` (not prometheus_client's global one) lets tests and embedded uses
create several ``Metrics`` side by side without "duplicated timeseries" errors.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

from orgsyncd.dbhealth import DatabaseUnavailable

log = structlog.get_logger(__name__)

# Imports range from a few rows (well under a second) to big nightly full syncs (many minutes).
IMPORT_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DEFAULT_LISTEN = "127.0.0.1:9464"
# A path besides /metrics: called per request (in a request thread), answers (status, plain text).
Route = Callable[[], tuple[int, str]]
_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# How often the serving thread checks for stop(); bounds how long stop() blocks.
_POLL_INTERVAL_S = 0.1


class _HTTPServer(ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up stop(): request threads die with the process.
    daemon_threads = True


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # One access line per scrape on stderr would flood the journal, unstructured.
        pass


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running ``/metrics`` endpoint; ``stop()`` closes the socket and ends the thread."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout_s)


class Metrics:
    """The daemon's counters and gauges; methods are named after what happened."""

    def __init__(self, queue_depth_fn: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._define_job_metrics()
        self._define_sftp_metrics()
        self._queue_depth = Gauge(
            "orgsyncd_queue_depth",
            "Jobs queued or deferred, waiting to be processed.",
            registry=self.registry,
        )
        self.set_queue_depth_fn(queue_depth_fn or (lambda: 0))
        self._database_up = Gauge(
            "orgsyncd_database_up",
            "1 while the database answers (as this instance last found it), 0 during an outage.",
            registry=self.registry,
        )
        self._database_up.set(1)
        # Memory, CPU, open fds and start time of this process, for the usual dashboards.
        ProcessCollector(registry=self.registry)

    def _define_job_metrics(self) -> None:
        self._jobs = Counter(
            "orgsyncd_jobs",
            "Import jobs finished, by tenant and final status.",
            ["tenant", "status"],
            registry=self.registry,
        )
        self._rows = Counter(
            "orgsyncd_rows",
            "Roster rows processed, by tenant and outcome.",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "orgsyncd_import_duration_seconds",
            "Wall time of one import job.",
            ["tenant"],
            buckets=IMPORT_DURATION_BUCKETS,
            registry=self.registry,
        )

    def _define_sftp_metrics(self) -> None:
        self._sessions = Gauge("orgsyncd_sftp_sessions", "Open SFTP sessions.", registry=self.registry)
        self._bytes = Counter(
            "orgsyncd_sftp_received_bytes",
            "Bytes received in SFTP uploads.",
            registry=self.registry,
        )
        self._auth_failures = Counter(
            "orgsyncd_sftp_auth_failures", "Failed SFTP logins.", registry=self.registry
        )
        self._refused = Counter(
            "orgsyncd_sftp_connections_refused",
            "SFTP connections refused or dropped before login, by the limit that applied.",
            ["limit"],
            registry=self.registry,
        )
        self._bans = Counter(
            "orgsyncd_sftp_bans",
            "Client addresses refused after too many failed logins.",
            registry=self.registry,
        )

    def set_queue_depth_fn(self, fn: Callable[[], int]) -> None:
        """Use *fn* for the queue depth; it is called at scrape time, in the HTTP thread."""
        self._queue_depth.set_function(lambda: _safe_call(fn))

    def set_database_up_fn(self, fn: Callable[[], bool]) -> None:
        """Use *fn* for ``orgsyncd_database_up``, called at scrape time (it must not query)."""
        self._database_up.set_function(lambda: 1.0 if fn() else 0.0)

    def job_finished(self, tenant: str, status: str, counts: Mapping[str, int], seconds: float) -> None:
        """Record one finished job: its status, its row outcomes and how long it took."""
        self._jobs.labels(tenant=tenant, status=status).inc()
        for outcome, n in counts.items():
            # A counter can only go up; a negative count is a caller bug, not worth a crash here.
            if n >= 0:
                self._rows.labels(tenant=tenant, outcome=outcome).inc(n)
        self._duration.labels(tenant=tenant).observe(max(seconds, 0.0))

    def sftp_session_opened(self) -> None:
        self._sessions.inc()

    def sftp_session_closed(self) -> None:
        self._sessions.dec()

    def bytes_received(self, n: int) -> None:
        if n > 0:
            self._bytes.inc(n)

    def auth_failed(self) -> None:
        self._auth_failures.inc()

    def peer_banned(self) -> None:
        self._bans.inc()

    def connection_refused(self, limit: str) -> None:
        self._refused.labels(limit=limit).inc()

    def start_http(
        self, listen: str = DEFAULT_LISTEN, routes: Mapping[str, Route] | None = None
    ) -> MetricsServer:
        """Serve ``/metrics`` on *listen* (``HOST:PORT``; port 0 picks a free port) in a thread;
        *routes*: other paths (``/healthz``, ``/readyz``), each answering (status, plain text)."""
        host, port = parse_listen(listen)
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        app = _with_routes(make_wsgi_app(self.registry), dict(routes or {}))
        server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name="orgsyncd-metrics",
            daemon=True,
        )
        thread.start()
        bound_port = int(server.server_address[1])
        log.info("metrics_listening", host=host, port=bound_port)
        return MetricsServer(host=host, port=bound_port, _server=server, _thread=thread)


def _with_routes(metrics_app: _WsgiApp, routes: dict[str, Route]) -> _WsgiApp:
    """*metrics_app*, with *routes* answered first: plain text, never cached by a proxy."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return metrics_app(environ, start_response)
        try:
            status, text = route()
        except Exception as exc:  # a check that crashed says so; it must not kill the thread
            log.exception("health_check_failed", path=environ.get("PATH_INFO"))
            status, text = 503, f"check failed: {type(exc).__name__}: {exc}\n"
        body = text.encode()
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[IPV6]:PORT``; raise ValueError naming the bad value."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics listen address {listen!r} is not HOST:PORT")
    return host, int(port)


def _safe_call(fn: Callable[[], int]) -> float:
    # A failing callback (database briefly unreachable) must not turn the whole scrape into a 500:
    # report NaN for this one gauge and keep the other metrics flowing.
    try:
        return float(fn())
    except DatabaseUnavailable:
        return math.nan  # logged once, where the outage was noticed
    except Exception:
        log.warning("queue_depth_unavailable", exc_info=True)
        return math.nan
