"""PostgreSQL going away under a running ``orgsyncd serve``, and coming back.

A private PostgreSQL cluster (``tests/pgcluster.py``: initdb + pg_ctl, an ephemeral port; never the
system cluster) is stopped and started under the real daemon while a real SFTP client (paramiko)
uploads; or it is down before the daemon starts, which then serves SFTP and waits for it; or it
answers but refuses ``database_url``, which fails the start at once. While it is down the daemon
stays up, SFTP accepts and holds uploads (they stay in ``inbox/``), ``/healthz`` is 200 and
``/readyz`` is 503 naming the database; one warning says it went away and one that it is back.
Afterwards every file is queued and imported exactly once, in upload order
(``tests.faultkit.check_final``: jobs, audit events, results files, titles); a job the outage
interrupted was rolled back and run again once, without using up an attempt.
"""

from __future__ import annotations

import io
import random
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text

from orgsyncd.dbhealth import database_refused, database_unavailable
from orgsyncd.store.db import normalize_url
from tests.acceptance.conftest import DaemonProcess, Daemons, Keys, free_port, paramiko_sftp, wait_until
from tests.faultkit import Installation, Workload, check_final
from tests.pgcluster import PgCluster, private_cluster, why_not

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the daemon's inotify watcher is Linux-only"),
    pytest.mark.skipif(why_not() is not None, reason=str(why_not())),
]

TENANT = "acme"
BACK_WITHIN_S = 30.0  # retries back off to 5 s at most: caught up well within this once it answers


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    with private_cluster() as pg:
        yield pg


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Outage:
    """One daemon on the private cluster, with its ports and workload."""

    def __init__(
        self, root: Path, cluster: PgCluster, keys: Keys, work: Workload, db_url: str | None = None
    ) -> None:
        self.cluster = cluster
        self.keys = keys
        self.work = work
        self.sftp_port = free_port()
        self.metrics_port = free_port()
        self.inst = Installation(
            root=root,
            db_url=db_url or cluster.url(),
            tenants=work.tenants,
            authorized_keys={TENANT: keys.public(TENANT)},
        )
        # Rescans every second: what waited for the database is queued soon after it is back.
        self.inst.write_config(self.sftp_port, self.metrics_port, rescan_interval_s=1.0)

    def serve(self, daemons: Daemons, ready: bool = True, **env: str) -> DaemonProcess:
        return daemons.start(["--config", str(self.inst.config)], env=env, ready=ready)

    def readyz(self) -> tuple[int, str]:
        return probe(self.metrics_port, "/readyz")

    def healthz(self) -> tuple[int, str]:
        return probe(self.metrics_port, "/healthz")

    def metric(self, name: str) -> str:
        status, text = probe(self.metrics_port, "/metrics")
        assert status == 200
        return next(line.split()[1] for line in text.splitlines() if line.startswith(f"{name} "))

    def upload(self, k: int) -> None:
        """File k over SFTP, a session of its own (as an HRIS export job runs); it must succeed and
        stay listed in inbox/."""
        data = self.work.content(TENANT, k)
        name = self.work.name(k)
        with paramiko_sftp(self.sftp_port, TENANT, self.keys) as sftp:
            attrs = sftp.putfo(io.BytesIO(data), f"/inbox/{name}")
            assert attrs.st_size == len(data)
            assert name in sftp.listdir("/inbox") or self.queued(name)

    def queued(self, name: str) -> bool:
        return any(job.file_name == name for job in self.inst.jobs(TENANT))

    def wait_unready(self) -> str:
        _status, body = wait_until(
            lambda: (r := self.readyz())[0] == 503 and "database unreachable" in r[1] and r,
            "/readyz to say the database is unreachable",
        )
        return body

    def wait_ready(self) -> None:
        wait_until(lambda: self.readyz() == (200, "ok\n"), "/readyz to be 200 again", timeout=BACK_WITHIN_S)

    def wait_all_queued(self) -> None:
        names = {self.work.name(k) for k in range(1, self.work.files + 1)}
        wait_until(
            lambda: {job.file_name for job in self.inst.jobs(TENANT)} >= names,
            "every upload to be queued",
            timeout=BACK_WITHIN_S,
        )


def assert_one_warning_each_way(daemon: DaemonProcess, outages: int = 1) -> None:
    gone = daemon.events("database_unavailable")
    back = daemon.events("database_restored")
    assert len(gone) == outages and len(back) == outages, (gone, back)
    assert all(e["level"] == "warning" for e in gone + back)
    # No line per retry: nothing else at warning or above names the database meanwhile.
    noisy = [e for e in daemon.logs() if e["level"] in ("error", "critical")]
    assert not noisy, noisy[:3]


def test_uploads_while_postgresql_is_down_are_held_then_queued_and_imported_once_in_order(
    daemons: Daemons, cluster: PgCluster, keys: Keys, tmp_path: Path
) -> None:
    work = Workload(tenants=(TENANT,), files=6, base=30)
    site = Outage(tmp_path, cluster, keys, work)
    daemon = site.serve(daemons)
    assert site.readyz() == (200, "ok\n")
    assert site.healthz() == (200, "ok\n")
    site.upload(1)
    wait_until(lambda: site.queued(work.name(1)), "file 1 to be queued")

    cluster.stop("fast")
    body = site.wait_unready()
    assert "connection" in body or "server" in body, body  # libpq's reason, as it said it
    assert site.healthz() == (200, "ok\n")  # alive: restarting it would not bring the database back
    assert site.metric("orgsyncd_database_up") == "0.0"
    assert site.metric("orgsyncd_queue_depth") == "NaN"
    for k in range(2, 6):
        site.upload(k)
    time.sleep(3.0)  # several retries meanwhile, quietly
    inbox = {p.name for p in site.inst.tenant_dir(TENANT, "inbox").iterdir()}
    assert {work.name(k) for k in range(2, 6)} <= inbox  # held, not lost
    assert not daemon.events("job_queued", file=work.name(2))  # (it cannot be: no database)
    assert site.readyz()[0] == 503 and daemon.proc.poll() is None
    daemon.wait_event("database_unavailable")
    # A command meanwhile does not wait: one sentence naming the database, exit 1, no traceback.
    assert site.inst.run("jobs", "list") == 1
    said = (site.inst.root / "cli.out").read_text(encoding="utf-8")
    assert said.startswith("orgsyncd: ") and "database" in said and "Connection refused" in said, said
    assert len(said.splitlines()) == 1, said

    cluster.start()
    site.wait_ready()
    assert site.metric("orgsyncd_database_up") == "1.0"
    site.upload(6)
    site.wait_all_queued()
    assert site.inst.run("run-now") == 0
    report = check_final(site.inst, work)
    assert not report.problems, report.problems
    assert_one_warning_each_way(daemon)
    assert daemon.wait_event("database_restored")["down_s"] > 0


def test_postgresql_stopped_in_the_middle_of_an_import_rolls_it_back_and_it_runs_again_once(
    daemons: Daemons, cluster: PgCluster, keys: Keys, tmp_path: Path
) -> None:
    work = Workload(tenants=(TENANT,), files=3, base=200)
    site = Outage(tmp_path, cluster, keys, work)
    for k in range(1, work.files + 1):  # arrived while the daemon was down: its catch-up run imports them
        site.inst.upload(TENANT, work.name(k), work.content(TENANT, k))
        time.sleep(0.01)  # distinct arrival times
    # The first import pauses with everything applied but not committed; the database goes away then.
    daemon = site.serve(daemons, ORGSYNCD_FAULT="after_apply:pause3@1")
    paused = daemon.wait_event("fault_paused", timeout=30)
    cluster.stop("immediate")  # like a crash of the server: the open transaction is lost

    interrupted = daemon.wait_event("job_interrupted", timeout=15)
    assert interrupted["job_id"] == paused["job_id"]
    site.wait_unready()
    time.sleep(1.0)  # a few retries fail meanwhile; they must stay quiet
    cluster.start()
    site.wait_ready()
    daemon.wait_event("catch_up_finished", timeout=BACK_WITHIN_S)

    report = check_final(site.inst, work)
    assert not report.problems, report.problems
    jobs = site.inst.jobs(TENANT)
    # One counted attempt each (the one that applied it): the interrupted one did not count.
    assert [job.attempts for job in jobs] == [1] * work.files
    assert len(daemon.events("job_interrupted")) == 1
    assert_one_warning_each_way(daemon)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_stopped_and_started_repeatedly_under_upload_and_import_load(
    daemons: Daemons, cluster: PgCluster, keys: Keys, tmp_path: Path, mode: str
) -> None:
    """Several outages at random moments while files keep arriving over SFTP and the daemon
    imports them (its rescans queue them; an hourly run every minute applies them)."""
    rng = random.Random(7)
    work = Workload(tenants=(TENANT,), files=24, base=2000)
    site = Outage(tmp_path, cluster, keys, work)
    site.inst.write_config(site.sftp_port, site.metrics_port, rescan_interval_s=1.0)
    config = site.inst.config.read_text(encoding="utf-8")
    site.inst.config.write_text(
        "\n".join(
            'hourly_cron = "* * * * *"' if line.startswith("hourly_cron") else line
            for line in config.splitlines()
        ),
        encoding="utf-8",
    )
    daemon = site.serve(daemons)
    outages = 0
    for k in range(1, work.files + 1):
        site.upload(k)
        if k % 4 == 0:
            time.sleep(rng.uniform(0.0, 3.0))
            cluster.stop(mode)
            outages += 1
            time.sleep(rng.uniform(0.5, 4.0))
            cluster.start()
            site.wait_ready()
    site.wait_all_queued()
    wait_until(
        lambda: all(job.status == "succeeded" and job.finalized for job in site.inst.jobs(TENANT)),
        "every job to be applied by the daemon",
        timeout=150,
    )
    report = check_final(site.inst, work)
    assert not report.problems, report.problems
    gone, back = daemon.events("database_unavailable"), daemon.events("database_restored")
    # An outage the daemon did not touch the database in goes unnoticed; none is logged twice.
    assert 1 <= len(gone) == len(back) <= outages


def test_a_daemon_started_while_postgresql_is_down_serves_sftp_waits_and_then_imports_once(
    daemons: Daemons, cluster: PgCluster, keys: Keys, tmp_path: Path
) -> None:
    """A reboot during an outage: the instance must come up with SFTP (not exit and be restarted
    every 5 s); what is uploaded meanwhile is imported once the database is back (to a database
    never migrated yet: the schema is created then)."""
    work = Workload(tenants=(TENANT,), files=3, base=20)
    site = Outage(tmp_path, cluster, keys, work)
    cluster.stop("fast")
    daemon = site.serve(daemons)  # returns at READY=1: SFTP listens, the database is still away
    status = next(line for line in daemon.notify.lines() if line.startswith("STATUS="))
    assert status.startswith("STATUS=waiting for the database: ") and "refused" in status, status
    assert site.healthz() == (200, "ok\n")
    code, body = site.readyz()
    assert code == 503 and body.startswith("starting: waiting for the database\ndatabase unreachable: "), body
    gone = daemon.wait_event("database_unavailable")
    assert gone["level"] == "warning" and "start-up waits for the database" in gone["action"], gone
    for k in range(1, work.files + 1):
        site.upload(k)
    time.sleep(2.0)  # retries meanwhile, quietly; nothing is queued (there is no database)
    inbox = {p.name for p in site.inst.tenant_dir(TENANT, "inbox").iterdir()}
    assert {work.name(k) for k in range(1, work.files + 1)} <= inbox
    assert daemon.proc.poll() is None and not daemon.events("daemon_ready")

    cluster.start()
    site.wait_ready()
    daemon.wait_event("daemon_ready", timeout=BACK_WITHIN_S)
    daemon.wait_event("database_migrated")
    site.wait_all_queued()
    assert daemon.wait_event("catch_up_finished", timeout=BACK_WITHIN_S)["jobs"] == work.files
    report = check_final(site.inst, work)
    assert not report.problems, report.problems
    assert [job.attempts for job in site.inst.jobs(TENANT)] == [1] * work.files
    assert_one_warning_each_way(daemon)
    assert len(daemon.events("daemon_ready")) == 1
    assert daemon.notify.lines().count("READY=1") == 2  # up (SFTP, waiting), then ready (all of it)
    assert daemon.stop() == 0


def test_sigterm_while_waiting_for_the_database_at_start_exits_0_at_once(
    daemons: Daemons, cluster: PgCluster, keys: Keys, tmp_path: Path
) -> None:
    site = Outage(tmp_path, cluster, keys, Workload(tenants=(TENANT,), files=1, base=1))
    cluster.stop("fast")
    daemon = site.serve(daemons)
    daemon.wait_event("database_unavailable")
    time.sleep(1.5)  # into the backoff
    started = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - started < 5.0
    assert "STOPPING=1" in daemon.notify.lines()
    assert not [e for e in daemon.logs() if e["level"] in ("error", "critical")]
    assert "Traceback" not in daemon.stderr


def _require_a_password(cluster: PgCluster, role: str, password: str) -> None:
    """*role* logs in with scram-sha-256 from now on (the cluster trusts everyone else)."""
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        hba = cluster.data / "pg_hba.conf"
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text(encoding="utf-8"))
        conn.execute("SELECT pg_reload_conf()")

    def refused() -> bool:
        try:
            psycopg.connect(f"postgresql://{role}:wrong@127.0.0.1:{cluster.port}/postgres").close()
        except psycopg.OperationalError:
            return True
        return False

    wait_until(refused, "the server to ask for the password")


@pytest.mark.parametrize("wrong", ["database", "role", "password"])
def test_a_database_url_the_server_refuses_fails_the_start_at_once_in_one_sentence(
    daemons: Daemons, cluster: PgCluster, keys: Keys, tmp_path: Path, wrong: str
) -> None:
    """Not an outage: waiting cannot fix a wrong database name, role or password. Exit 2 (a
    configuration error: systemd does not restart it), one sentence, no READY=1."""
    if wrong == "password":
        _require_a_password(cluster, "hris", "right")
    url = {
        "database": cluster.url("no_such_database"),
        "role": f"postgresql://nobody@127.0.0.1:{cluster.port}/orgsyncd",
        "password": f"postgresql://hris:wrong@127.0.0.1:{cluster.port}/orgsyncd",
    }[wrong]
    said = {"database": 'database "no_such_database" does not exist', "role": 'role "nobody" does not exist'}
    site = Outage(tmp_path, cluster, keys, Workload(tenants=(TENANT,), files=1, base=1), db_url=url)
    started = time.monotonic()
    daemon = site.serve(daemons, ready=False)
    assert daemon.proc.wait(20) == 2, daemon.tail()
    assert time.monotonic() - started < 10.0
    sentences = [line for line in daemon.stderr.splitlines() if line.startswith("orgsyncd: ")]
    assert len(sentences) == 1 and "the database refused database_url: " in sentences[0], daemon.stderr
    assert said.get(wrong, 'password authentication failed for user "hris"') in sentences[0], sentences
    assert "Traceback" not in daemon.stderr
    assert len(daemon.events("startup_failed")) == 1 and not daemon.events("database_unavailable")
    assert "READY=1" not in daemon.notify.lines()


def test_a_refusal_is_told_apart_from_an_outage(cluster: PgCluster) -> None:
    """libpq gives no SQLSTATE for a failed connection attempt: the server's refusal is known by
    its message. (A running daemon waits one out like an outage: it worked before.)"""

    def error_of(url: str) -> Exception:
        engine = create_engine(normalize_url(url), connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return exc
        finally:
            engine.dispose()
        raise AssertionError(f"{url} connected")

    unknown = error_of(cluster.url("no_such_database"))
    assert 'database "no_such_database" does not exist' in (database_refused(unknown) or "")
    cluster.stop("fast")
    down = error_of(cluster.url())
    assert database_unavailable(down) is not None and database_refused(down) is None
