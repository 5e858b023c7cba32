"""The real breaker and an in-memory reference model of the seed's semantics, driven side by side.

Rules check, succeed, fail and reset several keys through two breakers on one database,
move a fake clock, and restart a breaker; invariants compare every key's state and its
whole audit trail with the model after every step. Runs on every backend.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from durable_breaker import (
    AsyncCircuitBreaker,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    UnknownKeyError,
)

from .conftest import FakeClock

KEYS = ["gpt-4o", 'it\'s "quoted"', "with space", "模型-ü", "claude;--"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class ModelKey:
    """The reference semantics of one key, in integer milliseconds."""

    state: str = CLOSED
    failures: int = 0
    probes: int = 0
    last_failure_ms: int = 0
    half_open_since_ms: int = 0
    # (from, to, trigger, consecutive failures after)
    trail: list[tuple[str, str, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ModelConfig:
    threshold: int
    cooldown_ms: int
    half_open_max: int
    probe_timeout_ms: int | None


class ReferenceModel:
    """The seed's circuit breaker plus the probe_timeout renewal, written plainly."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.keys: dict[str, ModelKey] = {}

    def _move(self, k: ModelKey, to: str, trigger: str) -> None:
        k.trail.append((k.state, to, trigger, k.failures))
        k.state = to

    @staticmethod
    def _elapsed(now: int, since: int) -> int:
        return max(0, now - since)  # a clock that went back counts as no time passed

    def retry_after_s(self, key: str, now: int) -> float | None:
        """Seconds until a call could be admitted, asked after a rejection."""
        k, c = self.keys[key], self.config
        if k.state == OPEN:  # the cooldown ends at a fixed moment, wherever the clock is now
            return (k.last_failure_ms + c.cooldown_ms - now) / 1000
        if c.probe_timeout_ms is None:
            return None
        return (k.half_open_since_ms + c.probe_timeout_ms - now) / 1000

    def check(self, key: str, now: int, *, dry_run: bool = False) -> bool:
        k = self.keys.get(key)
        if k is None or k.state == CLOSED:
            return True
        c = self.config
        if k.state == OPEN:
            if self._elapsed(now, k.last_failure_ms) < c.cooldown_ms:
                return False
            if not dry_run:
                self._move(k, HALF_OPEN, "check")
                k.probes, k.half_open_since_ms = 1, now
            return True
        if k.probes < c.half_open_max:
            if not dry_run:
                k.probes += 1
            return True
        if (
            c.probe_timeout_ms is not None
            and self._elapsed(now, k.half_open_since_ms) >= c.probe_timeout_ms
        ):
            if not dry_run:
                self._move(k, HALF_OPEN, "check")
                k.probes, k.half_open_since_ms = 1, now
            return True
        return False

    def failure(self, key: str, now: int) -> None:
        k = self.keys.setdefault(key, ModelKey())
        k.failures += 1
        k.last_failure_ms = now
        if k.state == HALF_OPEN or (k.state == CLOSED and k.failures >= self.config.threshold):
            self._move(k, OPEN, "failure")

    def success(self, key: str) -> None:
        k = self.keys.get(key)
        if k is None:
            return
        k.failures = k.probes = 0
        if k.state != CLOSED:
            self._move(k, CLOSED, "success")

    def reset(self, key: str) -> bool:
        k = self.keys.get(key)
        if k is None:
            return False
        k.failures = k.probes = 0
        self._move(k, CLOSED, "reset")
        return True


configs = st.builds(
    ModelConfig,
    threshold=st.integers(1, 4),
    cooldown_ms=st.integers(0, 20_000),
    half_open_max=st.integers(1, 3),
    probe_timeout_ms=st.none() | st.integers(0, 40_000),
)


class BreakerComparison(RuleBasedStateMachine):
    """Two breakers on one database against the reference model."""

    url: str = ""
    # The sync breaker decides a success right after a clean check against what it read.
    skips_clean_success = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.start_s = self.clock.now
        self.namespace = uuid.uuid4().hex  # each example starts from an empty namespace
        self.breakers: list[Any] = []
        # Per breaker: the key its last `check` read and whether that circuit was clean
        # (Closed, no failures, no probes), until that breaker next writes. A success right
        # after such a check is decided against what the check read (documented).
        self.last_check: list[tuple[str, bool] | None] = [None, None]

    def _clean(self, key: str) -> bool:
        k = self.model.keys.get(key)
        return k is None or (k.state == CLOSED and k.failures == 0 and k.probes == 0)

    def _now_ms(self) -> int:
        return round((self.clock.now - self.start_s) * 1000)

    def _open(self) -> Any:
        return CircuitBreaker(self.url, self.config, clock=self.clock, namespace=self.namespace)

    @initialize(config=configs)
    def start(self, config: ModelConfig) -> None:
        note(f"config: {config}")
        self.model = ReferenceModel(config)
        timeout = config.probe_timeout_ms
        self.config = CircuitBreakerConfig(
            failure_threshold=config.threshold,
            cooldown=timedelta(milliseconds=config.cooldown_ms),
            half_open_max=config.half_open_max,
            probe_timeout=None if timeout is None else timedelta(milliseconds=timeout),
        )
        self.breakers = [self._open(), self._open()]

    @rule(which=st.integers(0, 1), key=st.sampled_from(KEYS))
    def check(self, which: int, key: str) -> None:
        expected = self.model.check(key, self._now_ms())
        self.last_check[which] = (key, self._clean(key))
        try:
            self.breakers[which].check(key)
            admitted = True
        except CircuitOpenError as rejected:
            admitted = False
            assert (rejected.key, rejected.state.value) == (key, self.model.keys[key].state)
            expected_wait = self.model.retry_after_s(key, self._now_ms())
            if expected_wait is None:
                assert rejected.retry_after is None
            else:
                assert rejected.retry_after == pytest.approx(expected_wait, abs=1e-6)
        assert admitted == expected

    @rule(which=st.integers(0, 1), key=st.sampled_from(KEYS))
    def success(self, which: int, key: str) -> None:
        if not self.skips_clean_success or self.last_check[which] != (key, True):
            self.model.success(key)
            # Read (and perhaps written) through the database: the check no longer stands.
            self.last_check[which] = None
        self.breakers[which].record_success(key)

    @rule(which=st.integers(0, 1), key=st.sampled_from(KEYS))
    def failure(self, which: int, key: str) -> None:
        self.model.failure(key, self._now_ms())
        self._wrote(which)
        self.breakers[which].record_failure(key, reason="HTTP 503")

    @rule(which=st.integers(0, 1), key=st.sampled_from(KEYS))
    def reset(self, which: int, key: str) -> None:
        if self.model.reset(key):
            self._wrote(which)
            self.breakers[which].reset(key)
        else:
            with pytest.raises(UnknownKeyError):
                self.breakers[which].reset(key)

    def _wrote(self, which: int) -> None:
        """Breaker `which` wrote: its last check no longer stands for what is stored."""
        self.last_check[which] = None

    @rule(ms=st.integers(-5_000, 25_000))
    def advance(self, ms: int) -> None:
        """Move the clock, sometimes backwards (an NTP step, another host's clock)."""
        self.clock.advance(ms / 1000)

    @precondition(lambda self: bool(self.breakers))
    @rule(which=st.integers(0, 1))
    def restart(self, which: int) -> None:
        self.last_check[which] = None
        self.breakers[which].close()
        self.breakers[which] = self._open()

    @invariant()
    def every_key_agrees_with_the_model(self) -> None:
        if not self.breakers:
            return
        reader = self.breakers[0]
        stored = {s.key: s.consecutive_failures for s in reader.status()}
        assert stored == {key: k.failures for key, k in self.model.keys.items()}
        for key in KEYS:
            k = self.model.keys.get(key, ModelKey())
            assert reader.state(key).value == k.state, key
            assert reader.is_available(key) == self.model.check(key, self._now_ms(), dry_run=True)

    @invariant()
    def every_trail_is_an_unbroken_chain_ending_in_the_state(self) -> None:
        if not self.breakers:
            return
        for key in KEYS:
            history = self.breakers[1].history(key)
            k = self.model.keys.get(key, ModelKey())
            assert [
                (t.from_state.value, t.to_state.value, t.trigger, t.consecutive_failures)
                for t in history
            ] == k.trail
            for earlier, later in itertools.pairwise(history):
                assert earlier.to_state == later.from_state
            if history:
                assert history[-1].to_state.value == k.state

    def teardown(self) -> None:
        for breaker in self.breakers:
            breaker.close()


def test_breaker_matches_the_reference_model(db_url: str) -> None:
    BreakerComparison.url = db_url
    run_state_machine_as_test(BreakerComparison)


class Blocking:
    """An AsyncCircuitBreaker driven from sync code: each call runs on this one's own loop."""

    def __init__(self, breaker: AsyncCircuitBreaker) -> None:
        self._runner = asyncio.Runner()
        self._breaker = self._runner.run(breaker.start())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._breaker, name)
        return lambda *args, **kwargs: self._runner.run(method(*args, **kwargs))

    def close(self) -> None:
        self._runner.run(self._breaker.close())
        self._runner.close()


class AsyncBreakerComparison(BreakerComparison):
    """The same rules and invariants, through two AsyncCircuitBreakers."""

    skips_clean_success = False

    def _open(self) -> Any:
        return Blocking(
            AsyncCircuitBreaker(self.url, self.config, clock=self.clock, namespace=self.namespace)
        )


def test_async_breaker_matches_the_reference_model(db_url: str) -> None:
    AsyncBreakerComparison.url = db_url
    run_state_machine_as_test(AsyncBreakerComparison)
