"""Which exceptions count as failures of an LLM call, and the Retry-After they carry.

Duck-typed on attributes and class names, so that no client library is a dependency: the
`status_code` of `openai`/`anthropic` errors, `response.status_code` of `httpx` and
`requests` errors, `status` of `aiohttp` errors, `code` of `urllib` errors; the error type in
an SDK's error body (`type`, `code`); a wrapper's last attempt (`tenacity.RetryError`) or
explicit cause. docs/errors.md says why each kind counts or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
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
# The caller's own mistakes, raised before or without any answer from the service: the code
# is wrong (a bad argument, a missing name), or the client is set up wrong (no credentials,
# no such URL). They fail the same on every retry and say nothing about the model.
_PROGRAMMING = (TypeError, AttributeError, NameError, ImportError, SyntaxError)
_SETUP_NAMES = (
    "Credentials",
    "MissingSchema",
    "InvalidSchema",
    "InvalidURL",
    "UnsupportedProtocol",
)
_SETUP_EXACT = ("OpenAIError",)  # openai raises its bare base class for a client set up wrong
# The 4xx statuses that say the service is unwell: a timeout, and "too many requests".
# Any other 4xx refuses the request for what it contained (bad request, auth, not found, too
# large, context length, content filter): retrying fails the same way, the service is fine.
_COUNTED_4XX = frozenset({408, 429})
# Error types in a body, for errors with no HTTP status or a 2xx one (an error sent in the
# middle of a stream): these blame the request; every other type counts.
_REQUEST_KINDS = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "invalid_api_key",
        "context_length_exceeded",
        "content_filter",
        "content_policy_violation",
        "model_not_found",
    }
)
# Out of credit or over a spending limit: the account cannot call until someone acts, which
# no cooldown outlasts. They count, and hold a trip open as long as the config allows.
_QUOTA_KINDS = frozenset({"insufficient_quota", "billing_error", "billing_hard_limit_reached"})
_QUOTA_MESSAGE = re.compile(
    r"credit balance is too low|reached your specified api usage limit", re.I
)
_LONGEST_S = 366 * 86400.0  # a longer wait is capped (config.max_retry_after caps it further)
# Class names of errors with no status code that are the caller's or the content's fault.
_CONTENT_NAMES = ("ContentFilter", "ContextLength", "ContextWindow", "LengthFinishReason")
_MAX_REASON = 500  # characters of an exception's reason kept in the audit trail
_MAX_TYPE = 200  # characters of its type's name (the audit table's error_type)
_MAX_UNWRAP = 8  # wrappers followed, at most (a cycle of causes must end)


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


def error_kinds(error: BaseException) -> frozenset[str]:
    """The error types an SDK error carries (openai's `type` and `code`, and those of the
    body, Anthropic's `{"type": "error", "error": {"type": ...}}`), lower-cased."""
    # Read from the instance only: aiohttp's `code` is a deprecated property (the status).
    attributes = getattr(error, "__dict__", {})
    found: list[object] = [attributes.get("type"), attributes.get("code")]
    body = attributes.get("body")
    for part in (body, body.get("error") if isinstance(body, Mapping) else None):
        if isinstance(part, Mapping):
            found += [part.get("type"), part.get("code")]
    return frozenset(k.lower() for k in found if isinstance(k, str) and k and k != "error")


def underlying(error: BaseException) -> BaseException:
    """The error that says what happened: the last attempt's of a retry wrapper
    (`tenacity.RetryError.last_attempt`), the one error of an exception group, or an
    explicit cause (`raise Wrapper from error`) that carries an HTTP status or an error type,
    or is this library's (an inner guard's CircuitOpenError), when the wrapper carries no
    status or type."""
    for _ in range(_MAX_UNWRAP):
        inner = _last_attempt(error)
        if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            inner = error.exceptions[0]  # an asyncio.TaskGroup's one failed task
        if inner is None and status_code(error) is None and not error_kinds(error):
            cause = error.__cause__
            if cause is not None and (
                # (not a CancelledError: a timeout is raised from the one it caused)
                isinstance(cause, DurableBreakerError)
                or _last_attempt(cause) is not None
                or status_code(cause) is not None
                or error_kinds(cause)
            ):
                inner = cause
        if inner is None:
            return error
        error = inner
    return error


def _last_attempt(error: BaseException) -> BaseException | None:
    attempt = getattr(error, "last_attempt", None)  # a concurrent.futures.Future
    exception = getattr(attempt, "exception", None)
    if not callable(exception) or not getattr(attempt, "done", lambda: False)():
        return None
    inner = exception(timeout=0)
    return inner if isinstance(inner, BaseException) and inner is not error else None


def _names(error: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(error).__mro__]


def is_quota(error: BaseException) -> bool:
    """Whether `error` says the account is out of credit or over its spending limit
    (openai's 429 `insufficient_quota`, Anthropic's `billing_error` and spend limits, 402)."""
    if status_code(error) == 402 or error_kinds(error) & _QUOTA_KINDS:
        return True
    return status_code(error) == 400 and bool(_QUOTA_MESSAGE.search(_message(error)))


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return ""


def is_llm_failure(error: BaseException) -> bool:
    """Whether `error` says the service is unwell (count it), not the request (do not).

    Counted: timeouts, connection failures, 408, 429, 5xx (529 "overloaded" included), quota
    and billing errors, an error type in a stream that is not the request's fault
    (`overloaded_error`, `api_error`, ...), and any other exception. Not counted:
    cancellation and interrupts, the library's own errors (an inner guard's
    CircuitOpenError), any other 4xx (400, 401, 403, 404, 413, ...), request-fault error
    types (`invalid_request_error`, ...), context-length and content-filter errors, and the
    caller's mistakes (TypeError, AttributeError, missing credentials, a bad URL). A retry
    wrapper is judged by its last attempt, a wrapper by a cause that carries a status, an
    exception group by its members (it counts if one of them does).
    """
    if isinstance(error, _NEVER):
        return False
    error = underlying(error)
    if isinstance(error, _NEVER):
        return False
    if isinstance(error, BaseExceptionGroup):  # several errors: counts if one of them does
        return any(is_llm_failure(member) for member in error.exceptions)
    names = _names(error)
    if any(part in name for name in names for part in _CONTENT_NAMES):
        return False
    if is_quota(error):
        return True
    code = status_code(error)
    if code is not None and not 200 <= code < 300:
        return not 400 <= code < 500 or code in _COUNTED_4XX
    kinds = error_kinds(error)
    if kinds:  # an error sent with a 2xx status, or with none: in the middle of a stream
        return not kinds & _REQUEST_KINDS
    if isinstance(error, _PROGRAMMING) or type(error).__name__ in _SETUP_EXACT:
        return False
    # Anything else counts, as the seed counts every reported failure (a client's timeout or
    # connection error that is no OSError, like httpx's, counts either way).
    return not any(part in name for name in names for part in _SETUP_NAMES)


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    value = getter(name) if callable(getter) else None
    if value is None and isinstance(headers, Mapping):  # a plain dict: case-insensitive
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return None if value is None else str(value)


def retry_after(error: BaseException, now: datetime) -> timedelta | None:
    """How long the service asked callers to wait; None if it did not say.

    From a `retry_after` attribute, a `retry-after-ms` or `Retry-After` header (seconds or an
    HTTP date); failing those, for a 429, the reset time of the exhausted rate limit
    (openai's `x-ratelimit-reset-requests`/`-tokens`, `1m30s`; Anthropic's
    `anthropic-ratelimit-*-reset`, RFC 3339). A quota or billing error asks for the longest
    wait (the config's `max_retry_after` caps it): no cooldown outlasts an empty account.
    """
    error = underlying(error)
    attribute = getattr(error, "retry_after", None)
    if isinstance(attribute, timedelta) and attribute > timedelta(0):
        return attribute
    if isinstance(attribute, int | float) and not isinstance(attribute, bool):
        wait = _seconds(float(attribute))
        if wait is not None:
            return wait  # (zero or less says nothing: the headers and the rest may)
    response = getattr(error, "response", None)
    headers = getattr(error, "headers", None) or getattr(response, "headers", None)
    asked = _retry_after_header(headers, now)
    if asked is not None:
        return asked
    if is_quota(error):
        return timedelta(seconds=_LONGEST_S)
    if status_code(error) == 429:
        return _rate_limit_reset(headers, now)
    return None


def _retry_after_header(headers: Any, now: datetime) -> timedelta | None:
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
        return _until(moment, now)
    return _seconds(seconds)


# Each rate limit a provider reports: the header saying what is left, and when it resets.
_LIMITS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),  # openai: 1m30s
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    *(
        (f"anthropic-ratelimit-{limit}-remaining", f"anthropic-ratelimit-{limit}-reset")
        for limit in ("requests", "tokens", "input-tokens", "output-tokens")  # RFC 3339
    ),
)
_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s))+")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _rate_limit_reset(headers: Any, now: datetime) -> timedelta | None:
    """When the exhausted rate limit resets (the latest, if several are; if none says it is
    exhausted, the latest of all: the 429 says one is)."""
    exhausted: list[timedelta] = []
    others: list[timedelta] = []
    for remaining, reset in _LIMITS:
        text = _header(headers, reset)
        wait = None if text is None else _reset_wait(text.strip(), now)
        if wait is not None:
            (exhausted if _header(headers, remaining) == "0" else others).append(wait)
    return max(exhausted or others, default=None)


def _reset_wait(text: str, now: datetime) -> timedelta | None:
    if _GO_DURATION.fullmatch(text):  # openai: a Go duration, 1m30s, 120ms, 6m0s
        parts = _GO_PART.findall(text)
        return _seconds(sum(float(number) * _GO_UNITS[unit] for number, unit in parts))
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.upper())  # Anthropic: 2026-11-30T03:14:05Z
    except ValueError:
        return None
    return _until(moment, now)


def _until(moment: datetime, now: datetime) -> timedelta | None:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    wait_for = moment - now
    return _seconds(wait_for.total_seconds())


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
    and cut to 500 characters. Never raises, whatever the exception's `__str__` does.
    A wrapper is named by what it wraps (see `underlying`)."""
    with contextlib.suppress(Exception):  # an odd error object is named as it is
        error = underlying(error)
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
