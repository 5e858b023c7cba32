"""The real breaker and an in-memory reference model of the seed's semantics, driven side by side.

Rules check, succeed, fail and reset several keys through several breakers on one database
(as several processes or hosts would share it), move a fake clock, and restart a breaker;
invariants compare every key's state and its whole audit trail with the model after every
step. The model is one seed breaker shared by all of them: whichever breaker a call goes
through, it applies to the state the database holds when it is made. Runs on every backend.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field, replace
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
FORCED_OPEN, DISABLED = "forced_open", "disabled"


@dataclass
class ModelKey:
    """The reference semantics of one key, in integer milliseconds."""

    state: str = CLOSED
    failures: int = 0
    probes: int = 0
    last_failure_ms: int = 0
    half_open_since_ms: int = 0
    hold_ms: int | None = None  # no probe before: a trip's Retry-After, force_open's until
    generation: int = 0  # state changes so far: what permits are fenced by
    # (from, to, trigger, consecutive failures after)
    trail: list[tuple[str, str, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ModelConfig:
    threshold: int
    cooldown_ms: int
    half_open_max: int
    probe_timeout_ms: int | None


class ReferenceModel:
    """The seed's circuit breaker plus the probe_timeout renewal, Retry-After holds, manual
    control (force_open, disable) and permits fenced by generation, written plainly."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.keys: dict[str, ModelKey] = {}

    def _move(self, k: ModelKey, to: str, trigger: str) -> None:
        k.trail.append((k.state, to, trigger, k.failures))
        k.state = to
        k.generation += 1

    @staticmethod
    def _elapsed(now: int, since: int) -> int:
        return max(0, now - since)  # a clock that went back counts as no time passed...

    def _notice_clock_behind(self, k: ModelKey, now: int) -> None:
        """...but a stored moment more than one cooldown ahead of the clock (the clock
        stepped back) counts as now once noticed; a Retry-After hold keeps its length."""
        if k.state == OPEN and k.last_failure_ms - now > self.config.cooldown_ms:
            if k.hold_ms is not None:
                k.hold_ms += now - k.last_failure_ms
            k.last_failure_ms = now
        if k.state == HALF_OPEN and k.half_open_since_ms - now > self.config.cooldown_ms:
            k.half_open_since_ms = now

    def retry_after_s(self, key: str, now: int) -> float | None:
        """Seconds until a call could be admitted, asked after a rejection."""
        k, c = self.keys[key], self.config
        if k.state == FORCED_OPEN:
            return None if k.hold_ms is None else (k.hold_ms - now) / 1000
        if k.state == OPEN:  # the cooldown ends at a fixed moment, wherever the clock is now
            until = k.last_failure_ms + c.cooldown_ms
            return ((until if k.hold_ms is None else max(until, k.hold_ms)) - now) / 1000
        if c.probe_timeout_ms is None:
            return None
        return (k.half_open_since_ms + c.probe_timeout_ms - now) / 1000

    def check(self, key: str, now: int, *, dry_run: bool = False) -> bool:
        k = self.keys.get(key)
        if k is None or k.state in (CLOSED, DISABLED):
            return True
        if dry_run:
            k = replace(k, trail=[])  # asks, changes nothing
        self._notice_clock_behind(k, now)
        c = self.config
        held = k.hold_ms is not None and now < k.hold_ms
        if k.state == FORCED_OPEN and (k.hold_ms is None or held):
            return False
        if k.state == OPEN and (self._elapsed(now, k.last_failure_ms) < c.cooldown_ms or held):
            return False
        if k.state in (OPEN, FORCED_OPEN):
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

    def failure(self, key: str, now: int, retry_after_ms: int | None = None) -> None:
        k = self.keys.setdefault(key, ModelKey())
        self._notice_clock_behind(k, now)
        k.failures += 1
        k.last_failure_ms = now
        if k.state == HALF_OPEN or (k.state == CLOSED and k.failures >= self.config.threshold):
            k.hold_ms = None if retry_after_ms is None else now + retry_after_ms
            self._move(k, OPEN, "failure")

    def success(self, key: str) -> None:
        k = self.keys.get(key)
        if k is None or k.state == FORCED_OPEN:  # held open whatever succeeds
            return
        k.failures = k.probes = 0
        k.hold_ms = None
        if k.state in (OPEN, HALF_OPEN):
            self._move(k, CLOSED, "success")

    def quiet_success(self, key: str) -> bool:
        """Whether a success would change nothing stored."""
        k = self.keys.get(key)
        return (
            k is None
            or k.state == FORCED_OPEN
            or (k.state in (CLOSED, DISABLED) and k.failures == k.probes == 0)
        )

    def reset(self, key: str) -> bool:
        k = self.keys.get(key)
        if k is None:
            return False
        self._operator(k, CLOSED, "reset", None)
        return True

    def force_open(self, key: str, now: int, for_ms: int | None) -> None:
        hold = None if for_ms is None else now + for_ms
        self._operator(self.keys.setdefault(key, ModelKey()), FORCED_OPEN, "force_open", hold)

    def disable(self, key: str) -> None:
        self._operator(self.keys.setdefault(key, ModelKey()), DISABLED, "disable", None)

    def _operator(self, k: ModelKey, to: str, trigger: str, hold_ms: int | None) -> None:
        k.failures = k.probes = 0
        k.hold_ms = hold_ms
        self._move(k, to, trigger)

    def generation(self, key: str) -> int:
        k = self.keys.get(key)
        return 0 if k is None else k.generation

    def outcome(self, key: str, generation: int, outcome: str, now: int) -> None:
        """A permit's outcome: applied if its generation is current, else audited as late."""
        k = self.keys.get(key)
        if k is not None and k.generation != generation:
            if outcome != "release":
                k.trail.append((k.state, k.state, outcome, k.failures))
        elif outcome == "success":
            self.success(key)
        elif outcome == "failure":
            self.failure(key, now)
        elif k is not None and k.state == HALF_OPEN:
            self._notice_clock_behind(k, now)
            k.probes = max(0, k.probes - 1)


configs = st.builds(
    ModelConfig,
    threshold=st.integers(1, 4),
    cooldown_ms=st.integers(0, 20_000),
    half_open_max=st.integers(1, 3),
    probe_timeout_ms=st.none() | st.integers(0, 40_000),
)


BREAKERS = 3  # on one database, as three processes would share it
WHICH = st.integers(0, BREAKERS - 1)


class BreakerComparison(RuleBasedStateMachine):
    """Several breakers on one database against one shared reference model."""

    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.start_s = self.clock.now
        self.namespace = uuid.uuid4().hex  # each example starts from an empty namespace
        self.breakers: list[Any] = []
        # Unsettled permits: (breaker, key, generation it was admitted under, the permit).
        self.permits: list[tuple[int, str, int, Any]] = []

    def _now_ms(self) -> int:
        return round((self.clock.now - self.start_s) * 1000)

    def _open(self, which: int) -> Any:
        return CircuitBreaker(self.url, self.config, clock=self.clock, namespace=self.namespace)

    def _open_async(self) -> Blocking:
        breaker = AsyncCircuitBreaker(
            self.url, self.config, clock=self.clock, namespace=self.namespace
        )
        return Blocking(breaker)

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
        self.breakers = [self._open(which) for which in range(BREAKERS)]

    @rule(which=WHICH, key=st.sampled_from(KEYS))
    def check(self, which: int, key: str) -> None:
        expected = self.model.check(key, self._now_ms())
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

    @rule(which=WHICH, key=st.sampled_from(KEYS))
    def success(self, which: int, key: str) -> None:
        self.model.success(key)
        self.breakers[which].record_success(key)

    @rule(
        which=WHICH,
        key=st.sampled_from(KEYS),
        retry_after_ms=st.none() | st.integers(1, 60_000),
    )
    def failure(self, which: int, key: str, retry_after_ms: int | None) -> None:
        self.model.failure(key, self._now_ms(), retry_after_ms)
        wait = None if retry_after_ms is None else timedelta(milliseconds=retry_after_ms)
        self.breakers[which].record_failure(key, reason="HTTP 503", retry_after=wait)

    @rule(
        which=WHICH,
        key=st.sampled_from(KEYS),
        for_ms=st.none() | st.integers(1, 30_000),
    )
    def force_open(self, which: int, key: str, for_ms: int | None) -> None:
        self.model.force_open(key, self._now_ms(), for_ms)
        until = None if for_ms is None else timedelta(milliseconds=for_ms)
        self.breakers[which].force_open(key, until)

    @rule(which=WHICH, key=st.sampled_from(KEYS))
    def disable(self, which: int, key: str) -> None:
        self.model.disable(key)
        self.breakers[which].disable(key)

    @rule(which=WHICH, key=st.sampled_from(KEYS))
    def acquire(self, which: int, key: str) -> None:
        expected = self.model.check(key, self._now_ms())
        try:
            permit = self.breakers[which].acquire(key)
        except CircuitOpenError:
            assert not expected
        else:
            assert expected
            self.permits.append((which, key, self.model.generation(key), permit))

    @precondition(lambda self: bool(self.permits))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "release"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        """Report a permit's outcome, perhaps long after the circuit changed state."""
        which, key, generation, permit = self.permits.pop(
            data.draw(st.integers(0, len(self.permits) - 1))
        )
        self.model.outcome(key, generation, outcome, self._now_ms())
        report = {"success": "succeeded", "failure": "failed", "release": "abandoned"}[outcome]
        done = getattr(permit, report)()
        if done is not None:  # an AsyncPermit's report: a coroutine, run on its breaker's loop
            self.breakers[which].run(done)

    @rule(which=WHICH, key=st.sampled_from(KEYS))
    def reset(self, which: int, key: str) -> None:
        if self.model.reset(key):
            self.breakers[which].reset(key)
        else:
            with pytest.raises(UnknownKeyError):
                self.breakers[which].reset(key)

    @rule(
        caller=WHICH,
        other=WHICH,
        key=st.sampled_from(KEYS),
        meanwhile=st.sampled_from(["failure", "success", "reset", "force_open", "disable"]),
    )
    def another_process_acts_mid_call(
        self, caller: int, other: int, key: str, meanwhile: str
    ) -> None:
        """`caller` checks, `other` changes the key, then `caller` reports a success: the
        success applies to the state the database holds when it is reported."""
        self.check(caller, key)
        if meanwhile == "failure":
            self.failure(other, key, None)
        elif meanwhile == "success":
            self.success(other, key)
        elif meanwhile == "reset":
            self.reset(other, key)
        elif meanwhile == "force_open":
            self.force_open(other, key, None)
        else:
            self.disable(other, key)
        self.success(caller, key)

    @rule(ms=st.integers(-5_000, 25_000))
    def advance(self, ms: int) -> None:
        """Move the clock, sometimes backwards (an NTP step, another host's clock)."""
        self.clock.advance(ms / 1000)

    @rule(days=st.sampled_from([-1, 1]))
    def step_the_clock_a_day(self, days: int) -> None:
        """The host's clock steps a whole day back, or ahead."""
        self.clock.advance(days * 86_400)

    @precondition(lambda self: bool(self.breakers))
    @rule(which=WHICH)
    def restart(self, which: int) -> None:
        self.permits = [p for p in self.permits if p[0] != which]  # gone with their breaker
        self.breakers[which].close()
        self.breakers[which] = self._open(which)

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

    def run(self, coroutine: Any) -> Any:
        return self._runner.run(coroutine)

    def close(self) -> None:
        self._runner.run(self._breaker.close())
        self._runner.close()


class AsyncBreakerComparison(BreakerComparison):
    """The same rules and invariants, through AsyncCircuitBreakers."""

    def _open(self, which: int) -> Any:
        return self._open_async()


def test_async_breaker_matches_the_reference_model(db_url: str) -> None:
    AsyncBreakerComparison.url = db_url
    run_state_machine_as_test(AsyncBreakerComparison)


class MixedBreakerComparison(BreakerComparison):
    """Sync and asyncio breakers side by side on one database: one shared breaker still."""

    def _open(self, which: int) -> Any:
        return self._open_async() if which == BREAKERS - 1 else super()._open(which)


def test_sync_and_async_breakers_share_one_reference_model(db_url: str) -> None:
    MixedBreakerComparison.url = db_url
    run_state_machine_as_test(MixedBreakerComparison)
