"""The default failure classifier and Retry-After parsing, on look-alikes of the common clients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_breaker import CircuitOpenError, CircuitState, StoreUnavailableError, is_llm_failure
from durable_breaker._classify import retry_after

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class _Response:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}


class APIStatusError(Exception):  # openai / anthropic: status_code on the error
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code
        self.response = _Response(status_code, headers)


class HTTPStatusError(Exception):  # httpx / requests: status on the response
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__("bad status")
        self.response = _Response(status_code, headers)


class ClientResponseError(Exception):  # aiohttp: `status`
    def __init__(self, status: int) -> None:
        super().__init__("bad status")
        self.status = status


class ConnectTimeout(Exception):  # httpx timeouts are no TimeoutError
    pass


class ContextLengthExceededError(Exception):
    pass


class ContentFilterFinishReasonError(Exception):
    pass


@pytest.mark.parametrize("kind", [APIStatusError, HTTPStatusError, ClientResponseError])
@pytest.mark.parametrize(
    ("status", "counted"),
    [
        *[(code, True) for code in (500, 502, 503, 529, 429, 408)],
        *[(code, False) for code in (400, 401, 403, 404, 413, 422)],
    ],
)
def test_status_codes_count_when_the_service_is_unwell(
    kind: type[Exception], status: int, counted: bool
) -> None:
    assert is_llm_failure(kind(status)) is counted


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (TimeoutError(), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ConnectTimeout(), True),
        (RuntimeError("unknown"), True),
        (asyncio.CancelledError(), False),
        (KeyboardInterrupt(), False),
        (SystemExit(1), False),
        (ContextLengthExceededError(), False),
        (ContentFilterFinishReasonError(), False),
        (CircuitOpenError("inner", CircuitState.OPEN, 5.0), False),
        (StoreUnavailableError("down"), False),
    ],
)
def test_errors_without_a_status(error: BaseException, counted: bool) -> None:
    assert is_llm_failure(error) is counted


@pytest.mark.parametrize(
    ("error", "wait"),
    [
        (APIStatusError(429, {"retry-after": "30"}), timedelta(seconds=30)),
        (HTTPStatusError(503, {"Retry-After": "1.5"}), timedelta(seconds=1.5)),
        (APIStatusError(429, {"retry-after-ms": "250"}), timedelta(milliseconds=250)),
        (
            HTTPStatusError(503, {"Retry-After": "Thu, 26 Nov 2026 12:02:00 GMT"}),
            timedelta(minutes=2),
        ),
        (HTTPStatusError(503, {"Retry-After": "Thu, 26 Nov 2026 11:00:00 GMT"}), None),  # past
        (APIStatusError(429, {"retry-after": "soon"}), None),
        (APIStatusError(429, {"retry-after": "-5"}), None),
        (APIStatusError(429, {"retry-after": "nan"}), None),
        (APIStatusError(429, {"retry-after": "inf"}), None),
        (APIStatusError(429, {"retry-after-ms": "soon", "retry-after": "7"}), timedelta(seconds=7)),
        (APIStatusError(429, {"retry-after-ms": "0", "retry-after": "7"}), timedelta(seconds=7)),
        (APIStatusError(429), None),
        (TimeoutError(), None),
    ],
)
def test_retry_after_from_headers(error: BaseException, wait: timedelta | None) -> None:
    assert retry_after(error, NOW) == wait


def test_retry_after_from_an_attribute_and_capped_at_a_year() -> None:
    error: Any = RuntimeError("rate limited")
    error.retry_after = 12
    assert retry_after(error, NOW) == timedelta(seconds=12)
    error.retry_after = timedelta(seconds=3)
    assert retry_after(error, NOW) == timedelta(seconds=3)
    error.retry_after = 1e300
    assert retry_after(error, NOW) == timedelta(days=366)


def test_a_retry_after_attribute_of_zero_leaves_the_word_to_the_headers() -> None:
    error: Any = APIStatusError(429, {"retry-after": "9"})
    error.retry_after = 0
    assert retry_after(error, NOW) == timedelta(seconds=9)
    error.retry_after = timedelta(0)
    assert retry_after(error, NOW) == timedelta(seconds=9)
