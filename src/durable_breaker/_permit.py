"""Permits and guards: one admitted call's right to report its outcome once, fenced by its
generation; and how a guarded block's end becomes that outcome without ever replacing the
caller's exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ._classify import reason_of
from ._common import check_reason
from ._errors import DurableBreakerError, InvalidArgumentError
from ._machine import Trigger

T = TypeVar("T")
# Reports (key, trigger, generation, reason, error); the breaker decides what it does.
Report = Callable[[str, Trigger, int | None, str | None, BaseException | None], None]
AsyncReport = Callable[
    [str, Trigger, int | None, str | None, BaseException | None], Awaitable[None]
]
IsFailure = Callable[[BaseException], bool]
_SUCCESS, _FAILURE, _RELEASE = Trigger.SUCCESS, Trigger.FAILURE, Trigger.RELEASE
_log = logging.getLogger("durable_breaker")
# One lock for every permit's once-only settling: held for a few instructions, and a lock
# per permit would cost more to make than this one costs to share.
_SETTLING = threading.Lock()


def _new_settling_lock() -> None:
    global _SETTLING
    _SETTLING = threading.Lock()  # another thread may have held it at a fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_settling_lock)


class _Settled:
    """The once-only bookkeeping both permit kinds share."""

    __slots__ = ("_outcome", "generation", "key")

    def __init__(self, key: str, generation: int | None) -> None:
        self.key = key
        # Of the circuit the call was admitted under; None: admitted without the database.
        self.generation = generation
        self._outcome: Trigger | None = None

    def _settle(self, trigger: Trigger, reason: str | None = None) -> None:
        check_reason(reason)  # before settling: a bad reason must not lose the outcome
        with _SETTLING:
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


class Reporter(Protocol):
    """What a sync permit reports to (its breaker)."""

    def _admit(self, key: str) -> int | None: ...

    def _success(self, key: str, generation: int | None) -> None: ...

    def _report(
        self,
        key: str,
        trigger: Trigger,
        generation: int | None,
        reason: str | None,
        error: BaseException | None,
    ) -> None: ...


class Permit(_Settled):
    """An admitted call. Report exactly one of `succeeded()`, `failed()`, `abandoned()`.

    A result that arrives after the circuit changed state (a later generation) is audited
    but changes nothing; `abandoned()` gives a half-open probe back at once.
    """

    __slots__ = ("_breaker",)

    def __init__(self, key: str, generation: int | None, breaker: Reporter) -> None:
        super().__init__(key, generation)
        self._breaker = breaker

    def succeeded(self) -> None:
        """The call succeeded."""
        self._settle(_SUCCESS)
        self._breaker._success(self.key, self.generation)

    def failed(self, reason: str | None = None, *, error: BaseException | None = None) -> None:
        """The call failed; `error`'s Retry-After, if any, holds a trip open that long.
        Without a `reason`, the audit trail names `error` (see `reason_of`)."""
        self._settle(_FAILURE, reason)
        if reason is None and error is not None:
            reason = reason_of(error)
        self._breaker._report(self.key, _FAILURE, self.generation, reason, error)

    def abandoned(self) -> None:
        """The call ended without an outcome to count (cancelled, interrupted, ignored)."""
        self._settle(_RELEASE)
        self._give_back()

    def _give_back(self) -> None:
        if self._holds_known_probe:
            self._breaker._report(self.key, _RELEASE, self.generation, None, None)


class Guard(Permit):
    """`with breaker.guard(key) as permit:` — a permit acquired on entry and settled on exit:
    success on a normal exit, failure on a counted exception, abandoned on anything else.

    The block's exception always propagates as it is: an error recording its outcome is
    logged and noted on it (and a probe it held is given back when the database takes it).
    """

    __slots__ = ("_entered", "_is_failure")

    def __init__(self, key: str, breaker: Reporter, is_failure: IsFailure) -> None:
        # Set here rather than through the parents' __init__: one guard is made per call.
        self.key, self.generation, self._outcome = key, None, None
        self._breaker, self._is_failure, self._entered = breaker, is_failure, False

    def __enter__(self) -> Guard:
        if self._entered:
            raise InvalidArgumentError("a guard is used once: call breaker.guard(key) per call")
        self._entered = True
        self.generation = self._breaker._admit(self.key)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, error: BaseException | None, _tb: Any
    ) -> None:
        if error is None:
            with _SETTLING:
                if self._outcome is not None:
                    return  # settled inside the block
                self._outcome = _SUCCESS
            try:
                self._breaker._success(self.key, self.generation)
            except BaseException:
                _quietly(self._give_back)  # the success was not recorded: free its probe
                raise
            return
        if self._outcome is not None:
            return  # settled inside the block
        counts = False
        try:
            counts = _counts(error, self._is_failure)
            if counts:
                self.failed(error=error)
            else:
                self.abandoned()
        except Exception as recording:
            _note(error, self.key, recording)
            if counts:
                _quietly(self._give_back)
        except BaseException:
            # Interrupted while judging or recording: a probe that a recorded failure did not
            # end is given back (a late give-back after a recorded one is fenced, a no-op).
            if counts or not self.settled:
                _quietly(self._give_back)
            raise


def _counts(error: BaseException, is_failure: IsFailure) -> bool:
    """Whether the block's exception counts as a failure; a classifier that raises counts
    it (as an unknown error would) and is logged, so it cannot replace the exception."""
    if not isinstance(error, Exception):
        return False  # a cancellation, an interrupt, an exit: never the service's fault
    try:
        return bool(is_failure(error))
    except Exception:
        _log.exception("is_failure raised for %r; counted as a failure", error)
        return True


def _note(error: BaseException, key: str, recording: BaseException) -> None:
    """Log that `error`'s outcome could not be recorded, and say so on `error` itself."""
    _log.warning(
        "could not record the outcome of a call guarded by %r (%s); its exception "
        "propagates unchanged",
        key,
        recording,
    )
    error.add_note(f"durable-breaker could not record this outcome for {key!r}: {recording!r}")


def _quietly(give_back: Callable[[], object]) -> None:
    try:
        give_back()
    except Exception as error:  # the outcome's own error already says what went wrong
        _log.warning("could not give a probe back: %s", error)


class AsyncPermit(_Settled):
    """A `Permit` whose reports are awaited."""

    __slots__ = ("_report",)

    def __init__(self, key: str, generation: int | None, report: AsyncReport) -> None:
        super().__init__(key, generation)
        self._report = report

    async def succeeded(self) -> None:
        """The call succeeded."""
        await self._reported(_SUCCESS, None, None)

    async def failed(
        self, reason: str | None = None, *, error: BaseException | None = None
    ) -> None:
        """The call failed; `error`'s Retry-After, if any, holds a trip open that long.
        Without a `reason`, the audit trail names `error` (see `reason_of`)."""
        check_reason(reason)
        if reason is None and error is not None:
            reason = reason_of(error)
        await self._reported(_FAILURE, reason, error)

    async def abandoned(self) -> None:
        """The call ended without an outcome to count (cancelled, interrupted, ignored)."""
        await self._reported(_RELEASE, None, None)

    async def _reported(
        self, trigger: Trigger, reason: str | None, error: BaseException | None
    ) -> None:
        # Settled once begun: a cancellation meanwhile waits for the report to be stored,
        # then propagates (a half-written outcome would leave a probe taken for good).
        self._settle(trigger, reason)
        if trigger is _RELEASE and not self._holds_known_probe:
            return
        _, cancelled = await to_completion(
            self._report(self.key, trigger, self.generation, reason, error)
        )
        if cancelled:
            raise asyncio.CancelledError

    async def _give_back(self) -> None:
        if self._holds_known_probe:
            await to_completion(self._report(self.key, _RELEASE, self.generation, None, None))


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


class AsyncGuard:
    """`async with breaker.guard_async(key) as permit:` — `Guard` for coroutines."""

    __slots__ = ("_acquire", "_entered", "_is_failure", "_key", "_permit")

    def __init__(
        self, key: str, acquire: Callable[[], Awaitable[AsyncPermit]], is_failure: IsFailure
    ) -> None:
        self._key, self._acquire, self._is_failure = key, acquire, is_failure
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
            try:
                await permit.succeeded()
            except BaseException:
                await _quietly_async(permit)  # the success was not recorded: free its probe
                raise
            return
        counts = False
        try:
            counts = _counts(error, self._is_failure)
            if counts:
                await permit.failed(error=error)
            else:
                await permit.abandoned()
        except Exception as recording:
            _note(error, self._key, recording)
            if counts:
                await _quietly_async(permit)
        except BaseException:
            if counts or not permit.settled:  # (as in Guard.__exit__)
                await _quietly_async(permit)
            if isinstance(error, Exception):
                raise  # a cancellation while recording: it wins over an ordinary error
            # The block's own cancellation or interrupt propagates as it is.


async def _quietly_async(permit: AsyncPermit) -> None:
    try:
        await permit._give_back()
    except Exception as error:
        _log.warning("could not give a probe back: %s", error)


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


def counted_failure(guard: Guard | AsyncGuard) -> bool:
    """Whether `guard`'s block ended in an exception it recorded as a failure (as its
    `is_failure` judged it, once)."""
    permit = guard._permit if isinstance(guard, AsyncGuard) else guard
    return permit is not None and permit._outcome is _FAILURE
