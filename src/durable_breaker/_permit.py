"""Permits: one admitted call's right to report its outcome once, fenced by its generation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from ._errors import InvalidArgumentError
from ._machine import Trigger

T = TypeVar("T")
# Reports (key, trigger, generation, reason, error); the breaker decides what it does.
Report = Callable[[str, Trigger, int, str | None, BaseException | None], None]
AsyncReport = Callable[[str, Trigger, int, str | None, BaseException | None], Awaitable[None]]


def reason_of(error: BaseException) -> str:
    """An audit reason naming an exception: its type and, if any, its message."""
    text = str(error)
    name = type(error).__qualname__
    return f"{name}: {text}"[:500] if text else name


class _Settled:
    """The once-only bookkeeping both permit kinds share."""

    __slots__ = ("_lock", "_outcome", "generation", "key")

    def __init__(self, key: str, generation: int) -> None:
        self.key = key
        self.generation = generation  # of the circuit the call was admitted under
        self._outcome: Trigger | None = None
        self._lock = threading.Lock()

    def _settle(self, trigger: Trigger) -> None:
        with self._lock:
            if self._outcome is not None:
                raise InvalidArgumentError(
                    f"this permit for {self.key!r} was already settled "
                    f"({self._outcome.value}); report exactly one outcome per permit"
                )
            self._outcome = trigger

    @property
    def settled(self) -> bool:
        """Whether an outcome was reported."""
        return self._outcome is not None

    def __repr__(self) -> str:
        outcome = "open" if self._outcome is None else self._outcome.value
        return f"{type(self).__name__}({self.key!r}, generation={self.generation}, {outcome})"


class Permit(_Settled):
    """An admitted call. Report exactly one of `succeeded()`, `failed()`, `abandoned()`.

    A result that arrives after the circuit changed state (a later generation) is audited
    but changes nothing; `abandoned()` gives a half-open probe back at once.
    """

    __slots__ = ("_report",)

    def __init__(self, key: str, generation: int, report: Report) -> None:
        super().__init__(key, generation)
        self._report = report

    def succeeded(self) -> None:
        """The call succeeded."""
        self._settle(Trigger.SUCCESS)
        self._report(self.key, Trigger.SUCCESS, self.generation, None, None)

    def failed(self, reason: str | None = None, *, error: BaseException | None = None) -> None:
        """The call failed; `error`'s Retry-After, if any, holds a trip open that long."""
        self._settle(Trigger.FAILURE)
        self._report(self.key, Trigger.FAILURE, self.generation, reason, error)

    def abandoned(self) -> None:
        """The call ended without an outcome to count (cancelled, interrupted, ignored)."""
        self._settle(Trigger.RELEASE)
        self._report(self.key, Trigger.RELEASE, self.generation, None, None)


class AsyncPermit(_Settled):
    """A `Permit` whose reports are awaited."""

    __slots__ = ("_report",)

    def __init__(self, key: str, generation: int, report: AsyncReport) -> None:
        super().__init__(key, generation)
        self._report = report

    async def succeeded(self) -> None:
        """The call succeeded."""
        await self._reported(Trigger.SUCCESS, None, None)

    async def failed(
        self, reason: str | None = None, *, error: BaseException | None = None
    ) -> None:
        """The call failed; `error`'s Retry-After, if any, holds a trip open that long."""
        await self._reported(Trigger.FAILURE, reason, error)

    async def abandoned(self) -> None:
        """The call ended without an outcome to count (cancelled, interrupted, ignored)."""
        await self._reported(Trigger.RELEASE, None, None)

    async def _reported(
        self, trigger: Trigger, reason: str | None, error: BaseException | None
    ) -> None:
        # Settled once begun: a cancellation meanwhile waits for the report to be stored,
        # then propagates (a half-written outcome would leave a probe taken for good).
        self._settle(trigger)
        _, cancelled = await to_completion(
            self._report(self.key, trigger, self.generation, reason, error)
        )
        if cancelled:
            raise asyncio.CancelledError


async def to_completion(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Await `awaitable` to its end even if the caller is cancelled meanwhile; return its
    result and whether the caller was cancelled (then the caller re-raises)."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
        except BaseException:
            break  # the task's own error: raised by result() below
    if cancelled and (task.cancelled() or task.exception() is not None):
        raise asyncio.CancelledError  # nothing was obtained: the cancellation wins
    return task.result(), cancelled


async def acquired(
    acquire: Awaitable[AsyncPermit],
) -> AsyncPermit:
    """`acquire` awaited to its end; if the caller was cancelled meanwhile, the permit it
    got is abandoned (its half-open probe given back) before the cancellation propagates."""
    permit, cancelled = await to_completion(acquire)
    if cancelled:
        await permit.abandoned()
        raise asyncio.CancelledError
    return permit


def capped(wait: timedelta | None, cap: timedelta) -> timedelta | None:
    """A Retry-After wait, no longer than `cap`."""
    return None if wait is None else min(wait, cap)


@contextlib.contextmanager
def guarded(permit: Permit, is_failure: Callable[[BaseException], bool]) -> Iterator[Permit]:
    """Settle `permit` from how the block ends: success on a normal exit, failure on a counted
    exception, abandoned on anything else; the exception propagates."""
    try:
        yield permit
    except BaseException as error:
        if not permit.settled:
            if isinstance(error, Exception) and is_failure(error):
                permit.failed(reason_of(error), error=error)
            else:
                permit.abandoned()
        raise
    if not permit.settled:
        permit.succeeded()


@contextlib.asynccontextmanager
async def guarded_async(
    permit: AsyncPermit, is_failure: Callable[[BaseException], bool]
) -> AsyncIterator[AsyncPermit]:
    """`guarded` for an `AsyncPermit` (cancellation abandons it)."""
    try:
        yield permit
    except BaseException as error:
        if not permit.settled:
            if isinstance(error, Exception) and is_failure(error):
                await permit.failed(reason_of(error), error=error)
            else:
                await permit.abandoned()
        raise
    if not permit.settled:
        await permit.succeeded()


KeyOf = str | Callable[..., str]


def key_of(key: KeyOf, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The key a protected call is guarded under: `key`, or `key(*args, **kwargs)`."""
    return key(*args, **kwargs) if callable(key) else key


def check_key_of(key: object) -> KeyOf:
    if not (isinstance(key, str) or callable(key)):
        raise InvalidArgumentError(
            f"key must be a str or a callable of the call's arguments, got {key!r}"
        )
    return key
