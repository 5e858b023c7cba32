"""What an operator sees: the policy in force and the why of each transition, stored; `status`
and `explain` from the library, the testable entry point and the installed script; one CLI
grammar; the demo's pointers. Every test runs on both backends (the `db_url` fixture)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from durable_breaker import (
    AsyncCircuitBreaker,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    InvalidArgumentError,
    Policy,
)
from durable_breaker._cli import _parser, run
from durable_breaker._engine import DEFAULT_URL
from durable_breaker.prometheus import BreakerMetrics

from .conftest import FakeClock
from .fake_provider import FakeProvider, anthropic_error, fake_provider, openai_error

SCRIPT = Path(sys.executable).parent / "durable-breaker"
README = Path(__file__).resolve().parents[1] / "README.md"
SLOW = CircuitBreakerConfig(
    failure_threshold=2,
    cooldown=timedelta(seconds=120),
    half_open_max=3,
    probe_timeout=None,
)


def cli(*argv: str) -> tuple[int, str, str]:
    """The testable entry point."""
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def script(*argv: str) -> tuple[int, str, str]:
    """The installed console script, as an operator runs it."""
    done = subprocess.run(
        [str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


Entry = Callable[..., tuple[int, str, str]]
ENTRY_POINTS = [pytest.param(cli, id="run"), pytest.param(script, id="script")]


def usage_error(entry: Entry, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The message of a usage error (exit status 2) from `entry`."""
    if entry is cli:
        with pytest.raises(SystemExit) as exited:
            cli(*argv)
        assert exited.value.code == 2
        return capsys.readouterr().err
    code, _, err = entry(*argv)
    assert code == 2
    return err


def trip(url: str, key: str, config: CircuitBreakerConfig = SLOW, actor: str = "app-a") -> None:
    with CircuitBreaker(url, config, actor=actor) as breaker:
        for _ in range(config.failure_threshold):
            breaker.record_failure(key, reason="HTTP 503")


def fail(url: str, key: str, times: int) -> None:
    """`times` failures of `key`, below any threshold that trips."""
    with CircuitBreaker(url, CircuitBreakerConfig(failure_threshold=times + 1)) as breaker:
        for _ in range(times):
            breaker.record_failure(key)


# -- 1. the policy in force is in the database ------------------------------------------


def test_every_process_reports_the_wait_the_writer_decided_with(db_url: str) -> None:
    trip(db_url, "gpt-4o")  # cooldown 120 s, not the default 30 s
    with CircuitBreaker(db_url, actor="app-b") as other:  # default settings
        [status] = other.status(["gpt-4o"])
        assert status.retry_after == pytest.approx(120, abs=10)
        assert status.policy == Policy(2, timedelta(seconds=120), 3, None, "app-a")
        explained = other.explain("gpt-4o")
        assert explained.waiting_for == "cooldown"
        assert explained.retry_after == pytest.approx(120, abs=10)
        registry = CollectorRegistry()
        BreakerMetrics(other, registry)
        scraped = registry.get_sample_value(
            "durable_breaker_retry_after_seconds", {"namespace": "default", "key": "gpt-4o"}
        )
        assert scraped == pytest.approx(120, abs=10)
        # An operator's change decides nothing by the settings: it keeps the stored policy.
        other.force_open("gpt-4o", timedelta(minutes=5))
        assert other.status(["gpt-4o"])[0].policy == status.policy
    code, out, _ = cli("--url", db_url, "status", "--json")
    [row] = json.loads(out)
    assert code == 0 and row["policy"]["cooldown"] == 120 and row["policy"]["set_by"] == "app-a"
    assert row["retry_after"] == pytest.approx(300, abs=10)  # the operator's hold now


def test_keys_decided_with_different_settings_say_so(db_url: str) -> None:
    trip(db_url, "gpt-4o")
    fast = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=30))
    trip(db_url, "claude", fast, actor="app-b")
    code, out, _ = cli("--url", db_url, "status")
    assert code == 0
    assert (
        "gpt-4o: threshold 2, cooldown 2m, 3 probes at a time, probe timeout none (by app-a)" in out
    )
    assert (
        "claude: threshold 2, cooldown 30s, 1 probe at a time, probe timeout 30s (by app-b)" in out
    )
    assert "decided with different settings" in out
    with CircuitBreaker(db_url, fast, actor="app-b") as other:
        other.record_failure("gpt-4o")  # counted while Open: a write, with app-b's settings
        policy = other.explain("gpt-4o").policy
    assert policy is not None and policy.set_by == "app-b" and policy.cooldown.seconds == 30
    _, out, _ = cli("--url", db_url, "explain", "gpt-4o")
    assert "threshold 2, cooldown 30s" in out and "decided: app-b" in out


# -- 2. every audit row says why ----------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with fake_provider() as running:
        yield running


def test_a_trip_by_a_real_sdk_error_is_audited_with_why(
    db_url: str, clock: FakeClock, provider: FakeProvider
) -> None:
    config = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=0.5))
    client = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)

    def call() -> None:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    with CircuitBreaker(db_url, config, clock=clock, actor="worker") as breaker:
        provider.reply = openai_error(429, "Rate limit reached", "requests")
        provider.reply.headers = {"retry-after": "2"}
        for _ in range(2):
            with pytest.raises(openai.RateLimitError), breaker.guard("gpt-4o"):
                call()
        [tripped] = breaker.history("gpt-4o")
        assert (tripped.trigger, tripped.to_state, tripped.generation) == ("failure", "open", 1)
        assert (tripped.error_type, tripped.status_code) == ("openai.RateLimitError", 429)
        assert tripped.retry_after == 2.0
        assert tripped.open_until == tripped.at + timedelta(seconds=2)
        clock.advance(1)  # the cooldown is over, the hold is not
        with pytest.raises(CircuitOpenError):
            breaker.check("gpt-4o")
        clock.advance(1)
        provider.reply = openai_error(500, "boom")
        with pytest.raises(openai.InternalServerError), breaker.guard("gpt-4o"):
            call()
        clock.advance(0.5)
        breaker.check("gpt-4o")
        *_, probing, reopened, again = breaker.history("gpt-4o")
    # A HalfOpen entry after a hold names the hold; after a cooldown, the cooldown.
    assert probing.reason is not None and probing.reason.startswith(
        "Retry-After hold ended (held until"
    )
    assert probing.generation == 2 and probing.error_type is None
    assert (reopened.error_type, reopened.status_code, reopened.retry_after) == (
        "openai.InternalServerError",
        500,
        None,
    )
    assert reopened.open_until is None and reopened.generation == 3
    assert again.reason == "cooldown of 0.5s elapsed"


def test_record_failure_takes_the_error_and_names_it(db_url: str, provider: FakeProvider) -> None:
    import anthropic

    provider.reply = anthropic_error(529, "Overloaded", "overloaded_error")
    client = anthropic.Anthropic(base_url=provider.url, api_key="sk-test", max_retries=0)
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(db_url, config) as breaker:
        try:
            client.messages.create(
                model="claude", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
            )
        except anthropic.APIStatusError as error:
            breaker.record_failure("claude", error=error)
        with pytest.raises(InvalidArgumentError, match="error must be None or an exception"):
            breaker.record_failure("claude", error="HTTP 500")  # type: ignore[arg-type]
        [row] = breaker.history("claude")
    assert row.error_type is not None and row.error_type.startswith("anthropic.")
    assert row.status_code == 529 and row.reason is not None and "Overloaded" in row.reason


def test_a_late_permit_failure_is_audited_without_a_hold_it_never_set(db_url: str) -> None:
    class Throttled(Exception):
        status_code = 429
        retry_after = 5.0

    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(db_url, config) as breaker, CircuitBreaker(db_url, config) as other:
        permit = breaker.acquire("gpt-4o")
        other.record_failure("gpt-4o")  # trips meanwhile: the permit's generation is gone
        permit.failed(error=Throttled("slow down"))
        late = breaker.history("gpt-4o")[-1]
    assert late.reason is not None and late.reason.startswith("late result")
    assert (late.error_type, late.status_code) == ("tests.Throttled", 429)
    assert (late.retry_after, late.open_until, late.generation) == (None, None, 1)


def _readme_sql() -> str:
    """The documented query for "why was gpt-4o blocked at 03:12?" (docs/operating.md)."""
    operating = README.parent / "docs" / "operating.md"
    text = operating.read_text(encoding="utf-8").split("Why was gpt-4o blocked at 03:12", 1)[1]
    return text.split("```sql\n", 1)[1].split("```", 1)[0]


def test_the_0312_query_in_the_readme_says_why_a_key_was_blocked(
    db_url: str, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(db_url, config, clock=clock, actor="worker-3") as breaker:
        breaker.record_failure(
            "gpt-4o", reason="HTTP 529 overloaded", retry_after=timedelta(minutes=2)
        )
        blocked_at = breaker.history("gpt-4o")[0].at + timedelta(seconds=30)
        clock.advance(3600)
        breaker.check("gpt-4o")  # later transitions must not confuse the answer
        breaker.record_success("gpt-4o")
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            query = _readme_sql().replace(
                "'2026-11-30 03:12:00+00'", f"'{blocked_at:%Y-%m-%d %H:%M:%S}+00'"
            )
            rows = connection.execute(sa.text(query)).all()
    finally:
        engine.dispose()
    [row] = rows
    assert (row.to_state, row.trigger, row.reason, row.actor) == (
        "open",
        "failure",
        "HTTP 529 overloaded",
        "worker-3",
    )
    assert row.retry_after_s == 120 and row.generation == 1


# -- 3. explain -----------------------------------------------------------------------------


def _in_every_state(url: str, clock: FakeClock) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, cooldown=timedelta(seconds=60), probe_timeout=timedelta(seconds=45)
    )
    with CircuitBreaker(url, config, clock=clock, actor="app") as breaker:
        breaker.record_failure("closed")
        breaker.reset("closed")
        breaker.record_failure("cooled", reason="HTTP 500")
        breaker.record_failure("held", reason="HTTP 429", retry_after=timedelta(minutes=5))
        breaker.record_failure("probing")
        breaker.force_open("forced", timedelta(hours=1), reason="incident")
        breaker.force_open("forced-forever")
        breaker.disable("off", reason="evaluating")
        clock.advance(61)
        breaker.check("probing")  # its only probe is now in flight
        breaker.record_failure("cooling", reason="HTTP 500")
        clock.advance(10)


@pytest.mark.parametrize(
    ("key", "state", "waiting_for", "retry_after", "words"),
    [
        ("closed", "closed", None, 0, "admits every call"),
        ("cooled", "open", None, 0, "admits a probe at the next call (its wait is over)"),
        ("cooling", "open", "cooldown", 50, "when the cooldown of 1m ends"),
        ("held", "open", "retry_after_hold", 300 - 71, "Retry-After hold ends"),
        ("probing", "half_open", "probe_in_flight", 35, "1 probe in flight"),
        ("forced", "forced_open", "forced_open", 3600 - 71, "the operator's hold ends"),
        ("forced-forever", "forced_open", "forced_open", None, "until an operator resets it"),
        ("off", "disabled", None, 0, "admits every call"),
    ],
)
def test_explain_says_when_and_why_the_next_call_is_admitted(
    db_url: str,
    clock: FakeClock,
    key: str,
    state: str,
    waiting_for: str | None,
    retry_after: float | None,
    words: str,
) -> None:
    _in_every_state(db_url, clock)
    with CircuitBreaker(db_url, clock=clock) as breaker:
        explained = breaker.explain(key)
    assert explained.stored and explained.state.value == state
    assert explained.waiting_for == waiting_for
    assert explained.retry_after == retry_after
    text = str(explained)
    assert words in text and f"durable-breaker history {key}" in text
    as_json = explained.as_dict()
    assert json.loads(json.dumps(as_json)) == as_json
    assert as_json["state"] == state and as_json["key"] == key


def test_explain_names_the_trip_the_actor_and_the_commands(db_url: str) -> None:
    trip(db_url, "gpt-4o")
    for entry in (cli, script):
        code, out, err = entry("--url", db_url, "explain", "gpt-4o")
        assert code == 0, err
        assert out.startswith("gpt-4o is OPEN: calls are rejected")
        assert re.search(
            r"since +(now|\d+(\.\d)?s ago) \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", out
        )
        assert "opened " in out and "by app-a: HTTP 503" in out
        assert "2 consecutive failures counted (threshold 2)" in out
        assert re.search(r"admits a probe in (1m\d+s|2m) ", out)
        assert "durable-breaker reset --yes gpt-4o" in out
        code, out, _ = entry("--url", db_url, "explain", "gpt-4o", "--json")
        explained = json.loads(out)
        assert code == 0 and explained["tripped"]["reason"] == "HTTP 503"
        assert explained["tripped"]["actor"] == "app-a" and explained["waiting_for"] == "cooldown"


def test_explain_of_a_key_never_stored_is_closed_and_the_cli_suggests_the_spelling(
    db_url: str,
) -> None:
    trip(db_url, "gpt-4o")
    with CircuitBreaker(db_url) as breaker:
        explained = breaker.explain("gpt4o")
    assert not explained.stored and explained.state is CircuitState.CLOSED
    assert explained.retry_after == 0
    code, _, err = cli("--url", db_url, "explain", "gpt4o")
    assert code == 1 and "did you mean 'gpt-4o'?" in err


def test_the_asyncio_breaker_explains_and_filters_as_the_sync_one(db_url: str) -> None:
    trip(db_url, "gpt-4o")
    fail(db_url, "claude", 2)

    async def read() -> tuple[object, list[str]]:
        async with AsyncCircuitBreaker(db_url) as breaker:
            explained = await breaker.explain("gpt-4o")
            opened = await breaker.status(states=["open"])
            return explained, [s.key for s in opened]

    explained, opened = asyncio.run(read())
    with CircuitBreaker(db_url) as breaker:
        expected = breaker.explain("gpt-4o")
    assert opened == ["gpt-4o"]
    assert explained.as_dict() | {"now": None, "retry_after": None, "admits_at": None} == (  # type: ignore[attr-defined]
        expected.as_dict() | {"now": None, "retry_after": None, "admits_at": None}
    )


# -- 4. status ------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_status_filters_and_says_reason_actor_and_relative_times(db_url: str, entry: Entry) -> None:
    trip(db_url, "gpt-4o")
    fail(db_url, "claude", 2)  # 2 failures, closed
    with CircuitBreaker(db_url, actor="ops") as breaker:
        breaker.disable("llama", reason="evaluating")
    code, out, err = entry("status", "gpt-4o", "llama", "--url", db_url, "--json")
    assert code == 0, err
    rows = {row["key"]: row for row in json.loads(out)}
    assert set(rows) == {"gpt-4o", "llama"}
    for row in rows.values():
        assert {
            "key",
            "state",
            "consecutive_failures",
            "since",
            "retry_after",
            "reason",
            "actor",
        } <= set(row)
    assert (rows["gpt-4o"]["reason"], rows["gpt-4o"]["actor"]) == ("HTTP 503", "app-a")
    assert rows["gpt-4o"]["since"].endswith("+00:00")  # ISO 8601
    assert (rows["llama"]["reason"], rows["llama"]["actor"]) == ("evaluating", "ops")
    code, out, _ = entry("status", "--state", "open,disabled", "--url", db_url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "KEY",
        "STATE",
        "FAILURES",
        "SINCE",
        "NEXT",
        "CALL",
        "ACTOR",
        "REASON",
    ]
    [gpt] = [line for line in lines if line.startswith("gpt-4o ")]
    assert re.search(
        r"open +2 +(now|\d+(\.\d)?s ago|1m\d+s ago) +in (1m\d+s|2m) +app-a +HTTP 503$", gpt
    )
    [llama] = [line for line in lines if line.startswith("llama ")]
    assert re.search(r"disabled +0 +(now|\d+(\.\d)?s ago|1m\d+s ago) +now +ops +evaluating$", llama)
    assert not any(line.startswith("claude ") for line in lines)
    code, out, _ = entry("status", "--state", "half_open", "--url", db_url)
    assert code == 0 and "no keys in state half_open in namespace 'default'" in out


def test_status_refuses_a_bad_filter(db_url: str) -> None:
    with CircuitBreaker(db_url) as breaker:
        with pytest.raises(InvalidArgumentError, match="for one key pass"):
            breaker.status("gpt-4o")
        with pytest.raises(InvalidArgumentError, match="unknown state 'shut'"):
            breaker.status(states=["shut"])
    with pytest.raises(SystemExit) as exited:
        cli("--url", db_url, "status", "--state", "open,shut")
    assert exited.value.code == 2


# -- 5. one CLI grammar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("1.5h", 5400), ("1h30m", 5400), ("2d", 172800), ("1w", 604800)],
)
def test_every_duration_flag_takes_the_same_grammar(db_url: str, text: str, seconds: int) -> None:
    CircuitBreaker(db_url).close()  # the schema: the CLI never creates a database
    code, out, err = cli("--url", db_url, "open", "gpt-4o", "--new", "--yes", "--for", text)
    assert code == 0, err
    with CircuitBreaker(db_url) as breaker:
        [forced] = breaker.history("gpt-4o")
    assert forced.open_until is not None
    assert (forced.open_until - forced.at).total_seconds() == seconds
    code, out, _ = cli("--url", db_url, "prune", "--older-than", text, "--dry-run")
    assert code == 0 and "would remove 0 transitions" in out
    parsed = _parser().parse_args(["history", "--follow", "--interval", text])
    assert parsed.interval == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "1x",
        "h",
        "-5",
        "nan",
        "inf",
        "1h-30m",
        "",
        "5 m s",
        "1e3",
        "1.",
        "5m5m",
        "1s1h",
        "1M",
        "1h30",
    ],
)
@pytest.mark.parametrize(
    "flag", [["open", "k", "--yes", "--for"], ["prune", "--yes", "--older-than"]]
)
def test_a_bad_duration_is_a_usage_error_naming_the_flag(
    flag: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["--url", "sqlite:///never-created.db", *flag, text])
    assert exited.value.code == 2
    assert f"argument {flag[-1]}" in capsys.readouterr().err
    assert not Path("never-created.db").exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_global_options_go_before_or_after_the_command(db_url: str, entry: Entry) -> None:
    trip(db_url, "gpt-4o")
    with CircuitBreaker(db_url, namespace="team-b") as breaker:
        breaker.record_failure("claude")
    after = entry("status", "--url", db_url, "--namespace", "team-b", "--json")
    before = entry("--url", db_url, "--namespace", "team-b", "status", "--json")
    both = entry(
        "--url", db_url, "--namespace", "default", "status", "--namespace", "team-b", "--json"
    )
    for code, out, err in (after, before, both):
        assert code == 0, err
        assert [row["key"] for row in json.loads(out)] == ["claude"]
    code, out, err = entry("reset", "gpt-4o", "--yes", "--url", db_url, "--actor", "alice")
    assert code == 0, err
    with CircuitBreaker(db_url) as breaker:
        assert breaker.history("gpt-4o")[-1].actor == "alice"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_cli_actor_is_the_person_unless_told(
    db_url: str, entry: Entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = f"{getpass.getuser()}@{socket.gethostname()}"
    CircuitBreaker(db_url).close()  # the schema: the CLI never creates a database
    for argv, from_env, expected in [
        ((), None, person),
        ((), "on-call@example", "on-call@example"),
        (("--actor", "bob"), "on-call@example", "bob"),
    ]:
        if from_env is None:
            monkeypatch.delenv("DURABLE_BREAKER_ACTOR", raising=False)
        else:
            monkeypatch.setenv("DURABLE_BREAKER_ACTOR", from_env)
        code, _, err = entry("--url", db_url, *argv, "disable", "k", "--new", "--yes")
        assert code == 0, err
        with CircuitBreaker(db_url) as breaker:
            assert breaker.history("k")[-1].actor == expected


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_prune_needs_yes_or_dry_run_and_says_ages_as_people_write_them(
    db_url: str, clock: FakeClock, entry: Entry, capsys: pytest.CaptureFixture[str]
) -> None:
    clock.now = time.time() - 3 * 86400
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=1))
    with CircuitBreaker(db_url, config, clock=clock) as breaker:
        for _ in range(3):
            breaker.record_failure("gpt-4o")
            clock.advance(2)
            breaker.check("gpt-4o")
    err = usage_error(entry, capsys, "--url", db_url, "prune", "--older-than", "1d")
    assert "one of the arguments --yes --dry-run is required" in err
    code, out, err = entry("--url", db_url, "prune", "--older-than", "1d", "--dry-run")
    assert code == 0, err
    assert "would remove 5 transitions older than 1d (before " in out and "nothing removed" in out
    assert re.search(r"  gpt-4o: 5, the oldest (3d|2d23h) ago", out)
    with CircuitBreaker(db_url) as breaker:
        assert len(breaker.history("gpt-4o")) == 6  # the dry run removed nothing
    code, out, err = entry("--url", db_url, "prune", "--older-than", "1d12h", "--yes")
    assert code == 0 and "removed 5 transitions older than 1d12h (before " in out, err
    with CircuitBreaker(db_url) as breaker:
        assert len(breaker.history("gpt-4o")) == 1


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("command", [["open", "--for", "15m"], ["disable"]])
def test_open_or_disable_of_a_key_no_process_stored_needs_new(
    db_url: str, entry: Entry, command: list[str]
) -> None:
    trip(db_url, "gpt-4o")
    name, *flags = command
    code, _, err = entry("--url", db_url, name, "gpt4o", *flags, "--yes")
    assert code == 1
    assert "no circuit is stored for key 'gpt4o'" in err and "did you mean 'gpt-4o'?" in err
    assert "add --new to create its circuit" in err
    with CircuitBreaker(db_url) as breaker:
        assert [s.key for s in breaker.status()] == ["gpt-4o"]  # nothing created
    code, _, err = entry("--url", db_url, name, "gpt4o", *flags, "--yes", "--new")
    assert code == 0, err
    with CircuitBreaker(db_url) as breaker:
        assert breaker.history("gpt4o")[-1].trigger == name.replace("open", "force_open")
    code, _, err = entry("--url", db_url, name, "gpt-4o", *flags, "--yes")  # a stored key
    assert code == 0, err


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_version_and_history_header(
    db_url: str, entry: Entry, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.metadata

    version = f"durable-breaker {importlib.metadata.version('durable-breaker')}"
    if entry is cli:
        with pytest.raises(SystemExit) as exited:
            cli("--version")
        assert exited.value.code == 0 and capsys.readouterr().out.strip() == version
    else:
        code, out, _ = entry("--version")
        assert code == 0 and out.strip() == version
    trip(db_url, "gpt-4o")
    code, out, _ = entry("--url", db_url, "history", "gpt-4o")
    header, row = out.splitlines()
    assert code == 0 and header.split()[:4] == ["AT", "(UTC)", "FROM", "TO"]
    assert "closed -> open" in row and "app-a" in row


def test_every_option_of_every_command_has_help() -> None:
    parser = _parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
            assert {c.dest for c in action._choices_actions} == set(action.choices)
            assert all(c.help for c in action._choices_actions)
    missing = [
        f"{p.prog} {a.option_strings or a.dest}"
        for p in parsers
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and not a.help
    ]
    assert missing == []
    assert "--cooldown" not in parser.format_help() + "".join(p.format_help() for p in parsers)


# -- 6. the demo ----------------------------------------------------------------------------


def test_the_demo_says_its_clock_is_simulated_and_how_to_inspect_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # The demo keeps off $DURABLE_BREAKER_URL; the commands it prints name its own database.
    monkeypatch.setenv("DURABLE_BREAKER_URL", f"sqlite:///{tmp_path / 'production.db'}")
    code, out, _ = cli("demo")
    assert code == 0 and "the clock is simulated" in out
    commands = out.split("inspect what it left", 1)[1].splitlines()[1:]
    where = "--url sqlite:///durable_breaker.db --namespace demo"
    assert [c.strip() for c in commands] == [
        f"durable-breaker {where} status",
        f"durable-breaker {where} explain gpt-4o",
        f"durable-breaker {where} history gpt-4o",
    ]
    for command in commands:
        argv = shlex.split(command)[1:]
        code, out, err = script(*argv) if "status" in argv else cli(*argv)
        assert code == 0, err
        assert len(out.splitlines()) >= 2 and "gpt-4o" in out + command


# -- what the review found ------------------------------------------------------------------


def test_an_error_whose_attributes_raise_still_counts_and_trips(db_url: str) -> None:
    class Odd(Exception):
        @property
        def response(self) -> object:
            raise RuntimeError("no response here")

    config = CircuitBreakerConfig(failure_threshold=1, is_failure=lambda error: True)
    with CircuitBreaker(db_url, config) as breaker:
        with pytest.raises(Odd), breaker.guard("k"):
            raise Odd("odd")
        assert breaker.state("k") is CircuitState.OPEN
        breaker.reset("k")
        breaker.record_failure("k", error=Odd("odd"))
        assert breaker.state("k") is CircuitState.OPEN
        assert breaker.history("k")[-1].status_code is None


def test_a_late_result_or_an_earlier_episode_is_never_given_as_the_cause(db_url: str) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=0))
    with CircuitBreaker(db_url, config, actor="app") as breaker:
        breaker.record_failure("old", reason="HTTP 503 old incident")
        breaker.reset("old")
        breaker.force_open("old", timedelta(microseconds=1), reason="maintenance")
        time.sleep(0.01)
        breaker.check("old")  # the operator's hold ended: probing, with no trip this episode
        permit = breaker.acquire("m")
        breaker.record_failure("m", reason="HTTP 503 real trip")
        permit.failed(reason="late")  # fenced: audited, changes nothing
        old, tripped = breaker.explain("old"), breaker.explain("m")
        [status] = breaker.status(["m"])
    assert old.state is CircuitState.HALF_OPEN and old.tripped is None
    assert old.entered is not None and old.entered.reason == "forced open period ended"
    assert "old incident" not in str(old)
    assert tripped.tripped is not None and tripped.tripped.reason == "HTTP 503 real trip"
    assert "late" not in str(tripped)
    assert status.reason == "HTTP 503 real trip"


def test_a_key_an_operator_created_is_not_counted_as_other_settings(db_url: str) -> None:
    trip(db_url, "gpt-4o")
    assert cli("--url", db_url, "disable", "new-model", "--new", "--yes")[0] == 0
    code, out, _ = cli("--url", db_url, "status")
    assert code == 0 and "new-model: unknown: no process has decided for it" in out
    assert "different settings" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--namespace", "", "status"],
        ["status", "--actor", "", "--json"],
        ["--url", "", "status"],
    ],
)
def test_an_empty_global_option_is_refused_not_replaced_by_the_default(
    db_url: str, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trip(db_url, "gpt-4o")
    monkeypatch.chdir(tmp_path)
    CircuitBreaker(DEFAULT_URL).close()  # the default database exists: '' must not mean it
    code, out, err = cli(*(["--url", db_url] if "--url" not in argv else []), *argv)
    assert code == 1 and out == "" and err.startswith("durable-breaker: error:")
    with CircuitBreaker(db_url) as breaker:
        assert breaker.state("gpt-4o") is CircuitState.OPEN


def test_a_duration_in_capitals_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["prune", "--older-than", "1M", "--yes"])  # a month? a minute? neither
    assert exited.value.code == 2 and "expected a duration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["open", "k", "--yes", "--for", "1h30"])
    assert "(did you mean 1h30m?)" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["gpt-4o", "-looks-like-an-option", "two words; rm -rf"])
def test_the_commands_explain_suggests_run_as_printed(db_url: str, key: str) -> None:
    trip(db_url, key)
    with CircuitBreaker(db_url) as breaker:
        commands = breaker.explain(key).commands
    assert len(commands) == 4  # reset, open, disable, history
    for command in commands:
        argv = shlex.split(command.split("    #", 1)[0])[1:]
        code, _, err = cli("--url", db_url, *argv)
        assert code == 0, (command, err)
    with CircuitBreaker(db_url) as breaker:
        assert [t.trigger for t in breaker.history(key)][-3:] == ["reset", "force_open", "disable"]
