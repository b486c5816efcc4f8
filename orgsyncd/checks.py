"""`orgsyncd tenants check`: what would stop a tenant from working, found before a customer does."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import asyncssh

from orgsyncd.config import Settings, TenantConfig
from orgsyncd.errors import OrgsyncError
from orgsyncd.paths import tenant_dirs
from orgsyncd.store.db import make_engine, migrate


@dataclass(slots=True)
class CheckReport:
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def check_tenants(settings: Settings) -> CheckReport:
    report = CheckReport()
    report.notes.append(f"config {settings.source} is valid ({len(settings.tenants)} tenant(s))")
    _check_database(settings, report)
    for name, cfg in sorted(settings.tenants.items()):
        _check_login(name, cfg, report)
        _check_dirs(settings, name, report)
    return report


def _check_database(settings: Settings, report: CheckReport) -> None:
    engine = make_engine(settings.daemon.db_url)
    try:
        migrate(engine)
        report.notes.append(
            f"database {engine.url.render_as_string(hide_password=True)} reachable, schema current"
        )
    except OrgsyncError as exc:
        report.errors.append(str(exc))
    finally:
        engine.dispose()


def _check_login(name: str, cfg: TenantConfig, report: CheckReport) -> None:
    if cfg.authorized_keys is None and cfg.password_hash is None:
        report.errors.append(f"tenant {name}: no authorized_keys and no password_hash: nobody can log in")
        return
    if cfg.authorized_keys is None:
        report.notes.append(f"tenant {name}: password login only")
        return
    try:
        keys = asyncssh.read_authorized_keys(str(cfg.authorized_keys))
    except FileNotFoundError:
        report.errors.append(f"tenant {name}: authorized_keys {cfg.authorized_keys} does not exist")
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        report.errors.append(f"tenant {name}: authorized_keys {cfg.authorized_keys} is unreadable: {exc}")
    else:
        count = len(keys.key_ids) if hasattr(keys, "key_ids") else "some"
        report.notes.append(f"tenant {name}: authorized_keys {cfg.authorized_keys} parses ({count} entries)")


def _check_dirs(settings: Settings, name: str, report: CheckReport) -> None:
    dirs = tenant_dirs(settings.daemon.data_dir, name)
    try:
        dirs.create()
    except OSError as exc:
        report.errors.append(f"tenant {name}: cannot create {dirs.root}: {exc.strerror}")
        return
    for folder in (dirs.inbox, dirs.results, dirs.archive, dirs.exports, dirs.spool):
        if not os.access(folder, os.W_OK):
            report.errors.append(f"tenant {name}: {folder} is not writable by this user")
    report.notes.append(f"tenant {name}: directories under {dirs.root} ready")
