"""Database faults: which errors are worth retrying, which mean "unavailable", and the retries."""

from __future__ import annotations

import asyncio
import enum
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, exc

from ._errors import StoreError, StoreUnavailableError
from ._urls import safe_url

T = TypeVar("T")
MAX_ATTEMPTS = 10
_FIRST_BACKOFF_S = 0.005
_MAX_BACKOFF_S = 0.25


class Fault(enum.Enum):
    TRANSIENT = "transient"  # the transaction was rolled back; the same work may succeed now
    UNREACHABLE = "unreachable"  # no connection could be made or kept
    BUSY = "busy"  # the database answered, but a lock or a statement timed out
    ERROR = "error"  # anything else (a schema problem, a bug): retrying would not help


# PostgreSQL SQLSTATEs: serialization failure and deadlock roll the transaction back and ask
# for a retry; classes 08 (connection), 53 (resources), 57P (shutdown, restart) and 58
# (system) mean the server cannot serve us; query_canceled (statement_timeout) and
# lock_not_available (lock_timeout) that it answered too slowly.
_PG_TRANSIENT = ("40001", "40P01")
_PG_UNREACHABLE = ("08", "53", "57P", "58", "25006")  # 25006: a failover left us on a standby
_PG_BUSY = ("57014", "55P03")
# libpq reports a refused login without an SQLSTATE: these are settings to fix, not outages.
_PG_REFUSED_LOGIN = (
    "does not exist",
    "authentication failed",
    "pg_hba.conf",
    "permission denied",
    "password",
)
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy")
_SQLITE_UNREACHABLE = ("unable to open database", "disk i/o error", "database or disk is full")


def classify(error: exc.SQLAlchemyError) -> Fault:
    """What kind of fault `error` is."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return Fault.TRANSIENT  # a pooled connection died (server restart): a new one may work
    if isinstance(error, exc.TimeoutError):
        return Fault.BUSY  # no pooled connection came free in time
    if isinstance(error, exc.DisconnectionError):
        return Fault.UNREACHABLE
    if not isinstance(error, exc.DBAPIError):
        return Fault.ERROR
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is not None:
        if sqlstate.startswith(_PG_TRANSIENT):
            return Fault.TRANSIENT
        if sqlstate.startswith(_PG_BUSY):
            return Fault.BUSY
        return Fault.UNREACHABLE if sqlstate.startswith(_PG_UNREACHABLE) else Fault.ERROR
    if not isinstance(error, (exc.OperationalError, exc.InterfaceError)):
        return Fault.ERROR
    message = str(error.orig).lower()
    if isinstance(error.orig, sqlite3.Error):
        # pysqlite reports schema problems ("no such table") as OperationalError too.
        if any(text in message for text in _SQLITE_TRANSIENT):
            return Fault.TRANSIENT
        return Fault.UNREACHABLE if any(t in message for t in _SQLITE_UNREACHABLE) else Fault.ERROR
    # psycopg: a refused, broken or timed-out connection, or a refused login.
    return Fault.ERROR if any(t in message for t in _PG_REFUSED_LOGIN) else Fault.UNREACHABLE


def _store_error(
    engine: Engine, doing: str, error: exc.SQLAlchemyError, fault: Fault, attempts: int
) -> StoreError:
    cause = getattr(error, "orig", None) or error
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    message = f"could not {doing} in {safe_url(engine)}: {type(cause).__name__}: {detail}"
    if attempts > 1:
        message += f" (gave up after {attempts} attempts)"
    if fault is Fault.ERROR:
        return StoreError(message)
    # A transient fault that outlasted its retries is a busy database, unless the
    # connection itself kept failing.
    unreachable = fault is Fault.UNREACHABLE or (
        isinstance(error, exc.DBAPIError) and error.connection_invalidated
    )
    return StoreUnavailableError(message, unreachable=unreachable)


@contextmanager
def translate_errors(engine: Engine, doing: str) -> Iterator[None]:
    """Turn any SQLAlchemy or driver error into a StoreError that names the database."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise _store_error(engine, doing, error, classify(error), 1) from error


class Attempts:
    """The retry policy of one operation: how long to wait after each failed attempt.

    No retry starts once `timeout_s` has passed since the first attempt began, nor after
    MAX_ATTEMPTS; then, as for any other fault, the error is a StoreError
    (StoreUnavailableError when the database is unreachable, locked or too slow).
    """

    def __init__(self, engine: Engine, doing: str, timeout_s: float) -> None:
        self._engine, self._doing = engine, doing
        self._deadline = time.monotonic() + timeout_s
        self._attempt = 1

    def wait_after(self, error: exc.SQLAlchemyError) -> float:
        """Seconds to wait before the next attempt, or raise the StoreError `error` means."""
        fault = classify(error)
        if fault is Fault.TRANSIENT and self._attempt < MAX_ATTEMPTS:
            invalidated = isinstance(error, exc.DBAPIError) and error.connection_invalidated
            # Full jitter, so processes that collided do not collide again in step.
            delay = 0.0 if invalidated else random.uniform(0, _backoff(self._attempt))
            if time.monotonic() + delay < self._deadline:
                self._attempt += 1
                return delay
        raise _store_error(self._engine, self._doing, error, fault, self._attempt) from error


def with_retries(engine: Engine, doing: str, timeout_s: float, operation: Callable[[], T]) -> T:
    """Run `operation` (one whole transaction), retrying transient faults (see `Attempts`)."""
    attempts = Attempts(engine, doing, timeout_s)
    while True:
        try:
            return operation()
        except exc.SQLAlchemyError as error:
            time.sleep(attempts.wait_after(error))


async def with_retries_async(
    engine: Engine, doing: str, timeout_s: float, operation: Callable[[], Awaitable[T]]
) -> T:
    """`with_retries` for a coroutine function."""
    attempts = Attempts(engine, doing, timeout_s)
    while True:
        try:
            return await operation()
        except exc.SQLAlchemyError as error:
            await asyncio.sleep(attempts.wait_after(error))


def _backoff(attempt: int) -> float:
    return float(min(_FIRST_BACKOFF_S * 2 ** (attempt - 1), _MAX_BACKOFF_S))
