"""``orgsyncd serve`` as an operator and an HRIS client meet it: the real daemon in a subprocess,
real SFTP clients (paramiko and OpenSSH), real signals, sd_notify on a real socket, and the CLI run
next to it as separate processes."""

from __future__ import annotations

import csv
import io
import json
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paramiko
import pytest

from orgsyncd.ingest.auth import verify_password
from tests.acceptance.conftest import (
    WAIT_S,
    DaemonProcess,
    Daemons,
    Keys,
    Site,
    Tenant,
    clean_env,
    free_port,
    openssh_sftp,
    paramiko_sftp,
    wait_until,
)
from tests.helpers import LIC, roster

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the daemon's signals and inotify are Linux-only"),
    pytest.mark.skipif(shutil.which("sftp") is None, reason="needs the OpenSSH client"),
]

HEADER = ["primary_email_address", "preferred_first_name", f"{LIC}_status", "group/Ops"]
QUEUE_WITHIN_S = 2.0


def people(*emails: str) -> str:
    return roster(HEADER, [[email, email.split("@")[0].title(), "active", 1] for email in emails])


def serve(daemons: Daemons, site: Site) -> DaemonProcess:
    return daemons.start(["--config", str(site.config)])


def wait_queued(site: Site, file_name: str, tenant: str = "acme") -> int:
    """The job id once *file_name* is a queued job of *tenant*, within QUEUE_WITHIN_S."""
    job = wait_until(lambda: site.job(file_name), f"{file_name} to be queued", timeout=QUEUE_WITHIN_S)
    assert job is not None and job[1:] == (tenant, "queued"), job
    return job[0]


def run_now(site: Site) -> dict[str, tuple[int, str]]:
    """``orgsyncd run-now`` while the daemon runs; file name -> (job id, status)."""
    done = site.cli("run-now")
    assert done.returncode == 0, done.stderr
    processed: dict[str, tuple[int, str]] = {}
    for line in done.stdout.splitlines():
        job_id, _tenant, name, status = line.removeprefix("job ").split()
        processed[name] = (int(job_id), status)
    return processed


def outcomes(results_csv: str) -> list[tuple[str, str]]:
    rows = csv.DictReader(io.StringIO(results_csv))
    return [(row["outcome"], row["primary_email_address"]) for row in rows]


def upload(sftp: paramiko.SFTPClient, text: str, path: str) -> None:
    # paramiko's default confirm=True stats the file right after closing it: the upload must
    # still be visible in /inbox/ then, although it is already queued.
    attrs = sftp.putfo(io.BytesIO(text.encode()), path)
    assert attrs.st_size == len(text.encode())


def metric(site: Site, name: str) -> float:
    url = f"http://127.0.0.1:{site.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    values = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    assert values, f"{name} missing from /metrics"
    return float(values[0])


# -- uploads, processing, results ------------------------------------------------------------------


def test_paramiko_upload_is_queued_then_run_now_writes_results_to_download(
    daemons: Daemons, site: Site, keys: Keys
) -> None:
    serve(daemons, site)
    with paramiko_sftp(site.sftp_port, "acme", keys) as sftp:
        upload(sftp, people("ada@example.com", "bob@example.com"), "/inbox/roster.csv")
    job_id = wait_queued(site, "roster.csv")

    assert run_now(site) == {"roster.csv": (job_id, "succeeded")}
    with paramiko_sftp(site.sftp_port, "acme", keys) as sftp:
        downloaded = io.BytesIO()
        sftp.getfo(f"/results/roster.{job_id}.results.csv", downloaded)
    assert outcomes(downloaded.getvalue().decode()) == [
        ("created", "ada@example.com"),
        ("created", "bob@example.com"),
    ]


def test_openssh_client_puts_a_roster_and_gets_its_results(
    daemons: Daemons, site: Site, keys: Keys, tmp_path: Path
) -> None:
    serve(daemons, site)
    (tmp_path / "hris.csv").write_text(people("cy@example.com"), encoding="utf-8")
    put = openssh_sftp(site.sftp_port, "acme", keys.private("acme"), ["put hris.csv inbox/"], tmp_path)
    assert put.returncode == 0, put.stderr
    job_id = wait_queued(site, "hris.csv")

    assert run_now(site) == {"hris.csv": (job_id, "succeeded")}
    get = openssh_sftp(
        site.sftp_port,
        "acme",
        keys.private("acme"),
        [f"get results/hris.{job_id}.results.csv got.csv"],
        tmp_path,
    )
    assert get.returncode == 0, get.stderr
    assert outcomes((tmp_path / "got.csv").read_text(encoding="utf-8")) == [("created", "cy@example.com")]


def test_files_dropped_while_down_are_queued_and_run_once_at_start(daemons: Daemons, site: Site) -> None:
    site.inbox().mkdir(parents=True)
    (site.inbox() / "early.csv").write_text(people("dee@example.com"), encoding="utf-8")
    daemon = serve(daemons, site)

    # The catch-up run stands in for the hourly slot missed while the daemon was down.
    assert daemon.wait_event("catch_up_finished")["jobs"] == 1
    queued = daemon.events("job_queued", file="early.csv")
    assert len(queued) == 1 and queued[0]["tenant"] == "acme"
    assert site.job("early.csv") == (queued[0]["job_id"], "acme", "succeeded")
    assert list(site.inbox().iterdir()) == []
    assert metric(site, 'orgsyncd_jobs_total{status="succeeded",tenant="acme"}') == 1


# -- SIGHUP ----------------------------------------------------------------------------------------


def test_sighup_adds_a_tenant_and_keeps_open_sessions(daemons: Daemons, site: Site, keys: Keys) -> None:
    daemon = serve(daemons, site)
    with paramiko_sftp(site.sftp_port, "acme", keys) as before_reload:
        with pytest.raises(paramiko.AuthenticationException), paramiko_sftp(site.sftp_port, "globex", keys):
            pass
        site.write_config([Tenant("acme", keys.public("acme")), Tenant("globex", keys.public("globex"))])
        daemon.send(signal.SIGHUP)
        reloading = daemon.notify.wait_for("RELOADING=1")
        daemon.notify.wait_for("READY=1", after=reloading)
        assert daemon.events("reload_finished")[0]["tenants"] == ["acme", "globex"]

        with paramiko_sftp(site.sftp_port, "globex", keys) as globex:
            upload(globex, people("gil@example.com"), "/inbox/g.csv")
        wait_queued(site, "g.csv", tenant="globex")
        # The session opened before the reload still works.
        upload(before_reload, people("ann@example.com"), "/inbox/a.csv")
        wait_queued(site, "a.csv")
        assert sorted(before_reload.listdir("/")) == ["archive", "exports", "inbox", "results"]


def test_bad_config_on_sighup_is_logged_and_the_old_one_kept(
    daemons: Daemons, site: Site, keys: Keys
) -> None:
    daemon = serve(daemons, site)
    site.write_config([Tenant("acme", keys.public("acme"))], extra='[tenants.acme.colour]\nshade = "blue"\n')
    daemon.send(signal.SIGHUP)

    failed = daemon.wait_event("reload_failed")
    assert "tenants.acme.colour" in failed["error"] and failed["level"] == "error"
    daemon.notify.wait_for("READY=1", after=daemon.notify.wait_for("RELOADING=1"))
    with paramiko_sftp(site.sftp_port, "acme", keys) as sftp:
        upload(sftp, people("eve@example.com"), "/inbox/after.csv")
    wait_queued(site, "after.csv")
    assert daemon.proc.poll() is None


# -- SIGTERM, sd_notify, logs, metrics --------------------------------------------------------------


def test_sigterm_exits_0_after_stopping_and_sd_notify_sees_the_lifecycle(
    daemons: Daemons, site: Site, keys: Keys
) -> None:
    daemon = serve(daemons, site)
    notify = daemon.notify
    notify.wait_for("WATCHDOG=1", after=notify.wait_for("WATCHDOG=1") + 1)  # a heartbeat, repeated
    # The status loop's first line comes right after READY=1, from a worker thread: wait for it.
    wait_until(
        lambda: any(line.startswith("STATUS=") and "job(s) queued" in line for line in notify.lines()),
        "a STATUS= line with the queue",
    )

    with paramiko_sftp(site.sftp_port, "acme", keys) as session, session.open("/inbox/half.csv", "w") as half:
        half.write(b"primary_email_address\n")
        half.flush()
        wait_until(lambda: list((site.data / "staging").glob("*.upload")), "the upload to be staged")
        started = time.monotonic()
        daemon.send(signal.SIGTERM)
        assert daemon.proc.wait(WAIT_S) == 0
        assert time.monotonic() - started < 5.0
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            session.listdir("/")  # the daemon ended the session
        # ...and kept the unfinished upload hidden, for the client to resume after the restart.
        assert list((site.data / "staging").glob("*.upload")) == [] and list(site.inbox().iterdir()) == []
        partial = site.data / "staging" / "partial" / "acme" / "half.csv"
        assert partial.read_bytes() == b"primary_email_address\n"
    notify.wait_for("STOPPING=1")
    assert [e["event"] for e in daemon.logs()][-1] == "daemon_stopped"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", site.sftp_port), timeout=1):
        pass


def drop_big_roster(site: Site, rows: int = 100_000) -> None:
    """A roster that takes the catch-up run a couple of seconds: long enough to signal into."""
    site.inbox().mkdir(parents=True)
    emails = "\n".join(f"p{i}@example.com" for i in range(rows))
    (site.inbox() / "big.csv").write_text(f"primary_email_address\n{emails}\n", encoding="utf-8")


def test_sigterm_lets_the_running_job_commit_before_exiting(daemons: Daemons, site: Site) -> None:
    drop_big_roster(site)
    daemon = serve(daemons, site)
    daemon.wait_event("catch_up_started")
    daemon.send(signal.SIGTERM)

    assert daemon.proc.wait(30) == 0
    events = [e["event"] for e in daemon.logs()]
    # The job was still running when the stop began, and was let finish before the database closed.
    assert events.index("shutdown_started") < events.index("import_finished") < events.index("daemon_stopped")
    assert site.job("big.csv") == (1, "acme", "succeeded")
    assert site.db("SELECT COUNT(*) FROM learner") == [(100_000,)]


def test_a_second_sigterm_stops_waiting_and_the_job_rolls_back(daemons: Daemons, site: Site) -> None:
    drop_big_roster(site)
    daemon = serve(daemons, site)
    daemon.wait_event("catch_up_started")
    daemon.send(signal.SIGTERM)
    daemon.wait_event("shutdown_started")
    daemon.send(signal.SIGTERM)

    assert daemon.proc.wait(WAIT_S) == 0
    timeout = daemon.events("shutdown_timeout")[0]
    # Only the wait for the job was cut short; the clean-up after it still ran.
    assert timeout["forced"] is True and "catch_up_run" in timeout["still_running"]
    assert not {"sftp_sessions", "database"} & set(timeout["still_running"])
    assert "import_finished" not in {e["event"] for e in daemon.logs()}
    # Nothing of it was applied, and it is still queued for the next start.
    assert site.job("big.csv") == (1, "acme", "queued")
    assert site.db("SELECT COUNT(*) FROM learner") == [(0,)]


# run_daemon with a short stop bound; the CLI always uses the default (50 s, under TimeoutStopSec).
SHORT_BOUND = """
import sys
from orgsyncd.config import load_settings
from orgsyncd.daemon import run_daemon
from orgsyncd.logging import configure_logging

configure_logging(level="info", json=True, stream=sys.stdout)
sys.exit(run_daemon(load_settings(sys.argv[1]), stop_timeout_s=0.2))
"""


def test_the_stop_gives_up_on_a_long_job_at_the_bound(daemons: Daemons, site: Site) -> None:
    drop_big_roster(site)
    daemon = daemons.start_command([sys.executable, "-c", SHORT_BOUND, str(site.config)])
    daemon.wait_event("catch_up_started")
    started = time.monotonic()
    daemon.send(signal.SIGTERM)

    assert daemon.proc.wait(WAIT_S) == 0
    assert time.monotonic() - started < 1.5  # the import alone takes longer than that
    timeout = daemon.events("shutdown_timeout")[0]
    assert timeout["forced"] is False and "catch_up_run" in timeout["still_running"]
    assert site.job("big.csv") == (1, "acme", "queued")
    assert site.db("SELECT COUNT(*) FROM learner") == [(0,)]


def test_logs_are_json_lines_with_event_level_timestamp(daemons: Daemons, site: Site) -> None:
    daemon = serve(daemons, site)
    (site.inbox() / "dropped.csv").write_text(people("fay@example.com"), encoding="utf-8")
    wait_queued(site, "dropped.csv")
    assert daemon.stop() == 0

    lines = daemon.stdout_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 10
    for line in lines:
        entry = json_line(line)
        assert {"event", "level", "timestamp"} <= entry.keys(), line
    queued = daemon.events("job_queued")
    assert [(e["tenant"], e["file"]) for e in queued] == [("acme", "dropped.csv")]
    assert {"daemon_ready", "shutdown_started", "daemon_stopped"} <= {e["event"] for e in daemon.logs()}


def json_line(line: str) -> dict[str, object]:
    entry = json.loads(line)
    assert isinstance(entry, dict)
    return entry


def test_metrics_endpoint_reports_queue_depth_and_sessions(daemons: Daemons, site: Site, keys: Keys) -> None:
    serve(daemons, site)
    assert metric(site, "orgsyncd_queue_depth") == 0
    assert metric(site, "orgsyncd_sftp_sessions") == 0
    with paramiko_sftp(site.sftp_port, "acme", keys) as sftp:
        upload(sftp, people("gus@example.com"), "/inbox/m.csv")
        wait_queued(site, "m.csv")
        assert metric(site, "orgsyncd_sftp_sessions") == 1
        assert metric(site, "orgsyncd_queue_depth") == 1
    wait_until(lambda: metric(site, "orgsyncd_sftp_sessions") == 0, "the session to be counted out")


# -- start-up --------------------------------------------------------------------------------------


def test_demo_defaults_create_a_key_and_print_a_working_sftp_command(
    daemons: Daemons, tmp_path: Path
) -> None:
    sftp_port, metrics_port = free_port(), free_port()
    daemon = daemons.start(
        [],
        env={
            "ORGSYNCD_SFTP__LISTEN": f"127.0.0.1:{sftp_port}",
            "ORGSYNCD_METRICS__LISTEN": f"127.0.0.1:{metrics_port}",
        },
    )
    private = tmp_path / "var/orgsyncd/keys/demo"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / "var/orgsyncd/keys/demo.pub").read_text().startswith("ssh-ed25519 ")

    # Off a terminal the command is an event for machines; nothing is printed for a person.
    assert "sftp " not in daemon.stderr
    command = shlex.split(daemon.events("sftp_ready")[0]["command"])
    assert command[-1] == "demo@127.0.0.1" and f"{sftp_port}" in command
    (tmp_path / "batch").write_text("put day.csv inbox/\n", encoding="utf-8")
    (tmp_path / "day.csv").write_text(people("hal@example.com"), encoding="utf-8")
    # Verbatim, plus what makes it run unattended here: a batch file, no prompts, no ~/.ssh/config.
    # The command pins the host key in the demo's own known_hosts, never in ~/.ssh.
    hermetic = ["-F", "/dev/null", "-b", "batch", "-o", "BatchMode=yes"]
    done = subprocess.run(
        [*command[:-1], *hermetic, command[-1]],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var/orgsyncd/keys/known_hosts").read_text(encoding="utf-8").startswith("[127.0.0.1]")
    daemon.wait_event("job_queued", tenant="demo", file="day.csv")


@pytest.mark.parametrize("broken", ["database", "sftp_port"])
def test_a_failed_start_is_one_sentence_and_exit_1(
    daemons: Daemons, site: Site, keys: Keys, broken: str
) -> None:
    extra = ""
    with socket.socket() as squatter:
        if broken == "database":
            # A directory where the SQLite file should be: it cannot be opened, and waiting does not
            # help (an unreachable PostgreSQL is waited for instead: test_database_outage.py).
            (site.root / "db-is-a-directory").mkdir()
            extra = f'database_url = "sqlite:///{site.root / "db-is-a-directory"}"\n'
            site.config.write_text(
                site.config.read_text().replace("[daemon]\n", f"[daemon]\n{extra}"), encoding="utf-8"
            )
        else:
            squatter.bind(("127.0.0.1", site.sftp_port))
            squatter.listen()
        daemon = daemons.start(["--config", str(site.config)], ready=False)
        assert daemon.proc.wait(20) == 1

    sentences = [line for line in daemon.stderr.splitlines() if line.startswith("orgsyncd: ")]
    needle = "database" if broken == "database" else f"cannot listen for SFTP on 127.0.0.1:{site.sftp_port}"
    assert len(sentences) == 1 and needle in sentences[0], daemon.stderr
    assert "unable to open" in sentences[0] or "in use" in sentences[0], sentences
    assert "Traceback" not in daemon.stderr
    assert len(daemon.events("startup_failed")) == 1
    assert "READY=1" not in daemon.notify.lines()


def test_a_malformed_database_url_fails_the_start_at_once_with_exit_2(daemons: Daemons, site: Site) -> None:
    """Not an outage to wait out: a configuration error (systemd does not restart on 2)."""
    bad = 'database_url = "postgresql://orgsyncd@db.internal:fivefourthreetwo/orgsyncd"\n'
    site.config.write_text(
        site.config.read_text().replace("[daemon]\n", f"[daemon]\n{bad}"), encoding="utf-8"
    )
    daemon = daemons.start(["--config", str(site.config)], ready=False)
    assert daemon.proc.wait(20) == 2
    sentences = [line for line in daemon.stderr.splitlines() if line.startswith("orgsyncd: ")]
    assert len(sentences) == 1 and "is not a valid database URL" in sentences[0], daemon.stderr
    assert "Traceback" not in daemon.stderr and "READY=1" not in daemon.notify.lines()


def test_hash_password_prints_a_scrypt_hash_of_stdin(tmp_path: Path) -> None:
    def hash_of(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orgsyncd", "hash-password"],
            input=text,
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    done = hash_of("s3cret pass\n")
    assert done.returncode == 0, done.stderr
    stored = done.stdout.strip()
    assert stored.startswith("scrypt$") and verify_password(stored, "s3cret pass")
    assert not verify_password(stored, "s3cret pass\n")
    assert hash_of("\n").returncode == 2
