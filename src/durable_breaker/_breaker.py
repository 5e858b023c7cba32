"""CircuitBreaker: the public façade that ties the clock, the decisions and the store together."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, exc
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
from ._engine import DEFAULT_URL, make_engine, prepare_engine, settle_journal_mode
from ._errors import (
    DurableBreakerError,
    InvalidArgumentError,
    StoreUnavailableError,
)
from ._explain import Explanation, explain
from ._fallback import check_fallback_keys, fallback, fallback_async
from ._faults import translate_errors
from ._machine import Decision, Hold, Trigger, decide
from ._migrations import ensure_schema
from ._outage import OutageTracker
from ._permit import (
    AsyncGuard,
    AsyncPermit,
    Guard,
    KeyOf,
    Permit,
    check_key_of,
    key_of,
    to_completion,
)
from ._state import NO_CAUSE, Cause, CircuitState, Transition
from ._store import SqlStore
from ._tables import MAX_KEY_LENGTH
from ._urls import safe_url
from ._view import Held

# The hot path's triggers as module constants: reading an Enum member off its class costs
# about 0.1 us on Python 3.11, a few times per guarded call.
_CHECK, _SUCCESS = Trigger.CHECK, Trigger.SUCCESS
_MAX_GAP = 1000  # `follow` waits for at most this many ids skipped over at once
_IN_FLIGHT = 100  # ids below its first that `follow` may still see committed
P = ParamSpec("P")
R = TypeVar("R")


class CircuitBreaker(BreakerBase):
    """A per-key circuit breaker whose state lives in SQLite or PostgreSQL.

    Every operation takes effect at one instant between its call and its return, as if every
    process sharing the database used one breaker: it decides on what the database holds
    then (read, or proved unchanged by the local view) and writes with a version check or
    under a lock. Every state change is audited in the same transaction.
    """

    def __init__(
        self,
        url: str | URL | Engine = DEFAULT_URL,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        namespace: str = "default",
        migrate: bool | None = None,
        actor: str | None = None,
        cache: bool = False,
    ) -> None:
        """Open (and on first use create) the breaker's tables.

        `url` is a database URL or an Engine (which the caller keeps and disposes).
        `migrate`: None creates an empty schema but refuses an outdated one; True
        also upgrades an outdated schema; False never changes the schema.
        `cache` (PostgreSQL): answer from memory what the database's change notifications
        show unchanged (see `_view`); the one shortcut that is not exact.
        """
        super().__init__(config, clock=clock, namespace=namespace, actor=actor)
        timeout_s = self._config.store_timeout.total_seconds()
        self._owns_engine = not isinstance(url, Engine)
        if isinstance(url, Engine):
            prepare_engine(url)
            engine = url
        else:
            engine = make_engine(url, timeout_s)
        try:
            if cache and engine.dialect.name != "postgresql":
                raise InvalidArgumentError(
                    "cache=True needs PostgreSQL (it listens for change notifications); "
                    "SQLite reads are already proved current by PRAGMA data_version"
                )
            ensure_schema(engine, migrate)
            with translate_errors(engine, "switch to WAL mode"):
                settle_journal_mode(engine)
        except BaseException:
            if self._owns_engine:
                engine.dispose()
            raise
        self._store = SqlStore(
            engine, self._namespace, timeout_s, cached_keys=self._config.cached_keys, cache=cache
        )
        self._view = self._store.view
        self._outage = OutageTracker(self._config, safe_url(engine), self._view)
        self._closed = False

    def _open_store(self) -> SqlStore:
        """The store, once the breaker is known to be open."""
        if self._closed:
            raise DurableBreakerError("this CircuitBreaker is closed")
        return self._store

    def _key(self, key: object) -> str:
        """`key`, refused unless valid (before any I/O); a held key was checked when first
        seen, so the hot path pays a lookup."""
        if type(key) is str and key in self._view.rows:
            return key
        return check_name("key", key, MAX_KEY_LENGTH)

    def _proved(self, key: object) -> tuple[Held | None, object]:
        """The hot path's one question: what the local view proves the database holds for
        `key` now (None if it proves nothing), and the proof taken to tell; without a row
        read, and without the general path's bookkeeping. (None, None) when the general path
        must answer: a closed breaker, an outage, a key not held, a failure to ask (the
        general path asks again, and handles what it says)."""
        view = self._view
        if (
            not view.rule.proves
            or type(key) is not str
            or self._closed
            or self._outage.down_since is not None
        ):
            return None, None
        held = view.rows.get(key)
        if held is None:
            return None, None  # (nor is the key known to be valid yet: no I/O before that)
        try:
            proof = view.rule.proof()
        except exc.SQLAlchemyError:
            return None, None
        # (`LocalView.current`, inline: the held row is already in hand.)
        return (held if held.mark == proof else None), proof

    def _read(self, key: str, proof: object = None) -> Held | None:
        """What the database holds for `key` now: proved current by the local view, or read
        (and held). None while an outage skips the database (the caller decides without it);
        an unavailable database starts an outage and raises. `proof`: the view rule's, if
        just taken."""
        store, key = self._open_store(), self._key(key)
        outage = self._outage
        if outage.down_since is not None and outage.skip_store():
            return None
        try:
            held = store.read(key, proof)
        except StoreUnavailableError as error:
            outage.failed(error)
            raise
        if outage.down_since is not None:
            outage.answered()
        return held

    def _fire(
        self,
        key: str,
        trigger: Trigger,
        cause: Cause = NO_CAUSE,
        *,
        peek: bool = False,
        hold: Hold = None,
        generation: int | None = None,
        fall_back: bool = True,
        held: Held | None = None,
    ) -> Decision:
        """Decide `trigger` for `key` and store the outcome (`peek`: decide only), on `held`
        if the caller just read it.

        While the database is unavailable, "fallback" decides in process (unless not
        `fall_back`); the other modes get the StoreUnavailableError to act on.
        """
        store = self._open_store()
        key = self._key(key)
        try:
            if held is None and self._outage.skip_store():
                raise self._outage.unavailable()
            try:
                decision = self._decide_and_store(
                    store, key, trigger, cause, peek, hold, generation, held
                )
            except StoreUnavailableError as error:
                self._outage.failed(error)
                raise
        except StoreUnavailableError as error:
            return self._without_store(
                key,
                trigger,
                error,
                peek=peek,
                hold=hold,
                generation=generation,
                fall_back=fall_back,
            )
        self._outage.answered()
        return decision

    def _decide_and_store(
        self,
        store: SqlStore,
        key: str,
        trigger: Trigger,
        cause: Cause,
        peek: bool,
        hold: Hold,
        generation: int | None,
        held: Held | None,
    ) -> Decision:
        """Decide on what the database holds; store what changes, optimistically: a write
        lands only if the row is still at the version decided on, else it is decided again
        under the row's lock. A write may start from what the view holds, current or not,
        sparing the read: its version check proves it current when it lands."""
        if held is None and not peek and trigger is not _CHECK:
            guess = store.view.guess(key)
            if guess is not None:
                decision = decide(
                    guess.circuit,
                    trigger,
                    self._now(),
                    self._config,
                    hold=hold,
                    generation=generation,
                )
                if decision.needs_write:
                    return self._write(
                        store, key, trigger, decision, guess.version, cause, hold, generation
                    )
        if held is None:
            held = store.read(key)
        decision = decide(
            held.circuit, trigger, self._now(), self._config, hold=hold, generation=generation
        )
        if peek or not decision.needs_write:
            return decision
        return self._write(store, key, trigger, decision, held.version, cause, hold, generation)

    def _write(
        self,
        store: SqlStore,
        key: str,
        trigger: Trigger,
        decision: Decision,
        version: int | None,
        cause: Cause,
        hold: Hold,
        generation: int | None,
    ) -> Decision:
        actor = self.actor
        if (
            store.write(key, decision, version, trigger, self._config, cause=cause, actor=actor)
            is None
        ):
            # Another writer changed the row since: decide again under its lock.
            decision, _ = store.fire(
                key,
                trigger,
                self._now,
                self._config,
                cause=cause,
                actor=actor,
                hold=hold,
                generation=generation,
            )
        if decision.audited and decision.needs_write and self._listeners:
            self._announce(key, trigger, decision, cause)
        return decision

    def _without_store(
        self,
        key: str,
        trigger: Trigger,
        error: StoreUnavailableError,
        *,
        peek: bool = False,
        hold: Hold = None,
        generation: int | None = None,
        fall_back: bool = True,
    ) -> Decision:
        """`trigger` while the database cannot answer: on_store_error "fallback" decides in
        process (unless not `fall_back`); any other mode raises `error` to act on."""
        if self._config.on_store_error == "fallback" and fall_back:
            return self._outage.decide(
                key, trigger, self._now(), peek=peek, hold=hold, generation=generation
            )
        raise error

    def check(self, key: str) -> None:
        """Admit a call to `key`, or raise CircuitOpenError.

        While the database is unavailable, `config.on_store_error` decides (see there).
        """
        self._admit(key)

    def _admit(self, key: str) -> int | None:
        """`check`; returns the generation of the circuit the call was admitted under
        (None: admitted without the database, by on_store_error "fallback" or "allow")."""
        held, proof = self._proved(key)
        try:
            if held is None:
                held = self._read(key, proof)
            if held is not None and held.admits:  # (a Closed circuit: nothing to decide)
                return held.circuit.generation
            decision = self._fire(key, _CHECK, fall_back=False, held=held)
        except StoreUnavailableError as error:
            self._admitted_without_store(key, error)
            return None
        return self._admitted(key, decision)

    def acquire(self, key: str) -> Permit:
        """Admit a call to `key` (or raise CircuitOpenError) and return its permit.

        Report exactly one outcome on it. Unlike `record_success`/`record_failure`, a
        permit's outcome is fenced: if the circuit changed state since the call was admitted,
        it is audited as a late result and changes nothing, and `abandoned()` gives back a
        half-open probe at once instead of leaving it to `probe_timeout`.
        """
        return Permit(key, self._admit(key), self)

    def guard(self, key: str) -> Guard:
        """`with breaker.guard(key) as permit:` — acquire a permit on entering the block,
        and settle it as the block ends.

        A normal exit is a success; an exception that `config.is_failure` counts is a failure
        (its Retry-After honoured); any other exception, `KeyboardInterrupt` or cancellation
        abandons the permit without counting. The block's exception always propagates
        unchanged: an error recording its outcome is logged and added to it as a note.
        """
        if type(key) is not str or key not in self._view.rows:  # (`_key`, inline)
            key = check_name("key", key, MAX_KEY_LENGTH)
        return Guard(key, self, self._config.is_failure)

    def guard_async(self, key: str) -> AsyncGuard:
        """`async with breaker.guard_async(key):` — `guard` for coroutines; the database
        calls run in a worker thread, so the event loop never blocks on them."""
        key = self._key(key)

        def in_thread(work: Callable[[], R]) -> asyncio.Future[R]:
            # A Future, not a Task: asyncio.run's shutdown does not cancel it, so a probe
            # taken meanwhile is still awaited, and given back.
            return asyncio.get_running_loop().run_in_executor(None, work)

        async def report(
            key: str,
            trigger: Trigger,
            generation: int | None,
            reason: str | None,
            error: BaseException | None,
        ) -> None:
            if trigger is _SUCCESS:
                await in_thread(lambda: self._success(key, generation))
            else:
                await in_thread(lambda: self._report(key, trigger, generation, reason, error))

        async def acquire() -> AsyncPermit:
            # Finished even if cancelled meanwhile: AsyncGuard then gives the probe back.
            generation, _ = await to_completion(in_thread(lambda: self._admit(key)))
            return AsyncPermit(key, generation, report)

        return AsyncGuard(key, acquire, self._config.is_failure)

    def protect(self, key: KeyOf) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async) so that every call runs in `guard(key)`.

        `key` is a str, or a callable given the call's arguments that returns the key
        (e.g. `key=lambda *a, model, **kw: model`); what it returns is checked as a key.
        """
        key = check_key_of(key)
        if isinstance(key, str):
            self._key(key)

        def decorate(function: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(function):

                @functools.wraps(function)
                async def guarded_coroutine(*args: P.args, **kwargs: P.kwargs) -> Any:
                    async with self.guard_async(key_of(key, args, kwargs)):
                        return await function(*args, **kwargs)

                return guarded_coroutine  # type: ignore[return-value]

            @functools.wraps(function)
            def guarded_call(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.guard(key_of(key, args, kwargs)):
                    return function(*args, **kwargs)

            return guarded_call

        return decorate

    def _report(
        self,
        key: str,
        trigger: Trigger,
        generation: int | None,
        reason: str | None,
        error: BaseException | None,
    ) -> None:
        """Record a permit's failure or release, fenced by the generation it was admitted
        under (None: admitted while the database was unavailable, so not fenced)."""
        cause = self._cause(trigger, reason, error)
        self._outcome(key, trigger, cause, cause.retry_after, generation)

    def _outcome(
        self, key: str, trigger: Trigger, cause: Cause, hold: Hold, generation: int | None
    ) -> None:
        """Store a failure or a release; one the database cannot take is dropped, unless
        on_store_error is "raise"."""
        try:
            self._fire(key, trigger, cause, hold=hold, generation=generation)
        except StoreUnavailableError as error:
            self._unless_unavailable(error)

    def record_success(self, key: str) -> None:
        """Record a successful call: the key's circuit closes and its counts reset.

        It applies to what the database holds when it is called. When that is a clean
        Closed circuit (proved unchanged by the local view, or read), nothing is written.
        """
        self._success(key, None)

    def _success(self, key: str, generation: int | None) -> None:
        """A success, fenced by `generation` for a permit's. Decided on what the database
        holds now; on a clean circuit of the permit's generation nothing changes, so nothing
        is decided or written."""
        held, proof = self._proved(key)
        try:
            if held is None:
                held = self._read(key, proof)
            if (
                held is not None
                and held.quiet
                and (generation is None or generation == held.circuit.generation)
            ):
                return
            self._fire(key, _SUCCESS, generation=generation, held=held)
        except StoreUnavailableError as error:
            try:
                self._without_store(key, _SUCCESS, error, generation=generation)
            except StoreUnavailableError as unavailable:
                self._unless_unavailable(unavailable)

    def record_failure(
        self,
        key: str,
        reason: str | None = None,
        *,
        retry_after: timedelta | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record a failed call.

        `reason` goes into the audit trail with the transition this failure causes (a trip,
        or a failed probe reopening the circuit); a failure that changes no state is counted
        but its reason is not kept. `retry_after` (the service's Retry-After): if this
        failure trips the circuit, it stays open at least that long (up to
        `config.max_retry_after`). `error`: the exception that failed the call; the audit
        row names its type and HTTP status, and (without `reason`, `retry_after`) takes
        its message and Retry-After.
        """
        cause = self._failure_cause(reason, retry_after, error)
        self._outcome(key, Trigger.FAILURE, cause, cause.retry_after, None)

    def reset(self, key: str, *, reason: str | None = None) -> Transition:
        """Force a stored key's circuit closed (also ending a force_open or a disable);
        return the audited transition."""
        return self._manual(key, Trigger.RESET, reason or "manual reset", must_exist=True)

    def force_open(
        self,
        key: str,
        until: datetime | timedelta | None = None,
        *,
        reason: str | None = None,
        must_exist: bool = False,
    ) -> Transition:
        """Hold `key`'s circuit open, whatever successes are reported, until `until` (an
        aware datetime, or a timedelta from now; then it probes as after a cooldown) or, if
        None, until a `reset`. `must_exist`: raise UnknownKeyError rather than store a key
        no process has stored (a misspelt one)."""
        hold = check_hold_until(until)
        return self._manual(
            key, Trigger.FORCE_OPEN, reason or "forced open", hold=hold, must_exist=must_exist
        )

    def disable(
        self, key: str, *, reason: str | None = None, must_exist: bool = False
    ) -> Transition:
        """Switch `key`'s circuit off until a `reset`: every call is admitted, and outcomes
        are still counted (and shown by `status`) but never trip it. `must_exist`: as for
        `force_open`."""
        return self._manual(key, Trigger.DISABLE, reason or "disabled", must_exist=must_exist)

    def _manual(
        self,
        key: str,
        trigger: Trigger,
        reason: str,
        *,
        must_exist: bool = False,
        hold: Hold = None,
    ) -> Transition:
        """An operator's change: written under the lock and audited with the actor."""
        store = self._open_store()
        key = self._key(key)
        check_reason(reason)
        cause = Cause(reason)
        decision, _ = store.fire(
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
        if self._listeners:
            self._announce(key, trigger, decision, cause)
        return self._transition(key, trigger, decision, cause)

    def is_available(self, key: str) -> bool:
        """Whether `check` would admit a call now; reads only, spends no probe."""
        try:
            return self._fire(key, Trigger.CHECK, peek=True).fired
        except StoreUnavailableError as error:
            return self._available_without_store(error)

    def first_available(self, keys: Iterable[str]) -> str | None:
        """The first of `keys`, in order, whose circuit would admit a call now (None if
        none would); reads only, spends no probe (see `is_available`)."""
        for key in check_fallback_keys(keys):
            if self.is_available(key):
                return key
        return None

    def fallback(self, keys: Iterable[str], call: Callable[[str], R]) -> R:
        """`call(key)` for the first key in order that admits it and succeeds.

        Each key whose circuit rejects is skipped; each call runs in `guard(key)`, so its
        outcome is recorded on its own key. A failure `config.is_failure` counts moves on to
        the next key; any other exception (the request is at fault: a 400 fails on every
        model) propagates at once. When no key served: if calls were made, the last counted
        error is raised, else the CircuitOpenError of the key that frees first (the
        smallest `retry_after`); either carries a note per other key saying what happened.
        """
        return fallback(keys, call, self.guard)

    async def fallback_async(self, keys: Iterable[str], call: Callable[[str], Awaitable[R]]) -> R:
        """`fallback` for a coroutine function `call`, each attempt in `guard_async(key)`."""
        return await fallback_async(keys, call, self.guard_async)

    def state(self, key: str) -> CircuitState:
        """The stored state of `key` (CLOSED for a key never stored).

        An Open key whose cooldown has passed stays OPEN here until a `check` moves it.
        """
        store, key = self._open_store(), self._key(key)
        return store.read(key).circuit.state

    def history(self, key: str, limit: int | None = None) -> list[Transition]:
        """The last `limit` transitions of `key` (all by default), oldest first."""
        store, key = self._open_store(), self._key(key)
        return store.history(key, check_limit(limit))

    def follow(
        self,
        key: str | None = None,
        *,
        last: int = 10,
        poll: timedelta = timedelta(seconds=0.5),
        stop: threading.Event | None = None,
    ) -> Iterator[Transition]:
        """Yield the namespace's (or `key`'s) last `last` transitions, then every new one
        any process commits, like `tail -f`, checking every `poll` until `stop` is set.

        A transition committed out of id order (concurrent writers on PostgreSQL) may appear
        up to one poll later than its neighbours; none is skipped unless pruned meanwhile.
        """
        store = self._open_store()
        if key is not None:
            key = self._key(key)
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise InvalidArgumentError(f"last must be an integer >= 0, got {last!r}")
        if not isinstance(poll, timedelta) or poll <= timedelta(0):
            raise InvalidArgumentError(f"poll must be a positive datetime.timedelta, got {poll!r}")
        return self._follow(store, key, last, poll, stop or threading.Event())

    def _follow(
        self, store: SqlStore, key: str | None, last: int, poll: timedelta, stop: threading.Event
    ) -> Iterator[Transition]:
        # Ids are handed out before commit, so on PostgreSQL a lower id can become visible
        # after a higher one: an id skipped over stays wanted, and asked for, for as many
        # polls as span ten store timeouts (a write that rolled back never shows up).
        wanted: dict[int, int] = {}  # id -> the poll it was skipped at
        patience = max(1, round(10 * self._config.store_timeout / poll))
        limit = 1000
        _, ids = store.transitions_after(None, limit)  # the table's last ids: where it ends
        backlog = store.history(key, last) if last else []
        yield from backlog
        shown = {t.id for t in backlog}  # read after `ids`: a poll may bring them again
        # Ids missing among those, and (when they are the whole table) just below the first,
        # may belong to transactions still in flight.
        seen = min(ids, default=1) - 1
        if len(ids) < limit:
            seen = max(0, seen - _IN_FLIGHT)
        polls = 0
        found: list[Transition] = []
        while True:
            for number in ids:  # the table's last ids first, then each poll's
                if number > seen:
                    if number - seen <= _MAX_GAP:  # (a longer jump: a sequence reset)
                        wanted.update(dict.fromkeys(range(seen + 1, number), polls))
                    seen = number
                wanted.pop(number, None)
            for transition in found:
                if (key is None or transition.key == key) and transition.id not in shown:
                    yield transition
            for gap in [gap for gap, skipped in wanted.items() if polls - skipped > patience]:
                del wanted[gap]
            if stop.wait(poll.total_seconds()):
                return
            polls += 1
            found, ids = store.transitions_after(seen, 1000, also=wanted)

    def status(
        self,
        keys: Iterable[str] | None = None,
        *,
        states: Iterable[CircuitState | str] | None = None,
    ) -> list[KeyStatus]:
        """Every stored key of this namespace (only `keys`, only in `states`, if given) with
        its state, ordered by key; waits computed with each circuit's stored policy."""
        store = self._open_store()
        wanted = None if keys is None else [self._key(key) for key in check_keys(keys)]
        rows = store.circuits(wanted, check_states(states))
        now = self._now()
        return [self._key_status(stored, now) for stored in rows]

    def explain(self, key: str, *, history: int = 10) -> Explanation:
        """Why `key` is in its state and when it next admits a call, from the circuit, its
        stored policy and its last `history` transitions, read as of one instant.
        `str(explanation)` says it in plain words."""
        store, key = self._open_store(), self._key(key)
        stored, transitions = store.snapshot(key, check_count("history", history))
        return explain(key, self._namespace, stored, transitions, self._now())

    def prune(self, older_than: timedelta, *, batch_size: int = 1000, dry_run: bool = False) -> int:
        """Delete this namespace's transitions older than `older_than`; return how many
        (`dry_run`: how many it would, deleting none; `prunable` lists them by key).

        The latest transition of every key is kept, however old, so each key still says
        how it reached its state. Rows go in batches of `batch_size`, one transaction each.
        """
        store, cutoff = self._open_store(), self._prune_cutoff(older_than)
        check_count("batch_size", batch_size, least=1)
        if cutoff is None:
            return 0
        if dry_run:
            return sum(count for _, count, _ in store.prunable(cutoff))
        return store.prune(cutoff, batch_size)

    def prunable(self, older_than: timedelta) -> list[tuple[str, int, datetime]]:
        """What `prune(older_than)` would delete: (key, rows, oldest row's time) per key."""
        store, cutoff = self._open_store(), self._prune_cutoff(older_than)
        return [] if cutoff is None else store.prunable(cutoff)

    def _prune_cutoff(self, older_than: object) -> datetime | None:
        """The time before which `prune` deletes (None: before the year 1, nothing)."""
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidArgumentError(
                f"older_than must be a non-negative datetime.timedelta, got {older_than!r}"
            )
        try:
            return self._now() - older_than
        except OverflowError:
            return None

    def close(self) -> None:
        """Release the database connections (an Engine passed in is left to its owner)."""
        if not self._closed:
            self._closed = True  # first: no call may reopen what is being closed
            self._store.close()
            if self._owns_engine:
                self._store.engine.dispose()
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({safe_url(self._store.engine)!r}, namespace={self.namespace!r}"
            f"{', closed' if self._closed else ''})"
        )

    def __enter__(self) -> CircuitBreaker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
