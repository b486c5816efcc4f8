"""Typed settings: a TOML file, overridden by ``ORGSYNCD_<SECTION>__<KEY>`` environment variables.

Built once at the edge (CLI / daemon start) and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orgsyncd.core import formats
from orgsyncd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/orgsyncd/orgsyncd.toml")
DEFAULT_DATA_DIR = Path("./var/orgsyncd")
DEMO_LICENSE = "default_license_learning_proalllanguages"

_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LICENSE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,120}$")
_SECTIONS = ("daemon", "sftp", "metrics", "notify", "tenants")
NotifyEventName = Literal[
    "failed", "held", "partially_succeeded", "approved", "rejected", "reverted", "silent"
]
NOTIFY_EVENTS: tuple[NotifyEventName, ...] = get_args(NotifyEventName)
_ENV_PREFIX = "ORGSYNCD_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonConfig(_Section):
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    timezone: str = "UTC"
    hourly_cron: str = "0 * * * *"
    daily_cron: str = "0 2 * * *"
    daily_threshold_bytes: int = Field(default=50 * 1024 * 1024, ge=0)
    max_roster_bytes: int = Field(default=2 * 1024**3, gt=0)
    retention_days: int = Field(default=90, ge=1)
    rescan_interval_s: float = Field(default=30.0, gt=0)
    misfire_grace_s: int = Field(default=3600, ge=1)
    instance_name: str | None = None
    lease_s: float = Field(default=60.0, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("hourly_cron", "daily_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # The scheduler's own parser, so whatever loads here also schedules (lazy: it imports us).
        from orgsyncd.scheduler import crontab_trigger

        crontab_trigger(value, "UTC")
        return value

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'orgsyncd.db'}"


class SftpConfig(_Section):
    listen: str = "127.0.0.1:2222"
    host_key: Path | None = None
    max_file_bytes: int = Field(default=2 * 1024**3, gt=0)
    login_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=600.0, gt=0)
    max_auth_failures_per_ip: int = Field(default=10, ge=1)
    ban_s: float = Field(default=900.0, ge=0)
    max_sessions_per_tenant: int = Field(default=8, ge=1)
    resume_window_s: float = Field(default=3600.0, ge=0)
    upload_buffer_bytes: int = Field(default=64 * 1024**2, ge=1024**2)
    max_connections: int = Field(default=1000, ge=0)
    max_connections_per_address: int = Field(default=50, ge=0)
    max_startups: int = Field(default=500, ge=0)
    max_startups_per_address: int = Field(default=20, ge=0)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class MetricsConfig(_Section):
    enabled: bool = True
    listen: str = "127.0.0.1:9464"


def _check_webhook_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _check_notify_urls(value: list[str] | None) -> list[str] | None:
    # Apprise itself checks them at start (it is slow to import); here only their shape, and
    # without echoing a URL, which may carry a password.
    for i, url in enumerate(value or ()):
        if not re.match(r"^[a-z][a-z0-9+.-]*://", url):
            raise ValueError(f"entry {i + 1} is not an Apprise URL (scheme://...)")
    return value


class NotifyConfig(_Section):
    webhook_url: str | None = None
    webhook_secret_file: Path | None = None
    urls: list[str] = Field(default_factory=list)
    events: list[NotifyEventName] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    silent_after_h: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    retry_base_s: float = Field(default=30.0, gt=0)
    retry_max_s: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=12, ge=1)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _check_webhook_url(value)

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        _check_notify_urls(value)
        return value


class TenantConfig(_Section):
    authorized_keys: Path | None = None
    password_hash: str | None = None
    sync_mode: Literal["delta", "full"] = "delta"
    cadence: Literal["hourly", "daily"] = "hourly"
    licenses: dict[str, int] = Field(default_factory=dict)
    default_license: str | None = None
    inactive_group: str | None = None
    max_deactivation_ratio: float = Field(default=0.10, ge=0, le=1)
    max_deactivations: int | None = Field(default=None, ge=0)
    deactivate_after_missing_runs: int = Field(default=1, ge=1)
    hold_on_header_change: bool = False
    hold_stale_files: bool = False
    sftp_approval: bool = False
    strict_headers: bool = False
    blank_means: Literal["unchanged", "clear", "error"] = "unchanged"
    # The tenant's own file format (docs/tenant-formats.md).
    delimiter: str = ","
    encoding: str = "utf-8"
    columns: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    groups_from: list[str] = Field(default_factory=list)
    ignore_columns: list[str] = Field(default_factory=list)
    require_encryption: bool = False
    pgp_private_key: Path | None = None
    pgp_passphrase_file: Path | None = None
    pgp_signer_key: Path | None = None

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        return formats.check_delimiter(value)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        return formats.check_encoding(value)

    @model_validator(mode="after")
    def _mapping_valid(self) -> TenantConfig:
        formats.check_names(self.columns, self.groups_from, self.ignore_columns)
        formats.check_columns(self.columns, self.license_types)
        formats.check_values(self.values, self.columns, self.license_types)
        if self.pgp_passphrase_file is not None and self.pgp_private_key is None:
            raise ValueError("pgp_passphrase_file is set but pgp_private_key is not")
        return self

    # Notifications of this tenant's events: each, when set, replaces the [notify] value.
    notify_urls: list[str] | None = None
    webhook_url: str | None = None
    silent_after_h: float | None = Field(default=None, gt=0)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _check_webhook_url(value)

    @field_validator("notify_urls")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        return _check_notify_urls(value)

    @field_validator("licenses")
    @classmethod
    def _license_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name, seats in value.items():
            if not _LICENSE_NAME.match(name):
                raise ValueError(f"license type {name!r}: use lower-case letters, digits and _")
            if seats < 0:
                raise ValueError(f"license type {name!r}: seats must be >= 0 (0 = unlimited)")
        return value

    @model_validator(mode="after")
    def _default_license_known(self) -> TenantConfig:
        if self.default_license is None and len(self.licenses) == 1:
            object.__setattr__(self, "default_license", next(iter(self.licenses)))
        if self.default_license is not None and self.default_license not in self.licenses:
            raise ValueError(
                f"default_license {self.default_license!r} is not one of licenses "
                f"({', '.join(sorted(self.licenses)) or 'none configured'})"
            )
        return self

    @property
    def license_types(self) -> list[str]:
        return sorted(self.licenses)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORGSYNCD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    sftp: SftpConfig = Field(default_factory=SftpConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    source: str = Field(default="built-in defaults", exclude=True)

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantConfig]) -> dict[str, TenantConfig]:
        for name in value:
            if not _TENANT_NAME.match(name):
                raise ValueError(
                    f"tenant name {name!r}: use 1-63 lower-case letters, digits, '-' or '_' "
                    "(it is the SFTP login and a directory name)"
                )
        return value

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        hooked = [name for name, t in sorted(self.tenants.items()) if t.webhook_url]
        if (self.notify.webhook_url or hooked) and self.notify.webhook_secret_file is None:
            where = "notify.webhook_url" if self.notify.webhook_url else f"tenants.{hooked[0]}.webhook_url"
            raise ValueError(
                f"{where} is set but notify.webhook_secret_file is not; webhooks are always signed"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which is handed in as init data.
        return (env_settings, init_settings)

    def tenant(self, name: str) -> TenantConfig:
        try:
            return self.tenants[name]
        except KeyError:
            known = ", ".join(sorted(self.tenants)) or "none"
            raise ConfigError(f"unknown tenant {name!r} (configured: {known})") from None


def demo_defaults() -> dict[str, Any]:
    """What a newcomer gets with no config at all: SQLite under ./var/orgsyncd and a demo tenant."""
    return {
        "tenants": {
            "demo": {
                "authorized_keys": str(DEFAULT_DATA_DIR / "keys" / "demo.pub"),
                "licenses": {DEMO_LICENSE: 100},
                "default_license": DEMO_LICENSE,
                "inactive_group": "Inactive Learners",
            }
        }
    }


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("ORGSYNCD_CONFIG")
    if from_env:
        return Path(from_env)
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Read, merge and validate the configuration once; raise ConfigError with the bad key named."""
    _check_environment()
    path = resolve_config_path(explicit)
    if path is None:
        data, source = demo_defaults(), "built-in defaults"
    else:
        data, source = _read_toml(path), str(path)
    try:
        return Settings(**data, source=source)
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = _variable_for(first["loc"])  # the environment wins over the file
        origin = f"environment variable {variable}" if variable else source
        raise ConfigError(f"{origin}: {_describe(exc)}") from None


def _variable_for(loc: tuple[int | str, ...]) -> str | None:
    """The ORGSYNCD_ variable that set the key at *loc*, if one did."""
    path = [str(part).lower() for part in loc]
    for name in os.environ:
        parts = name[len(_ENV_PREFIX) :].lower().split("__") if name.upper().startswith(_ENV_PREFIX) else []
        if len(parts) > 1 and parts == path[: len(parts)]:
            return name
    return None


def _check_environment() -> None:
    """pydantic-settings ignores ORGSYNCD_X__Y when X is no section; a typo must not pass silently."""
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or "__" not in upper:
            continue
        section = upper[len(_ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in _SECTIONS:
            raise ConfigError(
                f"environment variable {name}: unknown section {section!r} (sections: {', '.join(_SECTIONS)})"
            )


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """``; did you mean 'database_url'?`` for a misspelt key, from the keys of its section."""
    *parents, key = (str(part) for part in loc)
    model: type[BaseModel] = Settings
    for part in parents:
        field = model.model_fields.get(part)
        if field is None:  # a tenant's name, inside `tenants`
            continue
        inner = field.annotation
        if typing.get_origin(inner) is dict:
            inner = typing.get_args(inner)[1]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return ""
        model = inner
    known = [name for name, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(key.lower(), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown key {key!r}{_did_you_mean(first['loc'])}"
    message = first["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{key}: {message}{suffix}"
