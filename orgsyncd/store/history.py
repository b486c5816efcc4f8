"""What the guards compare a new file with: the tenant's last applied import files."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection
from sqlmodel import col, select

from orgsyncd.store.jobs import APPLIED
from orgsyncd.store.tables import Job

IMPORT = "import"


def _last_applied(tenant_id: int, full_only: bool) -> object:
    query = select(Job.file_time, Job.columns).where(
        Job.tenant_id == tenant_id, Job.kind == IMPORT, col(Job.status).in_(APPLIED)
    )
    if full_only:
        query = query.where(Job.mode == "full", col(Job.columns).is_not(None))
    else:
        query = query.where(col(Job.file_time).is_not(None))
    # Applied order, not id order: an approved held job applies after later-numbered ones failed.
    return query.order_by(col(Job.finished_at).desc(), col(Job.id).desc()).limit(1)


def last_file_time(conn: Connection, tenant_id: int) -> datetime | None:
    """The HRIS timestamp of the file applied last (hold_stale_files)."""
    row = conn.execute(_last_applied(tenant_id, full_only=False)).first()  # type: ignore[call-overload]
    return None if row is None else row[0]


def last_full_columns(conn: Connection, tenant_id: int) -> list[str] | None:
    """The header of the full file applied last (hold_on_header_change)."""
    row = conn.execute(_last_applied(tenant_id, full_only=True)).first()  # type: ignore[call-overload]
    return None if row is None else list(json.loads(row[1]))
