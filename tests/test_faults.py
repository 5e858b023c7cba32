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
from durable_breaker._faults import MAX_ATTEMPTS

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
    """A breaker whose writes raise the given errors, in turn, before reaching the driver."""
    made: list[tuple[sa.Engine, Any]] = []

    def make(
        errors: list[Exception], *, forever: bool = False, config: CircuitBreakerConfig = CONFIG
    ) -> tuple[CircuitBreaker, Any]:
        breaker = make_breaker(config)
        engine = breaker._store.engine
        calls = {"writes": 0}

        def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
                calls["writes"] += 1
                if forever or calls["writes"] <= len(errors):
                    raise errors[(calls["writes"] - 1) % len(errors)]

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
    assert calls["writes"] == len(errors) + 1  # each failed try was rolled back, then retried
    breaker.record_failure("k")
    assert breaker.state("k") is CircuitState.OPEN  # 2 failures, not 2 + the retries
    assert [t.consecutive_failures for t in breaker.history("k")] == [2]


def test_a_transient_error_that_persists_gives_up_clearly(
    inject: Callable[..., tuple[CircuitBreaker, Any]], db_url: str
) -> None:
    breaker, calls = inject(_transient(db_url), forever=True)
    with pytest.raises(StoreUnavailableError, match=r"gave up after \d+ attempts") as raised:
        breaker.record_failure("k")
    assert 2 <= calls["writes"] <= MAX_ATTEMPTS
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
