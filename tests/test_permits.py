"""Guarded calls, permits and their fencing, Retry-After, and transition callbacks."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from durable_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    InvalidArgumentError,
    StoreUnavailableError,
    Transition,
)
from durable_breaker import _outage as config_outage
from durable_breaker._tables import transitions

from .conftest import BreakerFactory, FakeClock

CONFIG = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=10))


class HTTPError(Exception):
    """Shaped like an openai/anthropic status error."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers or {}


def _trip(breaker: Any, key: str = "k") -> None:
    breaker.record_failure(key)
    breaker.record_failure(key)


def test_guard_records_success_and_counted_failures(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG)
    with breaker.guard("k"):
        pass
    for _ in range(2):
        with pytest.raises(HTTPError), breaker.guard("k"):
            raise HTTPError(503)
    assert breaker.state("k") is CircuitState.OPEN
    assert breaker.history("k")[-1].reason == "HTTPError: HTTP 503"
    with pytest.raises(CircuitOpenError), breaker.guard("k"):
        pytest.fail("a guarded block never runs on an open circuit")


def test_guard_does_not_count_errors_the_classifier_ignores(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG)
    for error in (HTTPError(400), HTTPError(401), KeyboardInterrupt()):
        for _ in range(3):
            with pytest.raises(type(error)), breaker.guard("k"):
                raise error
    assert breaker.status() == [] or breaker.status()[0].consecutive_failures == 0


def test_a_custom_is_failure_decides_what_counts(make_breaker: BreakerFactory) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, is_failure=lambda e: isinstance(e, OSError))
    breaker = make_breaker(config)
    with pytest.raises(ValueError), breaker.guard("k"):
        raise ValueError("not counted")
    assert breaker.state("k") is CircuitState.CLOSED
    with pytest.raises(OSError), breaker.guard("k"):
        raise OSError("counted")
    assert breaker.state("k") is CircuitState.OPEN


def test_an_abandoned_half_open_probe_frees_its_slot_at_once(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(CONFIG)
    _trip(breaker)
    clock.advance(10)
    with pytest.raises(KeyboardInterrupt), breaker.guard("k"):
        raise KeyboardInterrupt
    permit = breaker.acquire("k")  # the slot came back: no probe_timeout wait
    permit.succeeded()
    assert breaker.state("k") is CircuitState.CLOSED


def test_a_late_success_does_not_close_a_newer_open_circuit(make_breaker: BreakerFactory) -> None:
    breaker, other = make_breaker(CONFIG), make_breaker(CONFIG)
    announced: list[Transition] = []
    breaker.on_transition(announced.append)
    slow = breaker.acquire("k")  # admitted while Closed
    _trip(other)  # meanwhile the circuit trips: a new generation
    slow.succeeded()
    assert announced == []  # audited, but no transition
    assert breaker.state("k") is CircuitState.OPEN
    last = breaker.history("k")[-1]
    assert (last.trigger, last.from_state, last.to_state) == ("success", "open", "open")
    assert last.reason is not None and last.reason.startswith("late result")
    breaker.record_success("k")  # the plain call keeps the seed's semantics
    assert breaker.state("k") is CircuitState.CLOSED


def test_a_late_failure_does_not_reopen_a_newer_closed_circuit(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(CONFIG)
    _trip(breaker)
    clock.advance(10)
    probe = breaker.acquire("k")
    breaker.reset("k")  # an operator closed it while the probe ran
    probe.failed(reason="timed out")
    [status] = breaker.status()
    assert (status.state, status.consecutive_failures) == (CircuitState.CLOSED, 0)
    assert breaker.history("k")[-1].reason.endswith("; timed out")  # type: ignore[union-attr]


def test_a_permit_takes_exactly_one_outcome(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG)
    permit = breaker.acquire("k")
    permit.failed()
    with pytest.raises(InvalidArgumentError, match="already settled"):
        permit.succeeded()
    with pytest.raises(InvalidArgumentError, match="already settled"):
        permit.abandoned()
    assert breaker.status()[0].consecutive_failures == 1


def test_retry_after_holds_a_trip_open_and_is_reported(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(CONFIG)
    for _ in range(2):
        with pytest.raises(HTTPError), breaker.guard("k"):
            raise HTTPError(429, {"Retry-After": "120"})
    clock.advance(10)  # the cooldown has passed, the Retry-After has not
    with pytest.raises(CircuitOpenError) as raised:
        breaker.check("k")
    assert raised.value.retry_after == pytest.approx(110)
    clock.advance(110)
    breaker.check("k")
    assert breaker.state("k") is CircuitState.HALF_OPEN


def test_retry_after_is_capped_by_max_retry_after(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, max_retry_after=timedelta(seconds=60))
    breaker = make_breaker(config)
    breaker.record_failure("k", retry_after=timedelta(days=30))
    with pytest.raises(CircuitOpenError) as raised:
        breaker.check("k")
    assert raised.value.retry_after == pytest.approx(60)


def test_protect_guards_sync_functions_with_a_key_from_the_arguments(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CONFIG)

    @breaker.protect(key=lambda prompt, *, model: model)
    def complete(prompt: str, *, model: str) -> str:
        if model == "bad":
            raise TimeoutError("no answer")
        return prompt.upper()

    assert complete.__name__ == "complete"
    assert complete("hi", model="good") == "HI"
    for _ in range(2):
        with pytest.raises(TimeoutError):
            complete("hi", model="bad")
    with pytest.raises(CircuitOpenError):
        complete("hi", model="bad")
    assert breaker.state("good") is CircuitState.CLOSED


def test_protect_guards_coroutines_and_cancellation_only_abandons(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(CONFIG)

    @breaker.protect(key="k")
    async def complete(delay: float) -> str:
        await asyncio.sleep(delay)
        return "done"

    async def scenario() -> None:
        assert await complete(0) == "done"
        _trip(breaker)
        clock.advance(10)
        task = asyncio.create_task(complete(60))  # takes the one probe
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await complete(0) == "done"  # the probe came back and closed it

    asyncio.run(scenario())
    assert breaker.state("k") is CircuitState.CLOSED
    assert breaker.status()[0].consecutive_failures == 0


def test_guard_async_records_a_counted_failure(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CONFIG)

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                async with breaker.guard_async("k"):
                    raise ConnectionError("reset by peer")

    asyncio.run(scenario())
    assert breaker.state("k") is CircuitState.OPEN


def test_on_transition_is_called_after_commit_and_a_failing_one_is_only_logged(
    make_breaker: BreakerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make_breaker(CONFIG, actor="worker-1")
    seen: list[tuple[Transition, CircuitState]] = []

    @breaker.on_transition
    def remember(transition: Transition) -> None:
        # Committed before the callback: a reader sees the new state.
        seen.append((transition, breaker.state(transition.key)))

    breaker.on_transition(lambda t: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="durable_breaker"):
        breaker.record_failure("k")  # counted, no transition
        breaker.record_failure("k", reason="HTTP 500")
        breaker.disable("k")
    assert [(t.to_state, state, t.reason, t.actor) for t, state in seen] == [
        (CircuitState.OPEN, CircuitState.OPEN, "HTTP 500", "worker-1"),
        (CircuitState.DISABLED, CircuitState.DISABLED, "disabled", "worker-1"),
    ]
    assert caplog.text.count("ZeroDivisionError") == 2


def test_follow_yields_the_backlog_then_what_other_breakers_commit(
    make_breaker: BreakerFactory,
) -> None:
    reader, writer = make_breaker(CONFIG), make_breaker(CONFIG)
    _trip(writer, "old")
    stop, got = threading.Event(), []

    def tail() -> None:
        for transition in reader.follow(last=5, poll=timedelta(seconds=0.05), stop=stop):
            got.append((transition.key, transition.to_state.value))
            if len(got) == 3:
                stop.set()

    thread = threading.Thread(target=tail)
    thread.start()
    _trip(writer, "new")
    writer.reset("new")
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert got == [("old", "open"), ("new", "open"), ("new", "closed")]


def test_an_inner_guards_open_circuit_does_not_trip_the_outer_key(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    breaker.force_open("gpt-4o")
    with pytest.raises(CircuitOpenError), breaker.guard("router"), breaker.guard("gpt-4o"):
        pass
    assert breaker.state("router") is CircuitState.CLOSED


@pytest.mark.postgres
def test_follow_shows_a_transition_committed_after_a_later_one(pg_url: str) -> None:
    """PostgreSQL hands out ids before commit: an earlier id that commits late still shows."""
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(pg_url, config) as breaker:
        engine = breaker._store.engine
        with engine.connect() as slow_writer:
            slow_writer.begin()
            slow_writer.execute(
                insert(transitions).values(
                    namespace="default",
                    key="slow",
                    from_state="closed",
                    to_state="open",
                    trigger="failure",
                    at=datetime.now(UTC),
                    consecutive_failures=1,
                    actor="slow writer",
                )
            )
            breaker.record_failure("fast")  # a later id, committed first
            stop, started, got = threading.Event(), threading.Event(), []

            def tail() -> None:
                for transition in breaker.follow(poll=timedelta(seconds=0.05), stop=stop):
                    got.append(transition.key)
                    started.set()
                    if len(got) == 2:
                        stop.set()

            thread = threading.Thread(target=tail)
            thread.start()
            assert started.wait(10)  # it read its backlog: "fast" only
            slow_writer.commit()
        thread.join(timeout=10)
        stop.set()
        assert got == ["fast", "slow"]


def test_a_guard_acquires_on_entry_once_and_is_no_decorator(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    breaker.record_failure("k")
    guard = breaker.guard("k")  # not entered: takes nothing, raises nothing
    assert not callable(guard)
    with pytest.raises(CircuitOpenError), guard:
        pass
    with pytest.raises(InvalidArgumentError, match="used once"), guard:
        pass


def test_a_bad_reason_is_refused_before_the_outcome_is_settled(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    permit = breaker.acquire("k")
    with pytest.raises(InvalidArgumentError, match="reason"):
        permit.failed(reason=503)  # type: ignore[arg-type]
    permit.failed(reason="HTTP 503")  # the outcome is not lost
    assert breaker.state("k") is CircuitState.OPEN


def test_an_unfenced_abandon_never_frees_a_probe_it_may_not_hold(
    make_breaker: BreakerFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(0), probe_timeout=None)
    breaker, other = make_breaker(config), make_breaker(config)
    other.record_failure("k")
    monkeypatch.setattr(config_outage, "RECHECK_INTERVAL_S", 0.0)
    real_read = breaker._store.read

    def unreachable(key: str, proof: object = None) -> Any:
        raise StoreUnavailableError("simulated outage")

    monkeypatch.setattr(breaker._store, "read", unreachable)
    blind = breaker.acquire("k")  # admitted in process: the stored circuit is unknown
    monkeypatch.setattr(breaker._store, "read", real_read)
    assert blind.generation is None
    other.check("k")  # the one probe, taken by another process
    blind.abandoned()  # must not give that probe back
    with pytest.raises(CircuitOpenError):
        other.check("k")


def test_follow_starts_with_the_last_transitions_of_its_key_however_busy_the_table(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    for _ in range(3):
        breaker.record_failure("k")
        breaker.reset("k")
    noise = {
        "namespace": "default",
        "key": "noise",
        "from_state": "closed",
        "to_state": "open",
        "trigger": "failure",
        "at": datetime.now(UTC),
        "consecutive_failures": 1,
        "actor": "elsewhere",
    }
    with breaker._store.engine.begin() as connection:
        connection.execute(insert(transitions), [noise] * 1200)
    stop = threading.Event()
    stop.set()  # the backlog only
    got = [(t.key, t.to_state.value) for t in breaker.follow("k", last=5, stop=stop)]
    assert got == [("k", "closed"), ("k", "open"), ("k", "closed"), ("k", "open"), ("k", "closed")]


def _half_open(make_breaker: BreakerFactory, clock: FakeClock, **config: Any) -> CircuitBreaker:
    breaker = make_breaker(
        CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30), **config)
    )
    breaker.record_failure("k", "down")
    clock.advance(31)
    return breaker


def test_an_interrupt_while_a_failure_is_recorded_gives_the_probe_back(
    make_breaker: BreakerFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = _half_open(make_breaker, clock)
    report = breaker._report

    def interrupted(key: str, trigger: Any, *args: Any) -> None:
        if trigger.value == "failure":
            raise KeyboardInterrupt
        report(key, trigger, *args)

    monkeypatch.setattr(breaker, "_report", interrupted)
    with pytest.raises(KeyboardInterrupt), breaker.guard("k"):
        raise TimeoutError("the probe failed")
    monkeypatch.undo()
    assert breaker.is_available("k")  # the probe was given back, not held until its timeout


@pytest.mark.parametrize("use_async", [False, True])
def test_an_interrupt_raised_by_is_failure_gives_the_probe_back(
    make_breaker: BreakerFactory, clock: FakeClock, use_async: bool
) -> None:
    def interrupting(error: BaseException) -> bool:
        raise KeyboardInterrupt

    breaker = _half_open(make_breaker, clock, is_failure=interrupting)
    if use_async:

        async def probe() -> None:
            async with breaker.guard_async("k"):
                raise TimeoutError("the probe failed")

        with pytest.raises(KeyboardInterrupt):
            asyncio.run(probe())
    else:
        with pytest.raises(KeyboardInterrupt), breaker.guard("k"):
            raise TimeoutError("the probe failed")
    assert breaker.is_available("k")
