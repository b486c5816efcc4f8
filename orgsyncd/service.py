"""Use cases the adapters (CLI, SFTP, watcher, scheduler) call. INTERFACE DRAFT: being implemented."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orgsyncd.config import Settings


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: int
    tenant: str
    file: str
    status: str


class Service:
    """Everything orgsyncd does, over one database engine. Thread-safe: each call opens its own
    connection/transaction."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def migrate(self) -> None:
        """Create/upgrade the schema and tenant directories. Call once at start."""
        raise NotImplementedError

    def enqueue_file(self, tenant: str, path: Path) -> int | None:
        """Queue one complete file from a tenant's inbox. Idempotent: a file already queued (or gone)
        returns None. Temporary names are ignored (None)."""
        raise NotImplementedError

    def scan_inboxes(self, tenant: str | None = None) -> list[int]:
        """Queue every complete file found in inboxes (start-up scan and periodic rescan)."""
        raise NotImplementedError

    def run_due(
        self, kind: Literal["hourly", "daily", "now"] = "now", tenant: str | None = None
    ) -> list[JobResult]:
        """Process queued jobs: 'hourly' skips jobs deferred to the daily run, 'daily'/'now' take all."""
        raise NotImplementedError

    def daily_maintenance(self) -> None:
        """Write every tenant's export to exports/ and prune files older than retention_days."""
        raise NotImplementedError

    def queue_depth(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
