"""orgsyncd.config: defaults, the TOML file, environment overrides and the errors a user sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from orgsyncd import config
from orgsyncd.config import DEMO_LICENSE, load_settings, resolve_config_path
from orgsyncd.errors import ConfigError


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ORGSYNCD_* variable from outside, no /etc config, cwd in a scratch directory."""
    for name in list(os.environ):
        if name.upper().startswith("ORGSYNCD_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "orgsyncd.toml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def toml(tmp_path: Path, text: str, name: str = "orgsyncd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.code == "config_error"
    assert info.value.exit_code == 2
    return info.value.message


BASIC = """
[daemon]
data_dir = "/srv/orgsyncd"
retention_days = 30
timezone = "Europe/Berlin"

[tenants.acme]
licenses = { default_license_learning_proalllanguages = 50, coach = 5 }
default_license = "default_license_learning_proalllanguages"
sync_mode = "delta"
strict_headers = true
blank_means = "clear"
"""


# -- defaults --------------------------------------------------------------------------------


def test_defaults_without_any_file() -> None:
    settings = load_settings()
    assert settings.source == "built-in defaults"
    assert settings.daemon.data_dir == Path("var/orgsyncd")
    assert settings.daemon.db_url == "sqlite:///var/orgsyncd/orgsyncd.db"
    assert settings.daemon.timezone == "UTC"
    assert settings.daemon.retention_days == 90
    assert settings.sftp.listen == "127.0.0.1:2222"
    assert list(settings.tenants) == ["demo"]
    demo = settings.tenant("demo")
    assert demo.licenses == {DEMO_LICENSE: 100}
    assert demo.default_license == DEMO_LICENSE
    assert demo.sync_mode == "delta"
    assert demo.blank_means == "unchanged"
    assert demo.strict_headers is False
    assert demo.max_deactivation_ratio == pytest.approx(0.10)
    assert demo.inactive_group == "Inactive Learners"


def test_unknown_tenant_is_a_config_error() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match=r"unknown tenant 'nope' \(configured: demo\)"):
        settings.tenant("nope")


def test_no_path_anywhere_resolves_to_none() -> None:
    assert resolve_config_path(None) is None


def test_the_etc_file_is_used_when_present(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = toml(isolated, "[daemon]\nretention_days = 7\n", name="etc.toml")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", etc)
    assert resolve_config_path(None) == etc
    assert load_settings().daemon.retention_days == 7


# -- the file --------------------------------------------------------------------------------


def test_toml_file(isolated: Path) -> None:
    path = toml(isolated, BASIC)
    settings = load_settings(path)
    assert settings.source == str(path)
    assert settings.daemon.data_dir == Path("/srv/orgsyncd")
    assert settings.daemon.db_url == "sqlite:////srv/orgsyncd/orgsyncd.db"
    assert settings.daemon.retention_days == 30
    assert settings.daemon.timezone == "Europe/Berlin"
    assert list(settings.tenants) == ["acme"]  # a file replaces the demo tenant
    acme = settings.tenant("acme")
    assert acme.license_types == ["coach", DEMO_LICENSE]
    assert acme.default_license == DEMO_LICENSE
    assert acme.strict_headers is True
    assert acme.blank_means == "clear"


def test_config_path_from_the_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(isolated, BASIC, name="from-env.toml")
    monkeypatch.setenv("ORGSYNCD_CONFIG", str(path))
    settings = load_settings()
    assert settings.source == str(path)
    assert settings.daemon.retention_days == 30


def test_explicit_path_beats_the_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_CONFIG", str(toml(isolated, BASIC, name="env.toml")))
    explicit = toml(isolated, "[daemon]\nretention_days = 3\n", name="explicit.toml")
    assert load_settings(explicit).daemon.retention_days == 3


def test_database_url_wins_over_data_dir(isolated: Path) -> None:
    path = toml(isolated, '[daemon]\ndatabase_url = "postgresql://u@h/db"\n')
    assert load_settings(path).daemon.db_url == "postgresql://u@h/db"


def test_single_license_becomes_the_default(isolated: Path) -> None:
    path = toml(isolated, "[tenants.acme]\nlicenses = { gold = 10 }\n")
    assert load_settings(path).tenant("acme").default_license == "gold"


def test_several_licenses_without_default_have_none(isolated: Path) -> None:
    path = toml(isolated, "[tenants.acme]\nlicenses = { gold = 10, silver = 3 }\n")
    assert load_settings(path).tenant("acme").default_license is None


# -- environment overrides -------------------------------------------------------------------


def test_environment_beats_the_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(isolated, BASIC.replace("[tenants.acme]", "[tenants.demo]"))
    monkeypatch.setenv("ORGSYNCD_DAEMON__RETENTION_DAYS", "5")
    monkeypatch.setenv("ORGSYNCD_TENANTS__DEMO__SYNC_MODE", "full")
    settings = load_settings(path)
    assert settings.daemon.retention_days == 5
    demo = settings.tenant("demo")
    assert demo.sync_mode == "full"
    # the rest of the file survives the override (deep merge, not replace)
    assert settings.daemon.timezone == "Europe/Berlin"
    assert demo.licenses == {DEMO_LICENSE: 50, "coach": 5}
    assert demo.blank_means == "clear"


def test_environment_overrides_the_built_in_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_DAEMON__RETENTION_DAYS", "5")
    monkeypatch.setenv("ORGSYNCD_TENANTS__DEMO__SYNC_MODE", "full")
    settings = load_settings()
    assert settings.daemon.retention_days == 5
    assert settings.tenant("demo").sync_mode == "full"
    assert settings.tenant("demo").licenses == {DEMO_LICENSE: 100}


def test_bad_environment_value_names_the_key(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_DAEMON__RETENTION_DAYS", "soon")
    message = error_of()
    assert "daemon.retention_days" in message
    assert "integer" in message


def test_unknown_environment_key_names_the_dotted_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_DAEMON__RETENTON_DAYS", "5")
    assert "unknown key 'daemon.retenton_days'" in error_of()


def test_a_misspelt_environment_variable_is_named(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_DAEMON__DATABSE_URL", "postgresql://db/x")
    assert error_of() == (
        "environment variable ORGSYNCD_DAEMON__DATABSE_URL: unknown key 'daemon.databse_url'; "
        "did you mean 'database_url'?"
    )
    path = toml(isolated, BASIC)  # also over a file: the variable, not the file, is at fault
    assert error_of(path).startswith("environment variable ORGSYNCD_DAEMON__DATABSE_URL: ")


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_SFTP__LISTEN", "everywhere")
    assert (
        error_of() == "environment variable ORGSYNCD_SFTP__LISTEN: sftp.listen: 'everywhere' is not HOST:PORT"
    )


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[daemon]\nretenton_days = 5\n", "; did you mean 'retention_days'?"),
        ("[tenants.acme]\nsyncmode = 'full'\n", "; did you mean 'sync_mode'?"),
        ("[deamon]\nretention_days = 5\n", "; did you mean 'daemon'?"),
        ("verbose = true\n", ""),
    ],
)
def test_a_misspelt_key_in_the_file_gets_a_suggestion(isolated: Path, text: str, hint: str) -> None:
    path = toml(isolated, text)
    message = error_of(path)
    assert message.startswith(f"{path}: unknown key ")
    assert message.endswith(hint) if hint else "did you mean" not in message


def test_unknown_environment_tenant_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_TENANTS__DEMO__SYNCMODE", "full")
    assert "unknown key 'tenants.demo.syncmode'" in error_of()


def test_unknown_environment_section_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_DEAMON__RETENTION_DAYS", "5")
    assert "deamon" in error_of()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[daemon]\nretenton_days = 5\n", "daemon.retenton_days"),
        ("[sftp]\nport = 22\n", "sftp.port"),
        ("[tenants.acme]\nlicences = { gold = 1 }\n", "tenants.acme.licences"),
        ("[deamon]\nretention_days = 5\n", "deamon"),
        ("verbose = true\n", "verbose"),
    ],
)
def test_unknown_key_names_the_dotted_key(isolated: Path, text: str, key: str) -> None:
    path = toml(isolated, text)
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert f"unknown key {key!r}" in message


def test_invalid_toml(isolated: Path) -> None:
    path = toml(isolated, "[daemon\nretention_days = 5\n")
    message = error_of(path)
    assert f"config file {path} is not valid TOML" in message
    assert "line 1" in message


def test_missing_file(isolated: Path) -> None:
    message = error_of(isolated / "nope.toml")
    assert message == f"config file {isolated / 'nope.toml'} does not exist"


def test_missing_file_named_by_the_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_CONFIG", str(isolated / "gone.toml"))
    assert "gone.toml does not exist" in error_of()


@pytest.mark.parametrize("cron", ["* * *", "0 * * * * *", ""])
def test_cron_with_the_wrong_number_of_fields(isolated: Path, cron: str) -> None:
    message = error_of(toml(isolated, f'[daemon]\nhourly_cron = "{cron}"\n'))
    assert "daemon.hourly_cron" in message
    assert "5-field cron expression" in message


@pytest.mark.parametrize("cron", ["61 * * * *", "0 25 * * *", "0 2 1 * 1", "a b c d e"])
def test_cron_the_scheduler_would_refuse_is_a_config_error(isolated: Path, cron: str) -> None:
    message = error_of(toml(isolated, f'[daemon]\ndaily_cron = "{cron}"\n'))
    assert "daemon.daily_cron" in message


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "CEST+2", "../etc/passwd"])
def test_bad_timezone(isolated: Path, zone: str) -> None:
    message = error_of(toml(isolated, f'[daemon]\ntimezone = "{zone}"\n'))
    assert f"daemon.timezone: unknown time zone {zone!r}" in message


@pytest.mark.parametrize("name", ["Acme", "acme corp", "-acme", "a" * 64, "acme/../x", "acmé"])
def test_bad_tenant_name(isolated: Path, name: str) -> None:
    message = error_of(toml(isolated, f'[tenants."{name}"]\n'))
    assert f"tenant name {name!r}" in message
    assert "lower-case" in message


def test_default_license_not_among_licenses(isolated: Path) -> None:
    text = '[tenants.acme]\nlicenses = { gold = 1, silver = 2 }\ndefault_license = "bronze"\n'
    message = error_of(toml(isolated, text))
    assert "tenants.acme" in message
    assert "default_license 'bronze' is not one of licenses (gold, silver)" in message


def test_default_license_without_any_license(isolated: Path) -> None:
    message = error_of(toml(isolated, '[tenants.acme]\ndefault_license = "gold"\n'))
    assert "none configured" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[tenants.acme]\nlicenses = { Gold = 1 }\n", "license type 'Gold'"),
        ("[tenants.acme]\nlicenses = { gold = -1 }\n", "seats must be >= 0"),
        ('[tenants.acme]\nsync_mode = "partial"\n', "tenants.acme.sync_mode"),
        ('[tenants.acme]\nblank_means = "ignore"\n', "tenants.acme.blank_means"),
        ("[tenants.acme]\nmax_deactivation_ratio = 1.5\n", "tenants.acme.max_deactivation_ratio"),
        ("[daemon]\nretention_days = 0\n", "daemon.retention_days"),
        ('[sftp]\nlisten = "2222"\n', "is not HOST:PORT"),
        ('[sftp]\nlisten = "0.0.0.0:99999"\n', "is not HOST:PORT"),
    ],
)
def test_invalid_values_name_the_key(isolated: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(toml(isolated, text))


def test_more_than_one_problem_is_counted(isolated: Path) -> None:
    text = '[daemon]\ntimezone = "Nowhere/Land"\nretention_days = 0\nhourly_cron = "x"\n'
    assert "(and 2 more problems)" in error_of(toml(isolated, text))


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.daemon.retention_days = 1  # type: ignore[misc]
    assert settings.daemon.retention_days == 90


def test_sftp_host_and_port(isolated: Path) -> None:
    settings = load_settings(toml(isolated, '[sftp]\nlisten = "[::1]:2022"\n'))
    assert (settings.sftp.host, settings.sftp.port) == ("::1", 2022)
