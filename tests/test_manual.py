"""Manual control: force_open, disable and reset are persisted, audited with the actor, shown."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from durable_breaker import (
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    InvalidArgumentError,
)

from .conftest import BreakerFactory, FakeClock
from .test_cli import cli

CONFIG = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=10))


def test_force_open_holds_against_successes_until_reset(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG, actor="oncall")
    done = breaker.force_open("gpt-4o", reason="provider incident")
    assert (done.from_state, done.to_state, done.actor) == ("closed", "forced_open", "oncall")
    breaker.record_success("gpt-4o")
    with pytest.raises(CircuitOpenError) as raised:
        breaker.check("gpt-4o")
    assert raised.value.state is CircuitState.FORCED_OPEN and raised.value.retry_after is None
    assert breaker.state("gpt-4o") is CircuitState.FORCED_OPEN
    breaker.reset("gpt-4o")
    breaker.check("gpt-4o")
    trail = [(t.trigger, t.to_state.value, t.reason, t.actor) for t in breaker.history("gpt-4o")]
    assert trail == [
        ("force_open", "forced_open", "provider incident", "oncall"),
        ("reset", "closed", "manual reset", "oncall"),
    ]


def test_force_open_until_a_time_then_probes(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(CONFIG)
    until = datetime.fromtimestamp(clock.now + 60, UTC)
    breaker.force_open("k", until)
    clock.advance(59)
    with pytest.raises(CircuitOpenError) as raised:
        breaker.check("k")
    assert raised.value.retry_after == pytest.approx(1.0)
    [status] = breaker.status()
    assert status.state is CircuitState.FORCED_OPEN and status.open_until == until
    clock.advance(1)
    breaker.check("k")  # the hold ended: one probe, as after a cooldown
    assert breaker.state("k") is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        breaker.check("k")
    breaker.record_success("k")
    assert breaker.state("k") is CircuitState.CLOSED
    assert breaker.history("k")[1].reason == "forced open period ended"


def test_disable_admits_every_call_and_still_counts(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG)
    breaker.record_failure("k")
    breaker.record_failure("k")
    assert breaker.state("k") is CircuitState.OPEN
    breaker.disable("k", reason="known flaky, investigating")
    for _ in range(5):
        breaker.check("k")
        breaker.record_failure("k")
    [status] = breaker.status()
    assert (status.state, status.consecutive_failures) == (CircuitState.DISABLED, 5)
    assert breaker.is_available("k")
    breaker.reset("k")
    breaker.record_failure("k")
    breaker.record_failure("k")
    assert breaker.state("k") is CircuitState.OPEN  # back to breaking


def test_manual_changes_are_seen_by_another_breaker(make_breaker: BreakerFactory) -> None:
    first, second = make_breaker(CONFIG), make_breaker(CONFIG)
    first.check("k")
    first.force_open("k")
    with pytest.raises(CircuitOpenError):
        second.check("k")
    second.disable("k")
    first.check("k")


def test_force_open_refuses_a_naive_until(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG)
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        breaker.force_open("k", timedelta(seconds=-1))
    with pytest.raises(InvalidArgumentError, match="at most 3660 days"):
        breaker.force_open("k", timedelta(days=999_999_999))
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        breaker.force_open("k", datetime(2030, 1, 1))  # noqa: DTZ001 - the point of the test
    assert breaker.status() == []


def test_cli_open_disable_reset_and_status(db_url: str) -> None:
    assert cli("--url", db_url, "migrate")[0] == 0
    code, _, err = cli("--url", db_url, "open", "gpt-4o")
    assert code == 1 and "--yes" in err
    code, _, err = cli("--url", db_url, "open", "gpt-4o", "--yes")
    assert code == 1 and "--new" in err  # no process has stored it: a typo?
    code, out, _ = cli("--url", db_url, "open", "gpt-4o", "--yes", "--new", "--reason", "incident")
    assert code == 0 and "forced 'gpt-4o' open until reset" in out
    code, out, _ = cli("--url", db_url, "open", "claude", "--for", "15m", "--yes", "--new")
    assert code == 0 and "open until 20" in out
    with pytest.raises(SystemExit):  # argparse: usage and the message on stderr
        cli("--url", db_url, "open", "claude", "--for", "soon", "--yes")
    code, out, _ = cli("--url", db_url, "disable", "mistral", "--yes", "--new")
    assert code == 0 and "disabled 'mistral'" in out
    code, out, _ = cli("--url", db_url, "status")
    lines = {line.split()[0]: line for line in out.splitlines()[1:4]}
    assert "forced_open" in lines["gpt-4o"] and " until reset " in lines["gpt-4o"]
    assert "forced_open" in lines["claude"] and re.search(r" in 1[45]m(\d+s)? ", lines["claude"])
    assert "disabled" in lines["mistral"]
    code, out, _ = cli("--url", db_url, "reset", "gpt-4o", "--yes")
    assert code == 0
    code, out, _ = cli("--url", db_url, "history", "gpt-4o")
    assert "forced_open" in out and "incident" in out and "-> closed" in out
