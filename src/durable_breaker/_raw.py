"""The hot path on the raw driver: reading one circuit row, and writing one optimistically.

SQLAlchemy's Connection checkout and statement execution cost several times these statements
themselves, so they skip it: SQLite through one autocommit sqlite3 connection per thread,
PostgreSQL through autocommit psycopg connections of its own (psycopg prepares statements
after a few uses). Reads return the row as the driver gives it; `parse` turns one into a
circuit (the local view parses a row only when it differs from the one it holds). Driver
errors are wrapped as SQLAlchemy would wrap them, so the retry and outage logic sees one kind
of error. Everything else (locked transactions, migrations, listings) goes through SQLAlchemy.
"""

from __future__ import annotations

import select as io_select
import sqlite3
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, bindparam, exc, select

from . import _engine
from ._engine import write_bounds
from ._state import Circuit, CircuitState
from ._tables import circuits

_STORED = (
    "state, consecutive_failures, half_open_probes, last_failure_at, half_open_since, "
    "open_until, generation"
)
_COLUMNS = f"{_STORED}, version"  # what a read returns
# What a write stores: the circuit, and the policy the writer decided with.
_WRITTEN = f"{_STORED}, failure_threshold, cooldown_s, half_open_max, probe_timeout_s, policy_by"
_WRITTEN_COUNT = _WRITTEN.count(",") + 1
Versioned = tuple[Circuit, int]  # a stored circuit and the version its row is at
AUDIT_COLUMNS = (
    "namespace",
    "key",
    "from_state",
    "to_state",
    "trigger",
    "at",
    "consecutive_failures",
    "reason",
    "actor",
    "generation",
    "error_type",
    "status_code",
    "retry_after_s",
    "open_until",
)
_AUDITED = ", ".join(AUDIT_COLUMNS)


class Change(NamedTuple):
    """One optimistic write: the row's new values, if it is still at `version` (None: absent),
    and the audit row (None: not audited)."""

    namespace: str
    key: str
    stored: tuple[Any, ...]  # in _WRITTEN's order
    now: datetime  # updated_at
    version: int | None
    audit: tuple[Any, ...] | None  # in _AUDITED's order


def _statements(p: str) -> dict[str, str]:
    """The optimistic write's statements with placeholder `p`."""
    stored = ", ".join([p] * _WRITTEN_COUNT)
    return {
        "update": (
            f"UPDATE durable_breaker_circuit SET ({_WRITTEN}, updated_at) = ({stored}, {p}), "
            f"version = version + 1 WHERE namespace = {p} AND key = {p} AND version = {p}"
        ),
        "insert": (
            f"INSERT INTO durable_breaker_circuit (namespace, key, {_WRITTEN}, updated_at, "
            f"version) VALUES ({p}, {p}, {stored}, {p}, 1) ON CONFLICT DO NOTHING"
        ),
        "audit": (
            f"INSERT INTO durable_breaker_transition ({_AUDITED}) "
            f"VALUES ({', '.join([p] * len(AUDIT_COLUMNS))})"
        ),
    }


_STATES = {state.value: state for state in CircuitState}
_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open
_CHECKOUT_TRIES = 20  # dead idle connections skipped before opening a fresh one


def _parser(parse_time: Callable[[Any], datetime]) -> Callable[[tuple[Any, ...]], Versioned]:
    """Turns a row of `_COLUMNS` into a circuit and its version, reading times with `parse_time`."""

    def parse(row: tuple[Any, ...]) -> Versioned:
        state, failures, probes, last_failure_at, half_open_since, open_until, generation = row[:7]
        circuit = Circuit(
            _STATES[state],
            failures,
            probes,
            None if last_failure_at is None else parse_time(last_failure_at),
            None if half_open_since is None else parse_time(half_open_since),
            None if open_until is None else parse_time(open_until),
            generation,
        )
        return circuit, row[7]

    return parse


def _sqlite_time(text: str) -> datetime:
    # SQLAlchemy stores SQLite datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC.
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _postgres_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _sqlite_text(value: datetime) -> str:
    # As SQLAlchemy stores it ("0999-01-02 03:04:05.000006"), so that both write the same text.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_sqlite_text(v) if isinstance(v, datetime) else v for v in values)


_SQLITE = _statements("?")


def _postgres_writes() -> dict[tuple[bool, bool], str]:
    """The optimistic write as one statement, by (the row is new, audited)."""
    p = "%s"
    stored = ", ".join([p] * _WRITTEN_COUNT)
    writes = {
        True: (
            f"INSERT INTO durable_breaker_circuit (namespace, key, {_WRITTEN}, updated_at, "
            f"version) VALUES ({p}, {p}, {stored}, {p}, 1) ON CONFLICT DO NOTHING "
            "RETURNING version"
        ),
        False: (
            f"UPDATE durable_breaker_circuit SET ({_WRITTEN}, updated_at) = ({stored}, {p}), "
            f"version = version + 1 WHERE namespace = {p} AND key = {p} AND version = {p} "
            "RETURNING version"
        ),
    }
    audit = (
        f"INSERT INTO durable_breaker_transition ({_AUDITED}) "
        f"SELECT {', '.join([p] * len(AUDIT_COLUMNS))} FROM changed RETURNING id"
    )
    statements = {}
    for new, write in writes.items():
        statements[new, False] = write
        statements[new, True] = f"WITH changed AS ({write}) {audit}"
    return statements


_POSTGRES = _postgres_writes()


class _ThreadConnection:
    """One thread's sqlite3 connection; closed when the thread ends and drops it."""

    __slots__ = ("__weakref__", "connection", "cursor", "forks")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.forks = _engine.forks

    def close(self) -> None:
        self.connection.close()

    def __del__(self) -> None:
        self.connection.close()


class SqliteRaw:
    """Statements through one sqlite3 connection per thread (sqlite3 objects are not
    shareable between threads)."""

    parse = staticmethod(_parser(_sqlite_time))

    def __init__(self, engine: Engine, timeout_s: float) -> None:
        self._engine = engine
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        self._database: str = args[0]
        self._connect_kwargs = {
            **kwargs,
            "timeout": float(engine.url.query.get("timeout", timeout_s)),  # type: ignore[arg-type]
            "isolation_level": None,  # autocommit: a SELECT opens no transaction
            "check_same_thread": False,  # one thread uses it; close() may run in another
        }
        self._sql = (
            f"SELECT {_COLUMNS} FROM durable_breaker_circuit WHERE namespace = ? AND key = ?"
        )
        self._local = threading.local()
        self._opened: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()

    def connect(self) -> sqlite3.Connection:
        """A new autocommit connection to the file, as the hot path opens them."""
        try:
            connection: sqlite3.Connection = sqlite3.connect(self._database, **self._connect_kwargs)
        except sqlite3.Error as error:
            raise wrapped(self._engine, "connect", error) from error
        return connection

    def wrap(self, statement: str, error: Exception) -> Any:
        """A driver error of this file's as SQLAlchemy would raise it."""
        return wrapped(self._engine, statement, error)

    def load(self, namespace: str, key: str) -> tuple[Any, ...] | None:
        """The key's row (see `parse`), or None if it is not stored."""
        held = self._thread_connection()
        try:
            row: tuple[Any, ...] | None = held.cursor.execute(
                self._sql, (namespace, key)
            ).fetchone()
        except sqlite3.Error as error:
            raise wrapped(self._engine, self._sql, error) from error
        return row

    def write(self, change: Change) -> int | None:
        """Apply `change` if its row is unchanged; the row's new version, or None if not."""
        held = self._thread_connection()
        cursor, sql = held.cursor, _SQLITE
        stored = _sqlite_values(change.stored)
        now = _sqlite_text(change.now)
        # One statement needs no transaction of its own; more need BEGIN IMMEDIATE.
        single = change.audit is None and change.version is not None
        try:
            if not single:
                cursor.execute("BEGIN IMMEDIATE")
            if change.version is None:
                cursor.execute(sql["insert"], (change.namespace, change.key, *stored, now))
            else:
                params = (*stored, now, change.namespace, change.key, change.version)
                cursor.execute(sql["update"], params)
            written = cursor.rowcount == 1
            if written and change.audit is not None:
                cursor.execute(sql["audit"], _sqlite_values(change.audit))
            if not single:
                cursor.execute("COMMIT" if written else "ROLLBACK")
        except BaseException as error:
            # Never leave the write lock held (an interrupt, a failed statement): roll back,
            # or give up this connection if even that fails.
            try:
                if held.connection.in_transaction:
                    cursor.execute("ROLLBACK")
            except sqlite3.Error:
                self._local.held = None
                held.close()
            if isinstance(error, sqlite3.Error):
                raise wrapped(self._engine, "write a circuit", error) from error
            raise
        if not written:
            return None
        return 1 if change.version is None else change.version + 1

    def _thread_connection(self) -> _ThreadConnection:
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is None or held.forks != _engine.forks:  # a new thread, or a forked child
            connection = self.connect()
            try:
                held = _ThreadConnection(connection)
            except BaseException:
                connection.close()
                raise
            self._local.held = held
            self._opened.add(held)
        return held

    def close(self) -> None:
        for held in list(self._opened):
            held.close()
        self._local = threading.local()


class PostgresRaw:
    """Statements through autocommit psycopg connections of its own, kept idle between uses
    with a cursor each (a stack: taking one and giving it back cost no pool checkout, no
    events, no switch to autocommit and back, no new cursor). At most the engine pool's size
    are kept idle; more are opened while more threads read at once, and closed when given
    back. Each use is watched by the engine's stall watchdog, as a pooled connection is."""

    parse = staticmethod(_parser(_postgres_time))

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connect = _engine.driver_connect(engine)
        self._watchdog = _engine.watchdog(engine)
        self._bounds = write_bounds(engine)
        self._error: Any = engine.dialect.loaded_dbapi.Error
        self._idle: list[Any] = []  # cursors, each on a connection of its own
        self._keep_idle = max(1, engine.pool.size())  # type: ignore[attr-defined]
        self._forks = _engine.forks
        self._sql = (
            f"SELECT {_COLUMNS} FROM durable_breaker_circuit WHERE namespace = %s AND key = %s"
        )

    def load(self, namespace: str, key: str) -> tuple[Any, ...] | None:
        """The key's row (see `parse`), or None if it is not stored."""
        row: tuple[Any, ...] | None = self._execute(self._sql, (namespace, key))
        return row

    def write(self, change: Change) -> int | None:
        """Apply `change`, and its audit row, in one statement if its row is unchanged; the
        row's new version, or None if not. One statement, behind its timeouts in the same
        pipeline: one round trip, all or nothing."""
        if change.version is None:
            params: tuple[Any, ...] = (change.namespace, change.key, *change.stored, change.now)
        else:
            params = (*change.stored, change.now, change.namespace, change.key, change.version)
        if change.audit is not None:
            params = (*params, *change.audit)
        sql = _POSTGRES[change.version is None, change.audit is not None]
        if self._execute(sql, params, bounds=self._bounds, write=True) is None:
            return None
        return 1 if change.version is None else change.version + 1

    def _execute(
        self,
        sql: str,
        params: tuple[Any, ...],
        *,
        bounds: str | None = None,
        write: bool = False,
    ) -> Any:
        """The first row `sql` returns (None if none), in autocommit.

        `bounds` (set_config(..., true) of the write's timeouts) is sent first in the same
        pipeline: both statements run before one Sync, in one implicit transaction, so the
        timeouts cover every lock the statement waits for (the table's too) and end with it.
        Still one round trip, and no BEGIN or COMMIT.
        """
        cursor = self._take(alive=write)
        connection = cursor.connection
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.watch(connection)
        try:
            if bounds is None:
                row = cursor.execute(sql, params).fetchone()
            else:
                with connection.pipeline():
                    connection.execute(bounds)
                    cursor.execute(sql, params)
                row = cursor.fetchone()
        except self._error as error:
            lost = self._engine.dialect.is_disconnect(error, connection, None)
            if lost or connection.info.transaction_status != _IDLE:
                connection.close()  # broken, or left mid-transaction: not to be used again
            else:
                self._give_back(cursor)
            raise wrapped(self._engine, sql, error, invalidated=lost) from error
        except BaseException:  # interrupted mid-statement: the connection is suspect
            connection.close()
            raise
        finally:
            if watchdog is not None:
                watchdog.release(connection)
        self._give_back(cursor)
        return row

    def _take(self, *, alive: bool) -> Any:
        """An idle connection's cursor, or a new one's. For a write (`alive`), one the server
        has not already closed: a server that restarted, or ended an idle session, has sent
        its goodbye (or EOF) before our next statement, and pending input on an idle
        connection shows it without a round trip; so no write is ever sent on it, and none
        becomes ambiguous that way. A read on one fails, and is retried, harmlessly."""
        if self._forks != _engine.forks:  # a forked child: the parent's connections are its own
            self._idle, self._forks = [], _engine.forks
        for _ in range(_CHECKOUT_TRIES):
            try:
                cursor = self._idle.pop()
            except IndexError:
                break
            if not alive:
                return cursor
            try:
                waiting = io_select.poll()  # (select() cannot take descriptors past 1023)
                waiting.register(cursor.connection.fileno(), io_select.POLLIN)
                readable = bool(waiting.poll(0))
            except (OSError, ValueError, self._error):
                readable = True
            if not readable:
                return cursor
            cursor.connection.close()
        try:
            return self._connect().cursor()
        except self._error as error:
            raise wrapped(self._engine, "connect", error) from error

    def _give_back(self, cursor: Any) -> None:
        if len(self._idle) < self._keep_idle and self._forks == _engine.forks:
            self._idle.append(cursor)
        else:
            cursor.connection.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for cursor in idle:
            cursor.connection.close()


class ThroughSqlAlchemy:
    """For an Engine the caller made (its own pool, creator, events): the same reads through
    SQLAlchemy, and every write through the locked transaction. Slower, but it uses the
    connections the caller set up."""

    parse = staticmethod(_parser(lambda value: value))  # SQLAlchemy returns aware UTC times

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._select = select(*(circuits.c[name] for name in _COLUMNS.split(", "))).where(
            circuits.c.namespace == bindparam("ns"), circuits.c.key == bindparam("k")
        )

    def load(self, namespace: str, key: str) -> tuple[Any, ...] | None:
        with self._reader.connect() as connection:
            row = connection.execute(self._select, {"ns": namespace, "k": key}).first()
        return None if row is None else tuple(row)

    def write(self, change: Change) -> int | None:
        return None  # decided again, and written, under the lock

    def close(self) -> None:
        pass  # the caller's engine holds the connections


def wrapped(engine: Engine, statement: str, error: Exception, *, invalidated: bool = False) -> Any:
    """`error` as SQLAlchemy would have raised it (OperationalError, ...)."""
    return exc.DBAPIError.instance(
        statement,
        None,
        error,
        engine.dialect.loaded_dbapi.Error,
        connection_invalidated=invalidated,
        dialect=engine.dialect,
    )
