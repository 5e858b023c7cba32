"""Fallback across models: `first_available` and `fallback` pick the next healthy key, on
shared state, with the real openai SDK raising real errors from a local fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta

import openai
import pytest

from durable_breaker import (
    AsyncCircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    InvalidArgumentError,
)

from .conftest import BreakerFactory, FakeClock
from .fake_provider import FakeProvider, Reply, fake_provider, json_body, openai_error

MODELS = ["gpt-4o", "gpt-4o-mini", "o3"]
ONE_STRIKE = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30))


def answer(model: str) -> Reply:
    return Reply(
        200,
        json_body(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"hello from {model}"},
                        "finish_reason": "stop",
                    }
                ],
            }
        ),
    )


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with fake_provider() as running:
        for model in MODELS:
            running.by_model[model] = answer(model)
        yield running


def asker(provider: FakeProvider) -> Callable[[str], str | None]:
    client = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)

    def ask(model: str) -> str | None:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        return reply.choices[0].message.content

    return ask


def async_asker(provider: FakeProvider) -> Callable[[str], Awaitable[str | None]]:
    client = openai.AsyncOpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)

    async def ask(model: str) -> str | None:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        return reply.choices[0].message.content

    return ask


def test_the_first_healthy_model_answers_and_no_other_is_called(
    make_breaker: BreakerFactory, provider: FakeProvider
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    assert breaker.fallback(MODELS, asker(provider)) == "hello from gpt-4o"
    assert provider.models == ["gpt-4o"]


def test_a_counted_failure_moves_on_and_is_recorded_on_its_own_key(
    make_breaker: BreakerFactory, provider: FakeProvider
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    provider.by_model["gpt-4o"] = openai_error(503, "overloaded")
    provider.by_model["gpt-4o"].headers = {"retry-after": "120"}

    assert breaker.fallback(MODELS, asker(provider)) == "hello from gpt-4o-mini"
    assert provider.models == ["gpt-4o", "gpt-4o-mini"]
    # The attempt on gpt-4o tripped gpt-4o, with the real error and its Retry-After.
    (trip,) = breaker.history("gpt-4o")
    assert (trip.to_state, trip.error_type, trip.status_code) == (
        CircuitState.OPEN,
        "openai.InternalServerError",
        503,
    )
    assert trip.retry_after == 120
    assert breaker.history("gpt-4o-mini") == []
    # Now gpt-4o is skipped without a call: the next fallback goes straight to the mini.
    assert breaker.first_available(MODELS) == "gpt-4o-mini"
    assert breaker.fallback(MODELS, asker(provider)) == "hello from gpt-4o-mini"
    assert provider.models == ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]


def test_a_failure_the_request_caused_propagates_at_once_and_counts_nowhere(
    make_breaker: BreakerFactory, provider: FakeProvider
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    provider.by_model["gpt-4o"] = openai_error(400, "bad messages", "invalid_request_error")
    with pytest.raises(openai.BadRequestError):
        breaker.fallback(MODELS, asker(provider))
    assert provider.models == ["gpt-4o"]  # a 400 would fail on every model: none tried
    assert breaker.status() == []  # nothing counted, so nothing stored


def test_when_every_call_fails_the_last_error_is_raised_with_the_others_noted(
    make_breaker: BreakerFactory, provider: FakeProvider, clock: FakeClock
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=2))
    provider.by_model["gpt-4o"] = openai_error(500, "boom")
    provider.by_model["gpt-4o-mini"] = openai_error(429, "slow down", "rate_limit_error")
    provider.by_model["o3"] = openai_error(502, "bad gateway")

    with pytest.raises(openai.InternalServerError) as raised:
        breaker.fallback(MODELS, asker(provider))
    assert raised.value.status_code == 502  # o3's, the last
    assert raised.value.__notes__ == [
        "durable-breaker fallback: 'gpt-4o' failed: InternalServerError: Error code: 500 - boom",
        "durable-breaker fallback: 'gpt-4o-mini' failed: RateLimitError: Error code: 429 - "
        "slow down",
    ]
    # Each failure was counted on its own key (threshold 2: none tripped yet).
    assert {s.key: s.consecutive_failures for s in breaker.status()} == dict.fromkeys(MODELS, 1)


def test_when_no_key_admits_the_one_that_frees_first_is_named(
    make_breaker: BreakerFactory, provider: FakeProvider, clock: FakeClock
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    breaker.force_open("gpt-4o")  # until a reset: no known wait, sorts last
    breaker.force_open("gpt-4o-mini", timedelta(minutes=5))
    breaker.force_open("o3", timedelta(seconds=40))

    assert breaker.first_available(MODELS) is None
    with pytest.raises(CircuitOpenError) as raised:
        breaker.fallback(MODELS, asker(provider))
    assert provider.models == []
    assert raised.value.key == "o3"
    assert raised.value.retry_after == pytest.approx(40)
    assert raised.value.__notes__ == [
        "durable-breaker fallback: 'gpt-4o' skipped: circuit forced_open",
        "durable-breaker fallback: 'gpt-4o-mini' skipped: circuit forced_open, retry in 5m",
    ]


def test_skipped_keys_and_failed_calls_are_noted_in_order(
    make_breaker: BreakerFactory, provider: FakeProvider
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    breaker.force_open("gpt-4o", timedelta(seconds=60))
    provider.by_model["gpt-4o-mini"] = openai_error(500, "one")
    provider.by_model["o3"] = openai_error(500, "two")
    with pytest.raises(openai.InternalServerError) as raised:
        breaker.fallback(MODELS, asker(provider))
    assert provider.models == ["gpt-4o-mini", "o3"]
    assert [note.split(":")[1] for note in raised.value.__notes__] == [
        " 'gpt-4o' skipped",
        " 'gpt-4o-mini' failed",
    ]


def test_first_available_spends_no_probe(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    breaker = make_breaker(ONE_STRIKE)
    breaker.record_failure("gpt-4o", "down")
    assert breaker.first_available(MODELS) == "gpt-4o-mini"
    clock.advance(31)  # cooldown over: gpt-4o would admit one probe
    for _ in range(3):
        assert breaker.first_available(MODELS) == "gpt-4o"
    permit = breaker.acquire("gpt-4o")  # the probe is still there to take
    assert breaker.first_available(MODELS) == "gpt-4o-mini"  # and now it is taken
    permit.succeeded()


def test_a_probe_in_flight_elsewhere_is_skipped(
    make_breaker: BreakerFactory, provider: FakeProvider, clock: FakeClock
) -> None:
    breaker, other_process = make_breaker(ONE_STRIKE), make_breaker(ONE_STRIKE)
    breaker.record_failure("gpt-4o", "down")
    clock.advance(31)
    probe = other_process.acquire("gpt-4o")
    assert breaker.fallback(MODELS, asker(provider)) == "hello from gpt-4o-mini"
    assert provider.models == ["gpt-4o-mini"]
    probe.abandoned()


def test_an_interrupt_propagates_and_gives_the_probe_back(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    breaker.record_failure("gpt-4o", "down")
    clock.advance(31)

    def interrupted(model: str) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.fallback(MODELS, interrupted)
    assert breaker.first_available(MODELS) == "gpt-4o"  # its half-open probe is free again


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            "gpt-4o",
            "keys must be a list of keys in order of preference, got 'gpt-4o'; for one "
            "key pass ['gpt-4o']",
        ),
        ([], "keys must name at least one key, got none"),
        (["a", "b", "a"], "keys must be distinct, got 'a' twice; list each key once"),
        (["a", 3], "key must be a str, got int"),
        (None, "keys must be a list of keys in order of preference, got None"),
    ],
)
def test_bad_keys_are_refused_before_any_call(
    make_breaker: BreakerFactory, keys: object, message: str
) -> None:
    breaker = make_breaker()
    calls: list[str] = []
    with pytest.raises(InvalidArgumentError) as raised:
        breaker.fallback(keys, calls.append)  # type: ignore[arg-type]
    assert str(raised.value) == message
    with pytest.raises(InvalidArgumentError) as raised:
        breaker.first_available(keys)  # type: ignore[arg-type]
    assert str(raised.value) == message
    assert calls == []


def test_fallback_async_on_the_sync_breaker(
    make_breaker: BreakerFactory, provider: FakeProvider
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    provider.by_model["gpt-4o"] = openai_error(529, "overloaded", "overloaded_error")
    ask = async_asker(provider)
    assert asyncio.run(breaker.fallback_async(MODELS, ask)) == "hello from gpt-4o-mini"
    assert breaker.history("gpt-4o")[-1].status_code == 529


def test_the_asyncio_breaker_falls_back_with_the_same_rules(
    db_url: str, clock: FakeClock, provider: FakeProvider
) -> None:
    provider.by_model["gpt-4o"] = openai_error(500, "down")

    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url, ONE_STRIKE, clock=clock) as breaker:
            ask = async_asker(provider)
            assert await breaker.fallback(MODELS, ask) == "hello from gpt-4o-mini"
            assert await breaker.first_available(MODELS) == "gpt-4o-mini"
            (trip,) = await breaker.history("gpt-4o")
            assert trip.error_type == "openai.InternalServerError"
            provider.by_model["gpt-4o-mini"] = openai_error(400, "bad", "invalid_request_error")
            with pytest.raises(openai.BadRequestError):
                await breaker.fallback(MODELS, ask)
            assert provider.models[-1] == "gpt-4o-mini"  # o3 was not tried
            for model in MODELS[1:]:
                provider.by_model[model] = openai_error(503, model)
            with pytest.raises(openai.InternalServerError) as raised:
                await breaker.fallback(MODELS, ask)
            assert len(raised.value.__notes__) == 2  # gpt-4o skipped, the mini failed
            with pytest.raises(CircuitOpenError) as rejected:
                await breaker.fallback(MODELS, ask)
            assert rejected.value.retry_after == pytest.approx(30)

    asyncio.run(scenario())


def test_an_async_fallback_refuses_a_call_that_returns_no_awaitable(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    with pytest.raises(InvalidArgumentError, match="call must return an awaitable"):
        asyncio.run(breaker.fallback_async(MODELS, lambda model: model))  # type: ignore[arg-type,return-value]
    assert breaker.state("gpt-4o") is CircuitState.CLOSED  # our mistake, not the model's


def test_the_sync_fallback_refuses_an_async_function_and_records_no_success(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(ONE_STRIKE)
    breaker.record_failure("gpt-4o", "down")
    clock.advance(31)  # half-open: the next admitted call is the probe

    async def ask(model: str) -> str:
        return model

    with pytest.raises(InvalidArgumentError, match=r"use await breaker\.fallback_async"):
        breaker.fallback(MODELS, ask)  # type: ignore[unused-coroutine]
    assert breaker.state("gpt-4o") is CircuitState.HALF_OPEN  # no success was recorded
    assert breaker.first_available(MODELS) == "gpt-4o"  # and the probe was given back


def test_is_failure_judges_each_attempt_once(make_breaker: BreakerFactory) -> None:
    judged: list[BaseException] = []

    def once_then_not(error: BaseException) -> bool:
        judged.append(error)
        return len(judged) % 2 == 1  # counts, then does not: asking twice would disagree

    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=5, is_failure=once_then_not))

    def down(model: str) -> str:
        raise TimeoutError(model)

    with pytest.raises(TimeoutError) as raised:
        breaker.fallback(MODELS, down)
    assert [str(error) for error in judged] == ["gpt-4o", "gpt-4o-mini"]
    assert str(raised.value) == "gpt-4o-mini"  # counted on gpt-4o, moved on; not on the mini
    assert {s.key: s.consecutive_failures for s in breaker.status()} == {"gpt-4o": 1}


def test_one_error_object_raised_for_every_key_is_noted_once_per_attempt(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=5))
    shared = TimeoutError("upstream timed out")

    def down(model: str) -> str:
        raise shared

    for _ in range(2):  # a second fallback raising the same object adds no duplicate
        with pytest.raises(TimeoutError) as raised:
            breaker.fallback(MODELS, down)
        assert raised.value is shared
        assert shared.__notes__ == [
            "durable-breaker fallback: 'gpt-4o' failed: TimeoutError: upstream timed out",
            "durable-breaker fallback: 'gpt-4o-mini' failed: TimeoutError: upstream timed out",
        ]


@pytest.mark.parametrize(
    ("keys", "call", "message"),
    [
        ({"gpt-4o", "o3"}, str, "a set or dict has no order of preference, pass a list"),
        ({"gpt-4o": 1}, str, "a set or dict has no order of preference, pass a list"),
        (["gpt-4o"], None, "call must be a function taking a key, got None"),
    ],
)
def test_keys_without_an_order_and_a_call_that_is_no_function_are_refused(
    make_breaker: BreakerFactory, keys: object, call: object, message: str
) -> None:
    breaker = make_breaker()
    with pytest.raises(InvalidArgumentError, match=message):
        breaker.fallback(keys, call)  # type: ignore[arg-type]


def test_a_refused_call_is_no_failure_even_to_an_is_failure_that_counts_everything(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1, is_failure=lambda e: True))

    async def ask(model: str) -> str:
        return model

    with pytest.raises(InvalidArgumentError) as raised:
        breaker.fallback(MODELS, ask)  # type: ignore[unused-coroutine]
    assert not hasattr(raised.value, "__notes__")  # it stopped at the first key
    with pytest.raises(InvalidArgumentError):
        asyncio.run(breaker.fallback_async(MODELS, lambda model: model))  # type: ignore[arg-type,return-value]
    assert breaker.status() == []  # no key was tripped, or even counted


def test_an_error_raised_while_an_interrupt_propagates_tries_no_further_key(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=5))
    called: list[str] = []

    def interrupted(model: str) -> str:
        called.append(model)
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("cleanup failed")  # (the case under test)

    with pytest.raises(RuntimeError, match="cleanup failed"):
        breaker.fallback(MODELS, interrupted)
    assert called == ["gpt-4o"]


def test_a_cancelled_async_fallback_tries_no_further_key(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=5))
    called: list[str] = []

    async def slow(model: str) -> str:
        called.append(model)
        try:
            await asyncio.sleep(10)
        finally:
            raise RuntimeError("cleanup failed")  # (the case under test)
        return model

    async def scenario() -> None:
        task = asyncio.create_task(breaker.fallback_async(MODELS, slow))
        while not called:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(RuntimeError, match="cleanup failed"):
            await task

    asyncio.run(scenario())
    assert called == ["gpt-4o"]
