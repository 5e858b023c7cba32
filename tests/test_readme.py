"""The README shows what the code does: its diagram is the declared machine's."""

from __future__ import annotations

import contextlib
import io
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


def test_the_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it writes breakers.db in the current folder
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README.md", "exec"), {"__name__": "readme"})
    lines = printed.getvalue().splitlines()
    assert lines[:5] == [
        "attempt 0: failed",
        "attempt 1: failed",
        "attempt 2: failed",
        "attempt 3: skipped, retry in 10 s",
        "attempt 4: skipped, retry in 10 s",
    ]
    assert lines[5] == "open"
    assert "from_state=<CircuitState.OPEN: 'open'>" in lines[-1]  # the reset's transition
