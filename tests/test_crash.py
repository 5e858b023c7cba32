"""Processes killed with SIGKILL at random points leave a consistent database behind."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState

from .conftest import FakeClock
from .stress import kill_rounds

ROUNDS = 50
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_sigkill_at_random_points_leaves_state_and_audit_trail_consistent(db_url: str) -> None:
    summary = kill_rounds(db_url, ROUNDS)
    assert summary.problems == []
    # Every child changed state before it was killed, so kills land among changes.
    assert summary.transitions >= ROUNDS


def test_a_probe_taken_by_a_killed_process_is_released_by_probe_timeout(
    db_url: str, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1,
        cooldown=timedelta(seconds=10),
        half_open_max=1,
        probe_timeout=timedelta(seconds=30),
    )
    with CircuitBreaker(db_url, config, clock=clock) as breaker:
        breaker.record_failure("gpt-4o")
        clock.advance(10)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:  # takes the only probe, says so, and waits to be killed
                CircuitBreaker(db_url, config, clock=clock).check("gpt-4o")
                os.write(write_fd, b"!")
                time.sleep(60)
            finally:
                os._exit(1)
        assert os.read(read_fd, 1) == b"!"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        os.close(write_fd)

        with pytest.raises(CircuitOpenError) as rejected:
            breaker.check("gpt-4o")  # the dead process holds the budget
        assert rejected.value.state is CircuitState.HALF_OPEN
        assert rejected.value.retry_after == 30
        clock.advance(30)
        breaker.check("gpt-4o")  # released: a new probe is admitted
        breaker.record_success("gpt-4o")
        trail = [(t.from_state, t.to_state) for t in breaker.history("gpt-4o")]
        assert trail == [
            (CircuitState.CLOSED, CircuitState.OPEN),
            (CircuitState.OPEN, CircuitState.HALF_OPEN),
            (CircuitState.HALF_OPEN, CircuitState.HALF_OPEN),  # the renewal
            (CircuitState.HALF_OPEN, CircuitState.CLOSED),
        ]
