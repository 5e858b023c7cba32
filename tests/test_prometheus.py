"""The Prometheus extra: state per key, transitions and rejections counted."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from durable_breaker import AsyncCircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from durable_breaker.prometheus import BreakerMetrics

from .conftest import BreakerFactory, FakeClock

CONFIG = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=10))


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_state_transitions_and_rejections_are_exported(make_breaker: BreakerFactory) -> None:
    breaker, other = make_breaker(CONFIG), make_breaker(CONFIG)
    registry = CollectorRegistry()
    BreakerMetrics(breaker, registry)
    other.record_failure("claude")  # another process's change: only in the state gauge
    breaker.record_failure("gpt-4o")
    breaker.record_failure("gpt-4o")
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            breaker.check("gpt-4o")
    ns = {"namespace": "default"}
    assert _sample(registry, "durable_breaker_state", key="gpt-4o", state="open", **ns) == 1
    assert _sample(registry, "durable_breaker_state", key="gpt-4o", state="closed", **ns) == 0
    assert _sample(registry, "durable_breaker_state", key="claude", state="closed", **ns) == 1
    transitions = {"key": "gpt-4o", "from_state": "closed", "to_state": "open", **ns}
    assert _sample(registry, "durable_breaker_transitions_total", **transitions) == 1
    rejected = {"key": "gpt-4o", "state": "open", **ns}
    assert _sample(registry, "durable_breaker_rejections_total", **rejected) == 3
    assert b"durable_breaker_state{" in generate_latest(registry)


def test_an_async_breaker_exports_the_states_it_changed(db_url: str, clock: FakeClock) -> None:
    registry = CollectorRegistry()

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, CONFIG, clock=clock) as breaker:
            BreakerMetrics(breaker, registry)
            await breaker.force_open("gpt-4o")

    asyncio.run(scenario())
    labels = {"namespace": "default", "key": "gpt-4o", "state": "forced_open"}
    assert _sample(registry, "durable_breaker_state", **labels) == 1
