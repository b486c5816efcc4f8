"""A private PostgreSQL cluster for tests that stop and start the database: ``initdb`` and
``pg_ctl`` from the installed server binaries, in a temporary directory, on a free loopback port.

The system cluster (127.0.0.1:5432, the one ORGSYNCD_TEST_PG_URL names) is never touched: outage
tests stop only their own. As root, the cluster runs as the ``postgres`` user (PostgreSQL refuses to
run as root); its directory is made outside pytest's tmp_path, which that user cannot enter.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_TIMEOUT_S = 60


def _server_bin() -> Path | None:
    found = sorted(
        glob.glob(_BIN_GLOB), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
    )
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def why_not() -> str | None:
    """None when a private cluster can be made here, else why not (for a skip)."""
    if _server_bin() is None:
        return f"no PostgreSQL server binaries under {_BIN_GLOB} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run a private cluster as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One private cluster: ``start``, ``stop(mode)``, ``url``; ``destroy`` at the end."""

    def __init__(self) -> None:
        bin_dir = _server_bin()
        assert bin_dir is not None, why_not()
        self._bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="orgsyncd-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        conf = self.data / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                # A throwaway cluster: durability is not what is tested, the outage is.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 60\nshared_buffers = 32MB\n"
            )

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str = "orgsyncd") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str = "orgsyncd") -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(_TIMEOUT_S), "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (sessions terminated, clean shutdown) or ``immediate`` (like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(_TIMEOUT_S), "stop")

    def running(self) -> bool:
        status = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data), "status"), capture_output=True, check=False
        )
        return status.returncode == 0

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self._bin / program), *args]
        if self._user is not None:
            return ["runuser", "-u", self._user, "--", *command]
        return command

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S + 30,
            check=False,
        )
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed: {result.stderr.strip()}\n{tail}")


@contextlib.contextmanager
def private_cluster() -> Iterator[PgCluster]:
    """A started private cluster with a database ``orgsyncd``; gone afterwards, whatever happened."""
    cluster = PgCluster()
    try:
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        cluster.destroy()
