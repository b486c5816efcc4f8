"""The shipped example config loads, and documents every key the settings model knows."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from orgsyncd.config import DaemonConfig, MetricsConfig, NotifyConfig, SftpConfig, TenantConfig, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "orgsyncd.example.toml"


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    acme = settings.tenant("acme")
    assert acme.licenses == {"default_license_learning_proalllanguages": 500}
    assert settings.daemon.data_dir == Path("/var/lib/orgsyncd")


def test_example_config_mentions_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    models: list[type[BaseModel]] = [DaemonConfig, SftpConfig, MetricsConfig, NotifyConfig, TenantConfig]
    missing = {name for model in models for name in model.model_fields if name not in keys}
    assert missing == set()
