"""SFTP benchmark: throughput against OpenSSH's sftp-server, memory under concurrency, and logins
under a flood of half-open handshakes.

    python bench/sftp_bench.py [--mb 100] [--rows 1000000] [--repeat 2] [--no-throughput]
                               [--concurrency 500x1,200x5] [--half-open 300] [--memory-max 1G]

1. Throughput: installs Debian's openssh-server if sshd is missing, starts a private sshd on a
   loopback port with its own config and keys (stopped afterwards), and `orgsyncd serve` on another
   loopback port with a throwaway data directory. Uploads the same 100 MB file and a generated
   1,000,000-row roster to both with the OpenSSH `sftp` client and with paramiko; prints MB/s and the
   ratio orgsyncd/OpenSSH.
2. Concurrency, per SESSIONSxMB step, against a fresh `orgsyncd serve` with its default limits:
   that many paramiko sessions at once, each from its own loopback address (127.77.x.y), each
   uploading an MB-sized file. Prints the time, failures, files queued (and any queued twice), and
   the daemon's peak RSS (VmHWM). With --memory-max the daemon runs in a memory cgroup with that
   limit, as under the unit's MemoryMax=, and the cgroup's peak and OOM kills are printed too.
3. Half-open handshakes: N connections that send the SSH banner and then nothing, held open, first
   all from one address, then each from its own; meanwhile a tenant logs in and uploads. Prints how
   many of the N the daemon kept and how long the tenant's login and upload took (target < 5 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import paramiko

ROOT = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
SFTP_OPTIONS: list[str] = []  # --sftp KEY=VALUE lines added to orgsyncd's [sftp] section


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def ensure_openssh_server() -> None:
    if SSHD.exists() and SFTP_SERVER.exists():
        return
    print("installing openssh-server (Debian) for the comparison ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"], check=True, env=env
    )
    # Debian starts the system sshd on install where it can; the benchmark never uses it.


def write_key(path: Path) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)
    public = key.export_public_key().decode()
    path.with_suffix(".pub").write_text(public, encoding="utf-8")
    return public


@contextmanager
def private_sshd(work: Path, user_key_pub: str) -> Iterator[int]:
    port = free_port()
    host_key = work / "sshd_host_ed25519"
    write_key(host_key)
    auth = work / "sshd_authorized_keys"
    auth.write_text(user_key_pub, encoding="utf-8")
    auth.chmod(0o600)
    (work / "openssh_root").mkdir(exist_ok=True)
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {work / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nMaxStartups 1000:30:2000\nMaxSessions 100\n"
        f"Subsystem sftp {SFTP_SERVER}\n",
        encoding="utf-8",
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def orgsyncd_serve(
    work: Path, user_key_pub: str, cgroup: MemoryCgroup | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    port, metrics = free_port(), free_port()
    keys = work / "acme.pub"
    keys.write_text(user_key_pub, encoding="utf-8")
    data = work / "orgsyncd-data"
    config = work / "orgsyncd.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{data}"\nhourly_cron = "0 0 1 1 *"\ndaily_cron = "30 0 1 1 *"\n'
        "daily_threshold_bytes = 1\n"  # nothing is imported during the benchmark: uploads only
        f'[sftp]\nlisten = "127.0.0.1:{port}"\nmax_sessions_per_tenant = 1000\nmax_file_bytes = 4294967296\n'
        + "".join(f"{line}\n" for line in SFTP_OPTIONS)
        + f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        f'[tenants.acme]\nauthorized_keys = "{keys}"\ncadence = "daily"\n'
        "licenses = { default_license_learning_proalllanguages = 0 }\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_")}
    log = (work / "orgsyncd.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orgsyncd", "--config", str(config), "serve"],
        stdout=log,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=cgroup.join if cgroup else None,  # in the group from its first byte
    )
    try:
        wait_port(port)
        yield port, proc, data
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def make_file(path: Path, mb: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        for _ in range(mb):
            fh.write(block)


def make_roster(path: Path, rows: int) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_roster.py"), str(path), "--rows", str(rows)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def openssh_put(port: int, key: Path, user: str, local: Path, remote_dir: str, work: Path) -> float:
    batch = work / "batch"
    batch.write_text(f"put {local} {remote_dir}/{local.name}\n", encoding="utf-8")
    started = time.perf_counter()
    subprocess.run(
        ["sftp", "-q", "-b", str(batch), "-i", str(key), "-P", str(port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def paramiko_put(port: int, key: Path, user: str, local: Path, remote_dir: str) -> float:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username=user, key_filename=str(key), look_for_keys=False,
                   allow_agent=False)  # fmt: skip
    try:
        sftp = client.open_sftp()
        started = time.perf_counter()
        sftp.put(str(local), f"{remote_dir}/{local.name}")
        return time.perf_counter() - started
    finally:
        client.close()


def throughput(
    args: argparse.Namespace, work: Path, key: Path, user: str, ssh_port: int, org_port: int
) -> None:
    big, roster = work / "blob.bin", work / "roster.csv"
    make_file(big, args.mb)
    make_roster(roster, args.rows)
    openssh_dir = str(work / "openssh_root")
    print("\n| file | client | OpenSSH sftp-server MB/s | orgsyncd MB/s | ratio |\n|---|---|---|---|---|")
    for local in (big, roster):
        for client in ("OpenSSH sftp", "paramiko"):
            ref = _rate(args.repeat, client, local, key, user, ssh_port, openssh_dir, work)
            ours = _rate(args.repeat, client, local, key, "acme", org_port, "/inbox", work)
            size = local.stat().st_size / 1e6
            print(
                f"| {local.name} ({size:.0f} MB) | {client} | {ref:.1f} | {ours:.1f} | {ours / ref:.2f} |",
                flush=True,
            )


def _rate(
    repeat: int, client: str, local: Path, key: Path, user: str, port: int, remote: str, work: Path
) -> float:
    """Best MB/s of `repeat` uploads."""
    if client == "paramiko":
        seconds = min(paramiko_put(port, key, user, local, remote) for _ in range(repeat))
    else:
        seconds = min(openssh_put(port, key, user, local, remote, work) for _ in range(repeat))
    return local.stat().st_size / 1e6 / seconds


# -- concurrency: many sessions at once, the daemon's peak memory ----------------------------------


def source_address(index: int) -> str:
    """A loopback address of its own per client (all of 127/8 reaches lo), as 500 HRIS hosts
    would connect from 500 addresses; the per-address limits then apply as they would there."""
    return f"127.77.{index // 250}.{index % 250 + 1}"


def connect_from(source: str, port: int, key: Path, timeout: float = 120.0) -> paramiko.SSHClient:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username="acme", key_filename=str(key), look_for_keys=False,
                   allow_agent=False, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                   sock=sock)  # fmt: skip
    return client


def concurrent_step(
    work: Path, key: Path, public: str, sessions: int, mb: int, memory_max: str | None
) -> None:
    payload = work / f"payload_{mb}mb.csv"
    line = b"primary_email_address\nx@example.com\n"
    payload.write_bytes((line * ((mb << 20) // len(line) + 1))[: mb << 20])
    failures: list[str] = []

    def one(i: int) -> None:
        try:
            client = connect_from(source_address(i), port, key)
            try:
                client.open_sftp().put(str(payload), f"/inbox/c{i:04d}.csv")
            finally:
                client.close()
        except Exception as exc:
            failures.append(f"{i}: {type(exc).__name__}: {exc}")

    step = work / f"concurrency-{sessions}x{mb}"
    step.mkdir()
    with memory_cgroup(memory_max) as cgroup, orgsyncd_serve(step, public, cgroup) as (port, proc, data):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        queued, duplicated = _queued_uploads(data, sessions)
        peak = _status_kib(proc.pid, "VmHWM") / 1024
        cpu = _cpu_s(proc.pid)
        limit = cgroup.report() if cgroup else ""
    print(f"\n{sessions} concurrent sessions x {mb} MB (each from its own address): {elapsed:.1f} s, "
          f"{len(failures)} failures, {queued} of {sessions} files queued, {duplicated} queued twice, "
          f"daemon peak RSS {peak:.0f} MB, daemon CPU {cpu:.1f} s{limit}", flush=True)  # fmt: skip
    for failure in failures[:5]:
        print("  failure:", failure)
    refusals = _refusals(step / "orgsyncd.log")
    if refusals:
        print("  connections the daemon refused or dropped:", refusals)


def _queued_uploads(data: Path, sessions: int, wait_s: float = 30.0) -> tuple[int, int]:
    """(files with a job, files with more than one), once every file is queued or *wait_s* passed."""
    deadline = time.monotonic() + wait_s
    while True:
        with sqlite3.connect(data / "orgsyncd.db") as conn:
            rows = conn.execute(
                "SELECT COUNT(*) FROM job WHERE file_name LIKE 'c____.csv' GROUP BY file_name"
            ).fetchall()
        if len(rows) >= sessions or time.monotonic() > deadline:
            return len(rows), sum(1 for (count,) in rows if count > 1)
        time.sleep(0.5)


def _refusals(log: Path) -> dict[str, int]:
    """What the daemon's gate and timeouts did, from its JSON log."""
    found: dict[str, int] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"connection_refused"' in line or '"startup_evicted"' in line or "login_timeout" in line.lower():
            event = json.loads(line)
            key = event.get("limit") or event["event"]
            found[key] = found.get(key, 0) + 1
    return found


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryCgroup:
    """A memory cgroup for the daemon, limited like the unit's MemoryMax= (cgroup v2, else v1)."""

    def __init__(self, path: Path, v2: bool, limit: str) -> None:
        self.path, self.v2, self.limit = path, v2, limit

    def join(self) -> None:
        """Move the calling process in (run in the child between fork and exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def report(self) -> str:
        if self.v2:
            peak = _read_int(self.path / "memory.peak")
            counters = (self.path / "memory.events").read_text()
        else:
            peak = _read_int(self.path / "memory.max_usage_in_bytes")
            counters = (self.path / "memory.oom_control").read_text()
        ooms = dict(line.split() for line in counters.splitlines()).get("oom_kill", "0")
        return f"; cgroup limit {self.limit}: peak {peak / 2**20:.0f} MB with page cache, {ooms} OOM kills"


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError):
        return 0


@contextmanager
def memory_cgroup(limit: str | None) -> Iterator[MemoryCgroup | None]:
    """A child of this process's own memory cgroup, removed afterwards."""
    if not limit:
        yield None
        return
    own = Path("/proc/self/cgroup").read_text().splitlines()
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    if v2:
        base = Path("/sys/fs/cgroup") / own[0].split("::", 1)[1].strip("/")
    else:
        line = next(entry for entry in own if entry.split(":")[1] == "memory")
        base = Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].strip("/")
    path = base / f"orgsyncd-bench-{os.getpid()}"
    path.mkdir()
    try:
        (path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(_bytes(limit)))
        yield MemoryCgroup(path, v2, limit)
    finally:
        _remove_cgroup(path)


def _remove_cgroup(path: Path) -> None:
    for _ in range(100):  # emptying a group takes the kernel a moment after its last process
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    print(f"  could not remove cgroup {path}", file=sys.stderr)


def _bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


# -- half-open handshakes: a tenant still logs in ---------------------------------------------------


def half_open_step(work: Path, key: Path, public: str, count: int, spread: bool) -> None:
    """*count* connections that send the SSH banner and then nothing, held open; meanwhile a
    tenant logs in and uploads. From one address, or each from its own (a botnet's flood)."""
    step = work / f"half-open-{count}-{'spread' if spread else 'one'}"
    step.mkdir()
    with orgsyncd_serve(step, public) as (port, proc, _):
        held: list[socket.socket] = []
        for i in range(count):
            sock = socket.socket()
            sock.bind((source_address(i) if spread else "127.0.0.2", 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"SSH-2.0-halfopen\r\n")
            held.append(sock)
        time.sleep(1.0)  # let the daemon answer (or refuse) every one of them
        alive = sum(1 for sock in held if _still_open(sock))
        started = time.perf_counter()
        client = connect_from("127.0.0.1", port, key, timeout=30)
        client.open_sftp().putfo(io.BytesIO(b"primary_email_address\nt@example.com\n"), "/inbox/tenant.csv")
        client.close()
        login_s = time.perf_counter() - started
        rss = _status_kib(proc.pid, "VmHWM") / 1024
        for sock in held:
            sock.close()
    where = "each from its own address" if spread else "from one address"
    print(f"\n{count} half-open handshakes held {where}: {alive} still open after 1 s; a tenant logged in "
          f"and uploaded in {login_s:.2f} s (target < 5 s); daemon peak RSS {rss:.0f} MB", flush=True)  # fmt: skip


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="best of N uploads per cell")
    parser.add_argument("--no-throughput", action="store_true", help="skip the comparison with OpenSSH")
    parser.add_argument(
        "--concurrency", default="500x1,200x5", help="SESSIONSxMB steps, comma-separated ('' skips)"
    )
    parser.add_argument("--half-open", type=int, default=300, help="half-open handshakes (0 skips)")
    parser.add_argument(
        "--memory-max",
        default=None,
        help="run the concurrency steps in a memory cgroup limited to this (e.g. 1G, the unit's MemoryMax=)",
    )
    parser.add_argument("--sftp", action="append", default=[], metavar="KEY=VALUE",
                        help="an [sftp] setting for orgsyncd (a TOML value), e.g. max_startups=1000")  # fmt: skip
    args = parser.parse_args()
    SFTP_OPTIONS.extend(setting.replace("=", " = ", 1) for setting in args.sftp)
    with tempfile.TemporaryDirectory(prefix="orgsyncd-sftp-bench-") as tmp:
        work = Path(tmp)
        key = work / "client_ed25519"
        public = write_key(key)
        if not args.no_throughput:
            ensure_openssh_server()
            if shutil.which("sftp") is None:
                sys.exit("the OpenSSH sftp client is needed (apt-get install openssh-client)")
            user = os.environ.get("USER") or "root"
            with private_sshd(work, public) as ssh_port, orgsyncd_serve(work, public) as (org_port, _, _):
                throughput(args, work, key, user, ssh_port, org_port)
        for step in filter(None, args.concurrency.split(",")):
            sessions, mb = (int(part) for part in step.lower().split("x"))
            concurrent_step(work, key, public, sessions, mb, args.memory_max)
        if args.half_open:
            half_open_step(work, key, public, args.half_open, spread=False)
            half_open_step(work, key, public, args.half_open, spread=True)


if __name__ == "__main__":
    main()
