"""Where things live on disk, and what a roster file name means.

```
<data_dir>/tenants/<tenant>/{inbox,results,exports,archive}   what the tenant sees over SFTP
<data_dir>/spool/<tenant>/                                  queued inputs, invisible to SFTP
<data_dir>/staging/                                         uploads in flight, invisible to SFTP
<data_dir>/staging/partial/<tenant>/<name>                  dropped uploads kept for resuming, invisible
```
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

VISIBLE_DIRS = ("inbox", "results", "exports", "archive")
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart")
# Longest first: a name keeps its whole roster suffix in archive/ (``day1.7.csv.gz.pgp``).
ROSTER_SUFFIXES = (
    *(f".csv.gz{pgp}" for pgp in (".pgp", ".gpg", ".asc")),
    *(f".csv{pgp}" for pgp in (".pgp", ".gpg", ".asc")),
    ".csv.gz",
    ".csv",
    ".xlsx",
)
_MODE_PREFIX = re.compile(r"^(full|delta)_", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TenantDirs:
    root: Path
    spool: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    def create(self) -> None:
        for sub in VISIBLE_DIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(parents=True, exist_ok=True)


def tenant_dirs(data_dir: Path, tenant: str) -> TenantDirs:
    return TenantDirs(root=data_dir / "tenants" / tenant, spool=data_dir / "spool" / tenant)


def staging_dir(data_dir: Path) -> Path:
    return data_dir / "staging"


def partial_dir(data_dir: Path, tenant: str) -> Path:
    """Where a tenant's dropped uploads wait to be resumed, one file per inbox name."""
    return staging_dir(data_dir) / "partial" / tenant


def is_temporary_name(name: str) -> bool:
    """Still being written: hidden, or a temporary suffix used by SFTP clients and HRIS jobs."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES)


def is_roster_name(name: str) -> bool:
    return name.lower().endswith(ROSTER_SUFFIXES)


def roster_stem_and_suffix(name: str) -> tuple[str, str]:
    """``day1.CSV.gz`` -> (``day1``, ``.csv.gz``); names that are not rosters keep their last suffix."""
    lower = name.lower()
    for suffix in ROSTER_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext.lower()) if dot and stem else (name, "")


def mode_from_name(name: str) -> str | None:
    match = _MODE_PREFIX.match(name)
    return match.group(1).lower() if match else None


def result_paths(dirs: TenantDirs, name: str, job_id: int) -> tuple[Path, Path]:
    stem, _ = roster_stem_and_suffix(name)
    return (
        dirs.results / f"{stem}.{job_id}.results.csv",
        dirs.results / f"{stem}.{job_id}.summary.json",
    )


def tree_paths(name: str, job_id: int) -> tuple[str, str]:
    """The results file and the report of a job as the tenant sees them over SFTP."""
    stem, _ = roster_stem_and_suffix(name)
    return f"/results/{stem}.{job_id}.results.csv", f"/results/{stem}.{job_id}.report.html"


def report_path(dirs: TenantDirs, name: str, job_id: int) -> Path:
    stem, _ = roster_stem_and_suffix(name)
    return dirs.results / f"{stem}.{job_id}.report.html"


def plan_path(dirs: TenantDirs, name: str, job_id: int) -> Path:
    """The plan of a held job: what it would change, for the person who approves it."""
    stem, _ = roster_stem_and_suffix(name)
    return dirs.results / f"{stem}.{job_id}.plan.csv"


def archive_path(dirs: TenantDirs, name: str, job_id: int) -> Path:
    stem, suffix = roster_stem_and_suffix(name)
    return dirs.archive / f"{stem}.{job_id}{suffix}"


def atomic_replace(tmp: Path, final: Path) -> None:
    """Rename into place and make the rename durable (the directory entry is synced too)."""
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
