"""PGP-encrypted rosters, with key pairs made here for the tests (never keys from anywhere else):
decryption with the tenant's key, the required signature, require_encryption, and each failure."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Env, roster

gnupg = pytest.importorskip("gnupg")
if shutil.which("gpg") is None:  # pragma: no cover - the test setup installs it
    subprocess.run(["apt-get", "install", "-y", "-q", "gnupg"], capture_output=True, check=False)
pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg (Debian: gnupg) is not installed")

PASSPHRASE = "correct horse battery staple"
TEXT = roster(
    ["primary_email_address", "preferred_first_name"], [["ann@example.com", "Ann"], ["bo@example.com", "Bo"]]
)


@dataclass(frozen=True)
class Party:
    fingerprint: str
    public: Path
    secret: Path


@dataclass(frozen=True)
class Keys:
    """The HRIS (signs), orgsyncd's tenant key (decrypts), and a stranger whose key has a
    passphrase (unlocking one costs a slow key derivation every time, so only one test pays)."""

    gpg: Any  # the HRIS side's keyring: encrypts and signs
    hris: Party
    tenant: Party
    stranger: Party
    passphrase_file: Path

    def encrypt(
        self, data: bytes, *, to: Party | None = None, sign: Party | None = None, armor: bool = False
    ) -> bytes:
        result = self.gpg.encrypt(
            data,
            [(to or self.tenant).fingerprint],
            sign=sign.fingerprint if sign else None,
            passphrase=PASSPHRASE if sign is self.stranger else None,
            always_trust=True,
            armor=armor,
        )
        assert result.ok, result.status
        return bytes(result.data)


def _party(gpg: Any, directory: Path, name: str, passphrase: str | None) -> Party:
    protection = {"passphrase": passphrase} if passphrase else {"no_protection": True}
    spec = gpg.gen_key_input(
        name_email=f"{name}@example.com", key_type="EDDSA", key_curve="ed25519",
        subkey_type="ECDH", subkey_curve="cv25519", **protection,
    )  # fmt: skip
    fingerprint = gpg.gen_key(spec).fingerprint
    assert fingerprint, f"gpg could not make a key for {name}"
    public, secret = directory / f"{name}.pub.asc", directory / f"{name}.sec.asc"
    public.write_text(gpg.export_keys(fingerprint))
    secret.write_text(
        gpg.export_keys(
            fingerprint, secret=True, passphrase=passphrase or "", expect_passphrase=bool(passphrase)
        )
    )
    return Party(fingerprint, public, secret)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    directory = tmp_path_factory.mktemp("pgp")
    home = directory / "hris-home"
    home.mkdir(mode=0o700)
    gpg = gnupg.GPG(gnupghome=str(home))
    passphrase_file = directory / "tenant.pass"
    passphrase_file.write_text(PASSPHRASE + "\n")
    made = Keys(
        gpg,
        hris=_party(gpg, directory, "hris", None),
        tenant=_party(gpg, directory, "tenant", None),
        stranger=_party(gpg, directory, "stranger", PASSPHRASE),
        passphrase_file=passphrase_file,
    )
    yield made
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """Decryption happens before the database sees a row: one backend is enough here."""
    return f"sqlite:///{tmp_path / 'orgsyncd.db'}"


def configure(env: Env, keys: Keys, *, signed: bool = True, **extra: Any) -> None:
    cfg: dict[str, Any] = {"pgp_private_key": str(keys.tenant.secret), **extra}
    if signed:
        cfg["pgp_signer_key"] = str(keys.hris.public)
    env.reconfigure(**cfg)


def error(env: Env, summary: Any) -> tuple[str, str]:
    data = env.summary_json(summary)["error"]
    return data["code"], data["message"]


def count(env: Env) -> int:
    return env.service.learners.count(env.service.jobs.tenant_id(env.tenant))


def test_a_signed_encrypted_file_imports_and_the_archive_keeps_it_encrypted(env: Env, keys: Keys) -> None:
    configure(env, keys, require_encryption=True)
    encrypted = keys.encrypt(TEXT.encode(), sign=keys.hris)
    summary = env.run_bytes(encrypted, "roster.csv.pgp")
    assert summary.status == "succeeded", env.results_text(summary)
    assert env.results_text(summary).splitlines()[1] == '2,created,,,"ann@example.com","Ann"'
    [archived] = env.dirs.archive.iterdir()
    assert (archived.name, archived.read_bytes()) == (f"roster.{summary.job_id}.csv.pgp", encrypted)
    spooled = [p for p in env.dirs.spool.rglob("*") if p.is_file()]
    assert not any(b"ann@example.com" in p.read_bytes() for p in [*spooled, archived])  # no plaintext left


@pytest.mark.parametrize(
    ("name", "armor", "gz"),
    [("r.csv.asc", True, False), ("r.csv.gpg", False, False), ("r.csv.gz.pgp", False, True)],
)
def test_armored_binary_and_gzipped_payloads(env: Env, keys: Keys, name: str, armor: bool, gz: bool) -> None:
    configure(env, keys, signed=False)
    data = gzip.compress(TEXT.encode()) if gz else TEXT.encode()
    summary = env.run_bytes(keys.encrypt(data, armor=armor), name)
    assert summary.status == "succeeded", env.results_text(summary)
    assert count(env) == 2


def test_a_private_key_with_a_passphrase_file(env: Env, keys: Keys) -> None:
    configure(env, keys, signed=False, pgp_private_key=str(keys.stranger.secret))
    code, message = error(env, env.run_bytes(keys.encrypt(TEXT.encode(), to=keys.stranger), "a.csv.pgp"))
    assert code == "decryption_failed" and "pgp_passphrase_file" in message  # locked, no passphrase
    env.reconfigure(pgp_passphrase_file=str(keys.passphrase_file))
    summary = env.run_bytes(keys.encrypt(TEXT.encode() + b"\n", to=keys.stranger), "b.csv.pgp")
    assert summary.status == "succeeded", env.results_text(summary)


def test_require_encryption_refuses_a_plaintext_file(env: Env, keys: Keys) -> None:
    configure(env, keys, require_encryption=True)
    code, message = error(env, env.run(TEXT, name="plain.csv"))
    assert code == "encryption_required" and "require_encryption" in message
    assert count(env) == 0


def test_a_pgp_file_for_a_tenant_without_a_key_says_so(env: Env, keys: Keys) -> None:
    code, message = error(env, env.run_bytes(keys.encrypt(TEXT.encode()), "roster.csv.pgp"))
    assert code == "decryption_failed" and "no pgp_private_key" in message
    assert f"[tenants.{env.tenant}]" in message


def test_the_wrong_key_or_a_damaged_file_is_decryption_failed(env: Env, keys: Keys) -> None:
    configure(env, keys, signed=False)
    code, message = error(env, env.run_bytes(keys.encrypt(TEXT.encode(), to=keys.stranger), "other.csv.pgp"))
    assert code == "decryption_failed" and "not encrypted to this tenant's key" in message
    whole = keys.encrypt((TEXT * 200).encode())
    code, message = error(env, env.run_bytes(whole[: len(whole) // 2], "cut.csv.pgp"))
    assert code == "decryption_failed" and "damaged" in message
    code, _ = error(env, env.run_bytes(b"this is not pgp at all\n", "junk.csv.asc"))
    assert code == "decryption_failed"
    assert count(env) == 0


@pytest.mark.parametrize("signer", [None, "stranger"])
def test_a_missing_or_foreign_signature_is_signature_invalid(
    env: Env, keys: Keys, signer: str | None
) -> None:
    configure(env, keys)
    sign = keys.stranger if signer else None
    code, message = error(env, env.run_bytes(keys.encrypt(TEXT.encode(), sign=sign), "roster.csv.pgp"))
    assert code == "signature_invalid" and "pgp_signer_key" in message
    assert count(env) == 0  # the rows were read before gpg judged the signature; none applied


def test_tenants_check_loads_the_keys_and_names_a_wrong_one(env: Env, keys: Keys) -> None:
    from orgsyncd.checks import check_tenants

    configure(env, keys)
    report = check_tenants(env.settings())
    assert any("pgp_private_key and pgp_signer_key load" in note for note in report.notes), report
    env.reconfigure(pgp_private_key=str(keys.hris.public))  # a public key where the private one goes
    problems = [p for p in check_tenants(env.settings()).errors if "pgp" in p]
    assert len(problems) == 1 and "holds no private key" in problems[0], problems
