#!/usr/bin/env python3
"""Run a command under the system-call sandbox that orgsyncd.service asks systemd for.

systemd applies SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute= when it
starts the service. This script applies the same rules (system-call groups as this host's
systemd-analyze expands them) and then executes the command, so a dependency upgrade can be
checked without installing the unit, e.g.

    /usr/bin/python3 deploy/sandbox-check.py orgsyncd.service -- .venv/bin/pytest tests/unit

It needs libseccomp's Python binding (Debian: python3-seccomp) in the Python that runs it; the
command can be any program, since the rules survive exec. MemoryDenyWriteExecute= is emulated with
the kernel's PR_SET_MDWE (Linux 6.3+), the mechanism newer systemd versions use themselves.
Differences: a refused address family fails with the unit's errno instead of EAFNOSUPPORT.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1


def service_directives(unit: Path) -> dict[str, list[str]]:
    """The [Service] section's directives; repeated keys keep every value, in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def expand(entry: str) -> set[str]:
    """A system-call name, or an @group expanded recursively by systemd-analyze."""
    if not entry.startswith("@"):
        return {entry}
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", entry], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= expand(item)
    return names


def allowed_syscalls(filters: list[str]) -> set[str]:
    """systemd's rule: the first allow-list sets the base; each "~" list then takes calls away."""
    allowed: set[str] = set()
    for value in filters:
        deny = value.startswith("~")
        entries = set().union(*(expand(e) for e in value.lstrip("~").split()))
        allowed = allowed - entries if deny else allowed | entries
    return allowed


def address_families(value: str) -> list[int]:
    return [int(getattr(socket, name)) for name in value.split()]


def build_filter(directives: dict[str, list[str]]) -> object:
    import seccomp  # type: ignore[import-not-found]  # Debian python3-seccomp

    errno_name = directives.get("SystemCallErrorNumber", [""])[-1]
    refused = seccomp.ERRNO(getattr(errno, errno_name)) if errno_name else seccomp.KILL_PROCESS
    rules = seccomp.SyscallFilter(defaction=refused)
    families = address_families(directives.get("RestrictAddressFamilies", [""])[-1])
    for name in sorted(allowed_syscalls(directives.get("SystemCallFilter", []))):
        try:
            if name == "socket" and families:
                for family in families:
                    rules.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, family))
            else:
                rules.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # a name this architecture does not have (e.g. 32-bit only calls)
    return rules


def deny_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE failed (needs Linux 6.3 or later)")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(f"usage: {Path(sys.argv[0]).name} UNIT -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    directives = service_directives(Path(argv[0]))
    if directives.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        deny_write_execute()
    rules = build_filter(directives)
    rules.load()  # type: ignore[attr-defined]  # also sets no_new_privs, as NoNewPrivileges=yes
    os.execvp(argv[2], argv[2:])  # noqa: S606 - running the given command is the point
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
