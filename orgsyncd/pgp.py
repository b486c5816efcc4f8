"""PGP-encrypted rosters, decrypted as a stream with the tenant's key.

python-gnupg drives Debian's ``gpg`` (package ``gnupg``): the encrypted file is piped into gpg
and the plaintext comes back through a bounded queue, so neither is ever whole in memory and the
plaintext never touches the disk. gpg checks the signature only once the whole message has gone
through, so the end of the stream is where a bad signature or damaged file raises; by then the
rows are only staged, and a file-level error applies nothing.

Each job gets a private GnuPG home (a temporary directory) holding the tenant's private key and
the signer's public key, removed with its gpg-agent when the job ends.
"""

from __future__ import annotations

import contextlib
import io
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from orgsyncd.errors import FileRejected

_CHUNK = 1 << 16
_QUEUE_CHUNKS = 32  # at most 2 MiB of plaintext in flight
_EOF = object()
_INSTALL = "gpg is not installed on this server (Debian/Ubuntu: apt-get install gnupg)"


def gpg_binary() -> str | None:
    return shutil.which("gpg")


@dataclass(frozen=True, slots=True)
class PgpKeys:
    """A tenant's PGP configuration, with the names of its keys for messages."""

    key: str  # e.g. [tenants.acme]
    private_key: Path | None
    passphrase_file: Path | None
    signer_key: Path | None


class Keyring:
    """The tenant's keys in a private GnuPG home, for the jobs of one run. Set up on first use."""

    def __init__(self, keys: PgpKeys) -> None:
        self.keys = keys
        self.home: Path | None = None
        self.passphrase: str | None = None
        self.signers: frozenset[str] = frozenset()

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.home is None:
            return
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run(
                [gpgconf, "--homedir", str(self.home), "--kill", "all"], capture_output=True, check=False
            )
        shutil.rmtree(self.home, ignore_errors=True)
        self.home = None

    @contextlib.contextmanager
    def decrypt(self, encrypted: BinaryIO) -> Iterator[BinaryIO]:
        """The plaintext of ``encrypted``, streamed; the end of the stream raises FileRejected if
        decryption or the required signature failed."""
        gpg = self._gpg()
        plain = _Plaintext(lambda on_data: self._run(gpg, encrypted, on_data), self._check)
        with io.BufferedReader(plain, buffer_size=_CHUNK) as stream:
            yield stream

    # -- keys ------------------------------------------------------------------------------------

    def _gpg(self) -> Any:
        import gnupg  # only tenants with PGP need it

        if self.home is None:
            self._setup(gnupg)
        gpg = gnupg.GPG(gnupghome=str(self.home))
        gpg.buffer_size = _CHUNK
        return gpg

    def _setup(self, gnupg: Any) -> None:
        keys = self.keys
        if keys.private_key is None:
            raise _failed(
                f"the file is PGP-encrypted but this tenant has no pgp_private_key; set it in {keys.key} "
                "to the private key whose public key the HRIS encrypts to"
            )
        if gpg_binary() is None:
            raise _failed(_INSTALL)
        self.home = Path(tempfile.mkdtemp(prefix="orgsyncd-gpg-"))
        gpg = gnupg.GPG(gnupghome=str(self.home))
        self.passphrase = _read_passphrase(keys)
        imported = gpg.import_keys(
            _read_key(keys.private_key, "pgp_private_key", keys), passphrase=self.passphrase
        )
        if not getattr(imported, "sec_imported", 0) and not gpg.list_keys(secret=True):
            raise _failed(f"pgp_private_key {keys.private_key} holds no private key (check {keys.key})")
        if keys.signer_key is not None:
            signer = gpg.import_keys(_read_key(keys.signer_key, "pgp_signer_key", keys))
            self.signers = frozenset(fp.upper() for fp in signer.fingerprints if fp)
            if not self.signers:
                raise _failed(f"pgp_signer_key {keys.signer_key} holds no public key (check {keys.key})")

    # -- one decryption ------------------------------------------------------------------------

    def _run(self, gpg: Any, encrypted: BinaryIO, on_data: Callable[[bytes], bool]) -> Any:
        gpg.on_data = on_data
        return gpg.decrypt_file(encrypted, passphrase=self.passphrase, always_trust=True)

    def _check(self, result: Any) -> None:
        if not result.ok:
            raise _failed(_why(result, self.keys))
        if self.keys.signer_key is None:
            return
        signer = (result.pubkey_fingerprint or result.fingerprint or "").upper()
        if not result.valid or signer not in self.signers:
            raise FileRejected(
                "signature_invalid",
                f"{_signature_problem(result, signer)}; {self.keys.key} requires a valid signature by "
                f"pgp_signer_key {self.keys.signer_key}: sign the file with that key (gpg --sign --encrypt)",
            )


def check_keys(keys: PgpKeys) -> str | None:
    """Why this tenant's PGP keys would not work (None: they load), for ``tenants check``."""
    try:
        with Keyring(keys) as keyring:
            keyring._gpg()
    except FileRejected as exc:
        return exc.message
    return None


class _Plaintext(io.RawIOBase):
    """gpg's output as a readable stream: python-gnupg pushes chunks from its reader thread into a
    bounded queue (which holds gpg back when full); ``readinto`` takes them off."""

    def __init__(self, start: Callable[[Callable[[bytes], bool]], Any], check: Callable[[Any], None]) -> None:
        super().__init__()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._cancelled = threading.Event()
        self._pending = memoryview(b"")
        self._check = check
        self._finished = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(start,), name="gpg-decrypt", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._finished:
                return 0
            item = self._queue.get()
            if item is _EOF:
                self._end()
                return 0
            self._pending = memoryview(item)  # type: ignore[arg-type]
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._cancelled.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join()
        super().close()

    def _end(self) -> None:
        self._finished = True
        self._thread.join()
        if self._error is not None:
            raise _failed(f"gpg could not be run ({type(self._error).__name__}: {self._error})")
        self._check(self._result)

    def _work(self, start: Callable[[Callable[[bytes], bool]], Any]) -> None:
        try:
            self._result = start(self._push)
        except BaseException as exc:
            self._error = exc
        finally:
            self._offer(_EOF)

    def _push(self, data: bytes) -> bool:
        if data:
            self._offer(data)
        return False  # python-gnupg must not keep its own copy of the plaintext

    def _offer(self, item: object) -> None:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


def _read_key(path: Path, name: str, keys: PgpKeys) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _failed(f"{name} {path} cannot be read ({exc.strerror}); check {keys.key}") from None


def _read_passphrase(keys: PgpKeys) -> str | None:
    if keys.passphrase_file is None:
        return None
    try:
        return keys.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise _failed(
            f"pgp_passphrase_file {keys.passphrase_file} cannot be read ({exc.strerror}); check {keys.key}"
        ) from None


def _why(result: Any, keys: PgpKeys) -> str:
    status = (result.status or "").strip()
    if status == "no secret key":
        return (
            "the file is not encrypted to this tenant's key (gpg: no secret key); the HRIS must encrypt "
            f"to the public key of {keys.key} pgp_private_key"
        )
    if status in ("bad passphrase", "missing passphrase"):
        return f"the passphrase does not unlock pgp_private_key ({status}); check pgp_passphrase_file in {keys.key}"
    if status in ("", "no data was provided") and result.valid:
        return "the file is signed but not encrypted; encrypt it to this tenant's public key"
    detail = status or "gpg found no encrypted data"
    locked = "ERROR pkdecrypt_failed" in (result.stderr or "")  # the key is there but stays locked
    if locked and keys.passphrase_file is None:
        return (
            f"the file could not be decrypted ({detail}): pgp_private_key needs its passphrase; "
            f"set pgp_passphrase_file in {keys.key}"
        )
    return f"the file could not be decrypted ({detail}); it may be damaged or not a PGP file: send it again"


def _signature_problem(result: Any, signer: str) -> str:
    if not signer and not result.valid:
        return "the file is not signed, or not by a key this tenant knows"
    if not result.valid:
        return f"the signature is not valid ({result.status or 'bad signature'})"
    return f"the file is signed by another key ({signer})"


def _failed(message: str) -> FileRejected:
    return FileRejected("decryption_failed", message)
