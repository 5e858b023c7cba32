"""AsyncCircuitBreaker: the breaker for asyncio code, on SQLAlchemy's asyncio engine.

It runs the statements and the locked read-decide-write of the sync store
(`Statements.fire_steps`) through aiosqlite or psycopg's async mode, and decides with the
same pure `decide`; only the awaiting differs. The sync breaker's hot-path shortcuts (the raw
driver, rows proved current by the local view) are left out: every call reads, and writes
only when its decision needs a write. Its local view only serves the outage fallback.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy.engine import URL

from ._common import (
    BreakerBase,
    KeyStatus,
    check_count,
    check_hold_until,
    check_keys,
    check_limit,
    check_name,
    check_reason,
    check_states,
)
from ._config import CircuitBreakerConfig
from ._engine import (
    DEFAULT_URL,
    make_async_engine,
    make_engine,
    settle_journal_mode,
    write_transaction_async,
)
from ._errors import (
    DurableBreakerError,
    InvalidArgumentError,
    StoreUnavailableError,
)
from ._explain import Explanation, explain
from ._fallback import check_fallback_keys, fallback_async
from ._faults import translate_errors, with_retries_async
from ._machine import Decision, Hold, Trigger, decide
from ._migrations import ensure_schema
from ._outage import OutageTracker
from ._permit import (
    AsyncGuard,
    AsyncPermit,
    KeyOf,
    check_key_of,
    key_of,
)
from ._state import NEW_CIRCUIT, NO_CAUSE, Cause, CircuitState, StoredCircuit, Transition
from ._store import Statements, circuit_of, stored_circuits, transition_of
from ._tables import MAX_KEY_LENGTH
from ._urls import safe_url
from ._view import LocalView, NoProof

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

P = ParamSpec("P")
R = TypeVar("R")
_SNAPSHOT_TRIES = 20  # as SqlStore.snapshot's


class AsyncSqlStore(Statements):
    """The circuits of one namespace, through an asyncio engine."""

    def __init__(self, engine: AsyncEngine, namespace: str, timeout_s: float) -> None:
        super().__init__(engine.dialect.name, namespace)
        self.engine = engine
        self.timeout_s = timeout_s
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )

    async def _read(self, doing: str, query: Any, params: dict[str, Any] | None = None) -> Any:
        async def read() -> Any:
            async with self._reader.connect() as connection:
                return (await connection.execute(query, params)).all()

        return await with_retries_async(self.engine.sync_engine, doing, self.timeout_s, read)

    async def fire(
        self,
        key: str,
        trigger: Trigger,
        clock: Callable[[], datetime],
        config: CircuitBreakerConfig,
        *,
        cause: Cause,
        actor: str,
        peek: bool = False,
        must_exist: bool = False,
        hold: Hold = None,
        generation: int | None = None,
    ) -> Decision:
        """Decide `trigger` on the committed row; if that needs a write (and not `peek`),
        read, decide and write again under the row's lock, with the audit row."""
        if not must_exist:
            rows = await self._read("read a circuit", self.select_circuit, {"key": key})
            circuit = NEW_CIRCUIT if not rows else circuit_of(rows[0])
            decision = decide(circuit, trigger, clock(), config, hold=hold, generation=generation)
            if peek or not decision.needs_write:
                return decision

        async def transaction() -> Decision:
            async with write_transaction_async(self.engine) as connection:
                steps = self.fire_steps(
                    key, trigger, clock, config, cause, actor, must_exist, hold, generation
                )
                try:
                    statement = next(steps)
                    while True:
                        statement = steps.send(await connection.execute(*statement))
                except StopIteration as done:
                    decided: Decision = done.value[0]
                    return decided

        return await with_retries_async(
            self.engine.sync_engine, "update a circuit", self.timeout_s, transaction
        )

    async def circuits(
        self, keys: list[str] | None = None, states: list[CircuitState] | None = None
    ) -> list[StoredCircuit]:
        query = self.circuits_query(keys, states)
        return stored_circuits(await self._read("list circuits", query))

    async def snapshot(self, key: str, limit: int) -> tuple[StoredCircuit | None, list[Transition]]:
        """As `SqlStore.snapshot`."""
        for _ in range(_SNAPSHOT_TRIES):
            stored = await self.circuits([key])
            history = await self.history(key, limit)
            again = await self.circuits([key])
            if [s.version for s in stored] == [s.version for s in again]:
                break
        return (stored[0] if stored else None), history

    async def history(self, key: str, limit: int | None) -> list[Transition]:
        rows = await self._read("read history", self.history_query(key, limit))
        return [transition_of(row) for row in reversed(rows)]


class AsyncCircuitBreaker(BreakerBase):
    """A per-key circuit breaker for asyncio code; the same semantics, database and audit
    trail as `CircuitBreaker` (the two can share one database).

    Use it as `async with AsyncCircuitBreaker(url, config) as breaker:`, or call `await
    breaker.start()` and `await breaker.close()`.
    """

    def __init__(
        self,
        url: str | URL = DEFAULT_URL,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        namespace: str = "default",
        migrate: bool | None = None,
        actor: str | None = None,
    ) -> None:
        """Set up; the database is first touched by `start()` (or `async with`)."""
        super().__init__(config, clock=clock, namespace=namespace, actor=actor)
        if migrate not in (None, True, False):
            raise InvalidArgumentError(f"migrate must be None, True or False, got {migrate!r}")
        self._url, self._migrate = url, migrate
        self._timeout_s = self._config.store_timeout.total_seconds()
        self._engine = make_async_engine(url, self._timeout_s)
        self._store = AsyncSqlStore(self._engine, self._namespace, self._timeout_s)
        self._view = LocalView(NoProof(), self._config.cached_keys)
        self._outage = OutageTracker(self._config, safe_url(url), self._view)
        self._started = self._closed = False

    async def start(self) -> AsyncCircuitBreaker:
        """Check (and on first use create) the schema, as `CircuitBreaker` does."""
        if not self._started:
            await asyncio.to_thread(self._prepare_schema)
            self._started = True
        return self

    def _prepare_schema(self) -> None:
        # Alembic is synchronous: a short-lived sync engine on the same database runs it.
        engine = make_engine(self._url, self._timeout_s)
        try:
            ensure_schema(engine, self._migrate)
            with translate_errors(engine, "switch to WAL mode"):
                settle_journal_mode(engine)
        finally:
            engine.dispose()

    async def close(self) -> None:
        """Release the database connections."""
        if not self._closed:
            self._closed = True
            await self._engine.dispose()

    async def __aenter__(self) -> AsyncCircuitBreaker:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"AsyncCircuitBreaker({safe_url(self._url)!r}, namespace={self.namespace!r}"
            f"{', closed' if self._closed else ''})"
        )

    def _open_store(self, key: object = None, *, keyed: bool = True) -> AsyncSqlStore:
        """The store, once the breaker is known to be started and open, and `key` valid
        (unless not `keyed`)."""
        if keyed:
            check_name("key", key, MAX_KEY_LENGTH)
        if self._closed:
            raise DurableBreakerError("this AsyncCircuitBreaker is closed")
        if not self._started:
            raise DurableBreakerError(
                "this AsyncCircuitBreaker is not started: use `async with` or `await start()`"
            )
        return self._store

    async def _fire(
        self,
        key: str,
        trigger: Trigger,
        cause: Cause = NO_CAUSE,
        *,
        peek: bool = False,
        hold: Hold = None,
        generation: int | None = None,
        fall_back: bool = True,
    ) -> Decision:
        """Decide `trigger` for `key` and store the outcome, as `CircuitBreaker._fire`."""
        store = self._open_store(key)
        if self._outage.skip_store():
            error = self._outage.unavailable()
        else:
            try:
                decision = await store.fire(
                    key,
                    trigger,
                    self._now,
                    self._config,
                    cause=cause,
                    actor=self.actor,
                    peek=peek,
                    hold=hold,
                    generation=generation,
                )
            except StoreUnavailableError as raised:
                self._outage.failed(raised)
                error = raised
            else:
                writes = decision.needs_write and not peek
                self._outage.answered()
                self._view.remember(key, decision.after if writes else decision.before)
                if writes and decision.audited and self._listeners:
                    self._announce(key, trigger, decision, cause)
                return decision
        if self._config.on_store_error == "fallback" and fall_back:
            return self._outage.decide(
                key, trigger, self._now(), peek=peek, hold=hold, generation=generation
            )
        raise error

    async def check(self, key: str) -> None:
        """Admit a call to `key`, or raise CircuitOpenError."""
        await self._admit(key)

    async def _admit(self, key: str) -> int | None:
        try:
            decision = await self._fire(key, Trigger.CHECK, fall_back=False)
        except StoreUnavailableError as error:
            self._admitted_without_store(key, error)
            return None
        return self._admitted(key, decision)

    async def record_success(self, key: str) -> None:
        """Record a successful call: the key's circuit closes and its counts reset."""
        await self._outcome(key, Trigger.SUCCESS, NO_CAUSE, None, None)

    async def record_failure(
        self,
        key: str,
        reason: str | None = None,
        *,
        retry_after: timedelta | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record a failed call (see `CircuitBreaker.record_failure`)."""
        cause = self._failure_cause(reason, retry_after, error)
        await self._outcome(key, Trigger.FAILURE, cause, cause.retry_after, None)

    async def _outcome(
        self, key: str, trigger: Trigger, cause: Cause, hold: Hold, generation: int | None
    ) -> None:
        try:
            await self._fire(key, trigger, cause, hold=hold, generation=generation)
        except StoreUnavailableError as error:
            self._unless_unavailable(error)

    async def _report(
        self,
        key: str,
        trigger: Trigger,
        generation: int | None,
        reason: str | None,
        error: BaseException | None,
    ) -> None:
        cause = self._cause(trigger, reason, error)
        await self._outcome(key, trigger, cause, cause.retry_after, generation)

    async def acquire(self, key: str) -> AsyncPermit:
        """Admit a call (or raise CircuitOpenError) and return its permit (see
        `CircuitBreaker.acquire`); its reports are awaited."""
        return AsyncPermit(key, await self._admit(key), self._report)

    def guard_async(self, key: str) -> AsyncGuard:
        """`async with breaker.guard_async(key):` (see `CircuitBreaker.guard`)."""
        check_name("key", key, MAX_KEY_LENGTH)
        return AsyncGuard(key, functools.partial(self.acquire, key), self._config.is_failure)

    guard = guard_async  # the natural name on an asyncio breaker

    def protect(
        self, key: KeyOf
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorate a coroutine function so that every call runs in `guard_async(key)`."""
        key = check_key_of(key)
        if isinstance(key, str):
            check_name("key", key, MAX_KEY_LENGTH)

        def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            if not inspect.iscoroutinefunction(function):
                raise InvalidArgumentError(
                    f"AsyncCircuitBreaker.protect decorates coroutine functions; {function!r} "
                    "is not one (use CircuitBreaker.protect for plain functions)"
                )

            @functools.wraps(function)
            async def guarded_coroutine(*args: P.args, **kwargs: P.kwargs) -> R:
                async with self.guard_async(key_of(key, args, kwargs)):
                    return await function(*args, **kwargs)

            return guarded_coroutine

        return decorate

    async def is_available(self, key: str) -> bool:
        """Whether `check` would admit a call now; reads only, spends no probe."""
        try:
            return (await self._fire(key, Trigger.CHECK, peek=True)).fired
        except StoreUnavailableError as error:
            return self._available_without_store(error)

    async def first_available(self, keys: Iterable[str]) -> str | None:
        """The first of `keys` whose circuit would admit a call now (see
        `CircuitBreaker.first_available`)."""
        for key in check_fallback_keys(keys):
            if await self.is_available(key):
                return key
        return None

    async def fallback(self, keys: Iterable[str], call: Callable[[str], Awaitable[R]]) -> R:
        """`await call(key)` for the first key in order that admits it and succeeds (see
        `CircuitBreaker.fallback`); each attempt runs in `guard_async(key)`."""
        return await fallback_async(keys, call, self.guard_async)

    async def reset(self, key: str, *, reason: str | None = None) -> Transition:
        """Force a stored key's circuit closed; return the audited transition."""
        return await self._manual(key, Trigger.RESET, reason or "manual reset", must_exist=True)

    async def force_open(
        self,
        key: str,
        until: datetime | timedelta | None = None,
        *,
        reason: str | None = None,
        must_exist: bool = False,
    ) -> Transition:
        """Hold `key`'s circuit open (see `CircuitBreaker.force_open`)."""
        hold = check_hold_until(until)
        return await self._manual(
            key, Trigger.FORCE_OPEN, reason or "forced open", hold=hold, must_exist=must_exist
        )

    async def disable(
        self, key: str, *, reason: str | None = None, must_exist: bool = False
    ) -> Transition:
        """Admit every call to `key` until a reset (see `CircuitBreaker.disable`)."""
        return await self._manual(key, Trigger.DISABLE, reason or "disabled", must_exist=must_exist)

    async def _manual(
        self,
        key: str,
        trigger: Trigger,
        reason: str,
        *,
        must_exist: bool = False,
        hold: Hold = None,
    ) -> Transition:
        check_reason(reason)
        cause = Cause(reason)
        decision = await self._open_store(key).fire(
            key,
            trigger,
            self._now,
            self._config,
            cause=cause,
            actor=self.actor,
            must_exist=must_exist,
            hold=hold,
        )
        self._outage.answered()
        self._view.remember(key, decision.after)
        if self._listeners:
            self._announce(key, trigger, decision, cause)
        return self._transition(key, trigger, decision, cause)

    async def state(self, key: str) -> CircuitState:
        """The stored state of `key` (CLOSED for a key never stored)."""
        store = self._open_store(key)
        rows = await store._read("read a circuit", store.select_circuit, {"key": key})
        return CircuitState.CLOSED if not rows else CircuitState(rows[0].state)

    async def history(self, key: str, limit: int | None = None) -> list[Transition]:
        """The last `limit` transitions of `key` (all by default), oldest first."""
        store = self._open_store(key)
        return await store.history(key, check_limit(limit))

    async def status(
        self,
        keys: Iterable[str] | None = None,
        *,
        states: Iterable[CircuitState | str] | None = None,
    ) -> list[KeyStatus]:
        """Every stored key of this namespace (only `keys`, only in `states`, if given) with
        its state (see `CircuitBreaker.status`)."""
        store = self._open_store(keyed=False)
        wanted = None
        if keys is not None:
            wanted = [check_name("key", key, MAX_KEY_LENGTH) for key in check_keys(keys)]
        rows = await store.circuits(wanted, check_states(states))
        now = self._now()
        return [self._key_status(stored, now) for stored in rows]

    async def explain(self, key: str, *, history: int = 10) -> Explanation:
        """Why `key` is in its state and when it next admits a call (see
        `CircuitBreaker.explain`)."""
        store = self._open_store(key)
        stored, transitions = await store.snapshot(key, check_count("history", history))
        return explain(key, self._namespace, stored, transitions, self._now())
