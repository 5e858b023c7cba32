"""Retention: pruning old transitions keeps each key's latest and touches nothing else."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, InvalidArgumentError
from durable_breaker._cli import run

from .conftest import BreakerFactory, FakeClock

TRIP_AT_1 = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=10))
DAY = 86400.0


def _cycle(breaker: CircuitBreaker, key: str, clock: FakeClock) -> None:
    """Trip `key`, probe it after the cooldown, close it: three transitions."""
    breaker.record_failure(key)
    clock.advance(10)
    breaker.check(key)
    breaker.record_success(key)


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_prune_deletes_old_transitions_but_keeps_each_keys_latest(
    make_breaker: BreakerFactory, clock: FakeClock, batch_size: int
) -> None:
    breaker = make_breaker(TRIP_AT_1)
    other = make_breaker(TRIP_AT_1, namespace="other")
    for _ in range(3):
        _cycle(breaker, "old", clock)  # 9 transitions, all 40 days old by the end
        _cycle(other, "old", clock)
    clock.advance(40 * DAY)
    _cycle(breaker, "fresh", clock)  # 3 transitions, new
    breaker.record_failure("recent")  # 1 transition, new

    removed = breaker.prune(timedelta(days=30), batch_size=batch_size)

    assert removed == 8
    kept = breaker.history("old")
    assert [(t.from_state, t.to_state) for t in kept] == [
        (CircuitState.HALF_OPEN, CircuitState.CLOSED)
    ]
    assert len(breaker.history("fresh")) == 3
    assert len(breaker.history("recent")) == 1
    assert len(other.history("old")) == 9  # another namespace is untouched
    assert breaker.state("old") is CircuitState.CLOSED
    assert breaker.prune(timedelta(days=30), batch_size=batch_size) == 0


def test_prune_keeps_a_transition_exactly_at_the_cutoff(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(TRIP_AT_1)
    _cycle(breaker, "k", clock)  # transitions at t, t+10, t+10
    clock.advance(100)  # now t+110
    assert breaker.prune(timedelta(seconds=100)) == 1  # the trip at t, 110 s old
    assert breaker.prune(timedelta(seconds=100)) == 0  # the probe at t+10 is exactly 100 s old
    assert breaker.prune(timedelta(seconds=99)) == 1
    assert [t.trigger for t in breaker.history("k")] == ["success"]


@pytest.mark.parametrize(
    ("older_than", "batch_size", "message"),
    [
        (timedelta(days=-1), 10, "older_than must be a non-negative"),
        (30, 10, "older_than must be a non-negative datetime.timedelta"),
        (timedelta(days=1), 0, "batch_size must be an integer >= 1"),
        (timedelta(days=1), True, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_prune_arguments_are_refused(
    make_breaker: BreakerFactory, older_than: object, batch_size: object, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        make_breaker().prune(older_than, batch_size=batch_size)  # type: ignore[arg-type]


def test_cli_prune_reports_what_it_removed(
    make_breaker: BreakerFactory, clock: FakeClock, db_url: str
) -> None:
    breaker = make_breaker(TRIP_AT_1)
    _cycle(breaker, "gpt-4o", clock)
    clock.advance(31 * DAY)
    out = io.StringIO()
    # The CLI reads the real clock, which is years past the fake clock's start.
    argv = ["--url", db_url, "prune", "--older-than", "30d", "--batch-size", "1", "--yes"]
    assert run(argv, out) == 0
    assert out.getvalue().startswith("removed 2 transitions older than 30d (before ")
    assert "from namespace 'default' (the latest of every key is kept)" in out.getvalue()
    assert len(breaker.history("gpt-4o")) == 1


@pytest.mark.parametrize("age", ["30x", "-1d", "d", "1h-5m", "99999999d"])
def test_cli_prune_refuses_an_unreadable_age(age: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(["prune", f"--older-than={age}", "--yes"])
    assert exit_.value.code == 2
    assert "argument --older-than: expected a duration" in capsys.readouterr().err


def test_an_age_older_than_any_date_removes_nothing(
    make_breaker: BreakerFactory, clock: FakeClock, db_url: str
) -> None:
    breaker = make_breaker(TRIP_AT_1)
    _cycle(breaker, "k", clock)
    assert breaker.prune(timedelta(days=10**6)) == 0
    out = io.StringIO()
    assert run(["--url", db_url, "prune", "--older-than", "3660d", "--yes"], out) == 0
    assert out.getvalue().startswith("removed 0 transitions older than 3660d")
    assert len(breaker.history("k")) == 3
