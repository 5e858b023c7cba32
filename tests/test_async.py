"""AsyncCircuitBreaker: shared state with concurrent tasks and the sync breaker, guards,
permits and fencing, manual control, and outages."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from durable_breaker import (
    AsyncCircuitBreaker,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    DurableBreakerError,
    InvalidArgumentError,
    StoreUnavailableError,
    Transition,
)
from durable_breaker import _outage as outage

from .conftest import FakeClock
from .tcp_proxy import TcpProxy
from .test_outage import proxy  # noqa: F401 - the fixture

T = TypeVar("T")
CONFIG = CircuitBreakerConfig(failure_threshold=3, cooldown=timedelta(seconds=10))


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


@pytest.fixture
def fast_recheck(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(outage, "RECHECK_INTERVAL_S", 0.2)
    yield


def test_concurrent_tasks_on_two_breakers_lose_no_failure_and_share_one_probe(
    db_url: str, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1000, cooldown=timedelta(seconds=10))

    async def scenario() -> None:
        async with (
            AsyncCircuitBreaker(db_url, config, clock=clock) as first,
            AsyncCircuitBreaker(db_url, config, clock=clock) as second,
        ):
            await asyncio.gather(*(breaker.record_failure("k") for breaker in (first, second) * 30))
            [status] = await first.status()
            assert status.consecutive_failures == 60
            for _ in range(940):  # trip it, then let 40 tasks race for the one probe
                await first.record_failure("k")

            clock.advance(10)

            async def admitted(breaker: AsyncCircuitBreaker) -> bool:
                try:
                    await breaker.check("k")
                except CircuitOpenError:
                    return False
                return True

            results = await asyncio.gather(*(admitted(b) for b in (first, second) * 20))
            assert sum(results) == 1

    run(scenario)


def test_async_and_sync_breakers_share_one_database(db_url: str, clock: FakeClock) -> None:
    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, CONFIG, clock=clock, actor="async") as breaker:
            with CircuitBreaker(db_url, CONFIG, clock=clock, actor="sync") as sync:
                sync.record_failure("k")
                await breaker.record_failure("k")
                sync.record_failure("k", reason="third")
                with pytest.raises(CircuitOpenError):
                    await breaker.check("k")
                await breaker.reset("k")
                sync.check("k")
                assert [(t.actor, t.to_state.value) for t in sync.history("k")] == [
                    ("sync", "open"),
                    ("async", "closed"),
                ]

    run(scenario)


def test_guard_protect_and_fencing(db_url: str, clock: FakeClock) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=10))

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, config, clock=clock) as breaker:
            seen: list[Transition] = []
            breaker.on_transition(seen.append)

            @breaker.protect(key=lambda *, model: model)
            async def complete(*, model: str) -> str:
                if model == "down":
                    raise ConnectionError("refused")
                return "ok"

            assert await complete(model="up") == "ok"
            with pytest.raises(ConnectionError):
                await complete(model="down")
            with pytest.raises(CircuitOpenError):
                await complete(model="down")
            assert [(t.key, t.to_state) for t in seen] == [("down", CircuitState.OPEN)]

            clock.advance(10)
            probe = await breaker.acquire("down")
            task = asyncio.create_task(asyncio.sleep(60))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):  # a cancelled guarded call
                async with breaker.guard("up"):
                    await task
            await probe.abandoned()  # the probe slot is free again at once
            late = await breaker.acquire("down")
            await breaker.force_open("down")
            await late.succeeded()  # admitted under an earlier generation: no effect
            assert await breaker.state("down") is CircuitState.FORCED_OPEN
            history = await breaker.history("down")
            assert history[-1].reason is not None and history[-1].reason.startswith("late")
            # Successes and a cancelled call on "up" counted nothing, so stored nothing.
            assert [s.key for s in await breaker.status()] == ["down"]

            with pytest.raises(InvalidArgumentError, match="coroutine functions"):
                breaker.protect(key="k")(lambda: None)  # type: ignore[arg-type,return-value]

    run(scenario)


def test_an_unstarted_or_closed_breaker_says_so(db_url: str) -> None:
    async def scenario() -> None:
        breaker = AsyncCircuitBreaker(db_url)
        with pytest.raises(DurableBreakerError, match="not started"):
            await breaker.check("k")
        await breaker.start()
        await breaker.close()
        with pytest.raises(DurableBreakerError, match="closed"):
            await breaker.check("k")

    run(scenario)


def test_bad_arguments_are_refused_as_by_the_sync_breaker(db_url: str) -> None:
    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url) as breaker:
            with pytest.raises(InvalidArgumentError, match="limit must be"):
                await breaker.history("k", limit=2**63)
            with pytest.raises(InvalidArgumentError, match="key must be"):
                await breaker.check("")
            with pytest.raises(InvalidArgumentError, match="at most 3660 days"):
                await breaker.force_open("k", timedelta(days=10**6))

    run(scenario)


def test_an_unsupported_url_is_refused_clearly() -> None:
    with pytest.raises(InvalidArgumentError, match="SQLite and PostgreSQL, not 'mysql'"):
        AsyncCircuitBreaker("mysql://localhost/db")


@pytest.mark.postgres
def test_an_outage_falls_back_in_process_and_raise_mode_raises(
    proxy: tuple[TcpProxy, str],  # noqa: F811 - the fixture
    clock: FakeClock,
    fast_recheck: None,
) -> None:
    tcp_proxy, url = proxy

    def config(mode: Any) -> CircuitBreakerConfig:
        return CircuitBreakerConfig(
            failure_threshold=1, on_store_error=mode, store_timeout=timedelta(seconds=1)
        )

    async def scenario() -> None:
        async with (
            AsyncCircuitBreaker(url, config("fallback"), clock=clock) as fallback,
            AsyncCircuitBreaker(url, config("raise"), clock=clock) as strict,
        ):
            await fallback.record_failure("tripped")
            await fallback.check("healthy")
            await strict.check("healthy")
            tcp_proxy.cut()
            started = time.monotonic()
            await fallback.check("healthy")
            with pytest.raises(CircuitOpenError):
                await fallback.check("tripped")
            with pytest.raises(StoreUnavailableError):
                await strict.check("healthy")
            assert time.monotonic() - started < 10
            tcp_proxy.restore()
            await asyncio.sleep(0.3)
            await strict.check("healthy")
            with pytest.raises(CircuitOpenError):
                await fallback.check("tripped")

    run(scenario)


def test_a_call_cancelled_while_its_probe_is_being_taken_gives_the_probe_back(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe is committed before the permit reaches the caller: cancelling in between
    must not strand it (probe_timeout=None: it would block the key for good)."""
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(0), probe_timeout=None)

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, config, clock=clock) as breaker:
            with CircuitBreaker(db_url, config, clock=clock) as sync:
                taken, finish = asyncio.Event(), asyncio.Event()
                taken_in_thread = threading.Event()
                go_on = threading.Event()
                real_async, real_sync = breaker.acquire, sync._admit

                async def slow_async_acquire(key: str) -> Any:
                    permit = await real_async(key)
                    taken.set()
                    await finish.wait()  # the caller is cancelled here, after the commit
                    return permit

                def slow_sync_admit(key: str) -> Any:
                    generation = real_sync(key)
                    taken_in_thread.set()
                    go_on.wait(10)
                    return generation

                monkeypatch.setattr(breaker, "acquire", slow_async_acquire)
                monkeypatch.setattr(sync, "_admit", slow_sync_admit)

                async def call(guard: Any) -> None:
                    async with guard:
                        pytest.fail("never admitted: cancelled first")

                await breaker.record_failure("a")
                task = asyncio.create_task(call(breaker.guard("a")))
                await taken.wait()
                task.cancel()
                await asyncio.sleep(0)
                finish.set()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert await breaker.is_available("a")

                sync.record_failure("s")
                task = asyncio.create_task(call(sync.guard_async("s")))
                await asyncio.to_thread(taken_in_thread.wait, 10)
                task.cancel()
                go_on.set()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert sync.is_available("s")

    run(scenario)


def test_a_permit_admitted_by_the_fallback_is_not_fenced_when_the_database_returns(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During an outage the process does not know the stored generation: its permits' results
    are applied as plain ones, not thrown away as late."""
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(db_url, config, clock=clock) as other:
        for _ in range(3):  # a few generations this process's breaker never saw
            other.force_open("k")
            other.reset("k")
    with CircuitBreaker(db_url, config, clock=clock) as breaker:
        store = breaker._store
        real_read = store.read

        def unreachable(key: str, proof: object = None) -> Any:
            raise StoreUnavailableError("simulated outage")

        monkeypatch.setattr(outage, "RECHECK_INTERVAL_S", 0.0)  # ask the database again at once
        monkeypatch.setattr(store, "read", unreachable)
        permit = breaker.acquire("k")  # decided in process
        monkeypatch.setattr(store, "read", real_read)
        permit.failed(reason="HTTP 503")
        assert breaker.state("k") is CircuitState.OPEN
        assert breaker.history("k")[-1].reason == "HTTP 503"


def test_a_cancellation_arriving_as_a_report_completes_still_propagates(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio.timeout() must still fire when its deadline lands while an outcome is stored."""

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, CONFIG, clock=clock) as breaker:
            real = breaker._report

            async def report_then_time_out(*args: Any) -> None:
                await real(*args)
                timeout.reschedule(asyncio.get_running_loop().time() - 1)  # expires now

            monkeypatch.setattr(breaker, "_report", report_then_time_out)
            permit = await breaker.acquire("k")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as timeout:
                    await permit.succeeded()
                    await asyncio.sleep(5)
                    pytest.fail("the cancellation was lost")

    run(scenario)


def test_a_guarded_call_still_acquiring_at_loop_shutdown_gives_its_probe_back(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(0), probe_timeout=None)
    with CircuitBreaker(db_url, config, clock=clock) as breaker:
        breaker.record_failure("k")
        real = breaker.acquire

        def slow_acquire(key: str) -> Any:
            time.sleep(0.2)  # a slow round trip: asyncio.run ends meanwhile
            return real(key)

        monkeypatch.setattr(breaker, "acquire", slow_acquire)

        async def call() -> None:
            async with breaker.guard_async("k"):
                await asyncio.sleep(1)

        async def main() -> None:
            asyncio.create_task(call())  # noqa: RUF006 - left running on purpose
            await asyncio.sleep(0.05)

        asyncio.run(main())
        assert breaker.is_available("k")
