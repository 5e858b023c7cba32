"""Fallback across keys: try each key in order, skipping open circuits, until a call succeeds.

The loop is the same for both breakers and both kinds of call; each attempt runs in its
key's guard, so its outcome is recorded (and any transition audited) on that key.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import NoReturn, TypeVar

from ._classify import reason_of
from ._common import check_name
from ._errors import CircuitOpenError, InvalidArgumentError
from ._explain import duration
from ._permit import AsyncGuard, Guard, counted_failure
from ._tables import MAX_KEY_LENGTH

R = TypeVar("R")


def check_fallback_keys(keys: object) -> list[str]:
    """A non-empty sequence of distinct keys, in order of preference (not one str, nor a set,
    whose order differs from process to process)."""
    if type(keys) is list or type(keys) is tuple:
        pass  # the usual case, checked without the slower abstract-class checks below
    elif isinstance(keys, str | bytes | AbstractSet | Mapping) or not isinstance(keys, Iterable):
        hint = f"; for one key pass [{keys!r:.60}]" if isinstance(keys, str) else ""
        if isinstance(keys, AbstractSet | Mapping):
            hint = "; a set or dict has no order of preference, pass a list"
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

    def __init__(self, keys: object, call: object) -> None:
        self.keys = check_fallback_keys(keys)
        if not callable(call):
            raise InvalidArgumentError(f"call must be a function taking a key, got {call!r:.80}")
        # Each attempt's key and error, in order; failed ones also in `_failed`. Their lines
        # are written only if no key serves.
        self._attempts: list[tuple[str, Exception]] = []
        self._failed: list[int] = []

    def moves_on(self, key: str, error: Exception, entered: bool, counted: bool) -> bool:
        """Whether the fallback goes on to the next key after `error` ended the attempt on
        `key` (`entered`: raised in the guarded block, not by its admission; `counted`: the
        guard recorded it as a failure). It does after a rejection and a counted failure; not
        when the request is at fault, or when the breaker could not decide (the database is
        unavailable and on_store_error is "raise", say)."""
        if _interrupted(error):
            return False
        if entered and counted:
            self._failed.append(len(self._attempts))
        elif entered or not isinstance(error, CircuitOpenError):
            return False
        self._attempts.append((key, error))
        return True

    def error(self) -> BaseException:
        """The last counted error if any call was made, else the CircuitOpenError of the key
        that frees first; noted with what happened at every other attempt."""
        if self._failed:
            chosen = self._failed[-1]
        else:  # (an unknown wait, as of a circuit forced open until a reset, sorts last)
            waits = [getattr(error, "retry_after", None) for _, error in self._attempts]
            chosen = min(range(len(waits)), key=lambda i: (waits[i] is None, waits[i]))
        error = self._attempts[chosen][1]
        for attempt, (key, other) in enumerate(self._attempts):
            if attempt != chosen:
                note = f"durable-breaker fallback: {_told(key, other, attempt in self._failed)}"
                if note not in getattr(error, "__notes__", ()):  # noted by an earlier fallback
                    error.add_note(note)
        return error


def _interrupted(error: BaseException) -> bool:
    """Whether `error` was raised while an interrupt or an exit was propagating (a `finally`
    that raised): the process is stopping, so no further key is tried. (Not a cancellation:
    asyncio raises every timeout while one propagates; `fallback_async` asks the task.)"""
    seen = 0
    context = error.__context__
    while context is not None and seen < 8:  # (a cycle of contexts must end)
        if isinstance(context, KeyboardInterrupt | SystemExit):
            return True
        context, seen = context.__context__, seen + 1
    return False


def _told(key: str, error: Exception, failed: bool) -> str:
    """What happened at one attempt, in a line."""
    if failed or not isinstance(error, CircuitOpenError):
        return f"{key!r} failed: {reason_of(error)}"
    wait = "" if error.retry_after is None else f", retry in {duration(error.retry_after)}"
    return f"{key!r} skipped: circuit {error.state.value}{wait}"


def fallback(keys: object, call: Callable[[str], R], guard_of: Callable[[str], Guard]) -> R:
    attempts = Attempts(keys, call)
    for key in attempts.keys:
        guard, entered = guard_of(key), False
        try:
            with guard as permit:
                entered = True
                result = call(key)
                if inspect.isawaitable(result):
                    permit.abandoned()  # our refusal below is no failure of the model
                    _refuse_awaitable(result)
                return result
        except Exception as error:
            if not attempts.moves_on(key, error, entered, counted_failure(guard)):
                raise
    raise attempts.error()


async def fallback_async(
    keys: object, call: Callable[[str], Awaitable[R]], guard_of: Callable[[str], AsyncGuard]
) -> R:
    attempts = Attempts(keys, call)
    for key in attempts.keys:
        guard, entered = guard_of(key), False
        cancelling = _cancelling()
        try:
            async with guard as permit:
                entered = True
                pending = call(key)
                if not inspect.isawaitable(pending):
                    await permit.abandoned()  # our refusal below is no failure of the model
                    _refuse_plain(pending)
                return await pending
        except Exception as error:
            if _cancelling() > cancelling:  # cancelled meanwhile: the caller stopped waiting
                raise
            if not attempts.moves_on(key, error, entered, counted_failure(guard)):
                raise
    raise attempts.error()


def _cancelling() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _refuse_awaitable(result: object) -> NoReturn:
    if inspect.iscoroutine(result):
        result.close()  # never awaited, on purpose: no "never awaited" warning
    raise InvalidArgumentError(
        "call returned an awaitable, so the model was never called; for an async def "
        "function use await breaker.fallback_async(keys, call)"
    )


def _refuse_plain(result: object) -> NoReturn:
    raise InvalidArgumentError(
        f"call must return an awaitable (an async def function), got {result!r:.80} "
        "from it; use CircuitBreaker.fallback for plain functions"
    )
