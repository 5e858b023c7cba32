"""Transient database errors are retried with bounded backoff; nothing else is."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg.errors
import pytest
import sqlalchemy as sa

from durable_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    StoreError,
    StoreUnavailableError,
)
from durable_breaker._faults import MAX_ATTEMPTS, classify
from durable_breaker._raw import wrapped

from .conftest import BreakerFactory

CONFIG = CircuitBreakerConfig(
    failure_threshold=2, on_store_error="raise", store_timeout=timedelta(seconds=2)
)


def _transient(db_url: str) -> list[Exception]:
    """What each backend raises when a transaction lost a race and should be retried."""
    if db_url.startswith("sqlite"):
        return [sqlite3.OperationalError("database is locked")]
    return [psycopg.errors.SerializationFailure("x"), psycopg.errors.DeadlockDetected("x")]


def _permanent(db_url: str) -> Exception:
    if db_url.startswith("sqlite"):
        return sqlite3.OperationalError("no such table: durable_breaker_circuit")
    return psycopg.errors.UndefinedTable("relation does not exist")


@pytest.fixture
def inject(make_breaker: BreakerFactory) -> Iterator[Callable[..., tuple[CircuitBreaker, Any]]]:
    """A breaker whose writes raise the given errors, in turn, before reaching the database:
    the optimistic write on the raw driver, and the statements of a locked transaction."""
    made: list[tuple[sa.Engine, Any]] = []

    def make(
        errors: list[Exception], *, forever: bool = False, config: CircuitBreakerConfig = CONFIG
    ) -> tuple[CircuitBreaker, Any]:
        breaker = make_breaker(config)
        engine = breaker._store.engine
        calls = {"writes": 0}

        def next_error() -> Exception | None:
            calls["writes"] += 1
            if forever or calls["writes"] <= len(errors):
                return errors[(calls["writes"] - 1) % len(errors)]
            return None

        def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
                error = next_error()
                if error is not None:
                    raise error

        raw, write = breaker._store._raw, breaker._store._raw.write

        def failing_write(change: Any) -> Any:
            error = next_error()
            if error is not None:
                raise wrapped(engine, "write", error, invalidated=False) from error
            return write(change)

        raw.write = failing_write  # type: ignore[method-assign]
        sa.event.listen(engine, "before_cursor_execute", fail)
        made.append((engine, fail))
        return breaker, calls

    yield make
    for engine, fail in made:
        sa.event.remove(engine, "before_cursor_execute", fail)


def test_transient_errors_are_retried_and_counted_once(
    inject: Callable[..., tuple[CircuitBreaker, Any]], db_url: str
) -> None:
    errors = _transient(db_url) * 2
    breaker, calls = inject(errors)
    breaker.record_failure("k")
    # Each failed try (the optimistic one, then locked ones) was rolled back, then retried.
    assert calls["writes"] == len(errors) + 1
    breaker.record_failure("k")
    assert breaker.state("k") is CircuitState.OPEN  # 2 failures, not 2 + the retries
    assert [t.consecutive_failures for t in breaker.history("k")] == [2]


def test_a_transient_error_that_persists_gives_up_clearly(
    inject: Callable[..., tuple[CircuitBreaker, Any]], db_url: str
) -> None:
    breaker, calls = inject(_transient(db_url), forever=True)
    with pytest.raises(StoreUnavailableError, match=r"gave up after \d+ attempts") as raised:
        breaker.record_failure("k")
    assert 2 <= calls["writes"] <= 1 + MAX_ATTEMPTS  # the optimistic try, then the locked ones
    assert "could not update a circuit in " in str(raised.value)
    assert not raised.value.unreachable


def test_a_permanent_error_is_not_retried_and_is_not_an_outage(
    inject: Callable[..., tuple[CircuitBreaker, Any]], db_url: str
) -> None:
    # Even in fallback mode: a broken schema is a bug to report, not an outage to ride out.
    fallback = replace(CONFIG, on_store_error="fallback")
    breaker, calls = inject([_permanent(db_url)], forever=True, config=fallback)
    with pytest.raises(StoreError) as raised:
        breaker.record_failure("k")
    assert not isinstance(raised.value, StoreUnavailableError)
    assert calls["writes"] == 1


def _op(orig: Exception, wrapper: type[sa.exc.DBAPIError] = sa.exc.OperationalError) -> Any:
    """`orig` as SQLAlchemy wraps a driver error."""
    return wrapper("SELECT 1", {}, orig)


pg = psycopg.errors


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (_op(sqlite3.OperationalError("database is locked")), "transient"),
        (_op(sqlite3.OperationalError("disk I/O error")), "unreachable"),
        (_op(sqlite3.OperationalError("database or disk is full")), "unreachable"),
        (_op(sqlite3.OperationalError("no such table: x")), "error"),
        (_op(sqlite3.IntegrityError("UNIQUE failed"), sa.exc.IntegrityError), "error"),
        (_op(pg.SerializationFailure("x")), "transient"),
        (_op(pg.DeadlockDetected("x")), "transient"),
        (_op(pg.QueryCanceled("statement timeout")), "busy"),
        (_op(pg.LockNotAvailable("lock timeout")), "busy"),
        (_op(pg.AdminShutdown("terminating connection")), "unreachable"),
        (_op(pg.CannotConnectNow("the database system is starting up")), "unreachable"),
        (_op(pg.TooManyConnections("too many clients")), "unreachable"),
        (_op(pg.ReadOnlySqlTransaction("standby"), sa.exc.InternalError), "unreachable"),
        (_op(pg.UndefinedTable("no table"), sa.exc.ProgrammingError), "error"),
        (_op(pg.InsufficientPrivilege("denied"), sa.exc.ProgrammingError), "error"),
        (_op(psycopg.OperationalError("connection failed: Connection refused")), "unreachable"),
        (_op(psycopg.OperationalError("FATAL:  password authentication failed")), "error"),
        (_op(psycopg.OperationalError('FATAL:  database "x" does not exist')), "error"),
        (sa.exc.TimeoutError("QueuePool limit reached"), "busy"),
    ],
)
def test_errors_are_classified_by_what_retrying_or_waiting_can_do(
    error: sa.exc.SQLAlchemyError, fault: str
) -> None:
    assert classify(error).value == fault


@pytest.mark.postgres
def test_a_missing_database_is_a_setting_to_fix_not_an_outage(postgres_admin_url: str) -> None:
    url = sa.make_url(postgres_admin_url).set(database="db_test_does_not_exist")
    with pytest.raises(StoreError, match="does not exist") as raised:
        CircuitBreaker(url.render_as_string(hide_password=False))
    assert not isinstance(raised.value, StoreUnavailableError)


def _is_write(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("INSERT", "UPDATE", "WITH"))


@pytest.fixture
def lost_connections(
    pg_url: str, postgres_admin_url: str
) -> Iterator[tuple[CircuitBreaker, list[str], Callable[[str, Any], None]]]:
    """A breaker (on_store_error="raise") with one stored failure, a log of the connections
    a test broke, and `listen(event, hook)` for hooks removed afterwards."""
    breaker = CircuitBreaker(pg_url, CONFIG)
    breaker.record_failure("k")
    admin = sa.create_engine(postgres_admin_url.replace("postgresql://", "postgresql+psycopg://"))
    broken: list[str] = []
    hooks: list[tuple[str, Any]] = []

    def listen(event: str, hook: Any) -> None:
        sa.event.listen(breaker._store.engine, event, hook)
        hooks.append((event, hook))

    def terminate(connection: sa.Connection) -> None:
        pid = connection.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with admin.begin() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    listen.terminate = terminate  # type: ignore[attr-defined]
    yield breaker, broken, listen
    for event, hook in hooks:
        sa.event.remove(breaker._store.engine, event, hook)
    breaker.close()
    admin.dispose()


@pytest.mark.postgres
def test_a_write_whose_connection_died_before_it_ran_is_retried_once(
    lost_connections: tuple[CircuitBreaker, list[str], Any],
) -> None:
    breaker, broken, listen = lost_connections
    raw, write = breaker._store._raw, breaker._store._raw.write

    def after_a_server_restart(change: Any) -> Any:
        if not broken:
            broken.append("idle")  # the pooled connection the write will use dies idle
            with breaker._store.engine.connect() as connection:
                listen.terminate(connection)
        return write(change)

    raw.write = after_a_server_restart  # type: ignore[method-assign]
    breaker.record_failure("k")  # the version shows it was not applied: written under a lock
    assert broken == ["idle"]
    assert breaker.state("k") is CircuitState.OPEN
    assert [t.consecutive_failures for t in breaker.history("k")] == [2]  # applied once


@pytest.mark.postgres
def test_a_write_whose_connection_died_after_it_ran_is_not_applied_twice(
    lost_connections: tuple[CircuitBreaker, list[str], Any],
) -> None:
    breaker, broken, _ = lost_connections
    raw, write = breaker._store._raw, breaker._store._raw.write

    def answer_lost(change: Any) -> Any:
        write(change)  # applied (autocommit), but the answer never comes back
        broken.append("after")
        lost = psycopg.OperationalError("server closed the connection unexpectedly")
        raise wrapped(breaker._store.engine, "write", lost, invalidated=True) from lost

    raw.write = answer_lost  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailableError, match="may or may not have been stored"):
        breaker.record_failure("k")
    assert broken == ["after"]  # not retried
    assert [t.consecutive_failures for t in breaker.history("k")] == [2]  # once, not twice


@pytest.mark.postgres
def test_a_transaction_whose_connection_died_at_commit_says_the_outcome_is_unknown(
    lost_connections: tuple[CircuitBreaker, list[str], Any],
) -> None:
    breaker, broken, listen = lost_connections

    def at_commit(connection: sa.Connection) -> None:
        broken.append("COMMIT")
        listen.terminate(connection)

    listen("commit", at_commit)  # a reset is a locked transaction
    with pytest.raises(StoreUnavailableError, match="may or may not have been stored"):
        breaker.reset("k")
    assert broken == ["COMMIT"]  # not retried
    assert [s.consecutive_failures for s in breaker.status()] == [1]  # here: not applied
