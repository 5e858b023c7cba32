"""The README shows what the code does: its diagram is the declared machine's."""

from __future__ import annotations

from pathlib import Path

import pytest

from durable_breaker._machine import mermaid

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_diagram_is_the_declared_machine() -> None:
    if not README.is_file():
        pytest.fail("README.md is missing from the repository root")
    text = README.read_text(encoding="utf-8")
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block == mermaid()
