"""A corpus of malformed and hostile roster files, generated: each case builds its bytes and says what
the import must answer (status, code, a fragment of the message, and the line it is reported on).

Generated rather than committed so each file's point is readable here, and so the big ones (a 10 MB
field, 100,000 columns, gzip bombs that inflate to gigabytes) cost no repository space. Used by
``tests/integration/test_hostile_files.py`` (every case through the real import, on both databases)
and by the acceptance tests (a sample through the CLI and the daemon).
"""

# ruff: noqa: E501  (a table: one case per entry reads better than wrapped calls)
from __future__ import annotations

import gzip
import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LIC = "default_license_learning_proalllanguages"
HEADER = f"preferred_first_name,preferred_last_name,primary_email_address,work_title,{LIC}_status"
GOOD = ["Ann,Lee,ann.lee@example.com,Engineer,active", "Bo,Ek,bo.ek@example.com,Analyst,active"]


@dataclass(frozen=True)
class Case:
    name: str  # the file's name (its suffix decides gzip); also the test id
    build: Callable[[], bytes]
    status: str  # the summary status
    code: str | None  # file-level code (row 0), or the code on row `line`; None: no code expected
    message: str = ""  # a fragment the code's message must contain
    line: int = 0  # 0: a file-level line; else the row that carries `code`
    daemon: dict[str, Any] = field(default_factory=dict)  # [daemon] settings for this case
    check: Callable[[list[dict[str, str]]], None] | None = None  # more about the results lines


def text(*lines: str, newline: str = "\n") -> bytes:
    return (newline.join(lines) + newline).encode("utf-8")


def roster(*rows: str, header: str = HEADER) -> bytes:
    return text(header, *rows)


def _gzip_bomb(line: bytes, members: int) -> bytes:
    """Repeated gzip members, each ~1-2 KB inflating to 1 MiB of ``line``; readers inflate them all."""
    member = gzip.compress(line * ((1 << 20) // len(line)))
    return gzip.compress(roster()) + member * members


def _truncated_gzip() -> bytes:
    rng = random.Random(7)  # incompressible names, so cutting the tail loses rows, not padding
    rows = [f"N{rng.getrandbits(64):x},L,u{i}@example.com,T,active" for i in range(2000)]
    data = gzip.compress(roster(*rows))
    return data[: len(data) // 2]


def _xlsx() -> bytes:
    """A real (minimal) workbook, as Excel's "Save as" would produce it, then named .csv."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        book.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook><sheets/></workbook>')
        book.writestr(
            "xl/worksheets/sheet1.xml",
            '<?xml version="1.0"?><worksheet><sheetData><row r="1"><c t="inlineStr"><is>'
            "<t>primary_email_address</t></is></c></row></sheetData></worksheet>",
        )
    return out.getvalue()


def _escaped(column: str, *prefixes: str) -> Callable[[list[dict[str, str]]], None]:
    def check(lines: list[dict[str, str]]) -> None:
        values = [line[column] for line in lines if line["row"] != "0"]
        assert values and all(v.startswith("'") for v in values), values
        assert [v[1] for v in values] == list(prefixes), values

    return check


def _header_escaped(lines: list[dict[str, str]]) -> None:
    assert any(name.startswith("'=HYPERLINK") for name in lines[0]), list(lines[0])


def _wide_row() -> bytes:
    return roster("Ann,Lee,ann.lee@example.com,Engineer,active" + ",x" * 4995, GOOD[1])


CASES: list[Case] = [
    # -- encodings -------------------------------------------------------------------------------
    Case("cp1252.csv", lambda: roster(GOOD[0], "José,Ruiz,jose@example.com,Engineer,active").decode().encode("cp1252"),
         "failed", "encoding_error", "byte 0xE9 on line 3, column 4"),
    Case("latin1_header.csv", lambda: "prénom,primary_email_address\nA,a@example.com\n".encode("latin-1"),
         "failed", "encoding_error", "line 1, column 3"),
    Case("utf16_bom.csv", lambda: roster(*GOOD).decode().encode("utf-16"),
         "failed", "encoding_error", "UTF-16 (it starts with a UTF-16 byte order mark)"),
    Case("utf16le_no_bom.csv", lambda: roster(*GOOD).decode().encode("utf-16-le"),
         "failed", "encoding_error", "UTF-16 (little-endian) without a byte order mark"),
    Case("utf16be_no_bom.csv", lambda: roster(*GOOD).decode().encode("utf-16-be"),
         "failed", "encoding_error", "UTF-16 (big-endian) without a byte order mark"),
    Case("utf32.csv", lambda: roster(*GOOD).decode().encode("utf-32"),
         "failed", "encoding_error", "UTF-32"),
    Case("bad_utf8_mid_file.csv",
         lambda: roster(*[f"N,L,u{i}@example.com,T,active" for i in range(3000)]) + b"N,L,x@example.com,\xff,active\n",
         "failed", "encoding_error", "byte 0xFF on line 3002, column 19"),
    Case("overlong_2byte.csv", lambda: roster(GOOD[0]) + b"A,B,a@example.com,\xc0\xaf,active\n",
         "failed", "encoding_error", "byte 0xC0 on line 3, column 19"),
    Case("overlong_3byte.csv", lambda: roster(GOOD[0]) + b"A,B,a@example.com,\xe0\x80\xaf,active\n",
         "failed", "encoding_error", "byte 0xE0 on line 3"),
    Case("surrogate_half.csv", lambda: roster(GOOD[0]) + b"A,B,a@example.com,\xed\xa0\x80,active\n",
         "failed", "encoding_error", "byte 0xED on line 3"),
    Case("truncated_multibyte.csv", lambda: roster(GOOD[0]) + b"A,B,a@example.com,Caf\xc3",
         "failed", "encoding_error", "line 3, column 22"),
    # -- bytes that are no text ------------------------------------------------------------------
    Case("nul_byte.csv", lambda: roster(GOOD[0], "A,B,a@example.com,Engi\x00neer,active"),
         "failed", "malformed_csv", "line 3, column 23 holds a NUL byte"),
    Case("random_binary.csv", lambda: random.Random(1).randbytes(8192),
         "failed", "malformed_csv", "holds a NUL byte"),
    Case("png_renamed.csv", lambda: b"\x89PNG\r\n\x1a\n" + random.Random(2).randbytes(2048),
         "failed", "unsupported_file_type", "PNG image"),
    Case("xlsx_renamed.csv", _xlsx, "failed", "unsupported_file_type", "ZIP archive (an Excel .xlsx workbook"),
    Case("xls_renamed.csv", lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1024),
         "failed", "unsupported_file_type", "old Excel .xls workbook"),
    Case("pdf_renamed.csv", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
         "failed", "unsupported_file_type", "PDF document"),
    Case("elf_renamed.csv", lambda: b"\x7fELF\x02\x01\x01" + bytes(512),
         "failed", "unsupported_file_type", "ELF executable"),
    Case("armored_pgp.csv", lambda: b"-----BEGIN PGP MESSAGE-----\n\nhQEMA...\n-----END PGP MESSAGE-----\n",
         "failed", "unsupported_file_type", "PGP-armored"),
    # -- gzip ---------------------------------------------------------------------------------------
    Case("bomb_rows.csv.gz", lambda: _gzip_bomb(b"A,B,a@example.com,T,active\n", 2048),
         "failed", "file_too_large", "inflates more than 200-fold"),
    Case("bomb_blank_lines.csv.gz", lambda: _gzip_bomb(b"\n", 2048),
         "failed", "malformed_csv", "more than 100,000 blank lines in a row from line 2 on"),
    Case("over_max_roster_bytes.csv.gz",
         lambda: gzip.compress(roster(*[f"N{i * 7919 % 10007},L,u{i}@example.com,T{i},active" for i in range(30_000)])),
         "failed", "file_too_large", "inflates to more than 500,000 bytes ([daemon] max_roster_bytes)",
         daemon={"max_roster_bytes": 500_000}),
    Case("truncated.csv.gz", _truncated_gzip, "failed", "malformed_csv", "not a complete gzip file"),
    Case("not_gzip.csv.gz", lambda: roster(*GOOD), "failed", "malformed_csv", "not a complete gzip file"),
    Case("gzip_in_gzip.csv.gz", lambda: gzip.compress(gzip.compress(roster(*GOOD))),
         "failed", "unsupported_file_type", "compressed twice"),
    Case("gzip_named_csv.csv", lambda: gzip.compress(roster(*GOOD)),
         "failed", "unsupported_file_type", "name it .csv.gz"),
    # -- sizes -------------------------------------------------------------------------------------
    Case("field_10mb.csv", lambda: roster(GOOD[0], "A,B,a@example.com," + "x" * 10_000_000 + ",active"),
         "failed", "malformed_csv", "line 3 is longer than 8,388,608 bytes"),
    Case("quoted_field_10mb.csv", lambda: roster(GOOD[0], 'A,B,a@example.com,"' + "x\n" * 5_000_000 + '",active'),
         "failed", "malformed_csv", "line 3: a field of the record starting on this line is longer than 1,048,576"),
    Case("field_300kb.csv", lambda: roster(GOOD[0], "A,B,a@example.com," + "x" * 300_000 + ",active", GOOD[1]),
         "partially_succeeded", "value_too_long", "work_title is 300000 characters long; the limit is 255", line=3),
    Case("columns_100k.csv",
         lambda: text(",".join(["primary_email_address", *(f"c{i}" for i in range(100_000))]), "a@example.com" + ",1" * 100_000),
         "failed", "invalid_header", "the header has 100,001 columns"),
    Case("groups_501.csv",
         lambda: text(",".join(["primary_email_address", *(f"group/g{i}" for i in range(501))]), "a@example.com" + ",1" * 501),
         "failed", "invalid_header", "501 group/ columns"),
    Case("wide_row.csv", _wide_row, "partially_succeeded", "field_count",
         "the row has 5000 fields, the header has 5", line=2),
    Case("email_321.csv", lambda: roster(GOOD[0], f"A,B,{'a' * 310}@example.com,T,active"),
         "partially_succeeded", "value_too_long", "is 322 characters long; the limit is 320", line=3),
    # -- CSV structure --------------------------------------------------------------------------------
    Case("unbalanced_quote.csv", lambda: roster(GOOD[0], 'A,"B,a@example.com,T,active', GOOD[1]),
         "failed", "malformed_csv", "line 3: a quoted field starts on this line and its closing quote never comes"),
    Case("text_after_quote.csv", lambda: roster(GOOD[0], 'A,"B"x,a@example.com,T,active'),
         "failed", "malformed_csv", "line 3:"),
    Case("empty.csv", lambda: b"", "failed", "empty_file", "the file has no header line"),
    Case("only_bom.csv", lambda: b"\xef\xbb\xbf", "failed", "empty_file", "the file has no header line"),
    Case("only_blank_lines.csv", lambda: b"\r\n \n\n\t\r\n", "failed", "empty_file", "no header line"),
    Case("header_only.csv", lambda: roster(), "succeeded", None),
    Case("semicolons.csv", lambda: text(HEADER.replace(",", ";"), GOOD[0].replace(",", ";")),
         "failed", "malformed_csv", "the header looks semicolon-separated"),
    Case("tabs.csv", lambda: text(HEADER.replace(",", "\t"), GOOD[0].replace(",", "\t")),
         "failed", "malformed_csv", "the header looks tab-separated"),
    Case("cr_only.csv", lambda: text(HEADER, *GOOD, newline="\r"), "succeeded", None),
    Case("mixed_line_ends.csv", lambda: (HEADER + "\r\n" + GOOD[0] + "\r" + GOOD[1] + "\n").encode(), "succeeded", None),
    Case("short_row.csv", lambda: roster(GOOD[0], "A,B,a@example.com"),
         "partially_succeeded", "field_count", "the row has 3 fields, the header has 5", line=3),
    # -- duplicate and near-duplicate headers --------------------------------------------------------
    Case("dup_exact.csv", lambda: roster("a@example.com,b@example.com", header="primary_email_address,primary_email_address"),
         "failed", "duplicate_header", "column 2 'primary_email_address' repeats column 1"),
    Case("dup_case.csv", lambda: roster("A,B", header="Work_Title,work_title,primary_email_address"),
         "failed", "duplicate_header", "column 2 'work_title' repeats column 1 'Work_Title'"),
    Case("dup_spaces.csv", lambda: roster("A,B,a@example.com", header="work_title,  work_title ,primary_email_address"),
         "failed", "duplicate_header", "column 2 'work_title' repeats column 1"),
    Case("dup_bom_mid_header.csv", lambda: roster("A,B,a@example.com", header="work_title,\ufeffwork_title,primary_email_address"),
         "failed", "duplicate_header", "column 2 'work_title' repeats column 1"),
    Case("dup_zero_width.csv", lambda: roster("A,B,a@example.com", header="work_title,work\u200b_title,primary_email_address"),
         "failed", "duplicate_header", "column 2 'work\\u200b_title' repeats column 1"),
    Case("dup_alias.csv", lambda: roster("a@example.com,b@example.com", header="primary_email,primary_email_address"),
         "failed", "duplicate_header", "repeats column 1 'primary_email'"),
    Case("dup_group_case.csv", lambda: roster("a@example.com,1,0", header="primary_email_address,group/HR,group/hr"),
         "failed", "duplicate_header", "column 3 'group/hr' repeats column 2 'group/HR'"),
    Case("lookalike_email_header.csv", lambda: roster("A,a@example.com", header="preferred_first_name,primary_em\u0430il_address"),
         "failed", "missing_required_column", "U+0430 CYRILLIC SMALL LETTER A"),
    Case("fullwidth_email_header.csv", lambda: roster("a@example.com", header="\uff50rimary_email_address"),
         "failed", "missing_required_column", "U+FF50 FULLWIDTH LATIN SMALL LETTER P"),
    Case("lookalike_extra_column.csv", lambda: roster("a@example.com,T", header="primary_email_address,work_titl\u0435"),
         "succeeded", "unknown_column", "U+0435 CYRILLIC SMALL LETTER IE"),
    Case("invisible_in_header.csv", lambda: roster("a@example.com,T", header="primary_email_address,work_title\u2060"),
         "succeeded", "invisible_characters", "U+2060 WORD JOINER"),
    Case("group_without_name.csv", lambda: roster("a@example.com,1", header="primary_email_address,group/ "),
         "failed", "invalid_header", "is a group column with no group name"),
    Case("unknown_license.csv", lambda: roster("a@example.com,active", header="primary_email_address,gold_license_status"),
         "failed", "unknown_license", "names license type 'gold_license'"),
    # -- hostile values ----------------------------------------------------------------------------------
    Case("formula_payloads.csv",
         lambda: roster('=cmd|\' /C calc\'!A0,B,f1@example.com,T,active', "+1+1,B,f2@example.com,T,active",
                        "-2+3,B,f3@example.com,T,active", '@SUM(A1),B,f4@example.com,T,active',
                        '"\tTAB",B,f5@example.com,T,active'),
         "succeeded", None, check=_escaped("preferred_first_name", "=", "+", "-", "@", "\t")),
    Case("formula_in_header.csv", lambda: roster("a@example.com,x", header='primary_email_address,"=HYPERLINK(""http://x"")"'),
         "succeeded", "unknown_column", "=HYPERLINK", check=_header_escaped),
    Case("sql_in_group_name.csv", lambda: roster("a@example.com,1", header="primary_email_address,\"group/x', (SELECT 1)) --\""),
         "succeeded", None),
    Case("cyrillic_homoglyph_email.csv", lambda: roster(GOOD[0], "A,B,ann.l\u0435e@example.com,T,active"),
         "partially_succeeded", "invalid_email", "mixes Cyrillic and Latin letters", line=3),
    Case("greek_homoglyph_domain.csv", lambda: roster(GOOD[0], "A,B,bo@ex\u03b1mple.com,T,active"),
         "partially_succeeded", "invalid_email", "U+03B1 GREEK SMALL LETTER ALPHA", line=3),
    Case("fullwidth_at_email.csv", lambda: roster(GOOD[0], "A,B,bo\uff20example.com,T,active"),
         "partially_succeeded", "invalid_email", "U+FF20 FULLWIDTH COMMERCIAL AT", line=3),
    Case("fullwidth_letter_email.csv", lambda: roster(GOOD[0], "A,B,\uff42o@example.com,T,active"),
         "partially_succeeded", "invalid_email", "U+FF42 FULLWIDTH LATIN SMALL LETTER B", line=3),
    Case("zero_width_email.csv", lambda: roster(GOOD[0], "A,B,b\u200bo@example.com,T,active"),
         "partially_succeeded", "invalid_email", "U+200B ZERO WIDTH SPACE", line=3),
    Case("nbsp_padded_values.csv", lambda: roster("\u00a0Ann\u00a0,Lee,\u00a0ann.lee@example.com\u00a0,Engineer,active"),
         "succeeded", None),
]  # fmt: skip

# Entries in inbox/ that are not regular files: never opened, never queued, the rest goes on.
INBOX_ENTRIES = ("directory.csv", "symlink_out.csv", "symlink_passwd.csv", "fifo.csv", "socket.csv")
