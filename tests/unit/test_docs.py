"""The documentation stays whole: links resolve, every config key and code is described, and
nothing points outside the repository."""

from __future__ import annotations

import re
import subprocess
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from orgsyncd import codes
from orgsyncd.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "deploy" / "README.md"]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_slug(h) for h in _HEADING.findall(text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        inside = dest.exists() and ROOT in (dest, *dest.parents)
        if not inside or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_nothing_points_outside_the_repository() -> None:
    outside = "../" + "shared"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".md", ".py", ".toml", ".txt", ".cfg", ".service", ".sh", ""} and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if outside in text or "/work/" + "shared" in text:
                offenders.append(name)
    assert not offenders, f"these files refer to documents a clone does not have: {offenders}"


def _sections() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for name, info in Settings.model_fields.items():
        if info.exclude:
            continue
        model = info.annotation
        if typing.get_origin(model) is dict:  # tenants: dict[str, TenantConfig]
            model = typing.get_args(model)[1]
            name = f"{name}.NAME"
        assert isinstance(model, type) and issubclass(model, BaseModel), name
        out[name] = model
    return out


def test_every_config_key_is_in_the_operations_guide() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    missing = []
    for section, model in _sections().items():
        heading = f"### `[{section}]`"
        assert heading in text, f"docs/operations.md needs a '{heading}' table"
        body = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        missing += [f"{section}.{key}" for key in model.model_fields if f"| `{key}` |" not in body]
    assert not missing, f"add these keys to the tables in docs/operations.md: {missing}"


def test_every_file_and_row_code_is_in_the_format_page() -> None:
    text = (DOCS / "roster-format.md").read_text(encoding="utf-8").split("\n## Codes", 1)[1]
    missing = [
        code
        for code, entry in codes.CODES.items()
        if entry.scope in (codes.FILE, codes.ROW) and f"| `{code}` |" not in text
    ]
    assert not missing, f"add these codes to the table under '## Codes' in docs/roster-format.md: {missing}"
