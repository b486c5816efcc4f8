"""Debian packages a test needs, installed with apt-get the way bench/sftp_bench.py installs
openssh-server: once per run, and a clear reason when they cannot be installed (so the test can
skip saying why, instead of failing on a machine without root or network).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable

_APT_TIMEOUT_S = 600
# Other processes on the machine may be installing too; wait for dpkg's lock rather than fail.
_LOCK_WAIT = ("-o", "DPkg::Lock::Timeout=300")


def install(packages: Iterable[str]) -> str | None:
    """Install those of *packages* that are missing; None when all are there, else why not."""
    return _install(tuple(sorted(set(packages))))


@functools.cache
def _install(packages: tuple[str, ...]) -> str | None:
    missing = [name for name in packages if not _installed(name)]
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"{' '.join(missing)}: not installed and there is no apt-get here"
    if os.geteuid() != 0:
        return f"{' '.join(missing)}: not installed, and installing needs root"
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *_LOCK_WAIT, *missing]
    if _apt(command).returncode == 0:
        return None
    _apt(["apt-get", "update", "-qq", *_LOCK_WAIT])  # package lists may be missing or stale
    retry = _apt(command)
    if retry.returncode == 0:
        return None
    last = (retry.stderr.strip().splitlines() or ["no output"])[-1]
    return f"apt-get install {' '.join(missing)} failed: {last}"


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() == "install ok installed"


def _apt(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=_APT_TIMEOUT_S, check=False
    )
