"""Processes killed with SIGKILL at random points leave a consistent database behind."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import timedelta

import pytest

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState

from .conftest import FakeClock
from .stress import _chain_breaks

ROUNDS = 50
KEYS = ("gpt-4o", "claude")
# Trips at the second failure and may probe at once, so almost every operation changes state:
# a kill lands inside a state-changing transaction as often as possible.
CHURN = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(0), half_open_max=1)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _child(url: str, ready_fd: int, seed: int) -> None:
    """Hammer the keys until killed; write one byte once the first operation has committed."""
    rng = random.Random(seed)
    breaker = CircuitBreaker(url, CHURN)
    told = False
    while True:
        key = rng.choice(KEYS)
        try:
            breaker.check(key)
        except CircuitOpenError:
            continue
        if rng.random() < 0.6:
            breaker.record_failure(key, reason="crash test")
        else:
            breaker.record_success(key)
        if not told:
            os.write(ready_fd, b"!")
            told = True


def _fork_and_kill(url: str, seed: int, delay_s: float) -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            _child(url, write_fd, seed)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        assert os.read(read_fd, 1) == b"!", "the child died before its first operation"
        time.sleep(delay_s)
        os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        "the child stopped on its own (an error) before it was killed"
    )


def test_sigkill_at_random_points_leaves_state_and_audit_trail_consistent(db_url: str) -> None:
    rng = random.Random(2026)
    with CircuitBreaker(db_url, CHURN) as breaker:
        for round_ in range(ROUNDS):
            _fork_and_kill(db_url, seed=round_, delay_s=rng.uniform(0, 0.03))
            # The next process carries on: it can read and change every key.
            for key in KEYS:
                trail = breaker.history(key)
                assert _chain_breaks(key, trail, breaker.state(key)) == []
                breaker.record_success(key)
                assert breaker.state(key) is CircuitState.CLOSED
        # The children changed state many times (so kills could land mid-change).
        assert sum(len(breaker.history(key)) for key in KEYS) > 4 * ROUNDS


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
