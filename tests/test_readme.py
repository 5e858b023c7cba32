"""The README keeps its promises: short, `guard` early, terms explained where first used, its
tables the library's own, its links whole. (tests/test_docs.py runs its blocks.)"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from durable_breaker import CircuitBreakerConfig
from durable_breaker._cli import _COMMANDS
from durable_breaker._machine import mermaid

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def text() -> str:
    if not README.is_file():
        pytest.fail("README.md is missing from the repository root")
    return README.read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _first_column(table: str) -> list[str]:
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([^` ]+)", row)[1] for row in rows]  # type: ignore[index]


def test_the_readme_is_short_and_shows_guard_early(text: str) -> None:
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"
    first = next(i for i, line in enumerate(lines) if "breaker.guard(" in line)
    assert first < 60, f"the first guard() example is on line {first + 1}"
    opening = max(i for i in range(first) if lines[i].startswith("```"))
    assert lines[opening] == "```python", "guard() is first shown outside a python example"


def test_the_readme_diagram_is_the_declared_machine(text: str) -> None:
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block == mermaid()


def test_probe_and_half_open_are_explained_where_first_used(text: str) -> None:
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # (code uses the words as names)
    first_probe = re.search(r"\bprobe", prose, re.IGNORECASE)
    assert first_probe is not None
    assert prose[first_probe.start() - 20 : first_probe.end()].endswith("called *probe")
    first_half_open = re.search(r"half[-_ ]open", prose, re.IGNORECASE)
    assert first_half_open is not None
    assert prose[first_half_open.start() - 2 : first_half_open.end()] == "**Half-open"


def test_the_configuration_table_lists_every_field(text: str) -> None:
    documented = _first_column(_section(text, "Configuration"))
    assert documented == [f.name for f in dataclasses.fields(CircuitBreakerConfig)]


def test_the_command_table_lists_every_command(text: str) -> None:
    documented = _first_column(_section(text, "Command line"))
    assert sorted(documented) == sorted(_COMMANDS)


def _slug(heading: str) -> str:
    """GitHub's (and MkDocs') anchor for a heading, for the headings these pages use."""
    words = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return words.replace(" ", "-")


def test_every_relative_link_of_the_readme_resolves(text: str) -> None:
    links = re.findall(r"\]\((?!https?:)([^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert links
    for target, anchor in links:
        path = ROOT / target
        assert path.is_file(), f"README.md links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, f"{target} has no #{anchor}"


def test_every_docs_page_is_linked_from_the_readme(text: str) -> None:
    pages = {f"docs/{p.relative_to(ROOT / 'docs')}" for p in (ROOT / "docs").rglob("*.md")}
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", text))
    assert pages - {"docs/index.md", "docs/changelog.md"} <= linked


def test_the_licence_is_apache_2_and_says_why(text: str) -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in licence
    assert "Apache-2.0 ([LICENSE](LICENSE))" in _section(text, "License")
    assert "patent grant" in _section(text, "License")
