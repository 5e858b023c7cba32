"""The hot-path read: one circuit row through the raw driver.

SQLAlchemy's Connection checkout and statement execution cost several times the read
itself, so this one statement skips them: SQLite reads through one autocommit sqlite3
connection per thread, PostgreSQL through a pooled connection switched to autocommit
(psycopg prepares the statement after a few uses). Driver errors are wrapped as SQLAlchemy
would wrap them, so the retry and outage logic sees one kind of error.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, exc

from . import _engine
from ._state import Circuit, CircuitState

_COLUMNS = (
    "state, consecutive_failures, half_open_probes, last_failure_at, half_open_since, version"
)
Versioned = tuple[Circuit, int]  # a stored circuit and the version its row is at
_STATES = {state.value: state for state in CircuitState}


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
            state, failures, probes, last_failure_at, half_open_since, version = row
            parse = self._parse_time
            circuit = Circuit(
                _STATES[state],
                failures,
                probes,
                None if last_failure_at is None else parse(last_failure_at),
                None if half_open_since is None else parse(half_open_since),
            )
            if len(self._circuits) >= self._size:
                self._circuits.clear()  # bounded; refills with what is read now
            stored = self._circuits[row] = (circuit, version)
        return stored


def _sqlite_time(text: str) -> datetime:
    # SQLAlchemy stores SQLite datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC.
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _postgres_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


class SqliteReads:
    """Reads through one sqlite3 connection per thread (sqlite3 objects are not shareable)."""

    def __init__(self, engine: Engine, timeout_s: float) -> None:
        self._engine = engine
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        self._database: str = args[0]
        self._connect_kwargs = {
            **kwargs,
            "timeout": timeout_s,
            "isolation_level": None,  # autocommit: a SELECT opens no transaction
            "check_same_thread": False,  # one thread uses it; close() may run in another
        }
        self._sql = (
            f"SELECT {_COLUMNS} FROM durable_breaker_circuit WHERE namespace = ? AND key = ?"
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[sqlite3.Connection] = []
        self._parsed = _Parsed(_sqlite_time)

    def load(self, namespace: str, key: str) -> Versioned | None:
        local = self._local
        cursor = getattr(local, "cursor", None)
        if cursor is None or local.forks != _engine.forks:  # a new thread, or a forked child
            cursor = self._open().cursor()
            local.cursor = cursor
        try:
            row = cursor.execute(self._sql, (namespace, key)).fetchone()
        except sqlite3.Error as error:
            raise _wrapped(self._engine, self._sql, error, invalidated=False) from error
        return None if row is None else self._parsed.circuit(row)

    def _open(self) -> sqlite3.Connection:
        try:
            connection: sqlite3.Connection = sqlite3.connect(self._database, **self._connect_kwargs)
        except sqlite3.Error as error:
            raise _wrapped(self._engine, "connect", error, invalidated=False) from error
        self._local.forks = _engine.forks
        with self._lock:
            self._opened.append(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self._local = threading.local()


class PostgresReads:
    """Reads through the engine's pool, on the driver connection, in autocommit."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._parsed = _Parsed(_postgres_time)
        self._sql = (
            f"SELECT {_COLUMNS} FROM durable_breaker_circuit WHERE namespace = %s AND key = %s"
        )

    def load(self, namespace: str, key: str) -> Versioned | None:
        try:
            pooled = self._engine.raw_connection()
        except self._engine.dialect.loaded_dbapi.Error as error:
            raise _wrapped(self._engine, "connect", error, invalidated=False) from error
        connection: Any = pooled.dbapi_connection
        try:
            # Autocommit: no BEGIN and ROLLBACK round trips around a single read. Always
            # restored: the pool's other users run transactions on this connection.
            connection.autocommit = True
            try:
                row = connection.execute(self._sql, (namespace, key)).fetchone()
            finally:
                connection.autocommit = False
        except self._engine.dialect.loaded_dbapi.Error as error:
            lost = self._engine.dialect.is_disconnect(error, connection, None)
            if lost:
                pooled.invalidate(error)
            raise _wrapped(self._engine, self._sql, error, invalidated=lost) from error
        except BaseException as error:  # interrupted mid-statement: the connection is suspect
            pooled.invalidate(error)
            raise
        finally:
            pooled.close()
        return None if row is None else self._parsed.circuit(row)

    def close(self) -> None:
        pass  # the engine's pool holds the connections


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
