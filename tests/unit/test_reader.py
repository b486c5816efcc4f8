"""orgsyncd.core.reader: UTF-8 (BOM or not), RFC 4180, LF/CRLF/CR, gzip, and the file-level errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from orgsyncd.core.reader import is_gzip, locate_bad_utf8, read_records
from orgsyncd.errors import FileRejected

HEADER = b"primary_email_address,preferred_first_name,work_title"
ROWS = [
    b"john.doe@example.com,John,Engineer",
    b"jane.smith@example.com,Jane,HR Partner",
]
EXPECTED = [
    (1, ["primary_email_address", "preferred_first_name", "work_title"]),
    (2, ["john.doe@example.com", "John", "Engineer"]),
    (3, ["jane.smith@example.com", "Jane", "HR Partner"]),
]
NEWLINES = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def records(tmp_path: Path, data: bytes, name: str = "roster.csv") -> list[tuple[int, list[str]]]:
    return list(read_records(write(tmp_path, name, data)))


def rejected(tmp_path: Path, data: bytes, name: str = "roster.csv") -> FileRejected:
    path = write(tmp_path, name, data)
    with pytest.raises(FileRejected) as info:
        list(read_records(path))
    return info.value


# -- encoding ---------------------------------------------------------------------------------


def test_utf8_without_bom(tmp_path: Path) -> None:
    assert records(tmp_path, b"\n".join([HEADER, *ROWS]) + b"\n") == EXPECTED


def test_utf8_with_bom_is_not_part_of_the_first_header_cell(tmp_path: Path) -> None:
    got = records(tmp_path, b"\xef\xbb\xbf" + b"\n".join([HEADER, *ROWS]) + b"\n")
    assert got == EXPECTED
    assert got[0][1][0] == "primary_email_address"


def test_non_ascii_utf8_values_are_kept(tmp_path: Path) -> None:
    data = "primary_email_address,preferred_first_name\njosé@example.com,Zoë Ørsted 李\n"
    assert records(tmp_path, data.encode("utf-8")) == [
        (1, ["primary_email_address", "preferred_first_name"]),
        (2, ["josé@example.com", "Zoë Ørsted 李"]),
    ]


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\n\n", b"\r\n  \r\n"])
def test_file_without_any_record_yields_nothing(tmp_path: Path, data: bytes) -> None:
    # empty_file itself is decided by the caller; the reader just yields no record.
    assert records(tmp_path, data) == []


# -- line endings and blank lines -------------------------------------------------------------


@pytest.mark.parametrize("newline", NEWLINES.values(), ids=NEWLINES.keys())
def test_line_endings(tmp_path: Path, newline: bytes) -> None:
    assert records(tmp_path, newline.join([HEADER, *ROWS]) + newline) == EXPECTED


@pytest.mark.parametrize("newline", NEWLINES.values(), ids=NEWLINES.keys())
def test_no_trailing_newline(tmp_path: Path, newline: bytes) -> None:
    assert records(tmp_path, newline.join([HEADER, *ROWS])) == EXPECTED


@pytest.mark.parametrize("newline", NEWLINES.values(), ids=NEWLINES.keys())
def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path: Path, newline: bytes) -> None:
    # line 1 header, 2 blank, 3 john, 4 blank (spaces), 5 blank, 6 jane, 7 trailing empty line
    data = newline.join([HEADER, b"", ROWS[0], b"   ", b"", ROWS[1], b""]) + newline
    got = records(tmp_path, data)
    assert [line for line, _ in got] == [1, 3, 6]
    assert [fields for _, fields in got] == [fields for _, fields in EXPECTED]


# -- RFC 4180 quoting ------------------------------------------------------------------------


def test_quoted_commas_and_doubled_quotes(tmp_path: Path) -> None:
    data = b'a,b,c\n"Doe, John","say ""hi""",plain\n'
    assert records(tmp_path, data) == [
        (1, ["a", "b", "c"]),
        (2, ["Doe, John", 'say "hi"', "plain"]),
    ]


@pytest.mark.parametrize("newline", NEWLINES.values(), ids=NEWLINES.keys())
def test_embedded_newlines_report_the_line_where_the_record_starts(tmp_path: Path, newline: bytes) -> None:
    nl = newline
    data = (
        b"a,b,c"
        + nl
        + b'1,"two'  # record starts on line 2 and spans lines 2-4
        + nl
        + b"lines"
        + nl
        + b'more",x'
        + nl
        + b"3,4,5"  # line 5
        + nl
        + b'6,"multi'  # line 6, spans 6-7
        + nl
        + b'line, with comma and ""quote""",y'
        + nl
        + b"8,9,10"  # line 8
        + nl
    )
    text_nl = nl.decode()
    assert records(tmp_path, data) == [
        (1, ["a", "b", "c"]),
        (2, ["1", f"two{text_nl}lines{text_nl}more", "x"]),
        (5, ["3", "4", "5"]),
        (6, ["6", f'multi{text_nl}line, with comma and "quote"', "y"]),
        (8, ["8", "9", "10"]),
    ]


def test_blank_line_inside_a_quoted_field_is_data_not_a_skipped_line(tmp_path: Path) -> None:
    data = b'a,b\n"x\n\ny",1\nz,2\n'
    assert records(tmp_path, data) == [(1, ["a", "b"]), (2, ["x\n\ny", "1"]), (5, ["z", "2"])]


def test_values_are_returned_untrimmed(tmp_path: Path) -> None:
    # trimming is the row validator's job; the reader echoes what was given
    assert records(tmp_path, b"a,b\n  x , y\n")[1] == (2, ["  x ", " y"])


# -- gzip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["roster.csv.gz", "ROSTER.CSV.GZ"])
def test_gzip_reads_the_same_as_plain(tmp_path: Path, name: str) -> None:
    plain = b"\xef\xbb\xbf" + b"\r\n".join([HEADER, b"", *ROWS]) + b"\r\n"
    expected = records(tmp_path, plain)
    assert expected[1:] == [(3, EXPECTED[1][1]), (4, EXPECTED[2][1])]
    assert records(tmp_path, gzip.compress(plain), name=name) == expected


def test_is_gzip_by_name() -> None:
    assert is_gzip(Path("x.csv.gz"))
    assert is_gzip(Path("x.CSV.GZ"))
    assert not is_gzip(Path("x.csv"))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"primary_email_address\na@example.com\n", id="not-gzip-at-all"),
        pytest.param(gzip.compress(b"a,b\n" + b"1,2\n" * 500)[:-12], id="truncated"),
        pytest.param(b"\x1f\x8b", id="magic-only"),
    ],
)
def test_corrupt_gzip_is_malformed_csv(tmp_path: Path, data: bytes) -> None:
    error = rejected(tmp_path, data, name="roster.csv.gz")
    assert error.code == "malformed_csv"
    assert "gzip" in error.message


def test_gzip_with_flipped_payload_byte_is_malformed_csv(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(b"a,b\n" + b"1,2\n" * 100))
    packed[-6] ^= 0xFF  # corrupt the CRC / length trailer
    error = rejected(tmp_path, bytes(packed), name="roster.csv.gz")
    assert error.code == "malformed_csv"
    assert "gzip" in error.message


def test_invalid_utf8_inside_gzip_is_located(tmp_path: Path) -> None:
    error = rejected(tmp_path, gzip.compress(b"a,b\nok,1\n1,Jos\xe9\n"), name="r.csv.gz")
    assert error.code == "encoding_error"
    assert "line 3, column 6" in error.message


# -- encoding errors -------------------------------------------------------------------------


def test_latin1_byte_is_encoding_error_naming_line_and_column(tmp_path: Path) -> None:
    data = b"first,last\nJohn,Doe\nJo,Ren\xe9e\n"  # 0xE9 is the 7th character of line 3
    error = rejected(tmp_path, data)
    assert error.code == "encoding_error"
    assert "line 3" in error.message
    assert "column 7" in error.message
    assert "0xE9" in error.message
    assert "save the file as CSV UTF-8" in error.message


def test_encoding_error_columns_count_characters_not_bytes(tmp_path: Path) -> None:
    # "Zoë,Jo" is 6 characters (7 bytes); the bad byte is character 7
    error = rejected(tmp_path, "h\nok\nZoë,Jo".encode() + b"\xe9\n")
    assert "line 3, column 7" in error.message


@pytest.mark.parametrize("newline", NEWLINES.values(), ids=NEWLINES.keys())
def test_encoding_error_line_with_each_line_ending(tmp_path: Path, newline: bytes) -> None:
    data = newline.join([b"a,b", b"1,2", b"", b'3,"x', b'y\xe9"']) + newline
    error = rejected(tmp_path, data)
    assert "line 5, column 2" in error.message


def test_encoding_error_on_line_one_with_bom_does_not_count_the_bom(tmp_path: Path) -> None:
    error = rejected(tmp_path, b"\xef\xbb\xbfab\xe9,c\n")
    assert "line 1, column 3" in error.message


def test_encoding_error_after_the_first_read_chunk(tmp_path: Path) -> None:
    # 655 lines of 100 bytes, then a 3-byte character straddling the 64 KiB chunk boundary
    # (which must not be reported), then the bad byte on the next line.
    body = b"a,b\n" + (b"x" * 99 + b"\n") * 655
    body += b"y" * (65536 - len(body) - 1)
    data = body + "€".encode() + b",z\nok,Jo\xe9\n"
    error = rejected(tmp_path, data)
    assert error.code == "encoding_error"
    assert "line 658, column 6" in error.message


def test_encoding_error_far_along_line_one_with_bom(tmp_path: Path) -> None:
    error = rejected(tmp_path, b"\xef\xbb\xbf" + b"h" * 70000 + b"\xe9\n")
    assert "line 1, column 70001" in error.message


def test_truncated_multibyte_sequence_at_end_of_file_is_located(tmp_path: Path) -> None:
    error = rejected(tmp_path, b"a,b\n1,\xc3")
    assert error.code == "encoding_error"
    assert "line 2, column 3" in error.message


def test_locate_bad_utf8_directly(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", b"a\r\nb\r\n\xff\r\n")
    message = locate_bad_utf8(path)
    assert message.startswith("byte 0xFF on line 3, column 1 ")


# -- malformed CSV ---------------------------------------------------------------------------


def test_unclosed_quote_names_the_line_where_the_field_starts(tmp_path: Path) -> None:
    data = b'a,b\n1,2\n3,"never closed\n4,5\n6,7\n'
    error = rejected(tmp_path, data)
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 3:")
    assert "closing quote" in error.message


def test_unclosed_quote_after_multiline_records_and_blank_lines(tmp_path: Path) -> None:
    # header 1, multi-line record 2-3, blank 4, good 5, unclosed field starts on 6
    data = b'a,b\n"x\ny",1\n\nz,2\nw,"oops\nmore\n'
    error = rejected(tmp_path, data)
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 6:")


def test_unclosed_quote_in_a_big_file_still_names_the_start_line(tmp_path: Path) -> None:
    # the runaway field passes the csv module's field size limit before end of file
    data = b'a,b\n1,2\n3,"runaway\n' + b"filler,filler\n" * 20000
    error = rejected(tmp_path, data)
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 3:")
    assert "closing quote" in error.message


def test_text_after_a_closing_quote_is_malformed_csv(tmp_path: Path) -> None:
    error = rejected(tmp_path, b'a,b\n1,2\n3,"x"y\n')
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 3:")


def test_records_before_an_error_are_yielded_first(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", b'a,b\n1,2\n3,"x\n')
    it = read_records(path)
    assert next(it) == (1, ["a", "b"])
    assert next(it) == (2, ["1", "2"])
    with pytest.raises(FileRejected, match="line 3"):
        next(it)


# -- progress --------------------------------------------------------------------------------


def test_progress_reports_bytes_read(tmp_path: Path) -> None:
    data = b"a,b\n" + b"x@example.com,1\n" * 40000
    path = write(tmp_path, "r.csv", data)
    seen: list[int] = []
    assert sum(1 for _ in read_records(path, progress=seen.append)) == 40001
    assert seen, "progress was never called for a 40k-row file"
    assert seen == sorted(seen)
    assert all(0 < n <= len(data) for n in seen)


# -- what the bytes really are, and limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "code", "what"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "unsupported_file_type", "ZIP archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "unsupported_file_type", ".xls workbook"),
        (b"%PDF-1.7\n", "unsupported_file_type", "PDF document"),
        (b"\x89PNG\r\n\x1a\n", "unsupported_file_type", "PNG image"),
        (b"\x7fELF\x02\x01", "unsupported_file_type", "ELF executable"),
        (b"\x1f\x8b\x08\x00", "unsupported_file_type", "name it .csv.gz"),
        ("primary_email_address\n".encode("utf-16"), "encoding_error", "UTF-16"),
        ("primary_email_address\n".encode("utf-32"), "encoding_error", "UTF-32"),
    ],
)
def test_a_file_that_is_something_else_says_what_it_is(
    tmp_path: Path, head: bytes, code: str, what: str
) -> None:
    error = rejected(tmp_path, head + bytes(range(256)) * 4)
    assert error.code == code
    assert what in error.message


def test_gzip_inside_gzip_is_named(tmp_path: Path) -> None:
    error = rejected(tmp_path, gzip.compress(gzip.compress(HEADER)), name="roster.csv.gz")
    assert error.code == "unsupported_file_type" and "compressed twice" in error.message


@pytest.mark.parametrize("order", ["le", "be"])
def test_utf16_without_a_byte_order_mark_is_an_encoding_error(tmp_path: Path, order: str) -> None:
    error = rejected(tmp_path, (HEADER + b"\n" + ROWS[0]).decode().encode(f"utf-16-{order}"))
    assert error.code == "encoding_error"
    assert f"UTF-16 ({'little' if order == 'le' else 'big'}-endian)" in error.message


def test_a_nul_byte_is_located(tmp_path: Path) -> None:
    error = rejected(tmp_path, HEADER + b"\n" + ROWS[0] + b"\njane@x.com,J\x00ane,T\n")
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 3, column 13 holds a NUL byte")


def test_a_nul_byte_past_the_first_chunk_is_located(tmp_path: Path) -> None:
    body = b"\n".join([HEADER, *[ROWS[0]] * 5000, b"a@x.com,\x00,T"])
    assert "line 5002, column 9" in rejected(tmp_path, body).message


def test_a_line_without_line_breaks_past_the_limit_fails_naming_it(tmp_path: Path) -> None:
    error = rejected(tmp_path, HEADER + b"\n" + ROWS[0] + b"\na@x.com,J," + b"x" * (9 << 20))
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 3 is longer than 8,388,608 bytes")


def test_a_field_under_the_field_limit_is_read(tmp_path: Path) -> None:
    got = records(tmp_path, HEADER + b"\na@x.com,J," + b"x" * 500_000 + b"\n")
    assert len(got[1][1][2]) == 500_000


def test_a_quoted_field_past_the_field_limit_names_the_line_it_starts_on(tmp_path: Path) -> None:
    lines = b"\n".join([b"y" * 1000] * 1200)  # short physical lines: the quote never closes
    error = rejected(tmp_path, HEADER + b"\n" + ROWS[0] + b'\na@x.com,"' + lines + b"\n" + ROWS[1])
    assert error.code == "malformed_csv"
    assert error.message.startswith("line 3: a field") and "1,048,576 characters" in error.message


def bomb(tmp_path: Path, line: bytes, members: int) -> Path:
    """A small .csv.gz of repeated gzip members, each ~1 KB inflating to 1 MiB of ``line``."""
    member = gzip.compress(line * ((1 << 20) // len(line)))
    return write(tmp_path, "bomb.csv.gz", gzip.compress(HEADER + b"\n") + member * members)


def test_a_gzip_bomb_of_rows_stops_at_the_ratio_not_the_size_limit(tmp_path: Path) -> None:
    path = bomb(tmp_path, b"a@x.com,A,T\n", 4096)  # inflates to 4 GiB
    assert path.stat().st_size < 10_000_000
    with pytest.raises(FileRejected) as info:
        sum(1 for _ in read_records(path, max_bytes=1 << 40))
    assert info.value.code == "file_too_large"
    assert "inflates more than 200-fold" in info.value.message and "gzip bomb" in info.value.message


def test_a_gzip_bomb_of_blank_lines_stops_at_the_blank_run(tmp_path: Path) -> None:
    with pytest.raises(FileRejected) as info:
        list(read_records(bomb(tmp_path, b"\r\n", 4096)))
    assert info.value.code == "malformed_csv"
    assert "more than 100,000 blank lines in a row from line 2 on" in info.value.message


def test_max_bytes_stops_an_inflating_file_at_the_limit(tmp_path: Path) -> None:
    rows = b"\n".join(b"user%d@example.com,N%d,T%d" % (i, i * 7919 % 10007, i) for i in range(300_000))
    path = write(tmp_path, "big.csv.gz", gzip.compress(HEADER + b"\n" + rows))
    with pytest.raises(FileRejected) as info:
        list(read_records(path, max_bytes=2 << 20))
    assert info.value.code == "file_too_large"
    assert "inflates to more than 2,097,152 bytes ([daemon] max_roster_bytes)" in info.value.message
    assert sum(1 for _ in read_records(path, max_bytes=64 << 20)) == 300_001  # under the limit: read


def test_max_bytes_applies_to_a_plain_file_too(tmp_path: Path) -> None:
    path = write(tmp_path, "big.csv", HEADER + b"\n" + b"\n".join([ROWS[0]] * 1000))
    with pytest.raises(FileRejected, match="is larger than 10,000 bytes"):
        list(read_records(path, max_bytes=10_000))
