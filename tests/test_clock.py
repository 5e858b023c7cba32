"""Time comes only from the injected clock: nothing in the library reads it another way."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

import durable_breaker
from durable_breaker import CircuitBreakerConfig, CircuitOpenError, CircuitState

from .conftest import BreakerFactory, FakeClock

SOURCE = Path(durable_breaker.__file__).parent
# `time.time` may be named as the default clock and as the demo's simulated start; never called
# inline anywhere else, and no other wall clock is read at all.
WALL_CLOCKS = re.compile(
    r"time\.(time|perf_counter|time_ns)\(\)|datetime\.(now|utcnow|today)\(|date\.today\("
)
ALLOWED = {("_cli.py", "clock = _DemoClock(time.time() - DEMO_CALLS * DEMO_STEP_S)")}
# The monotonic clock measures waits for the database (retry deadlines, outage rechecks,
# stalled connections, cache heartbeats), never circuit time: only modules that wait read it.
WAITING_MODULES = {"_faults.py", "_outage.py", "_view.py", "_watchdog.py"}


def test_no_module_reads_the_time_inline() -> None:
    lines = [
        (path.name, line.strip())
        for path in SOURCE.glob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert {found for found in lines if WALL_CLOCKS.search(found[1])} == ALLOWED
    assert {name for name, line in lines if "monotonic()" in line} == WAITING_MODULES


def test_operations_never_call_the_system_clock(
    make_breaker: BreakerFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=5)))

    def forbidden() -> float:
        raise AssertionError("the system clock was read")

    monkeypatch.setattr(time, "time", forbidden)
    breaker.record_failure("k")
    with pytest.raises(CircuitOpenError):
        breaker.check("k")
    clock.advance(5)
    breaker.check("k")
    breaker.record_success("k")
    assert [t.at.timestamp() for t in breaker.history("k")] == [clock.now - 5, clock.now, clock.now]
    breaker.status()


@pytest.mark.parametrize("skew", [7.0, -7.0])
def test_hosts_whose_clocks_disagree_wait_at_most_the_skew_longer_or_shorter(
    make_breaker: BreakerFactory, clock: FakeClock, skew: float
) -> None:
    """Host A trips a key; host B, whose clock is `skew` s ahead (or behind), waits it out.

    B's wait is the cooldown minus the skew: never negative (a circuit reopened before it
    was tripped), never endless (a stored time in B's future counts as no time passed).
    """
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30))
    host_a = make_breaker(config, clock=clock)
    host_b = make_breaker(config, clock=lambda: clock.now + skew)
    host_a.record_failure("gpt-4o")

    with pytest.raises(CircuitOpenError) as rejected:
        host_b.check("gpt-4o")
    assert rejected.value.retry_after == 30 - skew  # B's view of the same stored trip
    clock.advance(30 - skew - 0.001)
    with pytest.raises(CircuitOpenError):
        host_b.check("gpt-4o")
    clock.advance(0.001)
    host_b.check("gpt-4o")  # admitted exactly when B's own clock says the cooldown is over
    host_b.record_failure("gpt-4o")  # the probe fails: B reopens it, stamped with B's time

    # Now A sees a trip stamped `skew` s in its future (or past) and waits that much more
    # (or less), counting a time still ahead of its clock as no time passed.
    with pytest.raises(CircuitOpenError) as rejected:
        host_a.check("gpt-4o")
    assert rejected.value.retry_after == 30 + skew
    clock.advance(30 + skew - 0.001)
    with pytest.raises(CircuitOpenError):
        host_a.check("gpt-4o")
    clock.advance(0.001)
    host_a.check("gpt-4o")
    host_a.record_success("gpt-4o")
    trail = host_a.history("gpt-4o")
    assert [t.to_state for t in trail] == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]


def test_a_stored_time_more_than_a_cooldown_ahead_counts_from_when_it_is_noticed(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30))
    ahead = make_breaker(config, clock=lambda: clock.now + 3600)
    behind = make_breaker(config, clock=clock)
    ahead.record_failure("k")  # stamped an hour in `behind`'s future
    with pytest.raises(CircuitOpenError) as rejected:
        behind.check("k")
    # Not "open for ever", not "an hour and the cooldown": the cooldown, from now.
    assert rejected.value.retry_after == 30
    clock.advance(29.999)
    with pytest.raises(CircuitOpenError):
        behind.check("k")
    clock.advance(0.001)
    behind.check("k")


@pytest.mark.parametrize("jump_days", [-1, 1])
def test_a_clock_stepped_a_day_holds_a_circuit_at_most_one_cooldown(
    make_breaker: BreakerFactory, clock: FakeClock, jump_days: int
) -> None:
    """Trip at T; the host's clock jumps a day back (or ahead). Back: the trip's time lies a
    day ahead and counts as now once noticed, so the circuit waits one cooldown from then,
    not a day. Ahead: the cooldown has long passed, so the next check probes."""
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30))
    breaker = make_breaker(config)
    breaker.record_failure("gpt-4o")
    clock.advance(jump_days * 86400)
    if jump_days > 0:
        breaker.check("gpt-4o")
    else:
        with pytest.raises(CircuitOpenError) as rejected:
            breaker.check("gpt-4o")  # the jump is noticed here
        assert rejected.value.retry_after == 30
        clock.advance(10)
        other = make_breaker(config)  # another process sees the same, stored rebase
        with pytest.raises(CircuitOpenError) as rejected:
            other.check("gpt-4o")
        assert rejected.value.retry_after == 20
        clock.advance(20)
        breaker.check("gpt-4o")
    assert breaker.state("gpt-4o") is CircuitState.HALF_OPEN
    breaker.record_success("gpt-4o")
    assert breaker.state("gpt-4o") is CircuitState.CLOSED


def test_a_retry_after_hold_keeps_its_length_across_a_clock_stepped_back(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30))
    breaker = make_breaker(config)
    breaker.record_failure("gpt-4o", retry_after=timedelta(minutes=5))
    clock.advance(-86400)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.check("gpt-4o")
    assert rejected.value.retry_after == 300  # the provider's hold, from when it is noticed


def test_a_half_open_probe_stamped_far_ahead_renews_one_probe_timeout_after_it_is_noticed(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, cooldown=timedelta(seconds=30), probe_timeout=timedelta(seconds=60)
    )
    breaker = make_breaker(config)
    breaker.record_failure("gpt-4o")
    clock.advance(30)
    breaker.check("gpt-4o")  # the probe, never reported
    clock.advance(-86400)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.check("gpt-4o")
    assert rejected.value.retry_after == 60
    clock.advance(60)
    breaker.check("gpt-4o")  # the budget renews
