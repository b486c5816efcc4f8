"""The CLI as a user runs it: a subprocess, exit codes, one-sentence errors, and hard kills mid-job."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import LIC, read_csv, roster

HEADER = ["primary_email_address", "preferred_first_name", f"{LIC}_status", "group/Ops"]


def write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "orgsyncd.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n\n'
        f"[tenants.acme]\nlicenses = {{ {LIC} = 0 }}\nmax_deactivation_ratio = 1.0\n{extra}",
        encoding="utf-8",
    )
    return config


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_")}
    clean_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orgsyncd", *args],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def people(n: int, first: str = "P") -> str:
    return roster(HEADER, [[f"p{i}@example.com", f"{first}{i}", "active", 1] for i in range(n)])


def db_rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp_path / "data" / "orgsyncd.db") as conn:
        return conn.execute(sql).fetchall()


def assert_one_sentence(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("orgsyncd:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr


def test_import_prints_the_summary_and_writes_results(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "r.csv").write_text(people(3), encoding="utf-8")
    done = run(tmp_path, "--config", str(config), "import", "r.csv", "--tenant", "acme")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded" and summary["counts"]["created"] == 3
    assert "\x1b" not in done.stderr and "importing" not in done.stderr  # no progress bar in a pipe
    results = read_csv(tmp_path / "data/tenants/acme/results" / f"r.{summary['job_id']}.results.csv")
    assert [r["outcome"] for r in results] == ["created"] * 3
    shown = run(tmp_path, "--config", str(config), "jobs", "show", str(summary["job_id"]))
    tree = tmp_path / "data/tenants/acme"
    assert "spool_path" not in json.loads(shown.stdout)  # archived: the spool copy is gone
    assert json.loads(shown.stdout)["files"] == {
        "input": str(tree / f"archive/r.{summary['job_id']}.csv"),
        "results": str(tree / f"results/r.{summary['job_id']}.results.csv"),
        "summary": str(tree / f"results/r.{summary['job_id']}.summary.json"),
        "report": str(tree / f"results/r.{summary['job_id']}.report.html"),
    }


def test_file_level_failure_exits_1_with_one_sentence(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "bad.csv").write_text("name;email\nx;y\n", encoding="utf-8")
    done = run(tmp_path, "--config", str(config), "import", "bad.csv", "--tenant", "acme")
    assert done.returncode == 1
    assert_one_sentence(done.stderr)
    assert "semicolon" in done.stderr and "malformed_csv" in done.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("import", "nope.csv", "--tenant", "acme"), 2, "not a readable file"),
        (("import", "r.csv", "--tenant", "acm"), 2, "unknown tenant 'acm'"),
        (("jobs", "show", "999"), 1, "there is no job 999"),
        (("jobs", "approve", "1"), 2, "only held"),
        (("learners", "show", "ghost@example.com", "--tenant", "acme"), 1, "no learner"),
    ],
)
def test_bad_usage_is_one_sentence(tmp_path: Path, args: tuple[str, ...], code: int, needle: str) -> None:
    config = write_config(tmp_path)
    (tmp_path / "r.csv").write_text(people(1), encoding="utf-8")
    if args[:2] == ("jobs", "approve"):
        assert run(tmp_path, "--config", str(config), "import", "r.csv", "--tenant", "acme").returncode == 0
    done = run(tmp_path, "--config", str(config), *args)
    assert done.returncode == code, done.stderr
    assert_one_sentence(done.stderr)
    assert needle in done.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='sync_mod = "full"\n')
    done = run(tmp_path, "--config", str(config), "tenants", "list")
    assert done.returncode == 2
    assert_one_sentence(done.stderr)
    assert "tenants.acme.sync_mod" in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='sync_mod = "full"\n')
    done = run(tmp_path, "--debug", "--config", str(config), "tenants", "list")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "r.csv").write_text(people(4), encoding="utf-8")
    done = run(tmp_path, "--config", str(config), "import", "r.csv", "--tenant", "acme", "--dry-run")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["dry_run"] is True and summary["counts"]["created"] == 4
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM learner") == [(0,)]
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM job") == [(0,)]


def test_export_and_learners_and_tenants_commands(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "r.csv").write_text(people(2), encoding="utf-8")
    assert run(tmp_path, "--config", str(config), "import", "r.csv", "--tenant", "acme").returncode == 0
    out = tmp_path / "export.csv"
    done = run(tmp_path, "--config", str(config), "export", "--tenant", "acme", "-o", str(out))
    assert done.returncode == 0 and "2 learners" in done.stderr
    assert [r["primary_email_address"] for r in read_csv(out)] == ["p0@example.com", "p1@example.com"]
    listing = run(tmp_path, "--config", str(config), "learners", "list", "--tenant", "acme")
    assert "p1@example.com" in listing.stdout and "invited" in listing.stdout
    shown = json.loads(
        run(tmp_path, "--config", str(config), "learners", "show", "P0@example.com", "-t", "acme").stdout
    )
    assert shown["groups"] == ["Ops"] and shown["licence_history"][0]["license_type"] == LIC
    assert [c["action"] for c in shown["changes"]] == ["created"]
    jobs = run(tmp_path, "--config", str(config), "jobs", "list")
    assert "succeeded" in jobs.stdout and "r.csv" in jobs.stdout
    assert "acme" in run(tmp_path, "--config", str(config), "tenants", "list").stdout


def test_tenants_check_reports_a_missing_key_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra=f'authorized_keys = "{tmp_path / "missing.pub"}"\n')
    done = run(tmp_path, "--config", str(config), "tenants", "check")
    assert done.returncode == 1
    assert "missing.pub does not exist" in done.stdout
    (tmp_path / "missing.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test\n",
        encoding="utf-8",
    )
    assert run(tmp_path, "--config", str(config), "tenants", "check").returncode == 0


def test_no_config_uses_the_demo_defaults_under_var(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(roster(["primary_email_address"], [["a@example.com"]]), encoding="utf-8")
    done = run(tmp_path, "import", "r.csv", "--tenant", "demo")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var/orgsyncd/orgsyncd.db").exists()
    assert list((tmp_path / "var/orgsyncd/tenants/demo/results").glob("r.*.results.csv"))


@pytest.mark.parametrize("point", ["after_plan", "after_apply", "before_commit"])
def test_killed_mid_job_the_database_is_untouched_and_the_job_reruns_once(tmp_path: Path, point: str) -> None:
    config = write_config(tmp_path)
    (tmp_path / "base.csv").write_text(people(5), encoding="utf-8")
    assert run(tmp_path, "--config", str(config), "import", "base.csv", "--tenant", "acme").returncode == 0
    before = db_rows(tmp_path, "SELECT email, first_name, status FROM learner ORDER BY email")
    (tmp_path / "next.csv").write_text(people(8, first="Q"), encoding="utf-8")
    killed = run(
        tmp_path,
        "--config",
        str(config),
        "import",
        "next.csv",
        "--tenant",
        "acme",
        env={"ORGSYNCD_FAULT": f"{point}:kill"},
    )
    assert killed.returncode == -signal.SIGKILL
    assert db_rows(tmp_path, "SELECT email, first_name, status FROM learner ORDER BY email") == before
    resumed = run(tmp_path, "--config", str(config), "run-now")
    assert resumed.returncode == 0, resumed.stderr
    assert len(db_rows(tmp_path, "SELECT id FROM learner")) == 8
    assert db_rows(tmp_path, "SELECT status FROM job ORDER BY id") == [("succeeded",), ("succeeded",)]
    results = sorted(p.name for p in (tmp_path / "data/tenants/acme/results").glob("next.*"))
    assert results == ["next.2.report.html", "next.2.results.csv", "next.2.summary.json"]


def test_killed_at_a_random_moment_the_job_applies_exactly_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "big.csv").write_text(people(40_000), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_")}
    clock = time.monotonic()
    assert run(tmp_path, "--config", str(config), "jobs", "list").returncode == 0
    startup = time.monotonic() - clock  # aim past the interpreter's start, however loaded the machine
    for delay in (startup * 0.8, startup + 0.3, startup + 1.0):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orgsyncd",
                "--config",
                str(config),
                "import",
                "big.csv",
                "--tenant",
                "acme",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30)
        if (tmp_path / "data" / "orgsyncd.db").exists():  # killed before the database existed: fine too
            count = db_rows(tmp_path, "SELECT COUNT(*) FROM learner")[0][0]
            assert count in (0, 40_000)  # all or nothing, wherever the kill landed
    if not db_rows(tmp_path, "SELECT id FROM job"):  # every kill came before the file was queued
        assert run(tmp_path, "--config", str(config), "import", "big.csv", "--tenant", "acme").returncode == 0
    assert run(tmp_path, "--config", str(config), "run-now").returncode == 0
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM learner") == [(40_000,)]
    applied = db_rows(tmp_path, "SELECT COUNT(*) FROM job WHERE status = 'succeeded'")[0][0]
    duplicates = db_rows(tmp_path, "SELECT COUNT(*) FROM job WHERE status = 'duplicate'")[0][0]
    assert applied == 1 and applied + duplicates == len(db_rows(tmp_path, "SELECT id FROM job"))


def test_output_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    """`orgsyncd jobs list | head`: the reader going away says nothing on stderr."""
    config = write_config(tmp_path)
    (tmp_path / "r.csv").write_text(people(2), encoding="utf-8")
    assert run(tmp_path, "--config", str(config), "import", "r.csv", "--tenant", "acme").returncode == 0
    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write gets EPIPE
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_")}
    done = subprocess.run(
        [sys.executable, "-m", "orgsyncd", "--config", str(config), "jobs", "list"],
        cwd=tmp_path,
        env=env,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    os.close(write)
    assert done.returncode == 1
    assert done.stderr == ""
