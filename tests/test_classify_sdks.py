"""`is_llm_failure` and the Retry-After it reads, against what the real clients raise: the
openai and anthropic SDKs (sync and async), httpx, requests and aiohttp, each calling a fake
provider on 127.0.0.1 that answers with the statuses, headers and error bodies (streamed ones
included) the providers send. docs/errors.md gives the reasons for each decision."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest
import requests
import tenacity

from durable_breaker import CircuitBreakerConfig, CircuitOpenError, CircuitState, is_llm_failure
from durable_breaker._classify import retry_after

from .conftest import BreakerFactory
from .fake_provider import (
    FakeProvider,
    Reply,
    anthropic_error,
    fake_provider,
    json_body,
    openai_error,
)

NOW = datetime(2026, 11, 30, 3, 12, tzinfo=UTC)
MESSAGES = [{"role": "user", "content": "hi"}]
Call = Callable[[str], object]  # given the provider's base URL, makes one request


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with fake_provider() as running:
        yield running


def openai_sync(url: str) -> object:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=2)
    return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]


def openai_async(url: str) -> object:
    async def call() -> object:
        client = openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=2
        )
        return await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

    return asyncio.run(call())


def anthropic_sync(url: str) -> object:
    client = anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0, timeout=2)
    return client.messages.create(model="claude", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]


def anthropic_async(url: str) -> object:
    async def call() -> object:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-test", max_retries=0, timeout=2)
        return await client.messages.create(model="claude", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]

    return asyncio.run(call())


def with_httpx(url: str) -> object:
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o"}, timeout=2)
    return response.raise_for_status()


def with_requests(url: str) -> object:
    response = requests.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o"}, timeout=2)
    response.raise_for_status()
    return response


def with_aiohttp(url: str) -> object:
    async def call() -> object:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"{url}/v1/chat/completions", json={"model": "gpt-4o"}, raise_for_status=True
            ) as response,
        ):
            return await response.read()

    return asyncio.run(call())


CLIENTS: dict[str, Call] = {
    "openai": openai_sync,
    "openai-async": openai_async,
    "anthropic": anthropic_sync,
    "anthropic-async": anthropic_async,
    "httpx": with_httpx,
    "requests": with_requests,
    "aiohttp": with_aiohttp,
}


def error_of(call: Call, url: str) -> BaseException:
    try:
        call(url)
    except Exception as error:
        return error
    raise AssertionError("the call succeeded; the test expected an error")


def provider_error(status: int, client: str) -> Reply:
    """The body each provider sends with `status` (the HTTP clients get openai's)."""
    if client.startswith("anthropic"):
        return anthropic_error(status, f"status {status}")
    return openai_error(status, f"status {status}")


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("status", "counted"),
    [
        *[(code, True) for code in (408, 429, 500, 502, 503, 504, 529)],
        *[(code, False) for code in (400, 401, 403, 404, 413, 422)],
    ],
)
def test_each_client_s_status_error_counts_when_the_service_is_unwell(
    provider: FakeProvider, client: str, status: int, counted: bool
) -> None:
    provider.reply = provider_error(status, client)
    error = error_of(CLIENTS[client], provider.url)
    assert is_llm_failure(error) is counted, repr(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_s_timeout_and_refused_connection_count(
    provider: FakeProvider, client: str
) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{unused.getsockname()[1]}"
        refused = error_of(CLIENTS[client], refused_url)
    assert is_llm_failure(refused) is True, repr(refused)

    provider.reply = Reply(200, b"{}", delay=2.5)  # longer than every client's 2 s timeout
    timed_out = error_of(CLIENTS[client], provider.url)
    assert is_llm_failure(timed_out) is True, repr(timed_out)


# What the clients raise on a 429, and the Retry-After the classifier reads from it.
RESET_HEADERS = [
    # openai: reset durations in Go's format; the exhausted limit's applies.
    (
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m30s",
            "x-ratelimit-remaining-tokens": "5000",
            "x-ratelimit-reset-tokens": "120ms",
        },
        timedelta(seconds=90),
    ),
    (
        {
            "x-ratelimit-remaining-requests": "12",
            "x-ratelimit-reset-requests": "1m30s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "120ms",
        },
        timedelta(milliseconds=120),
    ),
    ({"x-ratelimit-reset-tokens": "6m0s"}, timedelta(minutes=6)),  # none says which: latest
    ({"x-ratelimit-reset-requests": "1h2m3.5s"}, timedelta(seconds=3723.5)),
    # Anthropic: RFC 3339 times.
    (
        {
            "anthropic-ratelimit-requests-remaining": "40",
            "anthropic-ratelimit-requests-reset": "2026-11-30T03:13:00Z",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": "2026-11-30T03:12:45Z",
        },
        timedelta(seconds=45),
    ),
    ({"anthropic-ratelimit-tokens-reset": "2026-11-30T03:14:00+00:00"}, timedelta(minutes=2)),
    # A Retry-After the provider sent wins over every reset time.
    ({"retry-after": "7", "x-ratelimit-reset-requests": "1m30s"}, timedelta(seconds=7)),
    # Unreadable or past resets: as if none were sent.
    ({"x-ratelimit-reset-requests": "soon"}, None),
    ({"anthropic-ratelimit-requests-reset": "2026-11-30T03:00:00Z"}, None),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("headers", "wait"), RESET_HEADERS)
def test_rate_limit_reset_headers_are_a_retry_after_when_none_is_sent(
    provider: FakeProvider, client: str, headers: dict[str, str], wait: timedelta | None
) -> None:
    provider.reply = provider_error(429, client)
    provider.reply.headers = headers
    error = error_of(CLIENTS[client], provider.url)
    assert retry_after(error, NOW) == wait


def test_reset_headers_hold_only_a_429(provider: FakeProvider) -> None:
    provider.reply = openai_error(503, "down")
    provider.reply.headers = {"x-ratelimit-reset-requests": "1m30s"}
    assert retry_after(error_of(openai_sync, provider.url), NOW) is None


def sse(*events: tuple[str, dict[str, Any]]) -> Reply:
    """A 200 event stream, the way the providers stream."""
    text = "".join(
        f"event: {name}\ndata: {json_body(data).decode()}\n\n" if name else
        f"data: {json_body(data).decode()}\n\n"
        for name, data in events
    )  # fmt: skip
    return Reply(200, text.encode(), content_type="text/event-stream")


def anthropic_stream(url: str) -> object:
    client = anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0, timeout=2)
    stream = client.messages.create(
        model="claude",
        max_tokens=8,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    return list(stream)


def anthropic_async_stream(url: str) -> object:
    async def call() -> object:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-test", max_retries=0)
        stream = await client.messages.create(
            model="claude",
            max_tokens=8,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        return [event async for event in stream]  # type: ignore[union-attr]

    return asyncio.run(call())


def openai_stream(url: str) -> object:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=2)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    return list(stream)


def openai_async_stream(url: str) -> object:
    async def call() -> object:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        return [chunk async for chunk in stream]  # type: ignore[union-attr]

    return asyncio.run(call())


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    },
}
CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
}


@pytest.mark.parametrize(
    ("kind", "counted"),
    [
        ("overloaded_error", True),
        ("api_error", True),
        ("rate_limit_error", True),
        ("invalid_request_error", False),
        ("authentication_error", False),
    ],
)
@pytest.mark.parametrize("call", [anthropic_stream, anthropic_async_stream])
def test_an_anthropic_error_mid_stream_is_judged_by_its_type(
    provider: FakeProvider, call: Call, kind: str, counted: bool
) -> None:
    provider.reply = sse(
        ("message_start", MESSAGE_START),
        ("error", {"type": "error", "error": {"type": kind, "message": "mid-stream"}}),
    )
    error = error_of(call, provider.url)
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == 200  # what the SDK reports: the stream had begun with a 200
    assert is_llm_failure(error) is counted


@pytest.mark.parametrize(
    ("kind", "counted"),
    [
        ("server_error", True),
        ("rate_limit_error", True),
        ("invalid_request_error", False),
    ],
)
@pytest.mark.parametrize("call", [openai_stream, openai_async_stream])
def test_an_openai_error_mid_stream_is_judged_by_its_type(
    provider: FakeProvider, call: Call, kind: str, counted: bool
) -> None:
    provider.reply = sse(
        ("", CHUNK), ("", {"error": {"message": "mid-stream", "type": kind, "code": None}})
    )
    error = error_of(call, provider.url)
    assert type(error) is openai.APIError
    assert not hasattr(error, "status_code")  # the SDK gives it none
    assert is_llm_failure(error) is counted


def retried(call: Call, url: str) -> BaseException:
    """`call` under tenacity: two attempts, then its RetryError."""
    attempts = tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    return error_of(attempts(call), url)


@pytest.mark.parametrize(("status", "counted"), [(503, True), (429, True), (400, False)])
def test_a_tenacity_retry_error_is_judged_by_its_last_attempt(
    provider: FakeProvider, status: int, counted: bool
) -> None:
    provider.reply = openai_error(status, "wrapped")
    provider.reply.headers = {"retry-after": "7"}
    error = retried(openai_sync, provider.url)
    assert isinstance(error, tenacity.RetryError)
    assert is_llm_failure(error) is counted
    assert retry_after(error, NOW) == timedelta(seconds=7)


class SummaryFailed(Exception):
    """An application's own error, raised `from` the SDK's."""


@pytest.mark.parametrize(("status", "counted"), [(503, True), (400, False), (401, False)])
def test_a_wrapper_is_judged_by_the_cause_that_carries_a_status(
    provider: FakeProvider, status: int, counted: bool
) -> None:
    provider.reply = anthropic_error(status, "wrapped")
    try:
        try:
            anthropic_sync(provider.url)
        except anthropic.APIError as error:
            raise SummaryFailed("could not summarise") from error
    except SummaryFailed as wrapper:
        assert is_llm_failure(wrapper) is counted


def test_a_wrapper_of_an_inner_circuit_open_error_does_not_count() -> None:
    inner = CircuitOpenError("gpt-4o", CircuitState.OPEN, 5.0)
    try:
        raise SummaryFailed("no model") from inner
    except SummaryFailed as wrapper:
        assert is_llm_failure(wrapper) is False


@pytest.mark.parametrize(
    ("statuses", "counted"),
    [((503,), True), ((400,), False), ((400, 404), False), ((400, 503), True)],
)
def test_an_exception_group_counts_if_one_of_its_errors_does(
    provider: FakeProvider, statuses: tuple[int, ...], counted: bool
) -> None:
    async def call(status: int) -> None:
        client = anthropic.AsyncAnthropic(base_url=provider.url, api_key="k", max_retries=0)
        provider.by_model[f"m{status}"] = anthropic_error(status, f"status {status}")
        await client.messages.create(model=f"m{status}", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]

    async def fan_out() -> list[BaseException]:
        if len(statuses) == 1:  # an asyncio.TaskGroup's group of its one failed task
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(call(statuses[0]))
            except ExceptionGroup as raised:
                return [raised]
            raise AssertionError("the task group raised nothing")
        # Several at once: every error kept (a TaskGroup cancels the rest at the first).
        done = await asyncio.gather(*(call(s) for s in statuses), return_exceptions=True)
        return [ExceptionGroup("calls", [e for e in done if isinstance(e, Exception)])]

    (group,) = asyncio.run(fan_out())
    assert isinstance(group, ExceptionGroup)
    assert len(group.exceptions) == len(statuses)
    assert is_llm_failure(group) is counted


def test_the_audit_names_the_wrapped_error_and_its_hold(
    provider: FakeProvider, make_breaker: BreakerFactory
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    provider.reply = openai_error(429, "slow down", "rate_limit_error")
    provider.reply.headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30s",
    }
    attempts = tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    with pytest.raises(tenacity.RetryError), breaker.guard("gpt-4o"):
        attempts(openai_sync)(provider.url)
    (trip,) = breaker.history("gpt-4o")
    assert (trip.error_type, trip.status_code, trip.retry_after) == (
        "openai.RateLimitError",
        429,
        90,
    )
    assert trip.reason is not None and trip.reason.startswith("RateLimitError: Error code: 429")


def caller_mistakes(provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Mistakes in the calling code or its setup, none of which reaches a provider."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)

    def no_openai_key(url: str) -> object:
        client = openai.OpenAI(base_url=f"{url}/v1", max_retries=0)
        return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

    def no_anthropic_key(url: str) -> object:
        client = anthropic.Anthropic(base_url=url, max_retries=0)
        return client.messages.create(model="claude", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]

    def wrong_argument(url: str) -> object:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        return client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tempo=1)  # type: ignore[call-overload]

    def no_scheme(url: str) -> object:
        return requests.post(url.removeprefix("http://"), timeout=2)

    def unsupported_protocol(url: str) -> object:
        return httpx.post(url.replace("http://", "ftp://"), timeout=2)

    return [no_openai_key, no_anthropic_key, wrong_argument, no_scheme, unsupported_protocol]


def test_caller_mistakes_without_a_status_do_not_count(
    provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider.requests = 0
    for call in caller_mistakes(provider, monkeypatch):
        error = error_of(call, provider.url)
        assert is_llm_failure(error) is False, f"{call.__name__}: {error!r}"
    assert provider.requests == 0  # none of them reached the provider


QUOTA = [
    (
        "openai 429 insufficient_quota",
        openai_sync,
        Reply(
            429,
            json_body(
                {
                    "error": {
                        "message": "You exceeded your current quota, please check your plan "
                        "and billing details.",
                        "type": "insufficient_quota",
                        "code": "insufficient_quota",
                    }
                }
            ),
        ),
    ),
    (
        "anthropic 400 credit balance",
        anthropic_sync,
        anthropic_error(
            400,
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
            "Billing to upgrade or purchase credits.",
            "invalid_request_error",
        ),
    ),
    (
        "anthropic 400 spend limit",
        anthropic_sync,
        anthropic_error(
            400,
            "You have reached your specified API usage limits. You will regain access on "
            "2026-12-01 at 00:00 UTC.",
            "invalid_request_error",
        ),
    ),
    (
        "anthropic 402 billing_error",
        anthropic_sync,
        anthropic_error(402, "billing", "billing_error"),
    ),
    ("402 over httpx", with_httpx, openai_error(402, "payment required")),
]


@pytest.mark.parametrize(("name", "call", "reply"), QUOTA, ids=[q[0] for q in QUOTA])
def test_quota_and_billing_errors_count_and_hold_as_long_as_allowed(
    provider: FakeProvider, make_breaker: BreakerFactory, name: str, call: Call, reply: Reply
) -> None:
    provider.reply = reply
    error = error_of(call, provider.url)
    assert is_llm_failure(error) is True
    assert retry_after(error, NOW) == timedelta(days=366)  # capped by max_retry_after
    config = CircuitBreakerConfig(failure_threshold=1, max_retry_after=timedelta(minutes=20))
    breaker = make_breaker(config)
    with pytest.raises(type(error)), breaker.guard("model"):
        call(provider.url)
    (trip,) = breaker.history("model")
    assert (trip.to_state, trip.retry_after) == (CircuitState.OPEN, 20 * 60)
