"""The seed's tests (awaken-runtime 0.4.0), ported one for one, on every backend.

The seed sleeps past its cooldowns; these advance a fake clock instead.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError

from .conftest import BreakerFactory, FakeClock


def fast_config(**overrides: object) -> CircuitBreakerConfig:
    values: dict[str, object] = {
        "failure_threshold": 3,
        "cooldown": timedelta(milliseconds=50),
        "half_open_max": 1,
    }
    values.update(overrides)
    return CircuitBreakerConfig(**values)  # type: ignore[arg-type]


def admits(breaker: CircuitBreaker, key: str) -> bool:
    try:
        breaker.check(key)
    except CircuitOpenError:
        return False
    return True


def test_closed_allows_requests(make_breaker: BreakerFactory) -> None:
    assert admits(make_breaker(fast_config()), "model-a")


def test_opens_after_threshold_failures(make_breaker: BreakerFactory) -> None:
    cb = make_breaker(fast_config())
    for _ in range(3):
        cb.record_failure("model-a")
    assert not admits(cb, "model-a")


def test_below_threshold_stays_closed(make_breaker: BreakerFactory) -> None:
    cb = make_breaker(fast_config())
    cb.record_failure("model-a")
    cb.record_failure("model-a")
    assert admits(cb, "model-a")


def test_success_resets_failure_count(make_breaker: BreakerFactory) -> None:
    cb = make_breaker(fast_config())
    cb.record_failure("model-a")
    cb.record_failure("model-a")
    cb.record_success("model-a")
    cb.record_failure("model-a")
    cb.record_failure("model-a")
    assert admits(cb, "model-a")  # only 2 consecutive after the reset; threshold is 3


def test_transitions_to_half_open_after_cooldown(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    cb = make_breaker(fast_config(failure_threshold=2, cooldown=timedelta(milliseconds=10)))
    cb.record_failure("model-a")
    cb.record_failure("model-a")
    assert not admits(cb, "model-a")
    clock.advance(0.015)
    assert admits(cb, "model-a")  # half-open: one probe
    assert not admits(cb, "model-a")  # a second probe exceeds half_open_max


def test_half_open_success_closes_circuit(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    cb = make_breaker(fast_config(failure_threshold=2, cooldown=timedelta(milliseconds=10)))
    cb.record_failure("model-a")
    cb.record_failure("model-a")
    clock.advance(0.015)
    assert admits(cb, "model-a")
    cb.record_success("model-a")
    assert admits(cb, "model-a")  # closed: unlimited requests
    assert admits(cb, "model-a")


def test_half_open_failure_reopens_circuit(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    cb = make_breaker(fast_config(failure_threshold=2, cooldown=timedelta(milliseconds=10)))
    cb.record_failure("model-a")
    cb.record_failure("model-a")
    clock.advance(0.015)
    assert admits(cb, "model-a")
    cb.record_failure("model-a")
    assert not admits(cb, "model-a")


def test_independent_models(make_breaker: BreakerFactory) -> None:
    cb = make_breaker(fast_config())
    for _ in range(3):
        cb.record_failure("model-a")
    assert not admits(cb, "model-a")
    assert admits(cb, "model-b")


def test_default_config_values() -> None:
    config = CircuitBreakerConfig()
    assert config.failure_threshold == 5
    assert config.cooldown == timedelta(seconds=30)
    assert config.half_open_max == 1


def test_error_message_contains_model_name(make_breaker: BreakerFactory) -> None:
    cb = make_breaker(fast_config())
    for _ in range(3):
        cb.record_failure("gpt-4o")
    with pytest.raises(CircuitOpenError) as raised:
        cb.check("gpt-4o")
    assert str(raised.value) == "circuit breaker open for model gpt-4o"


def test_half_open_allows_multiple_probes(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    cb = make_breaker(
        fast_config(failure_threshold=2, cooldown=timedelta(milliseconds=10), half_open_max=3)
    )
    cb.record_failure("m")
    cb.record_failure("m")
    assert not admits(cb, "m")  # open
    clock.advance(0.015)
    assert admits(cb, "m")  # probe 1: the Open -> HalfOpen transition counts as one
    assert admits(cb, "m")  # probe 2
    assert admits(cb, "m")  # probe 3
    assert not admits(cb, "m")  # probe 4 blocked


# -- the seed's property tests; each example gets its own namespace --


def _fresh(make_breaker: BreakerFactory, threshold: int) -> CircuitBreaker:
    """The seed's property-test breaker (60 s cooldown, one probe) in a namespace of its own,
    to be closed by its example (`with`)."""
    config = CircuitBreakerConfig(
        failure_threshold=threshold, cooldown=timedelta(seconds=60), half_open_max=1
    )
    return make_breaker(config, namespace=uuid.uuid4().hex)


@given(threshold=st.integers(1, 19), failures=st.integers(0, 29))
def test_opens_exactly_at_threshold(
    make_breaker: BreakerFactory, threshold: int, failures: int
) -> None:
    with _fresh(make_breaker, threshold) as cb:
        for _ in range(failures):
            cb.record_failure("model")
        assert admits(cb, "model") == (failures < threshold)


@given(pre_failures=st.integers(0, 9))
def test_success_always_resets_to_closed(make_breaker: BreakerFactory, pre_failures: int) -> None:
    with _fresh(make_breaker, threshold=20) as cb:
        for _ in range(pre_failures):
            cb.record_failure("model")
        cb.record_success("model")
        cb.record_failure("model")  # one failure after the reset cannot trip threshold 20
        assert admits(cb, "model")


@given(failures_a=st.integers(0, 9), failures_b=st.integers(0, 9))
def test_independent_models_do_not_interfere(
    make_breaker: BreakerFactory, failures_a: int, failures_b: int
) -> None:
    threshold = 5
    with _fresh(make_breaker, threshold) as cb:
        for _ in range(failures_a):
            cb.record_failure("model-a")
        for _ in range(failures_b):
            cb.record_failure("model-b")
        assert (not admits(cb, "model-a")) == (failures_a >= threshold)
        assert (not admits(cb, "model-b")) == (failures_b >= threshold)
