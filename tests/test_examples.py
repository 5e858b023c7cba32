"""The examples run as their docstrings say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path) -> list[str]:
    """Run examples/`name` on a database of its own; the lines it printed."""
    url = f"sqlite:///{tmp_path / 'example.db'}"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_apscheduler_job_reschedules_itself_while_the_circuit_is_open(tmp_path: Path) -> None:
    lines = run_example("apscheduler_job.py", tmp_path)
    rescheduled = [line for line in lines if "circuit open: rescheduled in" in line]
    # The provider's Retry-After (2 s) outlasts the cooldown (1 s): the job waits for it.
    assert rescheduled and all(float(line.split()[-1][:-1]) > 1.5 for line in rescheduled)
    assert "transition closed -> open: ProviderError: HTTP 503: overloaded" in lines[1]
    assert lines[-2].endswith("summary of 'quarterly report'")
    assert lines[-1] == "  transition half_open -> closed: success"


def test_the_apscheduler_fallback_job_serves_from_the_next_model_until_the_first_recovers(
    tmp_path: Path,
) -> None:
    lines = run_example("apscheduler_fallback.py", tmp_path)
    answers = [line.split(": answered by ")[1] for line in lines if ": answered by " in line]
    assert len(answers) == 20  # every document was answered by some model
    # gpt-4o failed its first calls (503): the mini served until a probe found gpt-4o well.
    first_back = answers.index("gpt-4o")
    assert answers[:first_back] == ["gpt-4o-mini"] * first_back and first_back >= 3
    assert set(answers[first_back:]) == {"gpt-4o"}
    transitions = [line.strip() for line in lines if line.startswith("  gpt-4o: ")]
    assert transitions[0] == (
        "gpt-4o: closed -> open (InternalServerError: Error code: 503 - overloaded)"
    )
    assert transitions[-1] == "gpt-4o: half_open -> closed (success)"
