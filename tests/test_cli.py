"""The command line, through its testable entry point and through the installed script."""

from __future__ import annotations

import getpass
import io
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from durable_breaker import _migrations as migrations
from durable_breaker._cli import _COMMANDS, run
from durable_breaker._engine import make_engine
from durable_breaker._machine import mermaid

from .conftest import FakeClock


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tripped(db_url: str, clock: FakeClock) -> str:
    """A database where gpt-4o has tripped and claude has one failure."""
    config = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=10))
    with CircuitBreaker(db_url, config, clock=clock, actor="tester") as breaker:
        breaker.record_failure("gpt-4o")
        breaker.record_failure("gpt-4o", reason="HTTP 503")
        breaker.record_failure("claude")
    return db_url


def test_migrate_says_what_it_did(db_url: str) -> None:
    code, out, _ = cli("--url", db_url, "migrate")
    assert code == 0 and f"from an empty database to {migrations.head()}" in out
    code, out, _ = cli("--url", db_url, "migrate")
    assert code == 0 and f"already at schema revision {migrations.head()}" in out


def test_status_json_lists_every_key(tripped: str) -> None:
    code, out, _ = cli("--url", tripped, "status", "--json")
    assert code == 0
    rows = {row["key"]: row for row in json.loads(out)}
    assert rows["gpt-4o"]["state"] == "open" and rows["gpt-4o"]["consecutive_failures"] == 2
    assert rows["claude"]["state"] == "closed" and rows["claude"]["consecutive_failures"] == 1
    assert rows["gpt-4o"]["since"] is not None and rows["claude"]["since"] is None


def test_status_text_shows_state_and_failures(tripped: str) -> None:
    code, out, _ = cli("--url", tripped, "status")
    assert code == 0
    [line] = [line for line in out.splitlines() if line.startswith("gpt-4o")]
    assert line.split()[1:3] == ["open", "2"]


def test_history_json_has_the_audit_fields(tripped: str) -> None:
    code, out, _ = cli("--url", tripped, "history", "gpt-4o", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert {k: row[k] for k in ("from_state", "to_state", "trigger", "reason", "actor")} == {
        "from_state": "closed",
        "to_state": "open",
        "trigger": "failure",
        "reason": "HTTP 503",
        "actor": "tester",
    }
    assert row["at"].endswith("+00:00")


def test_history_limit(tripped: str) -> None:
    cli("--url", tripped, "reset", "gpt-4o", "--yes")
    code, out, _ = cli("--url", tripped, "history", "gpt-4o", "--limit", "1", "--json")
    assert code == 0 and [row["trigger"] for row in json.loads(out)] == ["reset"]


def test_reset_needs_yes_and_is_audited_with_reason_and_actor(tripped: str) -> None:
    code, _, err = cli("--url", tripped, "reset", "gpt-4o")
    assert code != 0 and "--yes" in err
    code, out, _ = cli("--url", tripped, "reset", "gpt-4o", "--yes", "--reason", "provider fixed")
    assert code == 0 and "provider fixed" in out
    with CircuitBreaker(tripped, migrate=False) as breaker:
        assert breaker.state("gpt-4o") is CircuitState.CLOSED
        last = breaker.history("gpt-4o")[-1]
    assert (last.trigger, last.reason) == ("reset", "provider fixed")
    assert last.actor == f"{getpass.getuser()}@{socket.gethostname()}"  # a person, not a pid


@pytest.mark.parametrize("command", [["history", "nope"], ["reset", "nope", "--yes"]])
def test_an_unknown_key_is_one_clear_line(tripped: str, command: list[str]) -> None:
    code, _, err = cli("--url", tripped, *command)
    assert code == 1
    assert err.strip().splitlines() == [
        "durable-breaker: error: no circuit is stored for key 'nope' in namespace 'default'"
    ]


def test_reading_commands_do_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    code, _, err = cli("--url", url, "status")
    assert code == 1 and "no database file" in err
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "not a database URL"),
        ("postgresql://u:hunter2@127.0.0.1:1/x?connect_timeout=1", "could not"),
    ],
)
def test_bad_or_unreachable_urls_are_one_line_without_password(url: str, message: str) -> None:
    code, _, err = cli("--url", url, "status")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and message in err and "hunter2" not in err


def test_diagram_prints_the_declared_machine() -> None:
    code, out, _ = cli("diagram")
    assert code == 0 and out == mermaid()


def test_namespace_flag_selects_the_group(tripped: str) -> None:
    code, out, _ = cli("--url", tripped, "--namespace", "other", "status", "--json")
    assert code == 0 and json.loads(out) == []


def test_demo_runs_twice_and_the_second_run_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, first, _ = cli("--url", url, "demo")
    assert code == 0
    assert "gpt-4o starts closed" in first and "transition closed -> open" in first
    assert "gpt-4o ends open" in first
    code, second, _ = cli("--url", url, "demo")
    assert code == 0
    assert "gpt-4o starts open" in second and "transition half_open -> closed" in second
    assert "gpt-4o ends closed" in second


def test_the_installed_script_runs_and_reads_the_url_from_the_environment(tripped: str) -> None:
    script = Path(sys.executable).parent / "durable-breaker"
    env = {**os.environ, "DURABLE_BREAKER_URL": tripped}
    done = subprocess.run(
        [str(script), "status", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert {row["key"] for row in json.loads(done.stdout)} == {"gpt-4o", "claude"}
    done = subprocess.run(
        [str(script), "--url", "nonsense", "status"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_the_demo_keeps_to_the_embedded_default_and_its_own_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DURABLE_BREAKER_URL", db_url)  # a "production" database
    code, out, _ = cli("demo")
    assert code == 0 and "sqlite:///durable_breaker.db, namespace 'demo'" in out
    assert (tmp_path / "durable_breaker.db").is_file()
    production = make_engine(db_url)
    try:
        assert sa.inspect(production).get_table_names() == []  # untouched
    finally:
        production.dispose()


def test_an_unexpected_error_is_still_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: object, _out: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setitem(_COMMANDS, "diagram", broken)
    code, _, err = cli("diagram")
    assert code == 70
    assert err.strip().splitlines() == [
        "durable-breaker: internal error: RuntimeError: boom (set DURABLE_BREAKER_DEBUG=1 "
        "for the traceback, and please report it)"
    ]


def test_the_script_ends_quietly_when_its_reader_goes_away(tripped: str) -> None:
    script = Path(sys.executable).parent / "durable-breaker"
    reader = subprocess.Popen(
        [str(script), "--url", tripped, "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # like `| head -0`: every write the script makes now fails
    err = reader.stderr.read()
    assert reader.wait(timeout=120) == 141
    assert "Traceback" not in err and "internal error" not in err


def test_under_ci_an_unreachable_postgres_fails_the_run(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CI": "true",
        "DURABLE_BREAKER_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/x",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"{Path(__file__).parent / 'test_seed.py'}::test_closed_allows_requests",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode != 0
    assert "PostgreSQL at DURABLE_BREAKER_TEST_POSTGRES_URL is unreachable" in done.stdout


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """`process`'s output lines as they come, read by a thread (a read never blocks a test)."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_history_follow_tails_every_process_until_interrupted(db_url: str) -> None:
    """`history --follow` in its own process prints what another process commits."""
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(db_url, config, actor="writer") as breaker:
        breaker.record_failure("old")
        follower = subprocess.Popen(
            [
                *(sys.executable, "-c", "from durable_breaker._cli import main; main()"),
                *("--url", db_url, "history", "--follow", "--interval", "0.05"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            output = _lines_of(follower)
            assert output.get(timeout=20).startswith("KEY: AT (UTC)")  # the header
            first = output.get(timeout=20)
            assert first.startswith("old: ") and "-> open" in first
            breaker.record_failure("new", reason="HTTP 503")
            breaker.reset("new")
            lines = [output.get(timeout=20), output.get(timeout=20)]
        finally:
            follower.terminate()
            follower.wait(timeout=10)
    assert lines[0].startswith("new: ") and "-> open" in lines[0] and "HTTP 503" in lines[0]
    assert lines[1].startswith("new: ") and "-> closed" in lines[1] and "writer" in lines[1]


def test_history_without_a_key_needs_follow(db_url: str) -> None:
    code, _, err = cli("--url", db_url, "history")
    assert code == 1 and "needs a KEY" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["open", "k", "--yes", "--for", "0s"],
        ["history", "--follow", "--interval", "0"],
        ["history", "k", "--limit", "-1"],
    ],
)
def test_bad_flags_are_refused_by_name_before_anything_runs(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["--url", "sqlite:///never-created.db", *argv])
    assert exited.value.code == 2
    assert f"argument {argv[-2]}" in capsys.readouterr().err  # the flag before the bad value
    assert not Path("never-created.db").exists()
