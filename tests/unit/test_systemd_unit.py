"""orgsyncd.service and deploy/: systemd accepts them, and they say what the contract requires."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "orgsyncd.service"
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install.sh"
SYSTEM_PYTHON = "/usr/bin/python3"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package: systemd)",
)


def directives(path: Path, section: str) -> dict[str, list[str]]:
    """A unit file's section as key -> values; systemd allows repeated keys, configparser not."""
    found: dict[str, list[str]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section:
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return directives(UNIT, "Service")


def exec_start_binary(service: dict[str, list[str]]) -> str:
    return service["ExecStart"][0].split()[0]


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(service: dict[str, list[str]]) -> None:
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True)
    complaints = (run.stdout + run.stderr).splitlines()
    binary = exec_start_binary(service)
    if not Path(binary).exists():
        # Expected on a build machine: the binary exists only once deploy/install.sh has run.
        missing = f"orgsyncd.service: Command {binary} is not executable: No such file or directory"
        complaints = [line for line in complaints if line != missing]
    else:
        assert run.returncode == 0
    assert complaints == []


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "TimeoutStopSec": "60",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "User": "orgsyncd",
    "Group": "orgsyncd",
    "StateDirectory": "orgsyncd",
    "ConfigurationDirectory": "orgsyncd",
    "UMask": "0027",
    "LimitNOFILE": "65536",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "MemoryMax": "1G",  # what bench/sftp_bench.py --memory-max and the SFTP abuse suite hold to
}


@pytest.mark.parametrize(("key", "value"), REQUIRED.items(), ids=list(REQUIRED))
def test_required_directive(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service.get(key) == [value]


def test_system_call_filter(service: dict[str, list[str]]) -> None:
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert service["SystemCallErrorNumber"] == ["EPERM"]


def test_exec_start_serves_with_the_installed_config(service: dict[str, list[str]]) -> None:
    assert service["ExecStart"] == ["/opt/orgsyncd/bin/orgsyncd --config /etc/orgsyncd/orgsyncd.toml serve"]


def test_exec_start_is_where_install_sh_puts_the_venv(service: dict[str, list[str]]) -> None:
    prefix = re.search(r"^readonly PREFIX=(\S+)$", INSTALL.read_text(), re.MULTILINE)
    assert prefix is not None
    assert exec_start_binary(service) == f"{prefix.group(1)}/bin/orgsyncd"


def test_no_private_users_because_it_would_void_the_port_22_capability(
    service: dict[str, list[str]],
) -> None:
    assert "PrivateUsers" not in service


def test_unit_is_enabled_for_boot() -> None:
    assert directives(UNIT, "Install") == {"WantedBy": ["multi-user.target"]}


@needs_systemd_analyze
def test_security_exposure_stays_low() -> None:
    run = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
    )
    if "--offline" in run.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    score = re.search(r"Overall exposure level for orgsyncd\.service: ([\d.]+)", run.stdout)
    assert score is not None, run.stdout + run.stderr
    assert float(score.group(1)) <= 2.0
    saved = (DEPLOY / "systemd-analyze-security.txt").read_text()
    assert "Overall exposure level for orgsyncd.service" in saved


def test_install_sh_is_valid_bash() -> None:
    run = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert os.access(INSTALL, os.X_OK)


def test_install_sh_dry_run_prints_every_step_and_changes_nothing() -> None:
    before = Path("/opt/orgsyncd").exists(), Path("/etc/systemd/system/orgsyncd.service").exists()
    run = subprocess.run([str(INSTALL), "--dry-run"], capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    steps = [line[2:] for line in run.stdout.splitlines() if line.startswith("+ ")]
    expected_order = [
        "/opt/orgsyncd/bin/pip install --quiet --upgrade " + str(ROOT),
        f"install -D -m 0644 {UNIT} /etc/systemd/system/orgsyncd.service",
        "systemd-sysusers /etc/sysusers.d/orgsyncd.conf",
        "systemd-tmpfiles --create /etc/tmpfiles.d/orgsyncd.conf",
        "systemctl daemon-reload",
        "systemctl enable orgsyncd.service",
    ]
    assert [s for s in steps if s in expected_order] == expected_order
    after = Path("/opt/orgsyncd").exists(), Path("/etc/systemd/system/orgsyncd.service").exists()
    assert after == before


def test_install_sh_rejects_unknown_arguments() -> None:
    run = subprocess.run([str(INSTALL), "--frobnicate"], capture_output=True, text=True)
    assert run.returncode == 1
    assert "unknown argument '--frobnicate'" in run.stderr


def _can_chown() -> bool:
    # Root without chown: inside deploy/sandbox-check.py, or a container that drops CAP_CHOWN.
    with tempfile.NamedTemporaryFile() as probe:
        try:
            os.chown(probe.name, 1, 1)
        except PermissionError:
            return False
    return True


@pytest.mark.skipif(
    os.geteuid() != 0 or not _can_chown(),
    reason="creating files owned by orgsyncd needs root with chown allowed",
)
@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers / systemd-tmpfiles are not installed",
)
def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for tool, conf in (
        (["systemd-sysusers"], DEPLOY / "sysusers.d/orgsyncd.conf"),
        (["systemd-tmpfiles", "--create"], DEPLOY / "tmpfiles.d/orgsyncd.conf"),
    ):
        run = subprocess.run([*tool, f"--root={tmp_path}", str(conf)], capture_output=True)
        assert run.returncode == 0, run.stderr

    passwd = (tmp_path / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("orgsyncd:"))
    uid, gid, home, shell = (entry.split(":")[i] for i in (2, 3, 5, 6))
    assert (home, shell.endswith("nologin")) == ("/var/lib/orgsyncd", True)
    expected = {
        "etc/orgsyncd": (0o750, 0, int(gid)),
        "etc/orgsyncd/keys": (0o750, 0, int(gid)),
        "var/lib/orgsyncd": (0o750, int(uid), int(gid)),
    }
    for rel, want in expected.items():
        st = (tmp_path / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == want, rel


def _system_python_has_seccomp() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    return probe.returncode == 0


SANDBOXED_PROBE = """
import errno, io, json, mmap, socket, urllib.request
from orgsyncd.logging import configure_logging
from orgsyncd.metrics import Metrics
import cryptography.hazmat.primitives.asymmetric.ed25519 as ed
out = {}
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["wx"] = "allowed"
except PermissionError:
    out["wx"] = "refused"
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM).close()
    out["netlink"] = "allowed"
except OSError as exc:
    out["netlink"] = errno.errorcode[exc.errno]
key = ed.Ed25519PrivateKey.generate()
key.public_key().verify(key.sign(b"x"), b"x")
configure_logging(stream=io.StringIO())
server = Metrics(queue_depth_fn=lambda: 5).start_http("127.0.0.1:0")
out["scrape"] = "orgsyncd_queue_depth 5.0" in urllib.request.urlopen(server.url).read().decode()
server.stop()
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not _system_python_has_seccomp(),
    reason=f"{SYSTEM_PYTHON} cannot import seccomp (Debian package: python3-seccomp)",
)
@needs_systemd_analyze
def test_our_code_runs_inside_the_units_sandbox() -> None:
    sandbox = [SYSTEM_PYTHON, str(DEPLOY / "sandbox-check.py"), str(UNIT), "--"]
    run = subprocess.run(
        [*sandbox, sys.executable, "-c", SANDBOXED_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    if "PR_SET_MDWE failed" in run.stderr:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert run.returncode == 0, run.stderr
    result = run.stdout.strip().splitlines()[-1]
    assert result == '{"wx": "refused", "netlink": "EPERM", "scrape": true}'
