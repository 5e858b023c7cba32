"""Which exceptions count as failures of an LLM call, and the Retry-After they carry.

Duck-typed on attributes and class names, so that no client library is a dependency: the
`status_code` of `openai`/`anthropic` errors, `response.status_code` of `httpx` and
`requests` errors, `status` of `aiohttp` errors, `code` of `urllib` errors.
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ._errors import DurableBreakerError

# Never a failure of the service: the caller stopped waiting, the process is stopping, or a
# breaker said no (an inner guard's open circuit must not trip the outer key).
_NEVER = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    DurableBreakerError,
)
# The 4xx statuses that say the service is unwell: a timeout, and "too many requests".
# Any other 4xx refuses the request for what it contained (bad request, auth, not found, too
# large, context length, content filter): retrying fails the same way, the service is fine.
_COUNTED_4XX = frozenset({408, 429})
_LONGEST_S = 366 * 86400.0  # a longer wait is capped (config.max_retry_after caps it further)
# Class names of errors with no status code that are the caller's or the content's fault.
_CONTENT_NAMES = ("ContentFilter", "ContextLength", "ContextWindow", "LengthFinishReason")
_MAX_REASON = 500  # characters of an exception's reason kept in the audit trail
_MAX_TYPE = 200  # characters of its type's name (the audit table's error_type)


def status_code(error: BaseException) -> int | None:
    """The HTTP status an error reports, where a common client library puts it."""
    response = getattr(error, "response", None)
    for holder, name in (
        (error, "status_code"),
        (response, "status_code"),
        (error, "status"),
        (response, "status"),
        (error, "code"),
    ):
        value = getattr(holder, name, None) if holder is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _names(error: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(error).__mro__]


def is_llm_failure(error: BaseException) -> bool:
    """Whether `error` says the service is unwell (count it), not the request (do not).

    Counted: timeouts, connection failures, 408, 429, 5xx (529 "overloaded" included), an
    "overloaded" error, and any other exception. Not counted: cancellation and interrupts,
    the library's own errors (an inner guard's CircuitOpenError),
    any other 4xx (400, 401, 403, 404, 413, ...), and context-length and content-filter errors.
    """
    if isinstance(error, _NEVER):
        return False
    names = _names(error)
    if any(part in name for name in names for part in _CONTENT_NAMES):
        return False
    code = status_code(error)
    if code is not None:
        return not 400 <= code < 500 or code in _COUNTED_4XX
    # Anything else counts, as the seed counts every reported failure (a client's timeout or
    # connection error that is no OSError, like httpx's, counts either way).
    return True


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    value = getter(name) if callable(getter) else None
    if value is None and isinstance(headers, Mapping):  # a plain dict: case-insensitive
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return None if value is None else str(value)


def retry_after(error: BaseException, now: datetime) -> timedelta | None:
    """How long the service asked callers to wait, from a `retry_after` attribute or a
    `Retry-After` (seconds or HTTP date) or `retry-after-ms` header; None if it did not."""
    attribute = getattr(error, "retry_after", None)
    if isinstance(attribute, timedelta):
        return attribute if attribute > timedelta(0) else None
    if isinstance(attribute, int | float) and not isinstance(attribute, bool):
        return _seconds(float(attribute))
    response = getattr(error, "response", None)
    headers = getattr(error, "headers", None) or getattr(response, "headers", None)
    milliseconds = _header(headers, "retry-after-ms")
    if milliseconds is not None:
        try:
            wait = _seconds(float(milliseconds) / 1000)
        except ValueError:
            wait = None
        if wait is not None:
            return wait
    text = _header(headers, "retry-after")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None  # unparseable: as if there were none
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        wait_for = moment - now
        return wait_for if wait_for > timedelta(0) else None
    return _seconds(seconds)


def _seconds(seconds: float) -> timedelta | None:
    if not 0 < seconds < float("inf"):  # zero, negative, infinite, NaN
        return None
    return timedelta(seconds=min(seconds, _LONGEST_S))


def error_type(error: BaseException) -> str:
    """The name the audit trail gives an exception's type: its package and class
    ("openai.RateLimitError", "httpx.ConnectTimeout"), or the class alone for a builtin."""
    cls = type(error)
    package = str(getattr(cls, "__module__", "")).partition(".")[0]
    name = cls.__name__  # (a class defined in a function keeps its short name)
    if package and package not in ("builtins", "__main__"):
        name = f"{package}.{name}"
    return storable_text(name)[:_MAX_TYPE]


def reason_of(error: BaseException) -> str:
    """An audit reason naming an exception: its type and, if any, its message, made storable
    (NUL and lone surrogates escaped, as SDKs copying a raw response body may carry them)
    and cut to 500 characters. Never raises, whatever the exception's `__str__` does."""
    name = type(error).__qualname__
    try:
        text = str(error)
    except Exception:
        text = "<message unavailable: its __str__ raised>"
    reason = f"{name}: {text}" if text else name
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    return storable_text(reason)


def storable_text(text: str) -> str:
    """`text` with what no backend stores as text escaped: NUL as \\x00, a lone surrogate as
    \\udXXX (the backslashes of the escapes are the only change)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
