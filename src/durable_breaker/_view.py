"""The local view: what this process holds of each circuit, and whether it is still what the
database holds.

Every shortcut that spares reading a circuit row (a check, a success that changes nothing, a
permit's outcome, the guess an optimistic write starts from) goes through one `LocalView`,
and every one asks it the same question: is the row I hold still the row the database
holds? One rule per backend answers it, with a *proof* taken when the question is asked and
a *mark* kept with each row when it is read; a held row is current while its mark equals the
proof:

- SQLite, `DataVersion` (exact). `PRAGMA data_version`, asked on a connection of the view's
  own that never writes, changes whenever any other connection (this process's readers and
  writers included, and every other process's) commits to the file. A row is marked with the
  value the pragma returned just before the row was read, so while the pragma still returns
  it, nothing was committed since the row was read. Asking costs one pragma, not a read.
- PostgreSQL with ``cache=True``, `Notifications` (the one documented exception: not exact).
  Every committed change of a circuit row sends a NOTIFY (migration 0002's trigger); a
  listener thread unmarks that key's row when it arrives. A row is marked with the
  listener's epoch if no notification at all arrived while it was read; the proof is that
  epoch while the listener is connected and has heard its own heartbeat within 3 s, and
  nothing otherwise. A change made elsewhere is seen as late as its notification arrives
  (the staleness bound measured in `benchmarks/run.py`).
- Everything else, `NoProof` (PostgreSQL without the cache, an Engine you pass, the asyncio
  breaker): nothing held is ever current, so every question reads the row.

A row this process writes is held unmarked (its own commit cannot be told from another's),
and so is a circuit decided in process while the database is unavailable: `last` gives the
fallback the last circuit this process read, wrote or decided for a key, current or not. An
optimistic write may start from what is held (`guess`), but never from a circuit decided in
process: its version check could pass, and commit a decision the database never made.
At most ``cached_keys`` keys are held; the one held longest without a change goes first.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

from ._machine import Trigger, unchanged_by
from ._state import NEW_CIRCUIT, Circuit

CHANNEL = "durable_breaker"  # as migration 0002 notifies
NO_PROOF: Any = object()  # equals no mark: nothing held is proved current
_WRITTEN: Any = object()  # the row of a circuit this process wrote: equals no row read
_DECIDED: Any = object()  # ...of one it decided without the database: nor is it stored
_log = logging.getLogger("durable_breaker")
_CHECK, _SUCCESS = Trigger.CHECK, Trigger.SUCCESS
Parse = Callable[[tuple[Any, ...]], tuple[Circuit, int]]


class Held:
    """One key's circuit as this process holds it."""

    __slots__ = ("admits", "circuit", "mark", "quiet", "row", "version")

    def __init__(
        self, circuit: Circuit, version: int | None, row: object, mark: object = None
    ) -> None:
        self.circuit = circuit
        self.version = version  # of the stored row; None: not stored (or not known)
        self.row = row  # as the driver returned it (None: absent): the same row needs no parsing
        self.mark = mark  # see the module docstring; None: not proved current
        # What the hot path may answer from it without deciding: a check admits and changes
        # nothing; a success changes nothing (both at any time, see `unchanged_by`).
        self.admits = unchanged_by(circuit, _CHECK)
        self.quiet = unchanged_by(circuit, _SUCCESS)

    def marked(self, mark: object) -> Held:
        """The same circuit under another mark."""
        held = object.__new__(Held)
        held.circuit, held.version, held.row, held.mark = self.circuit, self.version, self.row, mark
        held.admits, held.quiet = self.admits, self.quiet
        return held


class Rule(Protocol):
    """How one backend proves a held row current (see the module docstring)."""

    proves: bool  # whether any held row can ever be proved current

    def proof(self) -> object:
        """What a current row's mark equals now (NO_PROOF: none is current)."""

    def before_read(self, proof: object) -> object:
        """Taken just before a row is read, after `proof`; given back to `mark`."""

    def mark(self, before: object) -> object:
        """The mark of a row read since `before_read` returned `before` (None: unproved).
        Called under the view's lock, as `changing` is."""

    def changing(self) -> None:
        """A held row is being unmarked: a read in flight must not mark what it read."""

    def close(self) -> None: ...


class NoProof:
    """Nothing held is ever current: every question reads the row."""

    proves = False

    def proof(self) -> object:
        return NO_PROOF

    def before_read(self, proof: object) -> object:
        return None

    def mark(self, before: object) -> object:
        return None

    def changing(self) -> None:
        pass

    def close(self) -> None:
        pass


class LocalView:
    """One breaker's view of its namespace's circuits (see the module docstring)."""

    def __init__(self, rule: Rule, size: int) -> None:
        self.rule = rule
        self._size = size
        # Read-only outside this class (the hot path looks rows up directly), in the order
        # they were held: the oldest goes first.
        self.rows: OrderedDict[str, Held] = OrderedDict()
        self._lock = threading.Lock()  # for changes; lookups need none
        _VIEWS.add(self)

    def current(self, key: str, proof: object) -> Held | None:
        """What is held of `key`, if `proof` (just taken) shows it is still stored."""
        held = self.rows.get(key)
        return held if held is not None and held.mark == proof else None

    def guess(self, key: str) -> Held | None:
        """What is held of `key` as last read or written, current or not; None for nothing,
        or for a circuit decided without the database."""
        held = self.rows.get(key)
        return None if held is None or held.row is _DECIDED else held

    def last(self, key: str) -> Circuit:
        """The last circuit this process saw or decided for `key` (a new one if none)."""
        held = self.rows.get(key)
        return NEW_CIRCUIT if held is None else held.circuit

    def read(self, key: str, row: tuple[Any, ...] | None, before: object, parse: Parse) -> Held:
        """Hold `row`, just read for `key` (None: not stored), marked as the rule says."""
        known = self.rows.get(key)
        if known is not None and known.row == row:
            if known.mark is None and before is None:
                return known  # the same row, as unproved as before: nothing to change
        else:
            circuit, version = (NEW_CIRCUIT, None) if row is None else parse(row)
            known = Held(circuit, version, row)
        with self._lock:  # marked and kept at once: an `unmark` lands before or after both
            held = known.marked(self.rule.mark(before))
            self._keep(key, held)
        return held

    def wrote(self, key: str, circuit: Circuit, version: int | None) -> None:
        """Hold what this process just stored for `key` (unproved: see the docstring). A read
        in flight, made before the write landed, must not be marked current now."""
        held = Held(circuit, version, _WRITTEN)
        with self._lock:
            self.rule.changing()
            self._keep(key, held)

    def changing(self, key: str) -> None:
        """This process is writing `key`, or failed to: what it holds may no longer be
        current, whatever becomes of the write (a failed write may still have been applied)."""
        self.unmark(key)

    def remember(self, key: str, circuit: Circuit) -> None:
        """Hold a circuit decided without the database (unproved; the database wins later),
        or one the asyncio breaker got with no version: neither is ever a `guess`."""
        held = Held(circuit, None, _DECIDED)
        with self._lock:
            self._keep(key, held)

    def unmark(self, key: str) -> None:
        """What is held of `key` is no longer proved current."""
        with self._lock:
            self.rule.changing()
            known = self.rows.get(key)
            if known is not None and known.mark is not None:
                self.rows[key] = known.marked(None)

    def unmark_all(self) -> None:
        """Nothing held is proved current any more."""
        with self._lock:
            self.rule.changing()
            for key, known in self.rows.items():
                if known.mark is not None:
                    self.rows[key] = known.marked(None)

    def _keep(self, key: str, held: Held) -> None:
        # Under the lock. Moved to the end: the oldest read goes first. (An OrderedDict: a
        # dict's first item is found by skipping the deleted ones before it, ever more.)
        self.rows.pop(key, None)
        self.rows[key] = held
        if len(self.rows) > self._size:
            self.rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self.rows)

    def forked(self) -> None:
        self._lock = threading.Lock()  # (another thread may have held it at the fork)
        for key, known in self.rows.items():
            if known.mark is not None:  # a mark's meaning was the parent's
                self.rows[key] = known.marked(None)

    def close(self) -> None:
        self.rule.close()


_VIEWS: weakref.WeakSet[LocalView] = weakref.WeakSet()
_STALE_PROOFS = 4  # the pragma found changed this many times in a row: stop asking...
_SKIPPED_PROOFS = 64  # ...for this many questions (others commit between most of them)


class DataVersion:
    """SQLite: a held row is current while `PRAGMA data_version`, asked on this rule's own
    connection, returns the value it returned just before the row was read.

    The connection never writes, so its number changes with every commit to the file, this
    process's own included. Numbers only compare on one connection: when it is opened anew (in
    a forked child), rows marked before prove nothing. While other connections commit between
    most questions (the pragma found changed four times in a row), it is not asked for the
    next 64: a proof would rarely hold, and a row read costs little more than the pragma.
    """

    proves = True

    def __init__(self, connect: Callable[[], sqlite3.Connection], wrap: Callable[..., Any]) -> None:
        self._connect = connect
        self._wrap = wrap  # a driver error as SQLAlchemy would raise it
        self._lock = threading.Lock()  # one connection, asked from every thread
        self._cursor: sqlite3.Cursor | None = None  # opened on first use (again in a child)
        self._closed = False
        self._last: object = NO_PROOF
        self._stale = 0
        self._skips = 0
        _RULES.add(self)

    def forked(self) -> None:
        self._lock = threading.Lock()
        self._cursor, self._last = None, NO_PROOF  # (the parent's connection stays unused)
        # The views' rows were unmarked too (`LocalView.forked`): the new connection's
        # numbers start again, and could equal the parent's.

    def proof(self) -> object:
        with self._lock:
            if self._skips or self._closed:
                self._skips = max(0, self._skips - 1)
                return NO_PROOF
            cursor = self._cursor
            try:
                if cursor is None:  # (only on first use: a child's views were unmarked)
                    cursor = self._cursor = self._connect().cursor()
                number = cursor.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as error:
                raise self._wrap("PRAGMA data_version", error) from error
            if number == self._last:
                self._stale = 0
            else:
                self._last = number
                self._stale += 1
                if self._stale == _STALE_PROOFS:
                    self._stale, self._skips = 0, _SKIPPED_PROOFS
            return number

    def before_read(self, proof: object) -> object:
        return proof  # asked just before the read: the read sees at least what it counted

    def mark(self, before: object) -> object:
        return None if before is NO_PROOF else before

    def changing(self) -> None:
        pass  # every commit changes the number anyway

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._cursor is not None:
                self._cursor.connection.close()
                self._cursor = None


_RULES: weakref.WeakSet[DataVersion | Notifications] = weakref.WeakSet()
_RECONNECT_S = 1.0
_HEARTBEAT_S = 1.0


class Notifications:
    """PostgreSQL with ``cache=True``: a held row is current while the listener, connected
    and hearing its own heartbeat, has had no notification of a change to it since before
    it was read.

    The listener runs in a thread of its own, on a connection of its own. Whenever it
    connects or loses its connection the epoch changes, so nothing marked before counts;
    until it listens again nothing is current and every question reads the row.
    """

    proves = True

    def __init__(self, engine: Engine, namespace: str, timeout_s: float) -> None:
        self.view: LocalView | None = None  # whose rows a notification unmarks; set once built
        self.on_change: Callable[[str], object] | None = None  # for measurements
        self._namespace = namespace
        self._epoch: object = NO_PROOF  # a new object whenever the listener (re)connects
        self._changes = 0  # notifications and own writes: a read that saw one may not mark
        self._closed = threading.Event()
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        name = f"{kwargs.get('application_name', 'durable-breaker')} cache"  # to tell it apart
        self._connect = (
            args,
            {
                "connect_timeout": max(2, math.ceil(timeout_s)),
                **kwargs,
                "application_name": name,
                "autocommit": True,
            },
        )
        _RULES.add(self)  # a forked child has no listener: nothing is current there
        self._beat = f"\x1e{id(self)}-{os.getpid()}"  # cannot be a namespace (no US in it)
        self._heard_until = 0.0  # monotonic time until which the listener is known alive
        self._next_beat = 0.0
        thread = threading.Thread(target=self._listen, name="durable-breaker cache", daemon=True)
        thread.start()

    def forked(self) -> None:
        self._epoch, self._heard_until = NO_PROOF, 0.0  # (its thread stayed in the parent)

    @property
    def listening(self) -> bool:
        """Whether the listener is connected and hears its heartbeat."""
        return self.proof() is not NO_PROOF

    def proof(self) -> object:
        if time.monotonic() > self._heard_until:
            return NO_PROOF  # the listener went quiet: trust nothing
        return self._epoch

    def before_read(self, proof: object) -> object:
        return self._changes

    def mark(self, before: object) -> object:
        # A notification during the read may be of this very row: then it proves nothing.
        return self._epoch if self._changes == before and self.proof() is not NO_PROOF else None

    def changing(self) -> None:
        self._changes += 1

    def close(self) -> None:
        self._closed.set()

    def _turn(self, on: bool) -> None:
        self._epoch = object() if on else NO_PROOF
        if self.view is not None:
            self.view.unmark_all()  # and no read made before this may mark what it read

    def _listen(self) -> None:
        import psycopg

        warned = False
        while not self._closed.is_set():
            try:
                args, kwargs = self._connect
                with psycopg.connect(*args, **kwargs) as connection:
                    if not _has_trigger(connection):
                        raise LookupError(
                            "the durable_breaker_notify trigger is missing; run "
                            "`durable-breaker --url URL migrate`"
                        )
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._heartbeat(connection)
                    self._turn(on=True)  # every change from now on arrives
                    warned = False
                    self._serve(connection)
            except Exception as error:  # any failure: nothing is current until listening again
                if self._epoch is not NO_PROOF or not warned:
                    _log.warning("read cache off until it listens again: %s", error)
                    warned = True
            self._turn(on=False)
            self._closed.wait(_RECONNECT_S)

    def _serve(self, connection: Any) -> None:
        """Unmark what changes; prove every interval that notifications still arrive."""
        prefix = self._namespace + "\x1f"
        while not self._closed.is_set():
            for note in connection.notifies(timeout=_HEARTBEAT_S / 2):
                if note.payload == self._beat:
                    self._heard_until = time.monotonic() + _HEARTBEAT_S * 3
                elif note.payload.startswith(prefix):  # namespace, US, key
                    key = note.payload[len(prefix) :]
                    if self.view is not None:
                        self.view.unmark(key)
                    if self.on_change is not None:
                        self.on_change(key)
            if time.monotonic() > self._next_beat:
                self._heartbeat(connection)

    def _heartbeat(self, connection: Any) -> None:
        # A notification to ourselves through the server: if it stops coming back (a silent
        # network, a pooler that drops notifications), `proof` stops proving anything.
        connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._beat))
        self._next_beat = time.monotonic() + _HEARTBEAT_S


def _forked() -> None:
    """In a forked child: what the parent held proves nothing here, and the parent's
    connections, threads and locks are not the child's."""
    for view in list(_VIEWS):
        view.forked()
    for rule in list(_RULES):
        rule.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _has_trigger(connection: Any) -> bool:
    row = connection.execute(
        "SELECT 1 FROM pg_trigger WHERE tgname = 'durable_breaker_notify' "
        "AND tgrelid = 'durable_breaker_circuit'::regclass"
    ).fetchone()
    return row is not None
