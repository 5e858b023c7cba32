"""Time comes only from the injected clock: nothing in the library reads it another way."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

import durable_breaker
from durable_breaker import CircuitBreakerConfig, CircuitOpenError

from .conftest import BreakerFactory, FakeClock

SOURCE = Path(durable_breaker.__file__).parent
# `time.time` may be named as the default clock and as the demo's simulated start; never called
# inline anywhere else, and no other wall clock is read at all.
WALL_CLOCKS = re.compile(
    r"time\.(time|perf_counter|time_ns)\(\)|datetime\.(now|utcnow|today)\(|date\.today\("
)
ALLOWED = {("_cli.py", "clock = _DemoClock(time.time() - DEMO_CALLS * DEMO_STEP_S)")}
# The monotonic clock measures waits for the database (retry deadlines, outage rechecks),
# never circuit time: only the modules that wait may read it.
WAITING_MODULES = {"_faults.py", "_outage.py"}


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
