"""Metrics: scraped from the real /metrics endpoint on an ephemeral loopback port."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orgsyncd.metrics import Metrics, MetricsServer, parse_listen

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def queue() -> list[int]:
    return [0]


@pytest.fixture
def metrics(queue: list[int]) -> Metrics:
    return Metrics(queue_depth_fn=lambda: queue[0])


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    running = metrics.start_http("127.0.0.1:0")
    yield running
    running.stop()


def scrape(server: MetricsServer) -> Samples:
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def test_serves_on_an_ephemeral_loopback_port(server: MetricsServer) -> None:
    assert server.port > 0
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    assert scrape(server)[("orgsyncd_queue_depth", labels())] == 0


def test_jobs_rows_and_duration_by_tenant(metrics: Metrics, server: MetricsServer) -> None:
    metrics.job_finished("acme", "succeeded", {"created": 3, "updated": 2, "unchanged": 0}, 1.5)
    metrics.job_finished("acme", "succeeded", {"created": 1}, 0.2)
    metrics.job_finished("globex", "failed", {"error": 4}, 30.0)

    samples = scrape(server)
    assert samples[("orgsyncd_jobs_total", labels(tenant="acme", status="succeeded"))] == 2
    assert samples[("orgsyncd_jobs_total", labels(tenant="globex", status="failed"))] == 1
    assert samples[("orgsyncd_rows_total", labels(tenant="acme", outcome="created"))] == 4
    assert samples[("orgsyncd_rows_total", labels(tenant="acme", outcome="updated"))] == 2
    assert samples[("orgsyncd_rows_total", labels(tenant="acme", outcome="unchanged"))] == 0
    assert samples[("orgsyncd_rows_total", labels(tenant="globex", outcome="error"))] == 4
    duration = "orgsyncd_import_duration_seconds"
    assert samples[(f"{duration}_count", labels(tenant="acme"))] == 2
    assert samples[(f"{duration}_sum", labels(tenant="acme"))] == pytest.approx(1.7)
    assert samples[(f"{duration}_bucket", labels(tenant="acme", le="1.0"))] == 1


def test_negative_row_count_is_ignored_not_raised(metrics: Metrics, server: MetricsServer) -> None:
    metrics.job_finished("acme", "succeeded", {"created": -1, "updated": 1}, 0.1)

    samples = scrape(server)
    assert ("orgsyncd_rows_total", labels(tenant="acme", outcome="created")) not in samples
    assert samples[("orgsyncd_rows_total", labels(tenant="acme", outcome="updated"))] == 1


def test_queue_depth_is_read_at_scrape_time(queue: list[int], server: MetricsServer) -> None:
    queue[0] = 7
    assert scrape(server)[("orgsyncd_queue_depth", labels())] == 7
    queue[0] = 2
    assert scrape(server)[("orgsyncd_queue_depth", labels())] == 2


def test_failing_queue_callback_gives_nan_not_a_failed_scrape(
    metrics: Metrics, server: MetricsServer
) -> None:
    def broken() -> int:
        raise RuntimeError("database unreachable")

    metrics.set_queue_depth_fn(broken)
    metrics.auth_failed()

    samples = scrape(server)
    assert math.isnan(samples[("orgsyncd_queue_depth", labels())])
    assert samples[("orgsyncd_sftp_auth_failures_total", labels())] == 1


def test_sftp_counters_and_session_gauge(metrics: Metrics, server: MetricsServer) -> None:
    metrics.sftp_session_opened()
    metrics.sftp_session_opened()
    metrics.sftp_session_closed()
    metrics.bytes_received(1000)
    metrics.bytes_received(24)
    metrics.bytes_received(0)
    for _ in range(3):
        metrics.auth_failed()
    metrics.peer_banned()

    samples = scrape(server)
    assert samples[("orgsyncd_sftp_sessions", labels())] == 1
    assert samples[("orgsyncd_sftp_received_bytes_total", labels())] == 1024
    assert samples[("orgsyncd_sftp_auth_failures_total", labels())] == 3
    assert samples[("orgsyncd_sftp_bans_total", labels())] == 1


def test_process_metrics_are_exported(server: MetricsServer) -> None:
    names = {name for name, _ in scrape(server)}
    assert "process_resident_memory_bytes" in names
    assert "process_open_fds" in names


def test_instances_have_separate_registries() -> None:
    first, second = Metrics(), Metrics()
    first.auth_failed()
    one, two = first.start_http("127.0.0.1:0"), second.start_http("127.0.0.1:0")
    try:
        assert scrape(one)[("orgsyncd_sftp_auth_failures_total", labels())] == 1
        assert scrape(two)[("orgsyncd_sftp_auth_failures_total", labels())] == 0
    finally:
        one.stop()
        two.stop()


def test_stop_closes_the_port(metrics: Metrics) -> None:
    running = metrics.start_http("127.0.0.1:0")
    scrape(running)
    running.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(running.url, timeout=2)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:", "host:http", "host:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_listen(listen)


def test_serves_on_ipv6_loopback(metrics: Metrics) -> None:
    if not socket.has_ipv6 or not _ipv6_loopback_works():
        pytest.skip("no IPv6 loopback on this machine")
    running = metrics.start_http("[::1]:0")
    try:
        assert running.url == f"http://[::1]:{running.port}/metrics"
        assert ("orgsyncd_queue_depth", labels()) in scrape(running)
    finally:
        running.stop()


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
