"""Run one command and write its exit code, wall time and peak RSS to a JSON file.

    python -I -S bench/measure_child.py RESULT.json COMMAND [ARG...]

Why a separate, tiny process: on Linux a child's ``ru_maxrss`` starts at the resident size of the
process that spawned it (fork copies the page tables, and exec keeps the old address space's
high-water mark), so measuring from the benchmark process itself would report at least the
benchmark's own RSS. Spawned from this ~10 MB helper, the figure is the command's own peak.
Only the standard library, no site packages: keep this process small.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: measure_child.py RESULT.json COMMAND [ARG...]", file=sys.stderr)
        return 2
    result_path, command = argv[0], argv[1:]
    started = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    result = {
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "maxrss_kib": usage.ru_maxrss,  # KiB on Linux
        "utime_s": usage.ru_utime,
        "stime_s": usage.ru_stime,
    }
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
