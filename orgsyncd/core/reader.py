"""Streaming CSV reading: RFC 4180, LF/CRLF/CR, plain, gzip or decrypted, in the tenant's encoding
(UTF-8 with or without a BOM unless configured) and delimiter.

Yields ``(line, fields)`` where ``line`` is the physical line the record starts on (header = 1),
never holding more than one record in memory. The bytes are checked as they stream past (see
``_Guard``): a file that is really something else, a NUL byte, a line or field no roster has, or a
``.csv.gz`` that inflates past the size limit fails the file before it costs memory or disk.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from orgsyncd.core.formats import DELIMITER_NAMES, DELIMITERS, Decoding, encoding_name
from orgsyncd.errors import FileRejected

Record = tuple[int, list[str]]
# Turns the stored bytes of an encrypted file into the plaintext stream (see orgsyncd.pgp).
Decrypt = Callable[[BinaryIO], AbstractContextManager[BinaryIO]]
_CHUNK = 1 << 16
_PROGRESS_MASK = (1 << 14) - 1
MAX_FIELD_CHARS = 1 << 20  # a longer cell is no roster value: the file fails rather than grow
MAX_LINE_BYTES = 8 << 20  # a physical line longer than this fails the file (lost line breaks)
MAX_BLANK_RUN = 100_000  # blank lines in a row: cheap to send, each costs a loop turn to skip
# A .csv.gz inflating more than this many times its size, once past the floor, is a bomb: real
# rosters compress 5-45 fold (a sparse file of 100 group columns: 44).
BOMB_RATIO = 200
BOMB_FLOOR_BYTES = 1 << 20
# The csv module's limit is process-wide; ours is the only CSV reading in the process.
csv.field_size_limit(MAX_FIELD_CHARS)
_UTF8_BOM = codecs.BOM_UTF8
PGP_SUFFIXES = (".pgp", ".gpg", ".asc")
UTF8 = Decoding()
# In order of preference among codecs that decode a sample identically.
_LIKELY_CODECS = (
    "cp1252", "iso8859_15", "latin_1", "cp1250", "cp1251", "cp1253", "cp1254", "cp1257",
    "mac_roman", "cp850", "utf_16", "shift_jis", "gb18030", "big5", "euc_kr",
)  # fmt: skip


def is_encrypted(path: Path) -> bool:
    return path.name.lower().endswith(PGP_SUFFIXES)


def is_gzip(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(PGP_SUFFIXES):
        name = name[:-4]
    return name.endswith(".gz")


@contextmanager
def _decompressed(path: Path, raw: BinaryIO) -> Iterator[BinaryIO]:
    if is_gzip(path):
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            yield gz  # type: ignore[misc]
    else:
        yield raw


@contextmanager
def _decrypted(path: Path, raw: BinaryIO, decrypt: Decrypt | None) -> Iterator[BinaryIO]:
    if not is_encrypted(path):
        yield raw
        return
    if decrypt is None:
        raise FileRejected("decryption_failed", "the file is PGP-encrypted and nothing here can decrypt it")
    with decrypt(raw) as plain:
        yield plain


@contextmanager
def open_binary(path: Path, decrypt: Decrypt | None = None) -> Iterator[BinaryIO]:
    """The file's content as bytes: decrypted, then decompressed, as its name says."""
    with (
        path.open("rb") as raw,
        _decrypted(path, raw, decrypt) as plain,
        _decompressed(path, plain) as binary,
    ):
        yield binary


@contextmanager
def _stored_and_binary(path: Path, decrypt: Decrypt | None) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    with (
        path.open("rb") as raw,
        _decrypted(path, raw, decrypt) as plain,
        _decompressed(path, plain) as binary,
    ):
        yield raw, binary


def _codec(binary: BinaryIO, decoding: Decoding) -> str:
    """The codec for this file: UTF-8 (BOM skipped) for a UTF-8 tenant, and for any file that
    starts with a UTF-8 BOM (Excel's "CSV UTF-8"), since a BOM says what the file is."""
    name = encoding_name(decoding.encoding)
    if name == "utf-8":
        return "utf-8-sig"
    peek = getattr(binary, "peek", None)
    if peek is not None and peek(3)[:3] == _UTF8_BOM:
        return "utf-8-sig"
    return name


def _text(binary: BinaryIO, decoding: Decoding) -> io.TextIOWrapper:
    return io.TextIOWrapper(binary, encoding=_codec(binary, decoding), errors="strict", newline="")


def _wide(codec: str) -> bool:
    """UTF-16 and UTF-32 text is full of NUL bytes and starts with their byte order marks."""
    return codec.replace("-", "_").startswith(("utf_16", "utf_32"))


def pick_delimiter(header_line: str) -> str:
    """``auto``: the delimiter that splits the header into the most fields (ties: the first of
    ``DELIMITERS``); a header with none of them is one column, read as comma-separated."""
    best, most = ",", 1
    for delimiter in DELIMITERS:
        count = len(next(csv.reader([header_line], delimiter=delimiter), []))
        if count > most:
            best, most = delimiter, count
    return best


def _lines(text: io.TextIOWrapper, decoding: Decoding) -> tuple[Iterator[str], str]:
    """The text's lines and the delimiter to split them with (``auto`` resolved)."""
    if decoding.delimiter != "auto":
        return text, decoding.delimiter
    leading: list[str] = []
    while line := text.readline():
        leading.append(line)
        if line.strip():
            return itertools.chain(leading, text), pick_delimiter(line)
    return iter(leading), ","


def read_records(
    path: Path,
    progress: Callable[[int], None] | None = None,
    *,
    decoding: Decoding = UTF8,
    decrypt: Decrypt | None = None,
    used: list[str] | None = None,
    max_bytes: int | None = None,
) -> Iterator[Record]:
    """Every non-blank record of the file; raises FileRejected for file-level problems.

    ``progress`` is called now and then with how many bytes of the file (as stored) were read;
    the delimiter used (``auto`` resolved) is appended to ``used``. ``max_bytes`` bounds the bytes
    read after decryption and decompression (a gzip bomb stops there, or at ``BOMB_RATIO``).
    """
    last_line = blank = 0
    try:
        with (
            _stored_and_binary(path, decrypt) as (raw, binary),
            _guarded_text(path, raw, binary, decoding, decrypt, max_bytes) as text,
        ):
            # (held here: the chain of lines drops its reference at the end, and an unclosed
            # wrapper collected then warns)
            lines, delimiter = _lines(text, decoding)
            if used is not None:
                used.append(delimiter)
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            for fields in reader:
                start, last_line = last_line + 1, reader.line_num
                if progress is not None and not start & _PROGRESS_MASK:
                    progress(raw.tell())
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    blank += 1
                    if blank > MAX_BLANK_RUN:
                        raise FileRejected("malformed_csv", _blank_run_message(start - blank + 1))
                    continue
                blank = 0
                yield start, fields
            if progress is not None:
                progress(raw.tell())  # the end: a bar reaches 100 %
    except csv.Error as exc:
        raise FileRejected("malformed_csv", _csv_message(last_line + 1, exc)) from None
    except UnicodeDecodeError:
        raise FileRejected("encoding_error", locate_bad_text(path, decoding, decrypt)) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise FileRejected(
            "malformed_csv", f"the file ends in .gz but is not a complete gzip file ({exc})"
        ) from None


def _guarded_text(
    path: Path,
    raw: BinaryIO,
    binary: BinaryIO,
    decoding: Decoding,
    decrypt: Decrypt | None,
    max_bytes: int | None,
) -> io.TextIOWrapper:
    codec = _codec(binary, decoding)
    compressed_at = raw.tell if is_gzip(path) else None
    guard = _Guard(binary, _Place(path, decrypt, codec), max_bytes, compressed_at, wide=_wide(codec))
    return io.TextIOWrapper(cast(BinaryIO, guard), encoding=codec, errors="strict", newline="")


# What the first bytes of a file named .csv say it really is (checked before any parsing).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\xfe\xff", "UTF-32 (it starts with a UTF-32 byte order mark)"),
    (b"\xff\xfe\x00\x00", "UTF-32 (it starts with a UTF-32 byte order mark)"),
    (b"\xff\xfe", "UTF-16 (it starts with a UTF-16 byte order mark)"),
    (b"\xfe\xff", "UTF-16 (it starts with a UTF-16 byte order mark)"),
)
_NOT_TEXT: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one; name it .xlsx)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel .xls workbook"),
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"-----BEGIN PGP", "PGP-armored data (name it .csv.asc)"),
)
_GZIP_MAGIC = b"\x1f\x8b"


class _Place:
    """Turns a byte offset of the decoded stream into 'line L, column C' for a message."""

    def __init__(self, path: Path, decrypt: Decrypt | None, codec: str) -> None:
        self.path, self.decrypt, self.codec = path, decrypt, codec

    def __call__(self, offset: int) -> tuple[int, int]:
        line, col, prev_cr, left = 1, 0, False, offset
        decoder = codecs.getincrementaldecoder(self.codec)(errors="replace")
        with open_binary(self.path, self.decrypt) as binary:
            while left > 0 and (chunk := binary.read(min(_CHUNK, left))):
                left -= len(chunk)
                text = decoder.decode(chunk)
                if line == 1 and col == 0:
                    text = text.removeprefix("\ufeff")
                line, col, prev_cr = _advance(text, line, col, prev_cr)
        return line, col + 1


class _Guard(io.BufferedIOBase):
    """The decompressed bytes on their way to the text decoder, checked chunk by chunk at C speed:
    what the file starts with, the size limit, NUL bytes and the length of a physical line."""

    def __init__(
        self,
        inner: BinaryIO,
        place: _Place,
        max_bytes: int | None,
        compressed_at: Callable[[], int] | None,
        *,
        wide: bool,
    ) -> None:
        super().__init__()
        self.inner, self.place, self.max_bytes, self.compressed_at = inner, place, max_bytes, compressed_at
        self.wide = wide  # UTF-16/32 as configured: NULs and their BOMs are the text itself
        self.offset = 0  # bytes passed on so far
        self.run = 0  # bytes since the last line break

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._check(self.inner.read(-1 if size is None else size))

    def read1(self, size: int = -1) -> bytes:
        return self._check(self.inner.read1(size))  # type: ignore[attr-defined]

    def _check(self, data: bytes) -> bytes:
        if self.offset == 0 and data:
            self._sniff(data)
        start, self.offset = self.offset, self.offset + len(data)
        if self.max_bytes is not None and self.offset > self.max_bytes:
            raise FileRejected("file_too_large", _too_large(self.max_bytes, self.compressed_at is not None))
        if self.compressed_at is not None and self.offset > BOMB_FLOOR_BYTES:
            stored = max(self.compressed_at(), 1)
            if self.offset > BOMB_RATIO * stored:
                raise FileRejected("file_too_large", _bomb_message(self.offset, stored))
        if not self.wide and (nul := data.find(b"\0")) >= 0:
            self._nul(data if start == 0 else b"", start + nul)
        last_break = max(data.rfind(b"\n"), data.rfind(b"\r"))
        self.run = self.run + len(data) if last_break < 0 else len(data) - last_break - 1
        if self.run > MAX_LINE_BYTES:
            line, _ = self.place(self.offset - self.run)
            raise FileRejected("malformed_csv", _long_line_message(line))
        return data

    def _sniff(self, head: bytes) -> None:
        for magic, what in () if self.wide else _BOMS:
            if head.startswith(magic):
                raise FileRejected(
                    "encoding_error",
                    f"the file is {what}, not UTF-8; save the file as CSV UTF-8 and upload it again",
                )
        for magic, what in _NOT_TEXT:
            if head.startswith(magic):
                raise FileRejected("unsupported_file_type", _not_text_message(what))
        if head.startswith(_GZIP_MAGIC):
            twice = self.compressed_at is not None
            what = "compressed twice (gzip inside gzip)" if twice else "gzip-compressed"
            hint = "compress it once" if twice else "name it .csv.gz"
            raise FileRejected("unsupported_file_type", f"the file is {what}, not CSV text; {hint}")

    def _nul(self, head: bytes, offset: int) -> None:
        """A NUL byte: UTF-16 without a byte order mark looks like this, so does a binary file."""
        sample = head[:4096]
        odd, even = sample[1::2].count(0), sample[0::2].count(0)
        if len(sample) >= 8 and max(odd, even) > len(sample) // 4 and min(odd, even) < len(sample) // 64:
            order = "little" if odd > even else "big"
            raise FileRejected(
                "encoding_error",
                f"the file looks like UTF-16 ({order}-endian) without a byte order mark, not UTF-8 "
                "(every other byte is 0x00); save the file as CSV UTF-8 and upload it again",
            )
        line, col = self.place(offset)
        raise FileRejected(
            "malformed_csv",
            f"line {line}, column {col} holds a NUL byte (0x00), which no text roster contains: the "
            "file is binary or damaged; export the roster again as CSV UTF-8",
        )


def _not_text_message(what: str) -> str:
    return f"the file is {what}, not CSV text; export the roster as CSV UTF-8 and upload that"


def _too_large(limit: int, compressed: bool) -> str:
    what = "inflates to more than" if compressed else "is larger than"
    return (
        f"the file {what} {limit:,} bytes ([daemon] max_roster_bytes); nothing was read further "
        "or applied: split the roster, or raise max_roster_bytes if such files are expected"
    )


def _bomb_message(inflated: int, stored: int) -> str:
    return (
        f"the file inflates more than {BOMB_RATIO}-fold ({stored:,} bytes of gzip had become "
        f"{inflated:,} bytes when reading stopped), which is a gzip bomb, not a roster export; "
        "nothing was applied"
    )


def _blank_run_message(first: int) -> str:
    return (
        f"more than {MAX_BLANK_RUN:,} blank lines in a row from line {first} on; a roster has none "
        "of that length: the file is not a roster export"
    )


def _long_line_message(line: int) -> str:
    return (
        f"line {line} is longer than {MAX_LINE_BYTES:,} bytes without a line break; a roster line "
        "is a few hundred bytes: the file is not a roster export, or its line breaks were lost"
    )


def line_ending(path: Path, default: str = "\r\n") -> str:
    """How the file's first line ends ("\r\n", "\n" or "\r"); *default* when it has no line end
    in its first 64 KiB or cannot be read."""
    try:
        with open_binary(path) as binary:
            head = binary.read(_CHUNK)
    except (OSError, EOFError, zlib.error):
        return default
    cut = re.search(b"\r\n|\n|\r", head)
    if cut is None or (cut.group() == b"\r" and cut.end() == len(head) and len(head) == _CHUNK):
        return default  # no line end seen (or a CR that may be half of a CRLF split by the read)
    return cut.group().decode("ascii")


EchoRecord = tuple[int, list[str] | None, str | None]
# A whole record on one line: every cell unquoted without quotes, or fully quoted.
_ONE_LINE_RECORD = re.compile(r'(?:[^",]*|"[^"]*(?:""[^"]*)*")(?:,(?:[^",]*|"[^"]*(?:""[^"]*)*"))*')


def read_echo_records(
    path: Path, *, decoding: Decoding = UTF8, decrypt: Decrypt | None = None
) -> Iterator[EchoRecord]:
    """The records of an already validated file, for echoing into the results file: a record that
    is one physical line of a comma-separated file comes back as its raw text (no CSV parsing
    needed to copy it), any other as parsed fields. Same line numbers and blank-line rules as
    ``read_records``."""
    if decoding.delimiter != ",":
        for line, fields in read_records(path, decoding=decoding, decrypt=decrypt):
            yield line, fields, None
        return
    with open_binary(path, decrypt) as binary:
        text = _text(binary, decoding)
        spanned = 0  # extra physical lines taken by records that span lines
        for count, physical in enumerate(text, 1):
            body = physical.rstrip("\r\n")
            if '"' not in body or ("," in body and _ONE_LINE_RECORD.fullmatch(body)):
                if body.strip():
                    yield count + spanned, None, body
                continue
            taken = [0]
            fields = next(csv.reader(_continued(physical, text, taken), strict=True))
            if not (len(fields) == 1 and not fields[0].strip()):  # '""' is a blank line too
                yield count + spanned, fields, None
            spanned += taken[0]


def _continued(first: str, rest: Iterator[str], taken: list[int]) -> Iterator[str]:
    """``first``, then as many lines of ``rest`` as the CSV reader asks for, counted in ``taken``."""
    yield first
    for line in rest:
        taken[0] += 1
        yield line


def delimiter_name(delimiter: str) -> str:
    return DELIMITER_NAMES.get(delimiter, repr(delimiter))


def _csv_message(line: int, exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return (
            f"line {line}: a quoted field starts on this line and its closing quote never "
            'comes; close the field with " (write a quote inside a field as "")'
        )
    if "field larger than field limit" in text:
        return (
            f"line {line}: a field of the record starting on this line is longer than "
            f"{MAX_FIELD_CHARS:,} characters: a quoted field whose closing quote never comes, or "
            'a value far longer than any roster value; close the field with " (write a quote inside '
            'a field as "")'
        )
    return f'line {line}: {text}; quote a field that contains a quote, comma or line break ("...")'


def locate_bad_utf8(path: Path) -> str:
    return locate_bad_text(path, UTF8)


def locate_bad_text(path: Path, decoding: Decoding, decrypt: Decrypt | None = None) -> str:
    """Line and column of the first byte that does not decode, for a message the sender can act
    on; for a UTF-8 tenant also the encoding the file most likely is, and the key that accepts it."""
    found = _first_bad_byte(path, decoding, decrypt)
    codec = encoding_name(decoding.encoding)
    if found is None:
        return f"the file is not valid {codec}; save the file as CSV UTF-8 and upload it again"
    line, col, bad, sample = found
    where = (
        f"byte 0x{bad:02X} on line {line}, column {col} is not valid {'UTF-8' if codec == 'utf-8' else codec}"
    )
    if codec != "utf-8":
        return f"{where} (the encoding set in {decoding.key}); check encoding there, or save the file as CSV UTF-8"
    guess = guess_encoding(sample)
    if guess is None:
        return (
            f"{where} (the file looks like it was saved in a legacy encoding such as Windows-1252); "
            "save the file as CSV UTF-8 and upload it again"
        )
    return (
        f"{where}: the file looks like {guess}; if the HRIS always writes that, set "
        f'encoding = "{guess}" in {decoding.key}, otherwise save the file as CSV UTF-8 and upload it again'
    )


def guess_encoding(sample: bytes) -> str | None:
    """The likeliest codec of ``sample`` (charset-normalizer), None when it cannot tell.

    Only the codecs HR exports are really written in are considered, and of the ones that read
    the sample identically the commonest is named: a short Western sample reads the same in
    cp1250 and cp1252, and the file is far more likely to be the latter."""
    from charset_normalizer import from_bytes  # only ever needed for a broken file

    best = from_bytes(sample, cp_isolation=["ascii", "utf_8", *_LIKELY_CODECS]).best()
    if best is None or best.encoding in ("utf_8", "ascii"):
        return None
    same = best.could_be_from_charset
    return encoding_name(next((c for c in _LIKELY_CODECS if c in same), best.encoding))


def _first_bad_byte(
    path: Path, decoding: Decoding, decrypt: Decrypt | None
) -> tuple[int, int, int, bytes] | None:
    """(line, column, byte, the bytes around it) of the first undecodable byte, or None."""
    with open_binary(path, decrypt) as binary:
        codec = _codec(binary, decoding)
        decoder = codecs.getincrementaldecoder(codec)()
        line, col, prev_cr, first = 1, 0, False, True
        while True:
            chunk = binary.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                text = exc.object[: exc.start].decode(codec, errors="replace")
                if first:
                    text = text.removeprefix("\ufeff")
                line, col, prev_cr = _advance(text, line, col, prev_cr)
                sample = chunk + binary.read(_CHUNK * 3)
                return line, col + 1, exc.object[exc.start], sample
            if first:
                text = text.removeprefix("\ufeff")
            line, col, prev_cr = _advance(text, line, col, prev_cr)
            first = False
            if not chunk:
                return None


def _advance(text: str, line: int, col: int, prev_cr: bool) -> tuple[int, int, bool]:
    for ch in text:
        if ch == "\n":
            if not prev_cr:
                line += 1
            col, prev_cr = 0, False
        elif ch == "\r":
            line, col, prev_cr = line + 1, 0, True
        else:
            col, prev_cr = col + 1, False
    return line, col, prev_cr
