"""Fallback across keys: try each key in order, skipping open circuits, until a call succeeds.

The loop is the same for both breakers and both kinds of call; each attempt runs in its
key's guard, so its outcome is recorded (and any transition audited) on that key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, TypeVar

from ._classify import reason_of
from ._common import check_name
from ._errors import CircuitOpenError, InvalidArgumentError
from ._explain import duration
from ._permit import IsFailure, _counts
from ._tables import MAX_KEY_LENGTH

R = TypeVar("R")


def check_fallback_keys(keys: object) -> list[str]:
    """A non-empty sequence of distinct keys, in order of preference (not one str)."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        hint = f"; for one key pass [{keys!r:.60}]" if isinstance(keys, str) else ""
        raise InvalidArgumentError(
            f"keys must be a list of keys in order of preference, got {keys!r:.80}{hint}"
        )
    checked = [check_name("key", key, MAX_KEY_LENGTH) for key in keys]
    if not checked:
        raise InvalidArgumentError("keys must name at least one key, got none")
    repeated = next((key for i, key in enumerate(checked) if key in checked[:i]), None)
    if repeated is not None:
        raise InvalidArgumentError(
            f"keys must be distinct, got {repeated!r} twice; list each key once"
        )
    return checked


class Attempts:
    """What one fallback met, key by key, and what it raises when no key served."""

    def __init__(self, keys: object) -> None:
        self.keys = check_fallback_keys(keys)
        self._rejected: list[CircuitOpenError] = []
        self._failed: list[BaseException] = []
        self._story: list[tuple[BaseException, str]] = []  # each attempt's, in order

    def moves_on(self, key: str, error: Exception, entered: bool, is_failure: IsFailure) -> bool:
        """Whether the fallback goes on to the next key after `error` ended the attempt on
        `key` (`entered`: raised by the call, not by the guard's admission). It does after
        a rejection and a counted failure; not when the request is at fault (its error does
        not count) or the breaker could not decide (a StoreUnavailableError, say)."""
        if entered and _counts(error, is_failure):
            self.failed(key, error)
            return True
        if not entered and isinstance(error, CircuitOpenError):
            self.rejected(error)
            return True
        return False

    def rejected(self, error: CircuitOpenError) -> None:
        self._rejected.append(error)
        wait = "" if error.retry_after is None else f", retry in {duration(error.retry_after)}"
        self._story.append((error, f"{error.key!r} skipped: circuit {error.state.value}{wait}"))

    def failed(self, key: str, error: BaseException) -> None:
        self._failed.append(error)
        self._story.append((error, f"{key!r} failed: {reason_of(error)}"))

    def error(self) -> BaseException:
        """The last counted error if any call was made, else the CircuitOpenError of the key
        that frees first; noted with what happened to every other key."""
        chosen: BaseException
        if self._failed:
            chosen = self._failed[-1]
        else:  # (an unknown wait, as of a circuit forced open until a reset, sorts last)
            chosen = min(self._rejected, key=lambda e: (e.retry_after is None, e.retry_after))
        for error, line in self._story:
            if error is not chosen:
                chosen.add_note(f"durable-breaker fallback: {line}")
        return chosen


def fallback(
    keys: object,
    call: Callable[[str], R],
    guard: Callable[[str], AbstractContextManager[Any]],
    is_failure: IsFailure,
) -> R:
    attempts = Attempts(keys)
    for key in attempts.keys:
        entered = False
        try:
            with guard(key):
                entered = True
                return call(key)
        except Exception as error:
            if not attempts.moves_on(key, error, entered, is_failure):
                raise
    raise attempts.error()


async def fallback_async(
    keys: object,
    call: Callable[[str], Awaitable[R]],
    guard: Callable[[str], AbstractAsyncContextManager[Any]],
    is_failure: IsFailure,
) -> R:
    attempts = Attempts(keys)
    for key in attempts.keys:
        entered = False
        try:
            async with guard(key):
                entered = True
                return await _awaited(call, key)
        except Exception as error:
            if not attempts.moves_on(key, error, entered, is_failure):
                raise
    raise attempts.error()


async def _awaited(call: Callable[[str], Awaitable[R]], key: str) -> R:
    pending = call(key)
    if not isinstance(pending, Awaitable):
        raise InvalidArgumentError(
            f"call must return an awaitable (an async def function), got {pending!r:.80} "
            "from it; use CircuitBreaker.fallback for plain functions"
        )
    return await pending
