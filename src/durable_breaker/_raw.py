"""The hot path on the raw driver: reading one circuit row, and writing one optimistically.

SQLAlchemy's Connection checkout and statement execution cost several times these statements
themselves, so they skip it: SQLite through one autocommit sqlite3 connection per thread,
PostgreSQL through a pooled connection switched to autocommit (psycopg prepares statements
after a few uses). Driver errors are wrapped as SQLAlchemy would wrap them, so the retry and
outage logic sees one kind of error. Everything else (locked transactions, migrations,
listings) goes through SQLAlchemy.
"""

from __future__ import annotations

import select as io_select
import sqlite3
import threading
import weakref
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
_COLUMNS = f"{_STORED}, version"
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
)
_AUDITED = ", ".join(AUDIT_COLUMNS)


class Change(NamedTuple):
    """One optimistic write: the row's new values, if it is still at `version` (None: absent),
    and the audit row (None: not audited)."""

    namespace: str
    key: str
    stored: tuple[Any, ...]  # in _STORED's order
    now: datetime  # updated_at
    version: int | None
    audit: tuple[Any, ...] | None  # in _AUDITED's order


def _statements(p: str) -> dict[str, str]:
    """The optimistic write's statements with placeholder `p`."""
    stored = ", ".join([p] * 7)
    return {
        "update": (
            f"UPDATE durable_breaker_circuit SET ({_STORED}, updated_at) = ({stored}, {p}), "
            f"version = version + 1 WHERE namespace = {p} AND key = {p} AND version = {p}"
        ),
        "insert": (
            f"INSERT INTO durable_breaker_circuit (namespace, key, {_STORED}, updated_at, "
            f"version) VALUES ({p}, {p}, {stored}, {p}, 1) ON CONFLICT DO NOTHING"
        ),
        "audit": (
            f"INSERT INTO durable_breaker_transition ({_AUDITED}) VALUES ({', '.join([p] * 9)})"
        ),
    }


_STATES = {state.value: state for state in CircuitState}
_DATA_VERSION = "PRAGMA data_version"
_STALE_CHECKS = 4  # data_version found changed this many times in a row: stop checking...
_SKIPPED_CHECKS = 64  # ...for this many reads
_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open
_CHECKOUT_TRIES = 20  # dead pooled connections skipped before asking for a fresh one


class _Parsed:
    """Rows already turned into circuits: most reads return a row seen before (a healthy key
    reads the same values every time), and a lookup costs less than parsing its times."""

    def __init__(self, parse_time: Any, size: int = 4096) -> None:
        self._parse_time = parse_time
        self._size = size
        self._circuits: dict[tuple[Any, ...], Versioned] = {}

    def circuit(self, row: tuple[Any, ...]) -> Versioned:
        stored = self._circuits.get(row)
        if stored is None:
            state, failures, probes, last_failure_at, half_open_since, open_until, generation = row[
                :7
            ]
            parse = self._parse_time
            circuit = Circuit(
                _STATES[state],
                failures,
                probes,
                None if last_failure_at is None else parse(last_failure_at),
                None if half_open_since is None else parse(half_open_since),
                None if open_until is None else parse(open_until),
                generation,
            )
            version = row[7]
            if len(self._circuits) >= self._size:
                self._circuits.clear()  # bounded; refills with what is read now
            stored = self._circuits[row] = (circuit, version)
        return stored


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
    stored = ", ".join([p] * 7)
    writes = {
        True: (
            f"INSERT INTO durable_breaker_circuit (namespace, key, {_STORED}, updated_at, "
            f"version) VALUES ({p}, {p}, {stored}, {p}, 1) ON CONFLICT DO NOTHING "
            "RETURNING version"
        ),
        False: (
            f"UPDATE durable_breaker_circuit SET ({_STORED}, updated_at) = ({stored}, {p}), "
            f"version = version + 1 WHERE namespace = {p} AND key = {p} AND version = {p} "
            "RETURNING version"
        ),
    }
    audit = (
        f"INSERT INTO durable_breaker_transition ({_AUDITED}) "
        f"SELECT {', '.join([p] * 9)} FROM changed RETURNING id"
    )
    statements = {}
    for new, write in writes.items():
        statements[new, False] = write
        statements[new, True] = f"WITH changed AS ({write}) {audit}"
    return statements


_POSTGRES = _postgres_writes()


class _ThreadConnection:
    """One thread's sqlite3 connection, with the rows it read that are still current; closed
    when the thread ends and drops it.

    PRAGMA data_version changes with every commit made through another connection (in any
    process), and costs less than reading a row: while it has not changed, the rows read
    since it was last seen are current, and a healthy key's `check` reads nothing else.
    """

    __slots__ = (
        "__weakref__",
        "connection",
        "cursor",
        "data_version",
        "forks",
        "kept",
        "known",
        "skips",
        "stale",
    )

    def __init__(self, connection: sqlite3.Connection, kept: int) -> None:
        self.connection = connection
        self.kept = kept  # at most this many rows in `known`
        self.cursor = connection.cursor()
        self.forks = _engine.forks
        self.data_version = self.cursor.execute(_DATA_VERSION).fetchone()[0]
        self.known: dict[tuple[str, str], Versioned | None] = {}  # read since data_version
        self.stale = 0  # checks in a row that found data_version changed
        self.skips = 0  # reads left that do not check it first (a busy database)

    def unchanged(self) -> bool:
        """Whether nothing was committed elsewhere since the `known` rows were read."""
        if self.skips:
            self.skips -= 1
            return False
        data_version = self.cursor.execute(_DATA_VERSION).fetchone()[0]
        if data_version == self.data_version:
            self.stale = 0
            return True
        self.known.clear()
        self.data_version = data_version
        self.stale += 1
        if self.stale == _STALE_CHECKS:  # others write between most reads: just read a while
            self.stale, self.skips = 0, _SKIPPED_CHECKS
        return False

    def remember(self, name: tuple[str, str], stored: Versioned | None) -> None:
        """Keep a row read after data_version was last seen (so current while it holds)."""
        if len(self.known) >= self.kept:
            self.known.clear()
        self.known[name] = stored

    def close(self) -> None:
        self.connection.close()

    def __del__(self) -> None:
        self.connection.close()


class SqliteRaw:
    """Statements through one sqlite3 connection per thread (sqlite3 objects are not
    shareable between threads)."""

    def __init__(self, engine: Engine, timeout_s: float, kept_rows: int) -> None:
        self._engine = engine
        self._kept_rows = kept_rows
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
        self._parsed = _Parsed(_sqlite_time)

    def load(self, namespace: str, key: str) -> Versioned | None:
        # `_thread_connection`'s own test, inline: a call less on every healthy check.
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is None or held.forks != _engine.forks:
            held = self._thread_connection()
        name = (namespace, key)
        try:
            if name in held.known and held.unchanged():
                return held.known[name]
            row = held.cursor.execute(self._sql, name).fetchone()
        except sqlite3.Error as error:
            raise _wrapped(self._engine, self._sql, error, invalidated=False) from error
        stored = None if row is None else self._parsed.circuit(row)
        held.remember(name, stored)
        return stored

    def write(self, change: Change) -> int | None:
        """Apply `change` if its row is unchanged; the row's new version, or None if not."""
        held = self._thread_connection()
        held.known.pop((change.namespace, change.key), None)  # (its own commits keep data_version)
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
                raise _wrapped(self._engine, "write a circuit", error, invalidated=False) from error
            raise
        if not written:
            return None
        return 1 if change.version is None else change.version + 1

    def _thread_connection(self) -> _ThreadConnection:
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is None or held.forks != _engine.forks:  # a new thread, or a forked child
            try:
                connection = sqlite3.connect(self._database, **self._connect_kwargs)
                try:
                    held = _ThreadConnection(connection, self._kept_rows)
                except BaseException:
                    connection.close()
                    raise
            except sqlite3.Error as error:
                raise _wrapped(self._engine, "connect", error, invalidated=False) from error
            self._local.held = held
            self._opened.add(held)
        return held

    def close(self) -> None:
        for held in list(self._opened):
            held.close()
        self._local = threading.local()


class PostgresRaw:
    """Statements through the engine's pool, on the driver connection, in autocommit."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._parsed = _Parsed(_postgres_time)
        self._bounds = write_bounds(engine)
        self._sql = (
            f"SELECT {_COLUMNS} FROM durable_breaker_circuit WHERE namespace = %s AND key = %s"
        )

    def load(self, namespace: str, key: str) -> Versioned | None:
        row = self._execute(self._sql, (namespace, key))
        return None if row is None else self._parsed.circuit(row)

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
        if self._execute(sql, params, bounds=self._bounds) is None:
            return None
        return 1 if change.version is None else change.version + 1

    def _execute(self, sql: str, params: tuple[Any, ...], *, bounds: str | None = None) -> Any:
        """The first row `sql` returns (None if none), in autocommit.

        `bounds` (set_config(..., true) of the write's timeouts) is sent first in the same
        pipeline: both statements run before one Sync, in one implicit transaction, so the
        timeouts cover every lock the statement waits for (the table's too) and end with it.
        Still one round trip, and no BEGIN or COMMIT.
        """
        pooled = self._checkout()
        connection: Any = pooled.dbapi_connection
        try:
            # Autocommit: no BEGIN and COMMIT or ROLLBACK round trips around one statement.
            # Always restored: the pool's other users run transactions on this connection.
            connection.autocommit = True
            try:
                if bounds is None:
                    row = connection.execute(sql, params).fetchone()
                else:
                    with connection.pipeline():
                        connection.execute(bounds)
                        cursor = connection.execute(sql, params)
                    row = cursor.fetchone()
            finally:
                if connection.info.transaction_status == _IDLE:
                    connection.autocommit = False
            return row
        except self._engine.dialect.loaded_dbapi.Error as error:
            lost = self._engine.dialect.is_disconnect(error, connection, None)
            if lost or connection.autocommit:  # broken, or not restored: not for the pool
                pooled.invalidate(error)
            raise _wrapped(self._engine, sql, error, invalidated=lost) from error
        except BaseException as error:  # interrupted mid-statement: the connection is suspect
            pooled.invalidate(error)
            raise
        finally:
            pooled.close()

    def _checkout(self) -> Any:
        """A pooled connection the server has not already closed.

        A server that restarted, or ended an idle session, has sent its goodbye (or EOF)
        before our next statement: pending input on an idle connection shows it without a
        round trip, so no statement is ever sent on it (and no write becomes ambiguous).
        """
        for _ in range(_CHECKOUT_TRIES):
            try:
                pooled = self._engine.raw_connection()
            except self._engine.dialect.loaded_dbapi.Error as error:
                raise _wrapped(self._engine, "connect", error, invalidated=False) from error
            connection: Any = pooled.dbapi_connection
            try:
                readable, _, _ = io_select.select([connection.fileno()], [], [], 0)
            except (OSError, ValueError, self._engine.dialect.loaded_dbapi.Error):
                readable = [True]
            if not readable:
                return pooled
            pooled.invalidate()
            pooled.close()
        return self._engine.raw_connection()  # new connections, after so many dead ones

    def close(self) -> None:
        pass  # the engine's pool holds the connections


class ThroughSqlAlchemy:
    """For an SQLite engine the caller made (its own pool, creator, events): the same reads
    through SQLAlchemy, and every write through the locked transaction. Slower, but it uses
    the connections the caller set up."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._parsed = _Parsed(lambda value: value)  # SQLAlchemy returns aware UTC times
        self._select = select(*(circuits.c[name] for name in _COLUMNS.split(", "))).where(
            circuits.c.namespace == bindparam("ns"), circuits.c.key == bindparam("k")
        )

    def load(self, namespace: str, key: str) -> Versioned | None:
        with self._engine.connect() as connection:
            row = connection.execute(self._select, {"ns": namespace, "k": key}).first()
        return None if row is None else self._parsed.circuit(tuple(row))

    def write(self, change: Change) -> int | None:
        return None  # decided again, and written, under the lock

    def close(self) -> None:
        pass  # the caller's engine holds the connections


def _wrapped(engine: Engine, statement: str, error: Exception, *, invalidated: bool) -> Any:
    """`error` as SQLAlchemy would have raised it (OperationalError, ...)."""
    return exc.DBAPIError.instance(
        statement,
        None,
        error,
        engine.dialect.loaded_dbapi.Error,
        connection_invalidated=invalidated,
        dialect=engine.dialect,
    )
