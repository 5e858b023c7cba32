"""The caller's exception always comes out of a guard unchanged, whatever it carries and
whatever becomes of recording it: the real openai and anthropic SDKs raising from a local fake
provider whose error bodies carry a NUL and a lone surrogate, on every on_store_error mode,
through sync and async guards and permits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import anthropic
import openai
import pytest

from durable_breaker import (
    AsyncCircuitBreaker,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    StoreError,
    StoreUnavailableError,
)
from durable_breaker._machine import Trigger
from durable_breaker._permit import AsyncGuard, AsyncPermit

from .conftest import FakeClock
from .fake_provider import FakeProvider, Reply, fake_provider, openai_error

MODES = ["fallback", "allow", "deny", "raise"]
# What a gateway's truncated body can hand the SDKs: openai parses a JSON error body, in which
# a NUL and half of an emoji's surrogate pair (a \ud83d escape, its partner cut off) arrive as
# escapes; anthropic copies a body that is not JSON (a proxy's HTML page) as it is, NUL included.
RAW = "upstream said \x00 then \ud83d"
STORED = "upstream said \\x00 then \\ud83d"
GATEWAY_PAGE = b"<html>502 Bad Gateway\x00 upstream</html>"
STORED_PAGE = "<html>502 Bad Gateway\\x00 upstream</html>"


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with fake_provider() as running:
        yield running


def openai_call(provider: FakeProvider) -> Callable[[], object]:
    provider.reply = openai_error(502, RAW)
    provider.reply.headers = {"x-request-id": "req_1", "retry-after": "1"}
    client = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)
    return lambda: client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )


def anthropic_call(provider: FakeProvider) -> Callable[[], object]:
    provider.reply = Reply(502, GATEWAY_PAGE, {"request-id": "req_1"}, "text/html")
    client = anthropic.Anthropic(base_url=provider.url, api_key="sk-test", max_retries=0)
    return lambda: client.messages.create(
        model="claude-sonnet-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )


SDKS = {"openai": openai_call, "anthropic": anthropic_call}
RAW_OF = {"openai": ["\x00", "\ud83d"], "anthropic": ["\x00"]}
STORED_OF = {"openai": STORED, "anthropic": STORED_PAGE}


def config(mode: str, **settings: Any) -> CircuitBreakerConfig:
    return CircuitBreakerConfig(
        failure_threshold=1,
        cooldown=timedelta(seconds=30),
        probe_timeout=None,  # a probe not given back would block the key for good
        on_store_error=mode,  # type: ignore[arg-type]
        **settings,
    )


def raised_by(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("the fake provider should have failed the call")


@pytest.mark.parametrize("sdk", SDKS)
def test_the_sdk_errors_carry_what_the_audit_trail_cannot_store(
    provider: FakeProvider, sdk: str
) -> None:
    error = raised_by(SDKS[sdk](provider))
    assert isinstance(error, openai.InternalServerError | anthropic.InternalServerError)
    assert all(unstorable in str(error) for unstorable in RAW_OF[sdk])
    assert getattr(error, "status_code", None) == 502


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sdk", SDKS)
def test_a_guard_records_an_unstorable_message_escaped_and_reraises_the_same_error(
    provider: FakeProvider, db_url: str, clock: FakeClock, sdk: str, mode: str
) -> None:
    call = SDKS[sdk](provider)
    with CircuitBreaker(db_url, config(mode), clock=clock) as breaker:
        with pytest.raises(Exception) as raised, breaker.guard("gpt-4o"):
            call()
        assert type(raised.value).__name__ == "InternalServerError"
        assert getattr(raised.value, "__notes__", []) == []  # recorded: nothing to add
        [trip] = breaker.history("gpt-4o")
        assert trip.to_state is CircuitState.OPEN
        assert trip.reason is not None and STORED_OF[sdk] in trip.reason
        assert trip.reason.startswith("InternalServerError: ")


@pytest.mark.parametrize("mode", MODES)
def test_permits_and_protect_record_an_unstorable_message_escaped(
    provider: FakeProvider, db_url: str, clock: FakeClock, mode: str
) -> None:
    call = openai_call(provider)
    with CircuitBreaker(db_url, config(mode), clock=clock) as breaker:
        permit = breaker.acquire("a")
        permit.failed(error=raised_by(call))
        assert STORED in (breaker.history("a")[-1].reason or "")

        @breaker.protect(key="b")
        def complete() -> object:
            return call()

        with pytest.raises(openai.InternalServerError):
            complete()
        assert STORED in (breaker.history("b")[-1].reason or "")


def failing_records(
    monkeypatch: pytest.MonkeyPatch, breaker: CircuitBreaker, error: StoreError
) -> None:
    """The database takes acquires and releases but fails every failure's write."""
    store = breaker._store
    write, fire = store.write, store.fire

    def refuse_failures(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(key: str, *args: Any, **kwargs: Any) -> Any:
            trigger = args[2] if real is write else args[0]
            if trigger is Trigger.FAILURE:
                raise error
            return real(key, *args, **kwargs)

        return call

    monkeypatch.setattr(store, "write", refuse_failures(write))
    monkeypatch.setattr(store, "fire", refuse_failures(fire))


def probe_circuit(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Trip `gpt-4o` and let its cooldown pass: the next guard takes the only probe."""
    breaker.record_failure("gpt-4o")
    clock.advance(30)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "store_error",
    [StoreUnavailableError("simulated: locked", unreachable=False), StoreError("simulated")],
    ids=["unavailable", "error"],
)
def test_a_failure_that_cannot_be_recorded_never_replaces_the_callers_error(
    provider: FakeProvider,
    db_url: str,
    clock: FakeClock,
    mode: str,
    store_error: StoreError,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = openai_call(provider)
    with CircuitBreaker(db_url, config(mode), clock=clock) as breaker:
        probe_circuit(breaker, clock)
        failing_records(monkeypatch, breaker, store_error)
        with pytest.raises(openai.InternalServerError) as raised, breaker.guard("gpt-4o"):
            call()
        # An unavailable database in any mode but "raise" is handled by that mode (decided
        # in process, or dropped): nothing to report. Anything else is noted on the error.
        handled = isinstance(store_error, StoreUnavailableError) and mode != "raise"
        notes = getattr(raised.value, "__notes__", [])
        if handled:
            assert notes == []
        else:
            assert len(notes) == 1 and "could not record this outcome for 'gpt-4o'" in notes[0]
            assert "could not record the outcome" in caplog.text
            # The probe that call held was given back: the next call may probe at once.
            breaker.check("gpt-4o")
        assert breaker.state("gpt-4o") is CircuitState.HALF_OPEN  # the failure never landed


@pytest.mark.parametrize("mode", MODES)
def test_a_success_that_cannot_be_recorded_gives_its_probe_back(
    db_url: str, clock: FakeClock, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CircuitBreaker(db_url, config(mode), clock=clock) as breaker:
        probe_circuit(breaker, clock)
        real = breaker._success

        def unavailable(key: str, generation: int | None) -> None:
            raise StoreError("simulated")

        monkeypatch.setattr(breaker, "_success", unavailable)
        with pytest.raises(StoreError), breaker.guard("gpt-4o"):
            pass  # the call succeeded; recording it did not
        monkeypatch.setattr(breaker, "_success", real)
        breaker.check("gpt-4o")  # the probe was given back


def test_a_classifier_that_raises_counts_the_error_and_keeps_it(
    provider: FakeProvider, db_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(error: BaseException) -> bool:
        raise RuntimeError("classifier bug")

    call = openai_call(provider)
    with CircuitBreaker(db_url, config("fallback", is_failure=broken), clock=clock) as breaker:
        with pytest.raises(openai.InternalServerError), breaker.guard("gpt-4o"):
            call()
        assert breaker.state("gpt-4o") is CircuitState.OPEN
        assert "is_failure raised" in caplog.text


def test_an_exception_whose_message_cannot_be_read_is_still_recorded(
    db_url: str, clock: FakeClock
) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    with CircuitBreaker(db_url, config("fallback"), clock=clock) as breaker:
        with pytest.raises(Unprintable), breaker.guard("k"):
            raise Unprintable
        assert (breaker.history("k")[-1].reason or "").endswith(
            "Unprintable: <message unavailable: its __str__ raised>"
        )


def test_a_long_message_is_cut_to_the_reason_kept(db_url: str, clock: FakeClock) -> None:
    with CircuitBreaker(db_url, config("fallback"), clock=clock) as breaker:
        with pytest.raises(TimeoutError), breaker.guard("k"):
            raise TimeoutError("\ud83d" * 1000)
        reason = breaker.history("k")[-1].reason or ""
        assert reason.endswith("...") and len(reason) <= 500 * len("\\ud83d")


# --- asyncio: the same through AsyncCircuitBreaker and CircuitBreaker.guard_async ---------


def async_openai_call(provider: FakeProvider) -> Callable[[], Any]:
    provider.reply = openai_error(502, RAW)
    client = openai.AsyncOpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)
    return lambda: client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )


def async_anthropic_call(provider: FakeProvider) -> Callable[[], Any]:
    provider.reply = Reply(502, GATEWAY_PAGE, content_type="text/html")
    client = anthropic.AsyncAnthropic(base_url=provider.url, api_key="sk-test", max_retries=0)
    return lambda: client.messages.create(
        model="claude-sonnet-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )


ASYNC_SDKS = {"openai": async_openai_call, "anthropic": async_anthropic_call}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sdk", ASYNC_SDKS)
def test_async_guards_and_permits_record_escaped_and_reraise_the_same_error(
    provider: FakeProvider, db_url: str, clock: FakeClock, sdk: str, mode: str
) -> None:
    call = ASYNC_SDKS[sdk](provider)

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, config(mode), clock=clock) as breaker:
            with pytest.raises(Exception) as raised:
                async with breaker.guard("a"):
                    await call()
            assert type(raised.value).__name__ == "InternalServerError"
            permit = await breaker.acquire("b")
            try:
                await call()
            except Exception as error:
                await permit.failed(error=error)
            for key in ("a", "b"):
                assert STORED_OF[sdk] in ((await breaker.history(key))[-1].reason or "")
        with CircuitBreaker(db_url, config(mode), clock=clock) as sync:
            with pytest.raises(Exception) as raised:
                async with sync.guard_async("c"):
                    await call()
            assert type(raised.value).__name__ == "InternalServerError"
            assert STORED_OF[sdk] in (sync.history("c")[-1].reason or "")

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", MODES)
def test_an_async_failure_that_cannot_be_recorded_never_replaces_the_callers_error(
    provider: FakeProvider,
    db_url: str,
    clock: FakeClock,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = async_openai_call(provider)

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, config(mode), clock=clock) as breaker:
            await breaker.record_failure("gpt-4o")
            clock.advance(30)
            store = breaker._store
            fire = store.fire

            async def refuse_failures(key: str, trigger: Trigger, *args: Any, **kw: Any) -> Any:
                if trigger is Trigger.FAILURE:
                    raise StoreError("simulated")
                return await fire(key, trigger, *args, **kw)

            monkeypatch.setattr(store, "fire", refuse_failures)
            with pytest.raises(openai.InternalServerError) as raised:
                async with breaker.guard("gpt-4o"):
                    await call()
            [note] = raised.value.__notes__
            assert "could not record this outcome" in note
            await breaker.check("gpt-4o")  # the probe was given back
            with pytest.raises(CircuitOpenError):
                await breaker.check("gpt-4o")  # and taken again: the budget is one

    asyncio.run(scenario())


def test_the_logger_names_the_key_and_the_store_error(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable_breaker")
    with CircuitBreaker(db_url, config("fallback"), clock=clock) as breaker:
        failing_records(monkeypatch, breaker, StoreError("disk on fire"))
        with pytest.raises(TimeoutError), breaker.guard("gpt-4o"):
            raise TimeoutError("slow")
        assert "'gpt-4o'" in caplog.text and "disk on fire" in caplog.text


@pytest.mark.parametrize("block_fails", [False, True])
def test_an_async_guard_cancelled_while_its_outcome_fails_gives_the_probe_back(
    block_fails: bool,
) -> None:
    """The report fails while the task is cancelled: the cancellation propagates, and the
    probe the call held is still given back."""
    reports: list[str] = []

    async def report(key: str, trigger: Trigger, *args: Any) -> None:
        reports.append(trigger.value)
        if trigger is not Trigger.RELEASE:
            await asyncio.sleep(0.2)
            raise StoreError("the database refused the outcome")

    async def acquire() -> AsyncPermit:
        return AsyncPermit("k", 7, report)  # a probe, admitted under generation 7

    async def guarded() -> None:
        async with AsyncGuard("k", acquire, lambda error: True):
            if block_fails:
                raise TimeoutError("the service did not answer")

    async def scenario() -> None:
        task = asyncio.create_task(guarded())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert reports == ["failure" if block_fails else "success", "release"]
