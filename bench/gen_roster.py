"""Streaming generator of realistic HRIS roster CSVs for the import benchmark.

Usage (from the repo root)::

    python bench/gen_roster.py OUT.csv --rows N [--seed S]
    python bench/gen_roster.py OUT.csv --base BASE.csv --change-pct 1     # same people, 1% changed
    python bench/gen_roster.py OUT.csv --base BASE.csv --drop-pct 5       # full roster minus 5%
    python bench/gen_roster.py OUT.csv --rows N --drop-pct 5              # same, no base file

Everything is deterministic from ``--seed`` and streams in constant memory. Identities
(``unique_user_id`` and email) are derived from the row index, so they are unique, and the variants
never change them: a changed row changes its title, its last name or one group flag.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

LICENSE_COLUMN = "default_license_learning_proalllanguages_status"
GROUPS = ("Engineering", "Customer Success", "Sales")
HEADER = (
    "unique_user_id",
    "preferred_first_name",
    "preferred_last_name",
    "primary_email_address",
    "work_title",
    LICENSE_COLUMN,
    *(f"group/{name}" for name in GROUPS),
)

# (display name, ASCII form used in the email address)
FIRST_NAMES: tuple[tuple[str, str], ...] = (
    ("John", "john"), ("Jane", "jane"), ("Michael", "michael"), ("Sarah", "sarah"),
    ("David", "david"), ("Emily", "emily"), ("Robert", "robert"), ("Olivia", "olivia"),
    ("James", "james"), ("Sophia", "sophia"), ("William", "william"), ("Emma", "emma"),
    ("Daniel", "daniel"), ("Grace", "grace"), ("Thomas", "thomas"), ("Chloe", "chloe"),
    ("Jean-Luc", "jean-luc"), ("Mary Ann", "maryann"), ("Liam", "liam"), ("Noah", "noah"),
    ("Priya", "priya"), ("Arjun", "arjun"), ("Fatima", "fatima"), ("Mohammed", "mohammed"),
    ("Wei", "wei"), ("Mei", "mei"), ("Hiroshi", "hiroshi"), ("Yuki", "yuki"), ("José", "jose"),
    ("Zoë", "zoe"), ("Łukasz", "lukasz"), ("Søren", "soren"), ("François", "francois"),
    ("Björn", "bjorn"), ("Ángel", "angel"), ("Inês", "ines"), ("Çağla", "cagla"),
    ("Václav", "vaclav"), ("Małgorzata", "malgorzata"), ("Renée", "renee"), ("Jürgen", "jurgen"),
    ("Siân", "sian"), ("Iñaki", "inaki"), ("Agnès", "agnes"), ("太郎", "taro"), ("花子", "hanako"),
    ("美咲", "misaki"), ("伟", "wei"), ("Дмитрий", "dmitry"), ("Анна", "anna"), ("Σοφία", "sofia"),
    ("민준", "minjun"),
)  # fmt: skip
LAST_NAMES: tuple[tuple[str, str], ...] = (
    ("Smith", "smith"), ("Johnson", "johnson"), ("Williams", "williams"), ("Brown", "brown"),
    ("Jones", "jones"), ("Miller", "miller"), ("Davis", "davis"), ("Wilson", "wilson"),
    ("Taylor", "taylor"), ("Anderson", "anderson"), ("Thomas", "thomas"), ("Moore", "moore"),
    ("O'Brien", "obrien"), ("McDonald", "mcdonald"), ("van der Berg", "vanderberg"),
    ("Smith-Jones", "smith-jones"), ("Patel", "patel"), ("Singh", "singh"), ("Khan", "khan"),
    ("Nguyen", "nguyen"), ("Kim", "kim"), ("Chen", "chen"), ("Garcia", "garcia"),
    ("Müller", "muller"), ("Schröder", "schroder"), ("Łukaszewicz", "lukaszewicz"),
    ("Sørensen", "sorensen"), ("Gonçalves", "goncalves"), ("Peña", "pena"), ("Ruíz", "ruiz"),
    ("Öztürk", "ozturk"), ("Håkansson", "hakansson"), ("Dupré", "dupre"), ("Novák", "novak"),
    ("Kowalczyk", "kowalczyk"), ("Ó Súilleabháin", "osullivan"), ("Fernández", "fernandez"),
    ("山田", "yamada"), ("佐藤", "sato"), ("田中", "tanaka"), ("王", "wang"), ("李", "li"),
    ("Иванов", "ivanov"), ("Παπαδόπουλος", "papadopoulos"), ("김", "kim"), ("Nakamura", "nakamura"),
)  # fmt: skip
WORK_TITLES: tuple[str, ...] = (
    "Software Engineer", "Senior Software Engineer", "Staff Engineer", "Engineering Manager",
    "Director, Engineering", "VP, Engineering", "QA Analyst", "Site Reliability Engineer",
    "Data Scientist", "Product Manager", "Senior Product Manager", "UX Designer",
    "Account Executive", "Manager, Sales", "Sales Development Representative",
    "Regional Director, Sales, EMEA", "Customer Success Manager", "Support Specialist, Tier 2",
    "Technical Account Manager", "Solutions Architect", "HR Business Partner", "Recruiter",
    "Payroll Specialist", "Financial Analyst", "Controller", "Office Manager", "Marketing Manager",
    "Content Writer", "Legal Counsel", "Chief Executive Officer", "Chief Technology Officer",
    'Head of "Growth"', "Ingénieur Logiciel", "Développeuse Senior", "Softwareentwickler/in",
    "Gerente de Ventas", "ソフトウェアエンジニア", "Intern", "Operations Analyst",
    "Team Lead, Platform & Infra",
)  # fmt: skip
# picked by 3 bits: mostly example.com, some in mixed case
DOMAINS = (
    "example.com", "example.com", "example.com", "example.com",
    "example.com", "Example.COM", "corp.example.org", "EU.Example.net",
)  # fmt: skip
# each employee is in 1 or 2 of the three groups
GROUP_PATTERNS: tuple[tuple[str, str, str], ...] = (
    ("1", "0", "0"), ("0", "1", "0"), ("0", "0", "1"),
    ("1", "1", "0"), ("1", "0", "1"), ("0", "1", "1"),
)  # fmt: skip
_LAST_DISPLAY = tuple(name for name, _ in LAST_NAMES)
ASCII_WEIGHT = 3  # ASCII names are drawn 3x as often: ~40% of rows have a non-ASCII name


def _weighted(names: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(pair for pair in names for _ in range(ASCII_WEIGHT if pair[0].isascii() else 1))


_FIRST_PICK, _LAST_PICK = _weighted(FIRST_NAMES), _weighted(LAST_NAMES)
INACTIVE_PER_1024 = 20  # ~2% of learners arrive with the licence inactive
BLANK_TITLE_PER_1024 = 10  # ~1% have no title
CHUNK_ROWS = 20_000
_CHANGE_SALT = 0x5EED_C4A9
_DROP_SALT = 0xD809_0000


@dataclass
class GenStats:
    rows_in: int = 0
    rows_out: int = 0
    changed: int = 0
    dropped: int = 0
    dropped_active: int = 0
    active_out: int = 0
    seconds: float = 0.0


def _email_local(first: str, last: str, index: int, bits: int) -> str:
    """ASCII local part; unique through the index. Some addresses are mixed case."""
    style = bits & 7
    if style == 0:
        return f"{first.capitalize()}.{last.capitalize()}.{index}"
    if style == 1:
        return f"{first[0].upper()}{last.upper()}{index}"
    if style in (2, 3):
        return f"{first}_{last}{index}"
    return f"{first}.{last}.{index}"


def generate_rows(rows: int, seed: int = 0) -> Iterator[list[str]]:
    """Yield ``rows`` data rows (no header), deterministically from ``seed``."""
    getrandbits = random.Random(seed).getrandbits
    nf, nl, nt = len(_FIRST_PICK), len(_LAST_PICK), len(WORK_TITLES)
    uid_prefix = f"E{seed % 1000:03d}-"
    for index in range(1, rows + 1):
        bits = getrandbits(96)
        first, first_ascii = _FIRST_PICK[(bits & 0xFFFF) % nf]
        last, last_ascii = _LAST_PICK[((bits >> 16) & 0xFFFF) % nl]
        title = WORK_TITLES[((bits >> 32) & 0xFFFF) % nt]
        if (bits >> 48) & 0x3FF < BLANK_TITLE_PER_1024:
            title = ""
        status = "inactive" if (bits >> 58) & 0x3FF < INACTIVE_PER_1024 else "active"
        domain = DOMAINS[((bits >> 68) & 0x7) % len(DOMAINS)]
        local = _email_local(first_ascii, last_ascii, index, bits >> 71)
        yield [
            f"{uid_prefix}{index:08d}",
            first,
            last,
            f"{local}@{domain}",
            title,
            status,
            *GROUP_PATTERNS[((bits >> 74) & 0xFFFF) % 6],
        ]


def _columns(header: list[str]) -> tuple[int, int, list[int]]:
    """Indexes of the last-name column, the title column and the group columns."""
    lowered = [name.strip().lower() for name in header]
    groups = [i for i, name in enumerate(lowered) if name.startswith("group/")]
    return lowered.index("preferred_last_name"), lowered.index("work_title"), groups


def _different(choices: tuple[str, ...], current: str, pick: int) -> str:
    value = choices[pick % len(choices)]
    return value if value != current else choices[(pick + 1) % len(choices)]


def _flip_group(row: list[str], groups: list[int], pick: int) -> None:
    """Move the employee in or out of one group, keeping them in 1-2 groups where possible."""
    members = [g for g in groups if row[g] == "1"]
    others = [g for g in groups if row[g] != "1"]
    pool = members if len(members) >= 2 or not others else others
    column = pool[pick % len(pool)]
    row[column] = "0" if row[column] == "1" else "1"


def change_row(row: list[str], columns: tuple[int, int, list[int]], pick: int) -> None:
    """Change one attribute of ``row`` in place, never the identity: title, last name or a group."""
    last_col, title_col, groups = columns
    kind = pick % 3 if groups else pick % 2
    pick //= 3
    if kind == 0:
        row[title_col] = _different(WORK_TITLES, row[title_col], pick)
    elif kind == 1:
        row[last_col] = _different(_LAST_DISPLAY, row[last_col], pick)
    else:
        _flip_group(row, groups, pick)


def transform(
    header: list[str],
    rows: Iterable[list[str]],
    stats: GenStats,
    *,
    seed: int = 0,
    change_pct: float = 0.0,
    drop_pct: float = 0.0,
) -> Iterator[list[str]]:
    """Drop ``drop_pct``% and change ``change_pct``% of ``rows``, deterministic from ``seed``."""
    change_rnd, drop_rnd = random.Random(seed ^ _CHANGE_SALT), random.Random(seed ^ _DROP_SALT)
    change_cut, drop_cut = int(change_pct * 10_000), int(drop_pct * 10_000)
    columns = _columns(header)
    status_col = [n.strip().lower() for n in header].index(LICENSE_COLUMN)
    for row in rows:
        stats.rows_in += 1
        if drop_rnd.getrandbits(32) % 1_000_000 < drop_cut:
            stats.dropped += 1
            stats.dropped_active += row[status_col] == "active"
            continue
        pick = change_rnd.getrandbits(40)
        if pick % 1_000_000 < change_cut:
            change_row(row, columns, pick // 1_000_000)
            stats.changed += 1
        stats.active_out += row[status_col] == "active"
        yield row


def _write(out: TextIO, header: Iterable[str], rows: Iterable[list[str]], stats: GenStats) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    chunk: list[list[str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            writer.writerows(chunk)
            stats.rows_out += len(chunk)
            chunk.clear()
    writer.writerows(chunk)
    stats.rows_out += len(chunk)


def write_roster(out_path: Path, rows: int, seed: int = 0) -> GenStats:
    """Write a fresh roster of ``rows`` learners."""
    return write_variant(out_path, rows=rows, seed=seed)


def write_variant(
    out_path: Path,
    *,
    rows: int | None = None,
    base: Path | None = None,
    seed: int = 0,
    change_pct: float = 0.0,
    drop_pct: float = 0.0,
) -> GenStats:
    """Write ``base`` (or a fresh ``rows``-row roster) with ``drop_pct``% dropped, ``change_pct``%
    changed. Returns counts, so a caller knows exactly how many rows were changed or dropped."""
    stats, started = GenStats(), time.perf_counter()
    with out_path.open("w", encoding="utf-8", newline="") as out:
        if base is None:
            if rows is None:
                raise ValueError("give rows or a base file")
            header, source = list(HEADER), generate_rows(rows, seed)
            varied = transform(header, source, stats, seed=seed, change_pct=change_pct, drop_pct=drop_pct)
            _write(out, header, varied, stats)
        else:
            with base.open(encoding="utf-8-sig", newline="") as src:
                reader = csv.reader(src)
                header = next(reader)
                rows_iter = transform(
                    header, reader, stats, seed=seed, change_pct=change_pct, drop_pct=drop_pct
                )
                _write(out, header, rows_iter, stats)
    stats.seconds = time.perf_counter() - started
    return stats


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="CSV file to write")
    parser.add_argument("--rows", type=int, help="learners to generate (ignored with --base)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=Path, help="existing roster to derive a variant from")
    parser.add_argument("--change-pct", type=float, default=0.0, help="percent of rows to change")
    parser.add_argument("--drop-pct", type=float, default=0.0, help="percent of rows to drop")
    args = parser.parse_args(argv)
    if args.rows is None and args.base is None:
        parser.error("give --rows N, or --base BASE.csv for a variant of an existing roster")
    if args.base is not None:
        args.rows = None  # a variant has the base's rows, whatever --rows says
    if args.rows is not None and args.rows < 0:
        parser.error("--rows must be >= 0")
    for name in ("change_pct", "drop_pct"):
        if not 0 <= getattr(args, name) <= 100:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stats = write_variant(
        args.out,
        rows=args.rows,
        base=args.base,
        seed=args.seed,
        change_pct=args.change_pct,
        drop_pct=args.drop_pct,
    )
    print(json.dumps({"out": str(args.out), **asdict(stats)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
