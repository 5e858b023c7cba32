"""Database connections: engine set-up with bounded waits, locked transactions."""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL

from ._errors import InvalidArgumentError, StoreUnavailableError
from ._urls import parse_url, safe_url
from ._watchdog import StallWatchdog

if TYPE_CHECKING:  # imported when used: the asyncio extension is an optional extra
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

DEFAULT_URL = "sqlite:///durable_breaker.db"
DEFAULT_TIMEOUT_S = 5.0  # CircuitBreakerConfig.store_timeout's default
# The watchdog only acts once the server's own timeouts had their chance to answer.
STALL_MARGIN_S = 1.0
_BOUNDED_WAITS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
_IMMEDIATE = "durable_breaker_immediate"
_log = logging.getLogger("durable_breaker")


# Engines we made, so a forked child can drop the connections it inherited (see below).
_OWN_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_WRITE_BOUNDS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
_CONNECT_ARGS: weakref.WeakKeyDictionary[Engine, dict[str, Any]] = weakref.WeakKeyDictionary()
_WATCHDOGS: weakref.WeakKeyDictionary[Engine, StallWatchdog] = weakref.WeakKeyDictionary()


# How many times this process is a fork of the one that imported us: connections opened
# under another count were inherited from a parent and must not be used.
forks = 0


def _forget_inherited_connections() -> None:
    # A connection shared by parent and child corrupts both; the child opens its own.
    global forks
    forks += 1
    for engine in list(_OWN_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_connections)


def make_engine(url: str | URL, timeout_s: float = DEFAULT_TIMEOUT_S) -> Engine:
    """An engine for `url`, set up for durable-breaker's locking on its backend.

    Every wait is bounded by `timeout_s` (a setting the URL makes itself wins): SQLite's busy
    timeout; PostgreSQL's connect and TCP timeouts, the lock and statement timeouts of write
    transactions, and a watchdog on every checked-out connection; waiting for a pooled
    connection.
    """
    parsed = parse_url(url)
    options = str(parsed.query.get("options", ""))
    timeout_ms = max(1, round(timeout_s * 1000))
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if "timeout" not in parsed.query:
            connect_args["timeout"] = timeout_s
    else:
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = max(2, math.ceil(timeout_s))  # libpq's minimum
        if "tcp_user_timeout" not in parsed.query:
            # A server that vanished without closing the socket (a cut network) is noticed
            # once sent data stays unacknowledged this long, not after the kernel's minutes.
            connect_args["tcp_user_timeout"] = timeout_ms
    try:
        engine = create_engine(parsed, connect_args=connect_args, pool_timeout=timeout_s)
    except ImportError as error:
        raise InvalidArgumentError(
            "PostgreSQL needs psycopg 3: pip install 'durable-breaker[postgres]'"
        ) from error
    except (exc.ArgumentError, ValueError, TypeError) as error:
        raise InvalidArgumentError(f"invalid database URL {safe_url(parsed)}: {error}") from error
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    else:
        # A stalled process must not hold a row lock for ever: bound its waits and its idling.
        bounds = _bounds_statement(options, timeout_ms)
        if bounds:
            event.listen(engine, "begin", functools.partial(_postgres_on_begin, bounds))
        if bounds:
            _WRITE_BOUNDS[engine] = bounds
        watchdog = StallWatchdog(timeout_s + STALL_MARGIN_S)
        watchdog.install(engine)
        _WATCHDOGS[engine] = watchdog
    prepare_engine(engine)
    _OWN_ENGINES.add(engine)
    _CONNECT_ARGS[engine] = connect_args
    return engine


def driver_connect(engine: Engine) -> Callable[[], Any]:
    """Opens a PostgreSQL driver connection as `engine` (one we made) does, but outside its
    pool and in autocommit: for the hot path's own connections."""
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    kwargs = {**kwargs, **_CONNECT_ARGS.get(engine, {}), "autocommit": True}
    connect = engine.dialect.loaded_dbapi.connect
    return lambda: connect(*args, **kwargs)


def watchdog(engine: Engine) -> StallWatchdog | None:
    """The stall watchdog of a PostgreSQL engine we made (None for any other)."""
    return _WATCHDOGS.get(engine)


def _bounds_statement(options: str, timeout_ms: int) -> str | None:
    """One statement setting, for the current transaction only (as SET LOCAL does), each
    bounded wait the URL's `options` does not set itself; None if it sets them all.
    One statement, not three SET LOCALs: the server parses and runs it once."""
    settings = [setting for setting in _BOUNDED_WAITS if setting not in options]
    if not settings:
        return None
    return "SELECT " + ", ".join(
        f"pg_catalog.set_config('{setting}', '{timeout_ms}', true)" for setting in settings
    )


def write_bounds(engine: Engine) -> str | None:
    """The statement that bounds a write transaction's waits on `engine` (None: the URL
    bounds them all, or the engine is the caller's)."""
    return _WRITE_BOUNDS.get(engine)


def owns(engine: Engine) -> bool:
    """Whether durable-breaker made `engine` from a URL (a caller's engine keeps its ways)."""
    return engine in _OWN_ENGINES


def prepare_engine(engine: Engine) -> None:
    """Hook durable-breaker's transaction start into an engine (ours, or one a caller passed)."""
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise InvalidArgumentError(
            f"durable-breaker supports SQLite and PostgreSQL, not {engine.dialect.name!r}"
        )
    if engine.dialect.name == "sqlite" and not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    switch_to_wal(dbapi_connection)


def switch_to_wal(dbapi_connection: Any) -> bool:
    """Put the SQLite file in WAL mode (readers then never wait for a writer); say if it is.

    The mode persists in the file, so one success serves every process. Switching needs the
    file to itself: while another connection uses it (creating the schema, say) it fails,
    sometimes at once, sometimes after the busy timeout. Then the file stays in rollback mode,
    which is correct, only less concurrent, until a later attempt succeeds.
    """
    cursor = dbapi_connection.cursor()
    try:
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return True
        return bool(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal")
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        return False
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # pysqlite defers BEGIN to the first write, too late to serialise a read-decide-write
    # between processes: take the write lock up front, but only for our write transactions
    # (reads stay lock-free, and a caller's own transactions on a shared engine are untouched).
    if not connection.get_execution_options().get(_IMMEDIATE):
        return
    if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        raise InvalidArgumentError(
            "this SQLite Engine begins its own transactions (a 'begin' listener emitting BEGIN); "
            "durable-breaker needs BEGIN IMMEDIATE: pass it a URL, or an Engine without that "
            "listener"
        )
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_on_begin(bounds: str, connection: Connection) -> None:
    # A row lock held by a stalled process must not block every writer of that key forever.
    # Per transaction (set_config(..., true), as SET LOCAL): safe behind PgBouncer in
    # transaction mode (a session SET would leak to other clients); migrations lift them.
    if connection.get_execution_options().get(_IMMEDIATE):
        connection.exec_driver_sql(bounds)


def settle_journal_mode(engine: Engine) -> None:
    """Try WAL once more now that start-up is done (other processes may have held the file)."""
    if engine.dialect.name != "sqlite" or engine not in _OWN_ENGINES:
        return  # a caller's engine keeps the journal mode its owner chose
    with engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        if not switch_to_wal(dbapi_connection):
            _log.warning(
                "%s is busy and stays in rollback-journal mode for now (correct, less "
                "concurrent); new connections will retry WAL",
                safe_url(engine),
            )


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction that holds the write lock it needs from its first statement.

    SQLite: BEGIN IMMEDIATE locks the database. PostgreSQL: callers lock rows
    (SELECT ... FOR UPDATE) or take an advisory lock, which only hold inside a real
    transaction: READ COMMITTED is forced, whatever the engine's own isolation level
    (AUTOCOMMIT would drop the locks at once; REPEATABLE READ would fail on conflicts).
    """
    with engine.connect() as connection:
        options: dict[str, Any] = {_IMMEDIATE: True}
        if engine.dialect.name == "postgresql":
            options["isolation_level"] = "READ COMMITTED"
        connection.execution_options(**options)
        transaction = connection.begin()
        try:
            yield connection
        except BaseException:
            transaction.rollback()
            raise
        try:
            transaction.commit()
        except exc.DBAPIError as error:
            if not (error.connection_invalidated and engine.dialect.name == "postgresql"):
                raise  # SQLite rolls back a failed commit: the caller may retry
            # The server may have committed before the connection broke: retrying could
            # apply the change twice, so say that the outcome is unknown instead.
            raise StoreUnavailableError(
                f"lost the connection to {safe_url(engine)} while committing; the change "
                "may or may not have been stored"
            ) from error


def make_async_engine(url: str | URL, timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncEngine:
    """An asyncio engine for `url` (aiosqlite for SQLite, psycopg's async mode for
    PostgreSQL), with the same bounded waits and write locking as `make_engine`'s."""
    parsed = parse_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver in ("pysqlite", "aiosqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql" and driver in ("psycopg", "psycopg_async", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # picks psycopg's async mode
    else:
        raise InvalidArgumentError(
            f"AsyncCircuitBreaker supports sqlite:// and postgresql:// URLs, not {safe_url(url)}"
        )
    timeout_ms = max(1, round(timeout_s * 1000))
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["timeout"] = float(parsed.query.get("timeout", timeout_s))  # type: ignore[arg-type]
    else:
        for name, value in (
            ("connect_timeout", max(2, math.ceil(timeout_s))),
            ("tcp_user_timeout", timeout_ms),
        ):
            if name not in parsed.query:
                connect_args[name] = value
    try:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(parsed, connect_args=connect_args, pool_timeout=timeout_s)
    except ImportError as error:
        raise InvalidArgumentError(
            "AsyncCircuitBreaker needs its extra: pip install 'durable-breaker[asyncio]' "
            f"(and [postgres] for PostgreSQL): {error}"
        ) from error
    sync_engine = engine.sync_engine
    if backend == "sqlite":
        event.listen(sync_engine, "connect", _aiosqlite_on_connect)
        event.listen(sync_engine, "begin", _aiosqlite_on_begin)
    else:
        bounds = _bounds_statement(str(parsed.query.get("options", "")), timeout_ms)
        if bounds:
            event.listen(sync_engine, "begin", functools.partial(_postgres_on_begin, bounds))
    return engine


def _aiosqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module must not open transactions itself: ours begin IMMEDIATE (below),
    # and reads run in autocommit. (SQLAlchemy's documented recipe for aiosqlite.) WAL mode
    # is a property of the file, set by the breaker's start-up on a sync connection.
    dbapi_connection.isolation_level = None


def _aiosqlite_on_begin(connection: Connection) -> None:
    if connection.get_execution_options().get(_IMMEDIATE):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


@asynccontextmanager
async def write_transaction_async(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`write_transaction` for an asyncio engine."""
    async with engine.connect() as connection:
        options: dict[str, Any] = {_IMMEDIATE: True}
        if engine.dialect.name == "postgresql":
            options["isolation_level"] = "READ COMMITTED"
        await connection.execution_options(**options)
        transaction = await connection.begin()
        try:
            yield connection
        except BaseException:
            await transaction.rollback()
            raise
        try:
            await transaction.commit()
        except exc.DBAPIError as error:
            if not (error.connection_invalidated and engine.dialect.name == "postgresql"):
                raise
            raise StoreUnavailableError(
                f"lost the connection to {safe_url(engine.sync_engine)} while committing; the "
                "change may or may not have been stored"
            ) from error
