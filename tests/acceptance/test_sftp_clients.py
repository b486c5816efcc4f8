"""Every SFTP client HRIS teams and integrators use, as they are, against a real ``orgsyncd serve``.

Each client must exit 0 and its file be queued exactly once; clients that preserve times must see
the file keep the HRIS's mtime; ``sftp reput`` and ``lftp put -c`` continue an upload the client
itself dropped (killed mid-transfer). Host keys are checked by every client (a known_hosts file or
the key's fingerprint), as a careful integrator would run them. Missing clients are installed from
Debian once per run (tests/debian.py); a test skips, naming why, only when that is impossible.
docs/sftp-clients.md describes the same runs for people.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests import debian
from tests.acceptance.conftest import DaemonProcess, Daemons, Site, Tenant, clean_env, wait_until
from tests.helpers import Keys, sftp_session

# Debian package of each client command.
PACKAGES = {"sftp": "openssh-client", "lftp": "lftp", "rclone": "rclone", "psftp": "putty-tools",
            "pscp": "putty-tools", "puttygen": "putty-tools", "curl": "curl"}  # fmt: skip
HRIS_MTIME = 1_700_000_000  # 2023-11-14: the export's own time, which -p clients carry over
CLIENT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def installed() -> str | None:
    """Install every client once; the reason they could not be, or None."""
    return debian.install(set(PACKAGES.values()))


@dataclass
class Clients:
    """One daemon for the module, and everything a client needs to reach it."""

    site: Site
    daemon: DaemonProcess
    keys: Keys
    work: Path
    installed: str | None

    @property
    def port(self) -> int:
        return self.site.sftp_port

    @property
    def key(self) -> Path:
        return self.keys.private("acme")

    def need(self, *commands: str) -> None:
        for command in commands:
            if shutil.which(command) is None:
                pytest.skip(f"{command} ({PACKAGES[command]}) is not available: {self.installed}")

    def local(self, name: str, size: int = 2_000, mtime: int | None = HRIS_MTIME) -> Path:
        """A roster-like file in its own directory, with the HRIS's mtime."""
        directory = self.work / "out" / name
        directory.mkdir(parents=True)
        path = directory / name
        line = f"primary_email_address,name\nsomeone@example.com,{name}\n".encode()
        path.write_bytes((line * (size // len(line) + 1))[:size])
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def run(self, command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            input=stdin,
            cwd=self.work,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
            check=False,
        )

    def start(self, command: list[str]) -> subprocess.Popen[str]:
        """A client in its own process group, so a kill takes its ssh child too."""
        return subprocess.Popen(
            command,
            cwd=self.work,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def _env(self) -> dict[str, str]:
        # HOME is the test's: no ~/.ssh, ~/.lftprc, ~/.putty or rclone.conf of the machine's.
        return clean_env(HOME=str(self.work))

    # -- host key, as each client wants it --------------------------------------------------

    @property
    def known_hosts(self) -> Path:
        return self.work / "known_hosts"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...``, as PuTTY's -hostkey and ssh-keygen -l show it."""
        return str(self._host_key().get_fingerprint("sha256"))

    def _host_key(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(self.site.data / "ssh_host_ed25519_key")

    def write_known_hosts(self) -> None:
        public = self._host_key().export_public_key("openssh").decode().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(public)}\n", encoding="utf-8")

    @property
    def ssh_options(self) -> list[str]:
        return ["-F", "/dev/null", "-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "LogLevel=ERROR"]  # fmt: skip

    @property
    def ppk(self) -> Path:
        """The same key in PuTTY's format, converted by PuTTY's own puttygen."""
        path = self.work / "acme.ppk"
        if not path.exists():
            self.need("puttygen")
            result = self.run(["puttygen", str(self.key), "-O", "private", "-o", str(path)])
            assert result.returncode == 0, result.stderr
        return path

    # -- what the daemon did --------------------------------------------------------------

    def jobs(self, name: str) -> int:
        return int(self.site.db("SELECT COUNT(*) FROM job WHERE file_name = ?", name)[0][0])

    def partial(self, name: str) -> Path:
        return self.site.data / "staging" / "partial" / "acme" / name

    def assert_queued_once(self, local: Path, name: str | None = None, *, mtime: int | None = None) -> None:
        name = name or local.name
        inbox = self.site.inbox() / name
        assert inbox.read_bytes() == local.read_bytes()
        self.daemon.wait_event("job_queued", file=name)
        assert self.jobs(name) == 1
        assert len(self.daemon.events("job_queued", file=name)) == 1
        assert not self.partial(name).exists()
        if mtime is not None:
            assert inbox.stat().st_mtime == mtime

    def drop_mid_upload(self, command: list[str], name: str) -> None:
        """Run an upload and kill the client once the daemon has some of its bytes."""
        staging = self.site.data / "staging"
        client = self.start(command)
        try:
            wait_until(
                lambda: (
                    any(p.stat().st_size > 0 for p in staging.glob("*.upload")) or client.poll() is not None
                ),
                f"the first bytes of {name}",
            )
            assert client.poll() is None, "the upload finished before it could be dropped"
        finally:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait(10)
        event = self.daemon.wait_event("upload_interrupted", file=name)
        assert 0 < event["bytes"] < (self.work / "out" / name / name).stat().st_size
        assert self.partial(name).stat().st_size == event["bytes"]
        assert not (self.site.inbox() / name).exists() and self.jobs(name) == 0


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory, keys: Keys, installed: str | None) -> Iterator[Clients]:
    root = tmp_path_factory.mktemp("clients")
    site = Site(root)
    site.write_config([Tenant("acme", keys.public("acme"))])
    daemons = Daemons(root)
    try:
        daemon = daemons.start(["--config", str(site.config)])
        work = root / "work"
        work.mkdir()
        env = Clients(site, daemon, keys, work, installed)
        env.write_known_hosts()
        yield env
    finally:
        for started in daemons.started:
            started.kill()


# -- OpenSSH --------------------------------------------------------------------------------------


def openssh(clients: Clients, commands: list[str]) -> subprocess.CompletedProcess[str]:
    """OpenSSH's sftp in batch mode, commands on stdin."""
    command = ["sftp", *clients.ssh_options, "-P", str(clients.port), "-b", "-", "acme@127.0.0.1"]
    return clients.run(command, "\n".join(commands) + "\n")


def test_openssh_put_and_put_p(clients: Clients) -> None:
    clients.need("sftp")
    plain, preserved = clients.local("openssh-put.csv"), clients.local("openssh-put-p.csv")
    commands = [f"put {plain} /inbox/", f"put -p {preserved} /inbox/"]
    result = openssh(clients, commands)
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(plain)
    clients.assert_queued_once(preserved, mtime=HRIS_MTIME)


def test_openssh_reput_after_a_dropped_upload(clients: Clients) -> None:
    clients.need("sftp")
    local = clients.local("openssh-reput.csv", size=1_000_000)
    batch = clients.work / "put.sftp"
    batch.write_text(f"put {local} /inbox/\n", encoding="utf-8")
    put = [
        "sftp",
        *clients.ssh_options,
        "-l",
        "800",
        "-P",
        str(clients.port),
        "-b",
        str(batch),
        "acme@127.0.0.1",
    ]
    clients.drop_mid_upload(put, local.name)

    result = openssh(clients, [f"reput {local} /inbox/{local.name}"])
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local)
    assert clients.daemon.events("upload_resumed", file=local.name)


# -- paramiko -------------------------------------------------------------------------------------


def test_paramiko_put_and_utime(clients: Clients) -> None:
    local = clients.local("paramiko.csv")
    with sftp_session(clients.port, "acme", pkey=clients.keys.pkey("acme")) as sftp:
        attrs = sftp.put(str(local), f"/inbox/{local.name}", confirm=True)
        sftp.utime(f"/inbox/{local.name}", (HRIS_MTIME, HRIS_MTIME))
        sftp.chmod(f"/inbox/{local.name}", 0o644)
        assert attrs.st_size == local.stat().st_size
        with pytest.raises(PermissionError):
            sftp.utime("/results/none.csv", (0, 0))  # read-only areas refuse any change
    clients.assert_queued_once(local, mtime=HRIS_MTIME)


# -- curl (libssh2) -------------------------------------------------------------------------------


def curl(clients: Clients, local: Path, *extra: str) -> list[str]:
    # libssh2 checks the host key by the base64 SHA-256 of its blob, padding included.
    digest = clients.fingerprint.removeprefix("SHA256:")
    digest += "=" * (-len(digest) % 4)
    return [
        "curl", "--silent", "--show-error", "--user", "acme:", "--key", str(clients.key),
        "--pubkey", str(clients.keys.public("acme")), "--hostpubsha256", digest, *extra,
        "--upload-file", str(local), f"sftp://127.0.0.1:{clients.port}/inbox/",
    ]  # fmt: skip


@pytest.fixture
def curl_sftp(clients: Clients) -> None:
    clients.need("curl")
    if "sftp" not in clients.run(["curl", "-V"]).stdout.split("Protocols:", 1)[-1].split():
        pytest.skip("this curl is built without SFTP (libssh2)")


@pytest.mark.usefixtures("curl_sftp")
def test_curl_upload(clients: Clients) -> None:
    local = clients.local("curl.csv")
    result = clients.run(curl(clients, local))
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local)


@pytest.mark.usefixtures("curl_sftp")
def test_curl_c_after_a_dropped_upload(clients: Clients) -> None:
    local = clients.local("curl-resume.csv", size=1_000_000)
    clients.drop_mid_upload(curl(clients, local, "--limit-rate", "100k"), local.name)

    result = clients.run(curl(clients, local, "--continue-at", "-"))
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local)
    assert clients.daemon.events("upload_resumed", file=local.name)


# -- lftp -----------------------------------------------------------------------------------------


def lftp(clients: Clients, *commands: str) -> list[str]:
    connect = shlex.join(["ssh", "-a", "-x", *clients.ssh_options])
    script = [
        "set cmd:fail-exit yes",
        f"set sftp:connect-program {shlex.quote(connect)}",
        f"open -u acme, -p {clients.port} sftp://127.0.0.1",
        *commands,
    ]
    return ["lftp", "-c", "; ".join(script)]


def test_lftp_put_and_mirror_r(clients: Clients) -> None:
    clients.need("lftp")
    single = clients.local("lftp-put.csv")
    tree = clients.work / "out" / "lftp-mirror"
    tree.mkdir()
    mirrored = [tree / "lftp-mirror-a.csv", tree / "lftp-mirror-b.csv"]
    for index, path in enumerate(mirrored):
        path.write_text(f"primary_email_address\nm{index}@example.com\n", encoding="utf-8")
        os.utime(path, (HRIS_MTIME + index, HRIS_MTIME + index))
    result = clients.run(lftp(clients, f"put {single} -o inbox/{single.name}", f"mirror -R {tree} inbox"))
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(single)
    for index, path in enumerate(mirrored):
        clients.assert_queued_once(path, mtime=HRIS_MTIME + index)


def test_lftp_put_c_after_a_dropped_upload(clients: Clients) -> None:
    clients.need("lftp")
    local = clients.local("lftp-resume.csv", size=1_000_000)
    put = lftp(clients, "set net:limit-rate 100000", f"put {local} -o inbox/{local.name}")
    clients.drop_mid_upload(put, local.name)

    result = clients.run(lftp(clients, f"put -c {local} -o inbox/{local.name}"))
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local)
    assert clients.daemon.events("upload_resumed", file=local.name)


# -- rclone ---------------------------------------------------------------------------------------


def test_rclone_copy_with_its_defaults(clients: Clients) -> None:
    clients.need("rclone")
    local = clients.local("rclone.csv")
    remote = (
        f":sftp,host=127.0.0.1,port={clients.port},user=acme,key_file={clients.key},"
        f"known_hosts_file={clients.known_hosts}:inbox"
    )
    result = clients.run(["rclone", "--config", "/dev/null", "copy", str(local.parent), remote])
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local, mtime=HRIS_MTIME)  # rclone sets the modtime after the upload


# -- PuTTY ----------------------------------------------------------------------------------------


def putty_options(clients: Clients) -> list[str]:
    return ["-batch", "-hostkey", clients.fingerprint, "-P", str(clients.port), "-i", str(clients.ppk)]


def test_psftp_put(clients: Clients) -> None:
    clients.need("psftp")
    local = clients.local("psftp.csv")
    batch = clients.work / "psftp.batch"
    batch.write_text(f"cd /inbox\nput {local}\n", encoding="utf-8")
    result = clients.run(["psftp", *putty_options(clients), "-b", str(batch), "acme@127.0.0.1"])
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local)


def test_pscp_sftp_p(clients: Clients) -> None:
    clients.need("pscp")
    local = clients.local("pscp.csv")
    command = ["pscp", "-sftp", "-p", "-q", *putty_options(clients), str(local), "acme@127.0.0.1:/inbox/"]
    result = clients.run(command)
    assert result.returncode == 0, result.stderr
    clients.assert_queued_once(local, mtime=HRIS_MTIME)
