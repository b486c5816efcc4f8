"""`orgsyncd tenants check`: what would stop a tenant from working, found before a customer does."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from orgsyncd.config import Settings, TenantConfig
from orgsyncd.errors import OrgsyncError
from orgsyncd.ingest.auth import load_authorized_keys, parse_password_hash
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
        _check_pgp(name, cfg, report)
    return report


def _check_pgp(name: str, cfg: TenantConfig, report: CheckReport) -> None:
    if cfg.pgp_private_key is None:
        if cfg.require_encryption:
            report.errors.append(
                f"tenant {name}: require_encryption is set but pgp_private_key is not: no file could be read"
            )
        return
    from orgsyncd.pgp import check_keys
    from orgsyncd.sources import pgp_keys

    problem = check_keys(pgp_keys(name, cfg))
    if problem is not None:
        report.errors.append(f"tenant {name}: {problem}")
    else:
        signer = " and pgp_signer_key" if cfg.pgp_signer_key else ""
        report.notes.append(f"tenant {name}: pgp_private_key{signer} load into gpg")


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
    if cfg.password_hash is not None:
        try:
            parse_password_hash(cfg.password_hash)
            report.notes.append(f"tenant {name}: password_hash is a valid scrypt hash")
        except ValueError as exc:
            report.errors.append(
                f"tenant {name}: password_hash is unusable ({exc}); make one with 'orgsyncd hash-password'"
            )
    if cfg.authorized_keys is not None:
        _check_keys(name, cfg.authorized_keys, report)


def _check_keys(name: str, path: Path, report: CheckReport) -> None:
    try:
        load_authorized_keys(path)
    except FileNotFoundError:
        report.errors.append(f"tenant {name}: authorized_keys {path} does not exist")
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        report.errors.append(f"tenant {name}: authorized_keys {path} is unusable: {exc}")
    else:
        report.notes.append(f"tenant {name}: authorized_keys {path} parses")


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
