"""Tenant-format benchmark: the real ``orgsyncd import`` CLI on the same roster as our own CSV, as a
mapped HRIS file, as an Excel workbook and PGP-encrypted, in one run (so they share the machine's
noise), each into a fresh SQLite database; wall time and the child's peak RSS.

    .venv/bin/python bench/formats_bench.py --rows 1000000 [--xlsx-rows 100000,1000000] [--rounds 2]
    .venv/bin/python bench/formats_bench.py --readers 100000,1000000   # xlsx readers alone

Kinds (``--kinds``, default all):
  plain   the bench roster, our own headers (the reference)
  mapped  the same rows under Workday-style headers and values (`Worker Status = Terminated`,
          group flags Y/N), imported through a `columns` / `values` mapping: target <= 1.15x plain
  pgp     the plain roster signed and encrypted with gpg (a key pair made for the run) as .csv.gpg
  xlsx    the roster as a workbook with shared strings, as Excel writes it, at each --xlsx-rows size
``--readers`` times python-calamine and openpyxl (read-only) reading the workbook alone, if installed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

try:
    from bench import gen_roster
    from bench.import_bench import BENCH_DIR, LICENSE, Child, run_child
except ImportError:  # run as a script: bench/ itself is on sys.path
    import gen_roster  # type: ignore[no-redef, import-not-found]
    from import_bench import BENCH_DIR, LICENSE, Child, run_child  # type: ignore[no-redef, import-not-found]

STATUS = f"{LICENSE}_status"
MAPPED_HEADER = [
    "Employee ID", "Legal First Name", "Legal Last Name", "Work Email", "Business Title", "Worker Status",
    *gen_roster.GROUPS,
]  # fmt: skip
MAPPED_TENANT = {
    "columns": {
        "Employee ID": "unique_user_id", "Legal First Name": "preferred_first_name",
        "Legal Last Name": "preferred_last_name", "Work Email": "primary_email_address",
        "Business Title": "work_title", "Worker Status": STATUS,
        **{name: f"group/{name}" for name in gen_roster.GROUPS},
    },
    "values": {STATUS: {"Active": "active", "Terminated": "inactive"}, "group/*": {"Y": "1", "N": "0"}},
}  # fmt: skip
TARGET_MAPPED_RATIO = 1.15


@dataclass
class Result:
    kind: str
    rows: int
    child: Child
    cpu_s: float  # user + system CPU of the CLI and the processes it waited for (gpg): less noisy than wall


def cpu_seconds(measured: Path) -> float:
    try:
        stats = json.loads(measured.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return float("nan")
    return float(stats.get("utime_s", 0)) + float(stats.get("stime_s", 0))


def mapped_copy(source: Path, out: Path) -> None:
    """The same roster as an HRIS report writes it: their header names and their words."""
    status = {"active": "Active", "inactive": "Terminated"}
    flag = {"1": "Y", "0": "N"}
    with source.open(encoding="utf-8", newline="") as src, out.open("w", encoding="utf-8", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst, lineterminator="\n")
        next(reader)
        writer.writerow(MAPPED_HEADER)
        writer.writerows([*row[:5], status[row[5]], *(flag[g] for g in row[6:])] for row in reader)


_PKG = "http://schemas.openxmlformats.org/package/2006"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_SML = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_XLSX_PARTS = {
    "[Content_Types].xml": (
        f'<Types xmlns="{_PKG}/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_SML}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_SML}.worksheet+xml"/>'
        f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_SML}.sharedStrings+xml"/>'
        "</Types>"
    ),
    "_rels/.rels": (
        f'<Relationships xmlns="{_PKG}/relationships">'
        f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    ),
    "xl/workbook.xml": (
        f'<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="{_REL}">'
        '<sheets><sheet name="Report" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ),
    "xl/_rels/workbook.xml.rels": (
        f'<Relationships xmlns="{_PKG}/relationships">'
        f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/>'
        "</Relationships>"
    ),
}


def _column(index: int) -> str:
    name, index = "", index + 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


def write_xlsx(source: Path, out: Path, rows: int) -> None:
    """The first ``rows`` rows of a CSV roster as a workbook with a shared-string table (how Excel
    saves one, and what makes a big workbook expensive to read), written as a stream."""
    strings: dict[str, int] = {}
    with (
        source.open(encoding="utf-8", newline="") as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z,
    ):
        for name, body in _XLSX_PARTS.items():
            z.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + body)
        reader = csv.reader(src)
        with z.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(
                b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
            )
            for number, cells in enumerate(reader, 1):
                if number > rows + 1:
                    break
                parts = [f'<row r="{number}">']
                for col, value in enumerate(cells):
                    if value:
                        index = strings.setdefault(value, len(strings))
                        parts.append(f'<c r="{_column(col)}{number}" t="s"><v>{index}</v></c>')
                parts.append("</row>")
                sheet.write("".join(parts).encode())
            sheet.write(b"</sheetData></worksheet>")
        with z.open("xl/sharedStrings.xml", "w", force_zip64=True) as table:
            table.write(
                f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<sst xmlns="http://schemas.'
                f'openxmlformats.org/spreadsheetml/2006/main" uniqueCount="{len(strings)}">'.encode()
            )
            for text in strings:
                table.write(f"<si><t>{escape(text)}</t></si>".encode())
            table.write(b"</sst>")


def make_key(home: Path) -> str:
    """A signing and encryption key pair for the run (no passphrase); its fingerprint."""
    home.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "bench <bench@example.com>", "future-default", "default", "never"],
                   check=True, capture_output=True)  # fmt: skip
    listing = subprocess.run(
        [*gpg, "--with-colons", "--list-secret-keys"], check=True, capture_output=True, text=True
    )
    return next(line.split(":")[9] for line in listing.stdout.splitlines() if line.startswith("fpr"))


def encrypt(home: Path, fingerprint: str, source: Path, out: Path) -> Path:
    secret = home.parent / "bench.sec.asc"
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--pinentry-mode", "loopback"]
    with secret.open("wb") as fh:
        subprocess.run([*gpg, "--armor", "--export-secret-keys", fingerprint], check=True, stdout=fh)
    subprocess.run([*gpg, "--trust-model", "always", "-r", fingerprint, "-u", fingerprint, "--sign", "--encrypt",
                    "-o", str(out), str(source)], check=True)  # fmt: skip
    return secret


def config(root: Path, tenant: dict[str, object]) -> Path:
    data = root / "data"
    lines = [
        "[daemon]", f"data_dir = {json.dumps(str(data))}", "", "[tenants.bench]",
        f"licenses = {{ {LICENSE} = 0 }}", f'default_license = "{LICENSE}"', "max_deactivation_ratio = 1.0",
    ]  # fmt: skip
    tables = []
    for key, value in tenant.items():
        if isinstance(value, dict):
            tables.append(f"\n[tenants.bench.{key}]")
            tables += [f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key} = {_toml(value)}")
    path = root / "orgsyncd.toml"
    path.write_text("\n".join(lines + tables) + "\n", encoding="utf-8")
    return path


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def import_once(
    work: Path, label: str, roster: Path, tenant: dict[str, object], timeout: float
) -> tuple[Child, float]:
    root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=work))
    (root / "logs").mkdir()
    cfg = config(root, tenant)
    argv = [
        sys.executable,
        "-m",
        "orgsyncd",
        "--config",
        str(cfg),
        "import",
        str(roster),
        "--tenant",
        "bench",
    ]
    child = run_child(argv, root / "logs" / "import", timeout)
    cpu = cpu_seconds(root / "logs" / "import.measure.json")
    summary = _summary(child.stdout)
    status = summary.get("status") if summary else None
    print(
        f"{label}: {child.wall_s:.2f} s, CPU {cpu:.2f} s, peak RSS {child.rss_mb:.0f} MB, status {status}, "
        f"counts {summary.get('counts') if summary else None}",
        flush=True,
    )
    if child.returncode != 0 and status != "partially_succeeded":
        print(child.stderr[-2000:], flush=True)
    shutil.rmtree(root / "data", ignore_errors=True)
    return child, cpu


def _summary(stdout: str) -> dict[str, object] | None:
    start = stdout.find("{")
    try:
        found = json.loads(stdout[start:]) if start >= 0 else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def readers(work: Path, source: Path, sizes: list[int], timeout: float) -> None:
    """Each xlsx reader alone, reading every row of the first sheet, in a child of its own."""
    script = (
        "import sys, time\n"
        "kind, path = sys.argv[1], sys.argv[2]\n"
        "if kind == 'calamine':\n"
        "    from python_calamine import CalamineWorkbook\n"
        "    rows = CalamineWorkbook.from_path(path).get_sheet_by_index(0).iter_rows()\n"
        "else:\n"
        "    import openpyxl, warnings\n"
        "    warnings.simplefilter('ignore')\n"
        "    rows = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0].iter_rows(values_only=True)\n"
        "print(sum(1 for _ in rows))\n"
    )
    probe = work / "read_all.py"
    probe.write_text(script, encoding="utf-8")
    for size in sizes:
        book = work / f"roster_{size}.xlsx"
        if not book.exists():
            write_xlsx(source, book, size)
        for kind in ("calamine", "openpyxl"):
            child = run_child(
                [sys.executable, str(probe), kind, str(book)], work / f"read-{kind}-{size}", timeout
            )
            ok = "ok" if child.returncode == 0 else f"failed: {child.stderr.strip()[-200:]}"
            print(
                f"reader {kind} {size:,} rows: {child.wall_s:.2f} s, peak RSS {child.rss_mb:.0f} MB ({ok})",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", default="100000,1000000", help="comma-separated workbook sizes")
    parser.add_argument("--kinds", default="plain,mapped,pgp,xlsx")
    parser.add_argument("--rounds", type=int, default=2, help="plain/mapped/pgp alternate this many times")
    parser.add_argument("--readers", help="only time the xlsx readers at these comma-separated sizes")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    (BENCH_DIR / "out").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("formats-%Y%m%d-%H%M%S-"), dir=BENCH_DIR / "out"))
    try:
        return _run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(
                ["gpgconf", "--homedir", str(work / "gnupg"), "--kill", "all"],
                capture_output=True,
                check=False,
            )
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    kinds = args.kinds.split(",")
    sizes = [int(n) for n in (args.readers or args.xlsx_rows).split(",") if n]
    plain = work / "roster.csv"
    gen_roster.write_roster(plain, max([args.rows, *sizes]), seed=1)
    if args.readers:
        readers(work, plain, sizes, args.timeout)
        return 0
    if max(sizes) > args.rows:  # the reference file has exactly --rows rows
        gen_roster.write_roster(plain, args.rows, seed=1)
    inputs: dict[str, tuple[Path, dict[str, object]]] = {"plain": (plain, {})}
    if "mapped" in kinds:
        mapped_copy(plain, work / "workday.csv")
        inputs["mapped"] = (work / "workday.csv", MAPPED_TENANT)
    if "pgp" in kinds:
        home = work / "gnupg"
        fingerprint = make_key(home)
        secret = encrypt(home, fingerprint, plain, work / "roster.csv.gpg")
        inputs["pgp"] = (
            work / "roster.csv.gpg",
            {"pgp_private_key": str(secret), "require_encryption": True},
        )
    results: list[Result] = []
    for _ in range(args.rounds):
        for kind, (roster, tenant) in inputs.items():
            results.append(Result(kind, args.rows, *import_once(work, kind, roster, tenant, args.timeout)))
    if "xlsx" in kinds:
        for size in sizes:
            book = work / f"roster_{size}.xlsx"
            gen_roster.write_roster(work / "xsrc.csv", size, seed=1)
            write_xlsx(work / "xsrc.csv", book, size)
            results.append(Result("xlsx", size, *import_once(work, f"xlsx-{size}", book, {}, args.timeout)))
    _report(results)
    return 0 if all(r.child.returncode in (0, 1) for r in results) else 1


def _report(results: list[Result]) -> None:
    print(
        "\n| kind | rows | wall s (each round) | CPU s (each round) | best wall s | best CPU s | peak RSS MB "
        "| CPU vs plain |\n|---|---:|---|---|---:|---:|---:|---:|"
    )
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.kind, r.rows), []).append(r)
    plain = groups.get(("plain", results[0].rows)) if results else None
    plain_cpu = min(r.cpu_s for r in plain) if plain else None
    for (kind, rows), runs in groups.items():
        walls = " / ".join(f"{r.child.wall_s:.1f}" for r in runs)
        cpus = " / ".join(f"{r.cpu_s:.1f}" for r in runs)
        cpu = min(r.cpu_s for r in runs)
        ratio = f"{cpu / plain_cpu:.3f}x" if plain_cpu and kind != "xlsx" else ""
        print(
            f"| {kind} | {rows:,} | {walls} | {cpus} | {min(r.child.wall_s for r in runs):.1f} | {cpu:.1f} | "
            f"{max(r.child.rss_mb for r in runs):.0f} | {ratio} |"
        )
    mapped = groups.get(("mapped", results[0].rows)) if results else None
    if mapped and plain_cpu:
        ratio = min(r.cpu_s for r in mapped) / plain_cpu
        verdict = "met" if ratio <= TARGET_MAPPED_RATIO else "MISSED"
        print(f"\nmapped / plain (best CPU) = {ratio:.3f} (target <= {TARGET_MAPPED_RATIO}): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
