"""Which reader a job's file needs, built from the tenant's configuration: CSV (plain, gzip or
PGP-encrypted) in the tenant's encoding and delimiter, or an Excel workbook; and the tenant's
column and value mapping. The jobrunner reads every file through one of these."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from orgsyncd.config import TenantConfig
from orgsyncd.core.formats import Decoding, Mapping, build_mapping
from orgsyncd.core.reader import EchoRecord, Record, is_encrypted, read_echo_records, read_records
from orgsyncd.core.workbook import is_workbook_name, read_copy, read_workbook
from orgsyncd.errors import FileRejected
from orgsyncd.pgp import Keyring, PgpKeys

Progress = Callable[[int], None]


class RosterSource(Protocol):
    """One input file, read once to stage it and once more to echo it into the results."""

    delimiter: str | None  # the one used, once read (None for a workbook)

    def records(self, progress: Progress | None = None) -> Generator[Record, None, None]: ...

    def echo_records(self) -> Iterator[EchoRecord]: ...


@dataclass(frozen=True, slots=True)
class TenantFormat:
    decoding: Decoding
    mapping: Mapping


def table_key(tenant: str) -> str:
    return f"[tenants.{tenant}]"


def tenant_format(name: str, cfg: TenantConfig) -> TenantFormat:
    key = table_key(name)
    return TenantFormat(
        decoding=Decoding(encoding=cfg.encoding, delimiter=cfg.delimiter, key=key),
        mapping=build_mapping(key, cfg.columns, cfg.values, cfg.groups_from, cfg.ignore_columns),
    )


def pgp_keys(name: str, cfg: TenantConfig) -> PgpKeys:
    return PgpKeys(
        key=table_key(name),
        private_key=cfg.pgp_private_key,
        passphrase_file=cfg.pgp_passphrase_file,
        signer_key=cfg.pgp_signer_key,
    )


class CsvSource:
    def __init__(
        self, path: Path, decoding: Decoding, keyring: Keyring | None, max_bytes: int | None = None
    ) -> None:
        self.path = path
        self.decoding = decoding
        self.max_bytes = max_bytes
        self.decrypt = keyring.decrypt if keyring is not None else None
        self.delimiter: str | None = None

    def records(self, progress: Progress | None = None) -> Generator[Record, None, None]:
        used: list[str] = []
        records = read_records(
            self.path,
            progress,
            decoding=self.decoding,
            decrypt=self.decrypt,
            used=used,
            max_bytes=self.max_bytes,
        )
        first = next(records, None)
        if used:
            self.delimiter = used[0]
        if first is not None:
            yield first
            yield from records  # delegated in C: no Python step per record

    def echo_records(self) -> Iterator[EchoRecord]:
        decoding = replace(self.decoding, delimiter=self.delimiter or self.decoding.delimiter)
        return read_echo_records(self.path, decoding=decoding, decrypt=self.decrypt)


class WorkbookSource:
    """A workbook is parsed once: its records are copied to ``copy_path`` for the echo."""

    def __init__(self, path: Path, copy_path: Path | None) -> None:
        self.delimiter: str | None = None
        self.path = path
        self.copy_path = copy_path

    def records(self, progress: Progress | None = None) -> Generator[Record, None, None]:
        if self.copy_path is None:
            yield from read_workbook(self.path, progress)
            return
        with self.copy_path.open("w", encoding="utf-8", newline="") as copy:
            yield from read_workbook(self.path, progress, copy)

    def echo_records(self) -> Iterator[EchoRecord]:
        if self.copy_path is None:
            return ((line, cells, None) for line, cells in read_workbook(self.path))
        return read_copy(self.copy_path)


class _Refused:
    """A file refused before reading (encryption required): staging it raises."""

    def __init__(self, error: FileRejected) -> None:
        self.delimiter: str | None = None
        self.error = error

    def records(self, progress: Progress | None = None) -> Generator[Record, None, None]:
        raise self.error
        yield  # a generator, like the other sources' (never reached)

    def echo_records(self) -> Iterator[EchoRecord]:
        raise self.error


@contextlib.contextmanager
def open_source(
    path: Path, tenant: str, cfg: TenantConfig, scratch: Path | None = None, max_bytes: int | None = None
) -> Iterator[RosterSource]:
    """The reader for ``path`` (its name decides: .xlsx, .pgp/.gpg/.asc, .gz, .csv). ``scratch``
    is a private path the reader may use for the job (removed afterwards); ``max_bytes`` bounds a
    CSV's bytes after decryption and decompression."""
    if cfg.require_encryption and not is_encrypted(path):
        yield _Refused(
            FileRejected(
                "encryption_required",
                f"{table_key(tenant)} requires PGP-encrypted files (require_encryption = true) and this "
                "file is not encrypted; encrypt it to the tenant's public key and upload NAME.csv.pgp",
            )
        )
        return
    if is_workbook_name(path.name):
        try:
            yield WorkbookSource(path, scratch)
        finally:
            if scratch is not None:
                scratch.unlink(missing_ok=True)
        return
    fmt = tenant_format(tenant, cfg)
    if not is_encrypted(path):
        yield CsvSource(path, fmt.decoding, None, max_bytes)
        return
    with Keyring(pgp_keys(tenant, cfg)) as keyring:
        yield CsvSource(path, fmt.decoding, keyring, max_bytes)
