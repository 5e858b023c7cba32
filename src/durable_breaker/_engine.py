"""Database connections: URL checks, engine set-up, locked transactions, error translation."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from ._errors import InvalidArgumentError, StoreError

DEFAULT_URL = "sqlite:///durable_breaker.db"
# Bounds on waiting for the database; a URL that sets its own keeps it.
SQLITE_BUSY_TIMEOUT_S = 5.0
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_LOCK_TIMEOUT_MS = 5000
_IMMEDIATE = "durable_breaker_immediate"
_log = logging.getLogger("durable_breaker")
_EXAMPLES = "expected e.g. sqlite:///breakers.db or postgresql://user@host/dbname"


def parse_url(url: str | URL) -> URL:
    """Parse and normalise a database URL, or say clearly what is wrong with it."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError) as error:
        raise InvalidArgumentError(f"not a database URL: {_scrub(url)!r}; {_EXAMPLES}") from error
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
            return parsed.set(drivername="postgresql+psycopg")
        raise InvalidArgumentError(
            f"durable-breaker talks to PostgreSQL through psycopg 3, not {parsed.drivername!r}: "
            "use a postgresql:// or postgresql+psycopg:// URL"
        )
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise InvalidArgumentError(
                f"durable-breaker talks to SQLite through Python's sqlite3, not "
                f"{parsed.drivername!r}: use a sqlite:/// URL"
            )
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            raise InvalidArgumentError(
                "an in-memory SQLite database is not durable and not shared between connections; "
                "use a file, e.g. sqlite:///breakers.db"
            )
        return parsed
    raise InvalidArgumentError(
        f"durable-breaker supports SQLite and PostgreSQL, not {backend!r} ({safe_url(parsed)})"
    )


def _scrub(url: object) -> str:
    """An unparseable URL with anything that looks like a password removed."""
    text = str(url)
    text = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", text)
    return re.sub(r"(password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def safe_url(url: str | URL | Engine) -> str:
    """The URL with any password (in the user part or the query) masked, for messages."""
    if isinstance(url, Engine):
        url = url.url
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        return _scrub(url)
    hidden = {k: "***" for k in parsed.query if k.lower() == "password"}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


# Engines we made, so a forked child can drop the connections it inherited (see below).
_OWN_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    # A connection shared by parent and child corrupts both; the child opens its own.
    for engine in list(_OWN_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_connections)


def make_engine(url: str | URL) -> Engine:
    """An engine for `url`, set up for durable-breaker's locking on its backend."""
    parsed = parse_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if "timeout" not in parsed.query:
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_S
    else:
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, connect_args=connect_args)
    except ImportError as error:
        raise InvalidArgumentError(
            "PostgreSQL needs psycopg 3: pip install 'durable-breaker[postgres]'"
        ) from error
    except (exc.ArgumentError, ValueError, TypeError) as error:
        raise InvalidArgumentError(f"invalid database URL {safe_url(parsed)}: {error}") from error
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    elif "lock_timeout" not in str(parsed.query.get("options", "")):
        event.listen(engine, "begin", _postgres_on_begin)
    prepare_engine(engine)
    _OWN_ENGINES.add(engine)
    return engine


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


def _postgres_on_begin(connection: Connection) -> None:
    # A row lock held by a stalled process must not block every writer of that key forever.
    # Set per transaction (SET LOCAL), not per connection: poolers such as PgBouncer refuse
    # startup options, and migrations must be free to wait for each other longer.
    if connection.get_execution_options().get(_IMMEDIATE):
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {POSTGRES_LOCK_TIMEOUT_MS}")


def settle_journal_mode(engine: Engine) -> None:
    """Try WAL once more now that start-up is done (other processes may have held the file)."""
    if engine.dialect.name != "sqlite" or engine not in _OWN_ENGINES:
        return  # a caller's engine keeps the journal mode its owner chose
    with translate_errors(engine, "switch to WAL mode"), engine.connect() as connection:
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
        with connection.begin():
            yield connection


@contextmanager
def translate_errors(engine: Engine, doing: str) -> Iterator[None]:
    """Turn any SQLAlchemy or driver error into a StoreError that names the database."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise StoreError(
            f"could not {doing} in {safe_url(engine)}: {type(cause).__name__}: {detail}"
        ) from error
