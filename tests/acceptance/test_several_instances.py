"""README "Running several instances", tried on one machine as it says: two ``orgsyncd serve``
processes on one PostgreSQL (a private cluster) and one data directory, HAProxy in front with
``deploy/haproxy.cfg`` as shipped (addresses from the environment), OpenSSH's ``sftp -b`` uploading
through it with the host key pinned on first use.

Both instances take sessions and present the same host key; when PostgreSQL is down for both, HAProxy
marks them not ready and still sends SFTP to them (the fallback backend), which hold the upload; when
one instance stops, the other takes every session. Every file is imported exactly once, in order
(``tests.faultkit.check_final``). HAProxy comes from Debian (``apt-get install haproxy``); the test
skips saying why when it cannot be installed.
"""

from __future__ import annotations

import csv
import io
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import debian
from tests.acceptance.conftest import DaemonProcess, Daemons, Keys, clean_env, free_port, wait_until
from tests.faultkit import Installation, Workload, check_final
from tests.helpers import LIC
from tests.pgcluster import PgCluster, private_cluster, why_not

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the daemon's inotify watcher is Linux-only"),
    pytest.mark.skipif(shutil.which("sftp") is None, reason="needs the OpenSSH client"),
    pytest.mark.skipif(why_not() is not None, reason=str(why_not())),
]

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
TENANT = "acme"
# HAProxy checks every 2 s and changes its mind after 2 checks in a row.
FLIP_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def haproxy_bin() -> str:
    reason = debian.install(["haproxy"])
    if reason is not None:
        pytest.skip(f"haproxy is not available: {reason}")
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(found).exists():
        pytest.skip("haproxy installed but not found on PATH")
    return found


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    with private_cluster() as pg:
        yield pg


class Balancer:
    """HAProxy running deploy/haproxy.cfg in the foreground, on free ports."""

    def __init__(self, binary: str, root: Path, a: tuple[int, int], b: tuple[int, int]) -> None:
        self.port = free_port()
        self.stats_port = free_port()
        env = clean_env(
            LB_BIND=f"127.0.0.1:{self.port}",
            LB_STATS=f"127.0.0.1:{self.stats_port}",
            LB_A=f"127.0.0.1:{a[0]}",
            LB_A_CHECK_PORT=str(a[1]),
            LB_B=f"127.0.0.1:{b[0]}",
            LB_B_CHECK_PORT=str(b[1]),
        )
        check = subprocess.run(
            [binary, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = root / "haproxy.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status (UP, DOWN, "DOWN 1/2", ...), from the stats page's CSV."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5) as response:
                text = response.read().decode().lstrip("# ")
        except urllib.error.URLError:
            assert self.proc.poll() is None, self.log.read_text()
            return {}  # still starting
        return {(row["pxname"], row["svname"]): row["status"] for row in csv.DictReader(io.StringIO(text))}

    def wait(self, backend: str, want: dict[str, str]) -> None:
        def settled() -> bool:
            states = self.states()
            return all(states.get((backend, server)) == status for server, status in want.items())

        wait_until(settled, f"HAProxy to see {backend} as {want}", timeout=FLIP_WITHIN_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def balancers() -> Iterator[list[Balancer]]:
    started: list[Balancer] = []
    try:
        yield started
    finally:
        for balancer in started:
            balancer.stop()


def write_config(inst: Installation, cluster: PgCluster, keys: Keys) -> Path:
    """The README's example configuration, shared by every instance (ports come from the
    environment, one pair per instance)."""
    hour = (__import__("time").gmtime().tm_hour + 12) % 24  # the schedule never fires during the test
    inst.root.mkdir(parents=True, exist_ok=True)
    inst.config.write_text(
        f'[daemon]\ndata_dir = "{inst.data}"\ndatabase_url = "{cluster.url()}"\n'
        f'hourly_cron = "0 {hour} * * *"\ndaily_cron = "30 {hour} * * *"\nrescan_interval_s = 1.0\n\n'
        "[sftp]\nmax_connections_per_address = 0\nmax_startups_per_address = 0\n\n"
        f'[tenants.{TENANT}]\nauthorized_keys = "{keys.public(TENANT)}"\n'
        f"licenses = {{ {LIC} = 0 }}\nmax_deactivation_ratio = 1.0\n",
        encoding="utf-8",
    )
    return inst.config


def instance(daemons: Daemons, inst: Installation, name: str) -> tuple[DaemonProcess, tuple[int, int]]:
    sftp_port, metrics_port = free_port(), free_port()
    env = {
        "ORGSYNCD_DAEMON__INSTANCE_NAME": name,
        "ORGSYNCD_SFTP__LISTEN": f"127.0.0.1:{sftp_port}",
        "ORGSYNCD_METRICS__LISTEN": f"127.0.0.1:{metrics_port}",
    }
    return daemons.start(["--config", str(inst.config)], env=env), (sftp_port, metrics_port)


def sftp_put(port: int, keys: Keys, known_hosts: Path, local: Path, strict: str) -> None:
    """``sftp -b`` as an HRIS script runs it, pinning the host key on first use (``accept-new``)
    and then requiring it (``yes``)."""
    batch = local.with_suffix(".sftp")
    batch.write_text(f"put {local.name} inbox/\n", encoding="utf-8")
    done = subprocess.run(
        ["sftp", "-F", "/dev/null", "-b", str(batch), "-i", str(keys.private(TENANT)), "-P", str(port),
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", f"StrictHostKeyChecking={strict}",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{TENANT}@127.0.0.1"],
        cwd=local.parent, env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_two_instances_behind_haproxy_as_the_readme_says(
    daemons: Daemons,
    cluster: PgCluster,
    keys: Keys,
    tmp_path: Path,
    haproxy_bin: str,
    balancers: list[Balancer],
) -> None:
    work = Workload(tenants=(TENANT,), files=6, base=5)
    inst = Installation(root=tmp_path / "site", db_url=cluster.url(), tenants=work.tenants)
    write_config(inst, cluster, keys)
    a, a_ports = instance(daemons, inst, "a")
    b, b_ports = instance(daemons, inst, "b")
    lb = Balancer(haproxy_bin, tmp_path, a_ports, b_ports)
    balancers.append(lb)
    lb.wait("orgsyncd", {"orgsyncd-a": "UP", "orgsyncd-b": "UP"})

    client = tmp_path / "hris"
    client.mkdir()
    known_hosts = client / "known_hosts"

    def upload(k: int) -> None:
        local = client / work.name(k)
        local.write_bytes(work.content(TENANT, k))
        sftp_put(lb.port, keys, known_hosts, local, "accept-new" if k == 1 else "yes")

    for k in range(1, 5):
        upload(k)
    # Both took sessions (least connections, ties in turn), with one host key between them.
    assert a.events("sftp_login") and b.events("sftp_login")
    assert len(known_hosts.read_text().splitlines()) == 1

    # PostgreSQL down for both: neither is ready, and HAProxy still sends SFTP to them.
    cluster.stop("fast")
    lb.wait("orgsyncd", {"orgsyncd-a": "DOWN", "orgsyncd-b": "DOWN"})
    upload(5)
    assert (inst.tenant_dir(TENANT, "inbox") / work.name(5)).exists()
    cluster.start()
    lb.wait("orgsyncd", {"orgsyncd-a": "UP", "orgsyncd-b": "UP"})

    # One instance stops: the other takes every session.
    a.send(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    lb.wait("orgsyncd", {"orgsyncd-a": "DOWN", "orgsyncd-b": "UP"})
    logins_before = len(b.events("sftp_login"))
    upload(6)
    assert len(b.events("sftp_login")) == logins_before + 1

    names = {work.name(k) for k in range(1, work.files + 1)}
    wait_until(lambda: {j.file_name for j in inst.jobs(TENANT)} >= names, "every upload to be queued")
    assert inst.run("run-now") == 0
    report = check_final(inst, work)
    assert not report.problems, report.problems
