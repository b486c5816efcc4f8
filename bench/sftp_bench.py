"""SFTP upload throughput: `orgsyncd serve` against OpenSSH's own sftp-server, same files, same run.

    python bench/sftp_bench.py [--mb 100] [--rows 1000000] [--sessions 200] [--session-mb 1]

Setup (done here): installs Debian's openssh-server if sshd is missing, starts a private sshd on a
loopback port with its own config and keys (stopped afterwards), and `orgsyncd serve` on another
loopback port with a throwaway data directory. Uploads the same 100 MB file and a generated
1,000,000-row roster to both with the OpenSSH `sftp` client and with paramiko, prints MB/s and the
ratio orgsyncd/OpenSSH; then N concurrent sessions each uploading 1 MB to orgsyncd: total time,
failures, files queued, and the daemon's peak RSS.
"""

from __future__ import annotations

import argparse
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
def orgsyncd_serve(work: Path, user_key_pub: str) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    port, metrics = free_port(), free_port()
    keys = work / "acme.pub"
    keys.write_text(user_key_pub, encoding="utf-8")
    data = work / "orgsyncd-data"
    config = work / "orgsyncd.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{data}"\nhourly_cron = "0 0 1 1 *"\ndaily_cron = "30 0 1 1 *"\n'
        "daily_threshold_bytes = 1\n"  # nothing is imported during the benchmark: uploads only
        f'[sftp]\nlisten = "127.0.0.1:{port}"\nmax_sessions_per_tenant = 1000\nmax_file_bytes = 4294967296\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        f'[tenants.acme]\nauthorized_keys = "{keys}"\ncadence = "daily"\n'
        "licenses = { default_license_learning_proalllanguages = 0 }\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orgsyncd", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_port(port)
        yield port, proc, data
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


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


def concurrent(
    args: argparse.Namespace, work: Path, key: Path, port: int, proc: subprocess.Popen[bytes], data: Path
) -> None:
    payload = work / "one_mb.csv"
    payload.write_bytes(b"primary_email_address\n" + b"x@example.com\n" * ((args.session_mb << 20) // 14))
    failures: list[str] = []
    peak = {"rss": 0}
    stop = threading.Event()

    def watch_rss() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss_kib(proc.pid))
            time.sleep(0.05)

    def one(i: int) -> None:
        try:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            client.connect("127.0.0.1", port=port, username="acme", key_filename=str(key), look_for_keys=False,
                           allow_agent=False, timeout=60, banner_timeout=60, auth_timeout=60)  # fmt: skip
            client.open_sftp().put(str(payload), f"/inbox/c{i:04d}.csv")
            client.close()
        except Exception as exc:
            failures.append(f"{i}: {type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=watch_rss, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.sessions)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    time.sleep(3)  # let the last queue-on-close land
    stop.set()
    queued = _queued_uploads(data)
    print(f"\n{args.sessions} concurrent sessions x {args.session_mb} MB to orgsyncd: {elapsed:.1f} s, "
          f"{len(failures)} failures, {queued} files queued, daemon peak RSS {peak['rss'] / 1024:.0f} MB")  # fmt: skip
    for line in failures[:5]:
        print("  failure:", line)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _queued_uploads(data: Path) -> int:
    with sqlite3.connect(data / "orgsyncd.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM job WHERE file_name LIKE 'c____.csv'").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="best of N uploads per cell")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--session-mb", type=int, default=1)
    args = parser.parse_args()
    ensure_openssh_server()
    if shutil.which("sftp") is None:
        sys.exit("the OpenSSH sftp client is needed (apt-get install openssh-client)")
    with tempfile.TemporaryDirectory(prefix="orgsyncd-sftp-bench-") as tmp:
        work = Path(tmp)
        key = work / "client_ed25519"
        public = write_key(key)
        user = os.environ.get("USER") or "root"
        with private_sshd(work, public) as ssh_port, orgsyncd_serve(work, public) as (org_port, proc, data):
            throughput(args, work, key, user, ssh_port, org_port)
            concurrent(args, work, key, org_port, proc, data)


if __name__ == "__main__":
    main()
