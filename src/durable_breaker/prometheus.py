"""Prometheus metrics for a breaker (the optional extra: pip install 'durable-breaker[prometheus]').

    from prometheus_client import start_http_server
    from durable_breaker.prometheus import BreakerMetrics

    BreakerMetrics(breaker)  # registers with prometheus_client's default registry
    start_http_server(9100)

- `durable_breaker_state{namespace,key,state}`: 1 for each stored key's current state, 0
  for its other states. For a `CircuitBreaker` it is read from the database at each scrape
  (every process's changes, one query); for an `AsyncCircuitBreaker`, which cannot be read
  from a synchronous scrape, it is the state of the last transition this process made.
- `durable_breaker_retry_after_seconds{namespace,key}` (`CircuitBreaker` only): seconds until
  each stored key's circuit next admits a call (0 when it admits now), computed with the
  settings stored with it, so that it agrees with `durable-breaker status`; a key whose wait
  is unknown (only a probe's result can end it) is left out.
- `durable_breaker_transitions_total{namespace,key,from_state,to_state}`: transitions this
  process committed.
- `durable_breaker_rejections_total{namespace,key,state}`: calls this process rejected.

Counters are per process, as Prometheus expects: sum them across processes in queries.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._async import AsyncCircuitBreaker
from ._breaker import CircuitBreaker
from ._errors import DurableBreakerError, InvalidArgumentError
from ._state import CircuitState, Transition

__all__ = ["BreakerMetrics"]


class BreakerMetrics(Collector):
    """Exports one breaker's states, transitions and rejections to a Prometheus registry."""

    def __init__(
        self,
        breaker: CircuitBreaker | AsyncCircuitBreaker,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if not isinstance(breaker, CircuitBreaker | AsyncCircuitBreaker):
            raise InvalidArgumentError(f"breaker must be a circuit breaker, got {breaker!r}")
        self._breaker = breaker
        self._namespace = breaker.namespace
        # A private registry for the counters, so that several breakers can be exported
        # (each its own collector); the outer registry collects them through `collect`.
        self._counters = CollectorRegistry(auto_describe=True)
        self._transitions = Counter(
            "durable_breaker_transitions",
            "Circuit transitions committed by this process.",
            ["namespace", "key", "from_state", "to_state"],
            registry=self._counters,
        )
        self._rejections = Counter(
            "durable_breaker_rejections",
            "Calls rejected by this process because a circuit was open.",
            ["namespace", "key", "state"],
            registry=self._counters,
        )
        self._last_states: dict[str, CircuitState] = {}
        breaker.on_transition(self._count_transition)
        breaker.on_rejection(self._count_rejection)
        if registry is not None:
            registry.register(self)

    def _count_transition(self, transition: Transition) -> None:
        self._transitions.labels(
            self._namespace,
            transition.key,
            transition.from_state.value,
            transition.to_state.value,
        ).inc()
        self._last_states[transition.key] = transition.to_state

    def _count_rejection(self, key: str, state: CircuitState) -> None:
        self._rejections.labels(self._namespace, key, state.value).inc()

    def _read(self) -> tuple[dict[str, CircuitState], dict[str, float]]:
        """Each key's state and known wait: read now (a CircuitBreaker), else what this
        process last saw (no waits)."""
        if isinstance(self._breaker, CircuitBreaker):
            try:
                rows = self._breaker.status()
            except DurableBreakerError:
                pass  # the database is unavailable, or the breaker closed: what we last saw
            else:
                states = {status.key: status.state for status in rows}
                waits = {s.key: s.retry_after for s in rows if s.retry_after is not None}
                return states, waits
        return dict(self._last_states), {}

    def collect(self) -> Iterator[Metric]:
        """The state and wait gauges (read now) and the counters."""
        states, waits = self._read()
        gauge = GaugeMetricFamily(
            "durable_breaker_state",
            "1 for the current state of each circuit, 0 for its other states.",
            labels=["namespace", "key", "state"],
        )
        for key, current in sorted(states.items()):
            for state in CircuitState:
                gauge.add_metric([self._namespace, key, state.value], float(state is current))
        yield gauge
        if isinstance(self._breaker, CircuitBreaker):
            wait = GaugeMetricFamily(
                "durable_breaker_retry_after_seconds",
                "Seconds until the circuit next admits a call, by its stored settings.",
                labels=["namespace", "key"],
            )
            for key, seconds in sorted(waits.items()):
                wait.add_metric([self._namespace, key], seconds)
            yield wait
        yield from self._counters.collect()
