"""orgsyncd.paths: directory layout and what a roster file name means."""

from __future__ import annotations

from pathlib import Path

import pytest

from orgsyncd.paths import (
    archive_path,
    atomic_replace,
    is_roster_name,
    is_temporary_name,
    mode_from_name,
    result_paths,
    roster_stem_and_suffix,
    staging_dir,
    tenant_dirs,
)

DATA = Path("/data")
DIRS = tenant_dirs(DATA, "acme")


def test_tenant_dirs_layout() -> None:
    assert DIRS.root == Path("/data/tenants/acme")
    assert DIRS.spool == Path("/data/spool/acme")
    assert DIRS.inbox == Path("/data/tenants/acme/inbox")
    assert DIRS.results == Path("/data/tenants/acme/results")
    assert DIRS.exports == Path("/data/tenants/acme/exports")
    assert DIRS.archive == Path("/data/tenants/acme/archive")
    assert staging_dir(DATA) == Path("/data/staging")


def test_create_makes_every_directory_and_is_idempotent(tmp_path: Path) -> None:
    dirs = tenant_dirs(tmp_path, "acme")
    dirs.create()
    dirs.create()
    for path in (dirs.inbox, dirs.results, dirs.exports, dirs.archive, dirs.spool):
        assert path.is_dir(), path
    assert sorted(p.name for p in dirs.root.iterdir()) == ["archive", "exports", "inbox", "results"]


# -- temporary and roster names --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        ".day1.csv",
        ".hidden",
        "day1.csv.part",
        "day1.csv.partial",
        "day1.csv.tmp",
        "day1.csv.filepart",
        "day1.csv.PART",
        "DAY1.CSV.TMP",
        "day1.csv.FilePart",
    ],
)
def test_temporary_names(name: str) -> None:
    assert is_temporary_name(name)


@pytest.mark.parametrize(
    "name", ["day1.csv", "day1.csv.gz", "part.csv", "tmp.csv", "day1.parts", "report.txt", "a.temp"]
)
def test_names_that_are_not_temporary(name: str) -> None:
    assert not is_temporary_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "day1.csv", "day1.CSV", "Day1.Csv", "day1.csv.gz", "day1.CSV.GZ", "full_x.csv", "day1.xlsx",
        "day1.csv.pgp", "day1.csv.gpg", "day1.CSV.ASC", "day1.csv.gz.pgp",
    ],
)  # fmt: skip
def test_roster_names(name: str) -> None:
    assert is_roster_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "day1.xls",
        "day1.gz",
        "day1.csv.zip",
        "day1.tsv",
        "day1.csv.part",
        "day1csv",
        "csv",
        "day1.pgp",
        "x.xlsx.pgp",
    ],
)
def test_names_that_are_not_rosters(name: str) -> None:
    assert not is_roster_name(name)


@pytest.mark.parametrize(
    ("name", "stem", "suffix"),
    [
        ("day1.csv", "day1", ".csv"),
        ("day1.CSV", "day1", ".csv"),
        ("day1.CSV.gz", "day1", ".csv.gz"),
        ("x.csv.gz", "x", ".csv.gz"),
        ("my.roster.v2.csv", "my.roster.v2", ".csv"),
        ("report.XLSX", "report", ".xlsx"),
        ("day1.csv.gz.pgp", "day1", ".csv.gz.pgp"),
        ("day1.CSV.asc", "day1", ".csv.asc"),
        ("archive.tar.gz", "archive.tar", ".gz"),
        ("README", "README", ""),
        (".profile", ".profile", ""),
    ],
)
def test_roster_stem_and_suffix(name: str, stem: str, suffix: str) -> None:
    assert roster_stem_and_suffix(name) == (stem, suffix)


# -- sync mode from the name -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("full_roster.csv", "full"),
        ("delta_roster.csv", "delta"),
        ("FULL_roster.csv", "full"),
        ("Delta_2026-11-23.csv.gz", "delta"),
        ("full_.csv", "full"),
        ("roster.csv", None),
        ("fullroster.csv", None),
        ("full-roster.csv", None),
        ("roster_full_.csv", None),
        ("my_delta_file.csv", None),
        ("deltas_x.csv", None),
    ],
)
def test_mode_from_name(name: str, mode: str | None) -> None:
    assert mode_from_name(name) == mode


# -- results and archive names ---------------------------------------------------------------


def test_result_paths_of_the_worked_example() -> None:
    results, summary = result_paths(DIRS, "day1.csv", 17)
    assert results == DIRS.results / "day1.17.results.csv"
    assert summary == DIRS.results / "day1.17.summary.json"


@pytest.mark.parametrize(
    ("name", "results", "summary"),
    [
        ("x.csv.gz", "x.17.results.csv", "x.17.summary.json"),
        ("Day1.CSV", "Day1.17.results.csv", "Day1.17.summary.json"),
        ("full_hr.v2.csv", "full_hr.v2.17.results.csv", "full_hr.v2.17.summary.json"),
        ("report.xlsx", "report.17.results.csv", "report.17.summary.json"),
    ],
)
def test_result_paths(name: str, results: str, summary: str) -> None:
    assert result_paths(DIRS, name, 17) == (DIRS.results / results, DIRS.results / summary)


@pytest.mark.parametrize(
    ("name", "archived"),
    [
        ("day1.csv", "day1.17.csv"),
        ("x.csv.gz", "x.17.csv.gz"),
        ("x.CSV.GZ", "x.17.csv.gz"),
        ("Day1.CSV", "Day1.17.csv"),
        ("report.xlsx", "report.17.xlsx"),
        ("README", "README.17"),
    ],
)
def test_archive_path(name: str, archived: str) -> None:
    assert archive_path(DIRS, name, 17) == DIRS.archive / archived


def test_job_ids_make_names_unique() -> None:
    assert archive_path(DIRS, "day1.csv", 17) != archive_path(DIRS, "day1.csv", 18)
    assert result_paths(DIRS, "day1.csv", 17)[0] != result_paths(DIRS, "day1.csv", 170)[0]


# -- atomic_replace --------------------------------------------------------------------------


def test_atomic_replace_moves_and_overwrites(tmp_path: Path) -> None:
    final = tmp_path / "day1.17.results.csv"
    final.write_text("old", encoding="utf-8")
    tmp = tmp_path / ".day1.17.results.csv.tmp"
    tmp.write_text("new", encoding="utf-8")
    atomic_replace(tmp, final)
    assert final.read_text(encoding="utf-8") == "new"
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day1.17.results.csv"]
