"""/healthz and /readyz through a real HTTP server (the metrics listener), with real checks: a
SQLite database, a PostgreSQL URL whose port nobody listens on, a data directory that is there or
not. The daemon's own answers (and the database going away under it) are in
tests/acceptance/test_database_outage.py."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from orgsyncd.dbhealth import DatabaseHealth, DatabaseUnavailable, database_unavailable
from orgsyncd.health import LOOP_STALL_S, DataDirCheck, Probes
from orgsyncd.metrics import Metrics, MetricsServer
from orgsyncd.store.db import make_engine


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when we return: nobody listens there


def get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class State:
    started = True
    stopping = False
    listening = True
    stuck: list[str] = []  # noqa: RUF012


@pytest.fixture
def state() -> State:
    return State()


def serve(probes: Probes) -> MetricsServer:
    return Metrics().start_http("127.0.0.1:0", {"/healthz": probes.live, "/readyz": probes.ready})


def probes_for(db: DatabaseHealth, data_dir: Path, state: State) -> Probes:
    return Probes(
        database=db,
        data_dir=DataDirCheck(data_dir),
        started=lambda: state.started,
        shutting_down=lambda: state.stopping,
        sftp_listening=lambda: state.listening,
        stuck_threads=lambda: state.stuck,
    )


@pytest.fixture
def sqlite_health(tmp_path: Path) -> Iterator[DatabaseHealth]:
    engine = make_engine(f"sqlite:///{tmp_path / 'orgsyncd.db'}")
    health = DatabaseHealth(engine)
    yield health
    health.close()
    engine.dispose()


def test_both_200_when_all_is_well_and_metrics_still_served(
    sqlite_health: DatabaseHealth, tmp_path: Path, state: State
) -> None:
    server = serve(probes_for(sqlite_health, tmp_path, state))
    try:
        assert get(server, "/healthz") == (200, "ok\n")
        assert get(server, "/readyz") == (200, "ok\n")
        status, text = get(server, "/metrics")
        assert status == 200 and "orgsyncd_queue_depth" in text
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".readyz")]  # the probe file went
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: setattr(s, "stopping", True), "shutting down\n"),
        (lambda s: setattr(s, "started", False), "starting\n"),
        (lambda s: setattr(s, "listening", False), "SFTP not listening\n"),
    ],
)
def test_readyz_503_says_why(
    sqlite_health: DatabaseHealth, tmp_path: Path, state: State, change: object, reason: str
) -> None:
    change(state)  # type: ignore[operator]
    server = serve(probes_for(sqlite_health, tmp_path, state))
    try:
        assert get(server, "/readyz") == (503, reason)
        assert get(server, "/healthz") == (200, "ok\n")  # not ready is not dead
    finally:
        server.stop()


def test_readyz_names_a_data_directory_that_cannot_be_written(
    sqlite_health: DatabaseHealth, tmp_path: Path, state: State
) -> None:
    missing = tmp_path / "gone"
    server = serve(probes_for(sqlite_health, missing, state))
    try:
        status, text = get(server, "/readyz")
        assert status == 503
        assert text == f"data directory not writable: No such file or directory: {missing}\n"
    finally:
        server.stop()


def test_readyz_names_an_unreachable_postgresql_and_logs_it_once(tmp_path: Path, state: State) -> None:
    engine = make_engine(f"postgresql://orgsyncd@127.0.0.1:{_closed_port()}/orgsyncd")
    health = DatabaseHealth(engine)
    server = serve(probes_for(health, tmp_path, state))
    try:
        with structlog.testing.capture_logs() as logs:
            status, text = get(server, "/readyz")
            health._probed_at = -10.0  # (past the cache: a second real probe)
            assert get(server, "/readyz") == (status, text)
        assert status == 503
        assert text.startswith("database unreachable: connection failed: ") and "refused" in text, text
        assert [e["event"] for e in logs] == ["database_unavailable"]
        assert health.reason is not None
        assert get(server, "/healthz") == (200, "ok\n")
    finally:
        server.stop()
        health.close()
        engine.dispose()


def test_healthz_503_when_the_event_loop_stalls_or_a_thread_died(
    sqlite_health: DatabaseHealth, tmp_path: Path, state: State
) -> None:
    probes = probes_for(sqlite_health, tmp_path, state)
    server = serve(probes)
    try:
        state.stuck = ["watcher rescan"]
        assert get(server, "/healthz") == (503, "thread stopped: watcher rescan\n")
        state.stuck = []
        probes._loop_tick -= LOOP_STALL_S + 5
        status, text = get(server, "/healthz")
        assert status == 503 and text.startswith("event loop stalled for "), text
        probes.loop_ticked()
        assert get(server, "/healthz") == (200, "ok\n")
    finally:
        server.stop()


def test_only_a_lost_or_refused_connection_counts_as_the_database_being_away(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = make_engine(f"postgresql://orgsyncd@127.0.0.1:{_closed_port()}/orgsyncd")
    with pytest.raises(OperationalError) as refused:
        engine.connect()
    engine.dispose()
    assert database_unavailable(refused.value) is not None
    assert database_unavailable(DatabaseUnavailable("gone")) == "gone"
    try:
        raise RuntimeError("later trouble") from refused.value
    except RuntimeError as chained:
        assert database_unavailable(chained) is not None  # found through the chain
    sqlite = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OperationalError) as bad_sql, sqlite.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert database_unavailable(bad_sql.value) is None
    assert database_unavailable(IntegrityError("INSERT", {}, Exception("duplicate key"))) is None
    assert database_unavailable(ValueError("x")) is None
    sqlite.dispose()
