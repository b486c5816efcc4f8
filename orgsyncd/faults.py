"""Named fault points, so tests can prove a crash at a given moment loses nothing.

``ORGSYNCD_FAULT=<point>`` raises at that point; ``ORGSYNCD_FAULT=<point>:kill`` kills the process
outright (no cleanup, like ``kill -9``). Unset in production: the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

from orgsyncd.errors import InjectedFault


def checkpoint(point: str) -> None:
    spec = os.environ.get("ORGSYNCD_FAULT")
    if not spec:
        return
    name, _, action = spec.partition(":")
    if name != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"fault injected at {point}")
