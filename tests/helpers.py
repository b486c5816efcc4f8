"""Small helpers for tests: write rosters, run imports through the real service, read results."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
from sqlalchemy import text

from orgsyncd.config import Settings
from orgsyncd.core.results import Summary
from orgsyncd.service import Service

LIC = "default_license_learning_proalllanguages"
PRO = "pro_license"


def roster(header: Sequence[str], rows: Iterable[Sequence[Any]], newline: str = "\n") -> str:
    """A valid CSV: with LF line ends every field is quoted, so a bare CR in a value stays a value."""
    out = io.StringIO()
    quoting = csv.QUOTE_MINIMAL if newline == "\r\n" else csv.QUOTE_ALL
    writer = csv.writer(out, lineterminator=newline, quoting=quoting)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@dataclass
class Env:
    """One tenant on a real database and a real data directory."""

    root: Path
    db_url: str
    tenant: str = "acme"
    tenant_cfg: dict[str, Any] = field(default_factory=dict)
    notify_cfg: dict[str, Any] = field(default_factory=dict)
    daemon_cfg: dict[str, Any] = field(default_factory=dict)
    _service: Service | None = None
    _counter: int = 0

    def settings(self) -> Settings:
        cfg = {"licenses": {LIC: 0}, "default_license": LIC, **self.tenant_cfg}
        return Settings(
            daemon={"data_dir": self.root / "data", "database_url": self.db_url, **self.daemon_cfg},
            tenants={self.tenant: cfg},
            notify=self.notify_cfg,
        )

    @property
    def service(self) -> Service:
        if self._service is None:
            self._service = Service(self.settings())
            self._service.migrate()
        return self._service

    def reconfigure(self, **tenant_cfg: Any) -> None:
        self.tenant_cfg.update(tenant_cfg)
        self.service.reload(self.settings())

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None

    def write(self, text: str, name: str | None = None) -> Path:
        self._counter += 1
        path = self.root / "in" / (name or f"file{self._counter}.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
        return path

    def run(self, text: str, name: str | None = None, **kwargs: Any) -> Summary:
        return self.service.import_file(self.tenant, self.write(text, name), **kwargs)

    def run_bytes(self, data: bytes, name: str, **kwargs: Any) -> Summary:
        path = self.root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.service.import_file(self.tenant, path, **kwargs)

    def results_text(self, summary: Summary) -> str:
        from orgsyncd.paths import result_paths

        return result_paths(self.dirs, summary.file, summary.job_id or 0)[0].read_text(encoding="utf-8")

    def results(self, summary: Summary) -> list[dict[str, str]]:
        from orgsyncd.paths import result_paths

        return read_csv(result_paths(self.dirs, summary.file, summary.job_id or 0)[0])

    def summary_json(self, summary: Summary) -> dict[str, Any]:
        from orgsyncd.paths import result_paths

        return json.loads(result_paths(self.dirs, summary.file, summary.job_id or 0)[1].read_text())

    @property
    def dirs(self) -> Any:
        return self.service.dirs(self.tenant)

    def learner(self, email: str) -> Any:
        store = self.service.learners
        return store.find(self.service.jobs.tenant_id(self.tenant), email)

    def export(self) -> str:
        out = io.StringIO()
        self.service.export(self.tenant, out)
        return out.getvalue()

    def outcomes(self, summary: Summary) -> list[tuple[str, str, str]]:
        return [(r["row"], r["outcome"], r["code"]) for r in self.results(summary)]

    def broken_references(self) -> dict[str, int]:
        """Rows of this tenant that point at a learner, group or tenant that is not there (or is
        another tenant's). The bulk tables have no foreign keys, so this is what checks them."""
        if self._service is None:
            return {}
        with self.service.engine.connect() as conn:
            tenant = self.service.jobs.tenant_id(self.tenant)
            found = {
                name: int(conn.execute(text(sql), {"t": tenant}).scalar_one()) for name, sql in _REFERENCES
            }
        return {name: n for name, n in found.items() if n}


# Each counts one kind of dangling reference among tenant :t's rows.
_REFERENCES = (
    (
        "audit_event.learner_id",
        "SELECT COUNT(*) FROM audit_event e JOIN job j ON j.id = e.job_id WHERE j.tenant_id = :t "
        "AND NOT EXISTS (SELECT 1 FROM learner l WHERE l.id = e.learner_id AND l.tenant_id = :t)",
    ),
    (
        "license_assignment.learner_id",
        "SELECT COUNT(*) FROM license_assignment a WHERE a.tenant_id = :t AND NOT EXISTS "
        "(SELECT 1 FROM learner l WHERE l.id = a.learner_id AND l.tenant_id = :t)",
    ),
    (
        "membership.learner_id",
        "SELECT COUNT(*) FROM membership m JOIN learner_group g ON g.id = m.group_id WHERE g.tenant_id = :t "
        "AND NOT EXISTS (SELECT 1 FROM learner l WHERE l.id = m.learner_id AND l.tenant_id = :t)",
    ),
    (
        "membership.group_id",
        "SELECT COUNT(*) FROM membership m JOIN learner l ON l.id = m.learner_id WHERE l.tenant_id = :t "
        "AND NOT EXISTS (SELECT 1 FROM learner_group g WHERE g.id = m.group_id AND g.tenant_id = :t)",
    ),
)


@dataclass(frozen=True)
class Keys:
    """Client key pairs for SFTP tests: ``<dir>/<name>`` (0600) and ``<dir>/<name>.pub``."""

    dir: Path

    def private(self, name: str) -> Path:
        return self.dir / name

    def public(self, name: str) -> Path:
        return self.dir / f"{name}.pub"

    def pkey(self, name: str) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key_file(str(self.private(name)))


def make_keys(directory: Path, names: Sequence[str]) -> Keys:
    for name in names:
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(directory / name)
        (directory / name).chmod(0o600)
        key.write_public_key(directory / f"{name}.pub")
    return Keys(directory)


CONNECT_WAIT_S = 10.0


def ssh_client(
    port: int,
    user: str,
    *,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    source: str | None = None,
) -> paramiko.SSHClient:
    """A paramiko client logged in to the SFTP server on 127.0.0.1 (no agent, no ~/.ssh keys).

    *source*: connect from this loopback address (any of 127/8 works on Linux), to act as
    another client host.
    """
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    sock = None
    try:
        if source is not None:
            sock = socket.create_connection(("127.0.0.1", port), CONNECT_WAIT_S, (source, 0))
        client.connect(
            "127.0.0.1",
            port,
            username=user,
            pkey=pkey,
            password=password,
            look_for_keys=False,
            allow_agent=False,
            timeout=CONNECT_WAIT_S,
            banner_timeout=CONNECT_WAIT_S,
            auth_timeout=CONNECT_WAIT_S,
            sock=sock,
        )
    except BaseException:
        client.close()
        if sock is not None:
            sock.close()
        raise
    return client


@contextlib.contextmanager
def sftp_session(
    port: int,
    user: str,
    *,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    source: str | None = None,
) -> Iterator[paramiko.SFTPClient]:
    client = ssh_client(port, user, pkey=pkey, password=password, source=source)
    try:
        with client.open_sftp() as sftp:
            yield sftp
    finally:
        client.close()
