"""Permits: one admitted call's right to report its outcome once, fenced by its generation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._common import check_reason
from ._errors import DurableBreakerError, InvalidArgumentError
from ._machine import Trigger

T = TypeVar("T")
# Reports (key, trigger, generation, reason, error); the breaker decides what it does.
Report = Callable[[str, Trigger, int | None, str | None, BaseException | None], None]
AsyncReport = Callable[
    [str, Trigger, int | None, str | None, BaseException | None], Awaitable[None]
]


def reason_of(error: BaseException) -> str:
    """An audit reason naming an exception: its type and, if any, its message."""
    text = str(error)
    name = type(error).__qualname__
    return f"{name}: {text}"[:500] if text else name


class _Settled:
    """The once-only bookkeeping both permit kinds share."""

    __slots__ = ("_lock", "_outcome", "generation", "key")

    def __init__(self, key: str, generation: int | None) -> None:
        self.key = key
        # Of the circuit the call was admitted under; None: admitted without the database.
        self.generation = generation
        self._outcome: Trigger | None = None
        self._lock = threading.Lock()

    def _settle(self, trigger: Trigger, reason: str | None = None) -> None:
        check_reason(reason)  # before settling: a bad reason must not lose the outcome
        with self._lock:
            if self._outcome is not None:
                raise InvalidArgumentError(
                    f"this permit for {self.key!r} was already settled "
                    f"({self._outcome.value}); report exactly one outcome per permit"
                )
            self._outcome = trigger

    @property
    def _holds_known_probe(self) -> bool:
        # Admitted without the database (generation None), a permit cannot know which probe,
        # if any, it holds: giving one back could free another process's.
        return self.generation is not None

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

    def __init__(self, key: str, generation: int | None, report: Report) -> None:
        super().__init__(key, generation)
        self._report = report

    def succeeded(self) -> None:
        """The call succeeded."""
        self._settle(Trigger.SUCCESS)
        self._report(self.key, Trigger.SUCCESS, self.generation, None, None)

    def failed(self, reason: str | None = None, *, error: BaseException | None = None) -> None:
        """The call failed; `error`'s Retry-After, if any, holds a trip open that long."""
        self._settle(Trigger.FAILURE, reason)
        self._report(self.key, Trigger.FAILURE, self.generation, reason, error)

    def abandoned(self) -> None:
        """The call ended without an outcome to count (cancelled, interrupted, ignored)."""
        self._settle(Trigger.RELEASE)
        if self._holds_known_probe:
            self._report(self.key, Trigger.RELEASE, self.generation, None, None)


class AsyncPermit(_Settled):
    """A `Permit` whose reports are awaited."""

    __slots__ = ("_report",)

    def __init__(self, key: str, generation: int | None, report: AsyncReport) -> None:
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
        self._settle(trigger, reason)
        if trigger is Trigger.RELEASE and not self._holds_known_probe:
            return
        _, cancelled = await to_completion(
            self._report(self.key, trigger, self.generation, reason, error)
        )
        if cancelled:
            raise asyncio.CancelledError


async def to_completion(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Await `awaitable` to its end even if the caller is cancelled meanwhile; return its
    result and whether the caller was cancelled (then the caller must re-raise).

    Pass a Future where the work runs in a thread: unlike a Task, `asyncio.run` does not
    cancel it at shutdown, so the work is still awaited (and undone) then.
    """
    inner = asyncio.ensure_future(awaitable)
    caller = asyncio.current_task()
    requests = 0 if caller is None else caller.cancelling()
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.done():
                break  # the work itself was cancelled: result() raises it
        except BaseException:
            if not inner.done():
                raise  # not the work's error: the coroutine is being closed
            break
    cancelled = caller is not None and caller.cancelling() > requests
    if cancelled and (inner.cancelled() or inner.exception() is not None):
        raise asyncio.CancelledError  # nothing was obtained: the cancellation wins
    return inner.result(), cancelled


async def acquired(acquire: Awaitable[AsyncPermit]) -> AsyncPermit:
    """`acquire` awaited to its end; if the caller was cancelled meanwhile, the permit it
    got is abandoned (its half-open probe given back) before the cancellation propagates."""
    permit, cancelled = await to_completion(acquire)
    if cancelled:
        with contextlib.suppress(DurableBreakerError):  # the cancellation must win
            await permit.abandoned()
        raise asyncio.CancelledError
    return permit


def _settle_from(
    permit: Permit, error: BaseException | None, is_failure: Callable[[BaseException], bool]
) -> None:
    if permit.settled:
        return
    if error is None:
        permit.succeeded()
    elif isinstance(error, Exception) and is_failure(error):
        permit.failed(reason_of(error), error=error)
    else:
        with _unless_interrupted(error):
            permit.abandoned()


def _unless_interrupted(error: BaseException) -> contextlib.AbstractContextManager[None]:
    # A cancellation or an interrupt must propagate as it is: an error giving the probe back
    # (the database is down, in "raise" mode) must not replace it.
    if isinstance(error, Exception):
        return contextlib.nullcontext()
    return contextlib.suppress(DurableBreakerError)


class Guard:
    """`with breaker.guard(key):` — a permit acquired on entry, settled on exit: success on a
    normal exit, failure on a counted exception, abandoned on anything else."""

    __slots__ = ("_acquire", "_entered", "_is_failure", "_permit")

    def __init__(
        self, acquire: Callable[[], Permit], is_failure: Callable[[BaseException], bool]
    ) -> None:
        self._acquire, self._is_failure = acquire, is_failure
        self._entered = False
        self._permit: Permit | None = None

    def __enter__(self) -> Permit:
        if self._entered:
            raise InvalidArgumentError("a guard is used once: call breaker.guard(key) per call")
        self._entered = True
        self._permit = self._acquire()
        return self._permit

    def __exit__(
        self, _type: type[BaseException] | None, error: BaseException | None, _tb: Any
    ) -> None:
        assert self._permit is not None
        _settle_from(self._permit, error, self._is_failure)


class AsyncGuard:
    """`async with breaker.guard_async(key):` — `Guard` for coroutines."""

    __slots__ = ("_acquire", "_entered", "_is_failure", "_permit")

    def __init__(
        self,
        acquire: Callable[[], Awaitable[AsyncPermit]],
        is_failure: Callable[[BaseException], bool],
    ) -> None:
        self._acquire, self._is_failure = acquire, is_failure
        self._entered = False
        self._permit: AsyncPermit | None = None

    async def __aenter__(self) -> AsyncPermit:
        if self._entered:
            raise InvalidArgumentError("a guard is used once: call guard_async(key) per call")
        self._entered = True
        self._permit = await acquired(self._acquire())
        return self._permit

    async def __aexit__(
        self, _type: type[BaseException] | None, error: BaseException | None, _tb: Any
    ) -> None:
        permit = self._permit
        assert permit is not None
        if permit.settled:
            return
        if error is None:
            await permit.succeeded()
        elif isinstance(error, Exception) and self._is_failure(error):
            await permit.failed(reason_of(error), error=error)
        else:
            with _unless_interrupted(error):
                await permit.abandoned()


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
