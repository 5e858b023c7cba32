"""What the SQL store guarantees: durability, atomic audit, a cheap hot path, thread safety."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from durable_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    DurableBreakerError,
    InvalidArgumentError,
    StoreError,
    StoreUnavailableError,
)
from durable_breaker._engine import make_engine, write_transaction
from durable_breaker._raw import Change
from durable_breaker._view import DataVersion

from .conftest import (
    BreakerFactory,
    FakeClock,
    run_in_processes,
    run_in_threads,
)

TRIP_AT_2 = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=10))


@contextmanager
def recorded_statements(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def verbs(statements: list[str]) -> list[str]:
    return [statement.split()[0].upper() for statement in statements]


@contextmanager
def recorded_operations(breaker: CircuitBreaker) -> Iterator[list[str]]:
    """Every statement `breaker` runs: "READ" and "WRITE" for the hot path on the raw driver,
    which SQLAlchemy's events do not see, and the verb of each statement SQLAlchemy runs."""
    reads = breaker._store._raw
    load = reads.load
    with recorded_statements(breaker._store.engine) as statements:

        def counted(namespace: str, key: str) -> Any:
            statements.append("READ")
            return load(namespace, key)

        write = reads.write

        def written(change: Any) -> Any:
            statements.append("WRITE")
            return write(change)

        reads.load = counted  # type: ignore[method-assign]
        reads.write = written  # type: ignore[method-assign]
        try:
            yield statements
        finally:
            del reads.load, reads.write


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_state_and_history_survive_a_restart(make_breaker: BreakerFactory) -> None:
    first = make_breaker(TRIP_AT_2)
    first.record_failure("gpt-4o")
    first.record_failure("gpt-4o", reason="HTTP 503")
    first.close()
    second = make_breaker(TRIP_AT_2)
    assert second.state("gpt-4o") is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        second.check("gpt-4o")
    [trip] = second.history("gpt-4o")
    assert (trip.from_state, trip.to_state, trip.reason) == (
        CircuitState.CLOSED,
        CircuitState.OPEN,
        "HTTP 503",
    )


def test_namespaces_sharing_a_database_are_independent(make_breaker: BreakerFactory) -> None:
    inference = make_breaker(TRIP_AT_2, namespace="inference")
    embeddings = make_breaker(TRIP_AT_2, namespace="embeddings")
    inference.record_failure("gpt-4o")
    inference.record_failure("gpt-4o")
    assert inference.state("gpt-4o") is CircuitState.OPEN
    assert embeddings.state("gpt-4o") is CircuitState.CLOSED
    assert embeddings.history("gpt-4o") == []
    assert [s.key for s in embeddings.status()] == []


def test_check_on_a_closed_key_is_one_read_and_no_write(
    engine: sa.Engine, clock: FakeClock
) -> None:
    with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
        breaker.record_failure("known")  # stored, closed, one failure
        for key in ("known", "never-seen"):
            with recorded_operations(breaker) as operations:
                breaker.check(key)
            assert verbs(operations) == ["READ"], key


def test_success_on_a_healthy_key_writes_nothing(engine: sa.Engine, clock: FakeClock) -> None:
    with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
        breaker.record_failure("known")
        breaker.record_success("known")  # clears the failure: a write
        for key in ("known", "never-seen"):
            with recorded_operations(breaker) as operations:
                breaker.record_success(key)
            assert verbs(operations) == ["READ"], key
        assert [s.key for s in breaker.status()] == ["known"]  # never-seen was not stored


def test_is_available_spends_no_probe_and_writes_nothing(
    engine: sa.Engine, clock: FakeClock
) -> None:
    with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
        breaker.record_failure("k")
        breaker.record_failure("k")
        clock.advance(10)
        with recorded_operations(breaker) as operations:
            assert breaker.is_available("k")
            assert breaker.is_available("k")
        assert set(verbs(operations)) == {"READ"}  # (the second may be proved unchanged)
        assert breaker.state("k") is CircuitState.OPEN
        breaker.check("k")  # the probe is still there to take
        assert not breaker.is_available("k")


def test_a_failed_audit_insert_rolls_back_the_state_change(
    engine: sa.Engine, clock: FakeClock
) -> None:
    """The database itself refuses the audit row (a trigger): the trip must not stay."""
    if engine.dialect.name == "sqlite":
        refuse = [
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON durable_breaker_transition "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        ]
        allow = ["DROP TRIGGER refuse_audit"]
    else:
        refuse = [
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON durable_breaker_transition "
            "FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        ]
        allow = [
            "DROP TRIGGER refuse_audit ON durable_breaker_transition",
            "DROP FUNCTION refuse_audit()",
        ]

    with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
        breaker.record_failure("k")
        with engine.begin() as connection:
            for statement in refuse:
                connection.exec_driver_sql(statement)
        try:
            with pytest.raises(StoreError, match="disk full"):
                breaker.record_failure("k")  # would trip: state change plus audit row
        finally:
            with engine.begin() as connection:
                for statement in allow:
                    connection.exec_driver_sql(statement)
        assert breaker.state("k") is CircuitState.CLOSED
        assert [s.consecutive_failures for s in breaker.status()] == [1]
        assert breaker.history("k") == []


def test_database_errors_are_wrapped_with_the_original_as_cause(
    engine: sa.Engine, clock: FakeClock
) -> None:
    with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE durable_breaker_transition"))
        breaker.record_failure("k")
        with pytest.raises(StoreError, match="could not update a circuit in") as raised:
            breaker.record_failure("k")
        assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)
        assert breaker.state("k") is CircuitState.CLOSED  # the trip was rolled back whole


def test_transition_time_is_aware_utc_with_microseconds(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    clock.now = 1_700_000_000.123456
    breaker = make_breaker(TRIP_AT_2)
    breaker.record_failure("k")
    breaker.record_failure("k")
    [trip] = breaker.history("k")
    assert trip.at == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert trip.at.utcoffset() == timedelta(0)


def test_a_trip_is_audited_with_count_reason_and_actor(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(TRIP_AT_2, actor="scheduler-7")
    breaker.record_failure("k", reason="timeout")
    breaker.record_failure("k")
    [trip] = breaker.history("k")
    assert (trip.trigger, trip.consecutive_failures, trip.actor) == ("failure", 2, "scheduler-7")
    assert trip.reason == "2 consecutive failures"  # no reason given: the breaker says why


def test_the_default_actor_is_host_and_pid(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(TRIP_AT_2)
    breaker.record_failure("k")
    breaker.record_failure("k")
    assert breaker.history("k")[0].actor == f"{socket.gethostname()}:{os.getpid()}"


def test_history_limit_returns_the_latest_oldest_first(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(TRIP_AT_2)
    for _ in range(3):  # each round: closed -> open -> closed
        breaker.record_failure("k")
        breaker.record_failure("k")
        breaker.record_success("k")
        clock.advance(1)
    assert len(breaker.history("k")) == 6
    last_two = breaker.history("k", limit=2)
    assert [(t.from_state, t.to_state) for t in last_two] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]
    assert last_two == breaker.history("k")[-2:]
    assert breaker.history("k", limit=0) == []


def test_circuit_open_error_carries_key_state_and_retry_after(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(TRIP_AT_2)
    breaker.record_failure("k")
    breaker.record_failure("k")
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as raised:
        breaker.check("k")
    assert (raised.value.key, raised.value.state) == ("k", CircuitState.OPEN)
    assert raised.value.retry_after == pytest.approx(6.0)


def test_a_lost_probe_is_renewed_after_probe_timeout(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, cooldown=timedelta(seconds=10), probe_timeout=timedelta(seconds=30)
    )
    breaker = make_breaker(config)
    breaker.record_failure("k")
    clock.advance(10)
    breaker.check("k")  # the probe; its caller never reports back
    clock.advance(29)
    with pytest.raises(CircuitOpenError) as raised:
        breaker.check("k")
    assert raised.value.retry_after == pytest.approx(1.0)
    with make_breaker(config) as restarted, pytest.raises(CircuitOpenError):
        restarted.check("k")  # a restart does not release it either...
    clock.advance(1)
    breaker.check("k")  # ...but probe_timeout does
    renewal = breaker.history("k")[-1]
    assert (renewal.from_state, renewal.to_state, renewal.trigger) == (
        CircuitState.HALF_OPEN,
        CircuitState.HALF_OPEN,
        "check",
    )
    assert renewal.reason is not None and "probe budget renewed" in renewal.reason


def test_status_lists_every_stored_key_with_its_state(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(TRIP_AT_2)
    breaker.record_failure("b")
    breaker.record_failure("a")
    clock.advance(1)
    breaker.record_failure("a")
    clock.advance(3)
    a, b = breaker.status()
    assert (a.key, a.state, a.consecutive_failures, a.retry_after) == (
        "a",
        CircuitState.OPEN,
        2,
        7.0,
    )
    assert a.since == datetime.fromtimestamp(clock.now - 3, UTC)
    assert (b.key, b.state, b.consecutive_failures, b.since) == ("b", CircuitState.CLOSED, 1, None)


def test_one_breaker_shared_by_threads_loses_no_failure(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=10_000))

    def fail_25_times() -> None:
        for _ in range(25):
            breaker.record_failure("k")

    run_in_threads(fail_25_times, 8)
    assert [s.consecutive_failures for s in breaker.status()] == [200]


def test_threads_share_one_half_open_probe_budget(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, cooldown=timedelta(seconds=10), half_open_max=3
    )
    breaker = make_breaker(config)
    breaker.record_failure("k")
    clock.advance(10)
    admitted: list[bool] = []

    def probe() -> None:
        for _ in range(5):
            try:
                breaker.check("k")
                admitted.append(True)
            except CircuitOpenError:
                admitted.append(False)

    run_in_threads(probe, 8)
    assert admitted.count(True) == 3
    assert len(admitted) == 40


def test_a_caller_engine_is_left_open_on_close(engine: sa.Engine, clock: FakeClock) -> None:
    with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
        breaker.record_failure("k")
    with engine.connect() as connection:  # still usable: the caller owns it
        assert connection.execute(sa.text("SELECT 1")).scalar() == 1


def test_status_says_a_half_open_key_with_probes_left_admits_now(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1,
        cooldown=timedelta(seconds=10),
        half_open_max=2,
        probe_timeout=timedelta(seconds=30),
    )
    breaker = make_breaker(config)
    breaker.record_failure("k")
    clock.advance(10)
    breaker.check("k")  # probe 1 of 2
    [status] = breaker.status()
    assert (status.state, status.retry_after) == (CircuitState.HALF_OPEN, 0.0)
    breaker.check("k")  # probe 2 of 2: spent
    clock.advance(5)
    [status] = breaker.status()
    assert status.retry_after == pytest.approx(25.0)


def _fail_and_probe(url: str, now: float, failures: int) -> int:
    """In a worker process: record failures, then try for a probe; 1 if one was admitted."""
    config = CircuitBreakerConfig(failure_threshold=10_000, cooldown=timedelta(seconds=10))
    with CircuitBreaker(url, config, clock=lambda: now) as breaker:
        for _ in range(failures):
            breaker.record_failure("shared")
        try:
            breaker.check("tripped")
        except CircuitOpenError:
            return 0
        return 1


def test_processes_sharing_a_database_lose_no_failure_and_share_the_probe(
    make_breaker: BreakerFactory, db_url: str, clock: FakeClock
) -> None:
    setup = make_breaker(CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=10)))
    setup.record_failure("tripped")
    admitted = run_in_processes(_fail_and_probe, 4, db_url, clock.now + 10, 30)
    assert sum(admitted) == 1  # one half-open probe across all processes
    counts = {s.key: s.consecutive_failures for s in setup.status()}
    assert counts["shared"] == 120


@pytest.mark.parametrize("isolation_level", ["AUTOCOMMIT", "SERIALIZABLE"])
def test_a_caller_engine_with_another_isolation_level_loses_no_update(
    db_url: str, clock: FakeClock, isolation_level: str
) -> None:
    url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url, isolation_level=isolation_level)
    try:
        with CircuitBreaker(engine, CircuitBreakerConfig(failure_threshold=10_000)) as breaker:

            def fail_25_times() -> None:
                for _ in range(25):
                    breaker.record_failure("k")

            run_in_threads(fail_25_times, 8)
            assert [s.consecutive_failures for s in breaker.status()] == [200]
    finally:
        engine.dispose()


def test_a_sqlite_engine_that_begins_its_own_transactions_is_refused_clearly(
    tmp_path: Any, clock: FakeClock
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'own.db'}")

    @sa.event.listens_for(engine, "connect")
    def autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    try:
        with pytest.raises(InvalidArgumentError, match="BEGIN IMMEDIATE"):
            CircuitBreaker(engine, clock=clock)
    finally:
        engine.dispose()


def test_a_forked_child_opens_its_own_connections(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(TRIP_AT_2)
    breaker.record_failure("k")
    pool = breaker._store.engine.pool
    assert pool.checkedin() == 1  # type: ignore[attr-defined]  # the parent keeps a connection
    pid = os.fork()
    if pid == 0:  # the child: use the inherited breaker, report through the exit code
        code = 1
        try:
            inherited = breaker._store.engine.pool.checkedin()  # type: ignore[attr-defined]
            breaker.record_failure("k", reason="from the child")
            code = 0 if inherited == 0 and breaker.state("k") is CircuitState.OPEN else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert breaker.history("k")[-1].reason == "from the child"  # the parent still works


@pytest.mark.postgres
def test_a_key_first_stored_by_another_writer_mid_transaction_is_reread(
    pg_url: str, clock: FakeClock
) -> None:
    """Both inserts of a new key lose to a rival: the optimistic one, then the locked one."""
    engine = make_engine(pg_url)
    rival = make_engine(pg_url)

    def rival_stores_the_key_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO durable_breaker_circuit") and not stored:
            stored.append(True)
            with CircuitBreaker(rival, TRIP_AT_2, clock=clock, actor="rival") as other:
                other.record_failure("k")

    stored: list[bool] = []
    try:
        with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
            # The optimistic insert finds the key taken (as if the rival had just won)...
            breaker._store._raw.write = lambda change: None  # type: ignore[method-assign]
            # ...and so does the insert under the lock: it must read the rival's row again.
            sa.event.listen(engine, "before_cursor_execute", rival_stores_the_key_first)
            breaker.record_failure("k", reason="second")
            assert stored == [True]
            assert breaker.state("k") is CircuitState.OPEN  # 1 (rival) + 1 (ours) = 2
            [trip] = breaker.history("k")
            assert (trip.consecutive_failures, trip.reason) == (2, "second")
    finally:
        engine.dispose()
        rival.dispose()


def test_reset_returns_the_transition_it_audited(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker(TRIP_AT_2, actor="ops")
    breaker.record_failure("k")
    breaker.record_failure("k")
    done = breaker.reset("k", reason="provider fixed")
    assert done == breaker.history("k")[-1]
    assert (done.from_state, done.to_state, done.reason, done.actor) == (
        CircuitState.OPEN,
        CircuitState.CLOSED,
        "provider fixed",
        "ops",
    )


def test_config_and_namespace_cannot_be_changed_under_a_breaker(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(TRIP_AT_2, namespace="inference")
    with pytest.raises(AttributeError):
        breaker.namespace = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        breaker.config = CircuitBreakerConfig()  # type: ignore[misc]
    assert (breaker.namespace, breaker.config) == ("inference", TRIP_AT_2)


@pytest.mark.postgres
def test_a_row_lock_held_elsewhere_times_out_as_a_busy_store(pg_url: str, clock: FakeClock) -> None:
    url = f"{pg_url}%20-c%20lock_timeout%3D200"  # appended to the schema's options
    config = replace(TRIP_AT_2, on_store_error="raise")
    with CircuitBreaker(url, config, clock=clock) as breaker:
        breaker.record_failure("k")
        holder = make_engine(pg_url)
        try:
            with holder.begin() as connection:
                connection.execute(
                    sa.text("SELECT 1 FROM durable_breaker_circuit WHERE key = 'k' FOR UPDATE")
                )
                with pytest.raises(StoreUnavailableError, match="LockNotAvailable") as busy:
                    breaker.record_failure("k")
                assert not busy.value.unreachable
        finally:
            holder.dispose()
        breaker.record_failure("k")  # the lock is gone: it works again
        assert breaker.state("k") is CircuitState.OPEN


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("stored_failures", "what"),
    [(None, "a new row"), (1, "a count"), (2, "a trip and its audit row")],
)
def test_an_optimistic_write_bounds_its_own_lock_wait(
    pg_url: str, stored_failures: int | None, what: str
) -> None:
    # The optimistic write sends its own timeouts ahead of it (store_timeout, here 0.3 s): a
    # row lock held elsewhere makes it give up as busy, long before the stall watchdog would.
    config = CircuitBreakerConfig(
        failure_threshold=3, on_store_error="raise", store_timeout=timedelta(seconds=0.3)
    )
    holder = make_engine(pg_url)
    try:
        with CircuitBreaker(pg_url, config) as breaker, holder.begin() as connection:
            if stored_failures is None:  # another transaction is inserting the same key
                connection.execute(
                    sa.text(
                        "INSERT INTO durable_breaker_circuit (namespace, key, state, "
                        "consecutive_failures, half_open_probes, version, updated_at) "
                        "VALUES ('default', 'k', 'closed', 0, 0, 1, now())"
                    )
                )
            else:
                for _ in range(stored_failures):
                    breaker.record_failure("k")
                breaker.check("k")  # seen by this thread: the failure is written, not read
                connection.execute(
                    sa.text("SELECT 1 FROM durable_breaker_circuit WHERE key = 'k' FOR UPDATE")
                )
            started = time.monotonic()
            # The lock timeout, or the statement timeout (set to the same): either bound.
            with pytest.raises(
                StoreUnavailableError, match=r"LockNotAvailable|QueryCanceled"
            ) as busy:
                breaker.record_failure("k")
            assert not busy.value.unreachable, what
            assert time.monotonic() - started < 1.2, what  # the watchdog's would be 1.3 s
    finally:
        holder.dispose()


@pytest.mark.postgres
def test_an_optimistic_write_bounds_its_wait_for_a_table_lock_and_never_lands_late(
    pg_url: str,
) -> None:
    # DDL such as CREATE INDEX holds a SHARE lock: reads go on, writes wait for the table.
    config = CircuitBreakerConfig(
        failure_threshold=3, on_store_error="raise", store_timeout=timedelta(seconds=0.3)
    )
    holder = make_engine(pg_url)
    try:
        with CircuitBreaker(pg_url, config) as breaker:
            breaker.record_failure("k")
            with holder.begin() as connection:
                connection.execute(sa.text("LOCK TABLE durable_breaker_circuit IN SHARE MODE"))
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError) as busy:
                    breaker.record_failure("k")
                assert not busy.value.unreachable  # a timeout, not the stall watchdog
                assert time.monotonic() - started < 1.2
            # The lock is gone: the failed write did not wait on the server to land now.
            time.sleep(0.2)
            assert [s.consecutive_failures for s in breaker.status()] == [1]
    finally:
        holder.dispose()


def test_an_sqlite_database_is_left_in_wal_mode(tmp_path: Any) -> None:
    with CircuitBreaker(f"sqlite:///{tmp_path / 'wal.db'}"):
        pass
    with sqlite3.connect(tmp_path / "wal.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_busy_sqlite_file_stays_usable_and_switches_to_wal_later(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "busy.db"
    CircuitBreaker(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA journal_mode=DELETE")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM durable_breaker_circuit").fetchone()  # holds the file
    try:
        with (
            caplog.at_level("WARNING", logger="durable_breaker"),
            CircuitBreaker(f"sqlite:///{path}?timeout=0.1") as breaker,
        ):
            breaker.check("k")  # reads still work
        assert "stays in rollback-journal mode" in caplog.text
    finally:
        reader.close()
    CircuitBreaker(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.postgres
def test_writes_bound_their_lock_wait_and_migrations_do_not(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        with recorded_statements(engine) as statements, CircuitBreaker(engine, TRIP_AT_2) as b:
            b.record_failure("k")  # written on the raw driver: no SQLAlchemy transaction
            b.reset("k")  # a locked transaction
        locks = [
            s
            for s in statements
            if s.startswith(("SELECT pg_catalog.set_config", "SET LOCAL", "SELECT pg_advisory"))
        ]
        bounded = (  # SET LOCAL, for each: in one statement
            "SELECT pg_catalog.set_config('lock_timeout', '5000', true), "
            "pg_catalog.set_config('statement_timeout', '5000', true), "
            "pg_catalog.set_config('idle_in_transaction_session_timeout', '5000', true)"
        )
        assert locks == [
            bounded,  # every write transaction starts bounded...
            "SET LOCAL lock_timeout = 0",  # ...but the migration may wait for another's
            "SET LOCAL statement_timeout = 0",  # and take as long as it needs
            "SELECT pg_advisory_xact_lock(%(key)s)",
            bounded,  # the write may not wait for long
        ]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_store_timeout_bounds_every_wait_on_postgresql(pg_url: str) -> None:
    config = CircuitBreakerConfig(store_timeout=timedelta(seconds=1.5))
    with CircuitBreaker(pg_url, config) as breaker, breaker._store.engine.connect() as connection:
        parameters = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert (parameters["connect_timeout"], parameters["tcp_user_timeout"]) == ("2", "1500")
        assert breaker._store.engine.pool.timeout() == 1.5  # type: ignore[attr-defined]
    with write_transaction(breaker._store.engine) as connection:
        show = "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        assert connection.exec_driver_sql(show).one() == ("1500ms", "1500ms")
        idle = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
        assert idle == "1500ms"


def test_store_timeout_is_sqlites_busy_timeout(tmp_path: Any) -> None:
    config = CircuitBreakerConfig(store_timeout=timedelta(seconds=1.5))
    with (
        CircuitBreaker(f"sqlite:///{tmp_path / 'b.db'}", config) as breaker,
        breaker._store.engine.connect() as connection,
    ):
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1500


@pytest.mark.postgres
def test_timeouts_a_url_sets_are_kept(pg_url: str) -> None:
    url = f"{pg_url}%20-c%20statement_timeout%3D7s&connect_timeout=9"
    with CircuitBreaker(url) as breaker, breaker._store.engine.connect() as connection:
        parameters = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert parameters["connect_timeout"] == "9"
    with write_transaction(breaker._store.engine) as connection:
        show = "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        assert connection.exec_driver_sql(show).one() == ("5s", "7s")


def test_an_sqlite_uri_url_opens_an_existing_database_without_migrating(tmp_path: Any) -> None:
    path = tmp_path / "uri.db"
    CircuitBreaker(f"sqlite:///{path}").close()
    with CircuitBreaker(f"sqlite:///file:{path}?uri=true", migrate=False) as breaker:
        assert breaker.status() == []


def test_a_guarded_call_on_a_healthy_key_reads_each_operation_unless_proved_unchanged(
    make_breaker: BreakerFactory, db_url: str
) -> None:
    """SQLite proves a held row unchanged with PRAGMA data_version: no row read at all.
    PostgreSQL (without the cache) reads for the check and again for the success."""
    breaker = make_breaker(TRIP_AT_2)
    breaker.record_failure("known")
    breaker.record_success("known")
    breaker.check("known")  # read once, and held
    expected = [] if db_url.startswith("sqlite") else ["READ", "READ"]
    for guarded in ("pair", "guard"):
        with recorded_operations(breaker) as operations:
            if guarded == "pair":
                breaker.check("known")
                breaker.record_success("known")
            else:
                with breaker.guard("known"):
                    pass
        assert operations == expected, guarded


@pytest.mark.parametrize("meanwhile", ["failure", "trip"])
def test_a_success_applies_to_what_another_process_stored_after_the_check(
    make_breaker: BreakerFactory, meanwhile: str
) -> None:
    """The seed's breaker, shared: a success applies to the state when it is reported."""
    worker, other = make_breaker(TRIP_AT_2), make_breaker(TRIP_AT_2)
    worker.check("gpt-4o")  # clean, and held
    for _ in range(1 if meanwhile == "failure" else 2):
        other.record_failure("gpt-4o")
    worker.record_success("gpt-4o")
    assert [(s.state, s.consecutive_failures) for s in worker.status()] == [
        (CircuitState.CLOSED, 0)
    ]


def test_a_permits_success_applies_to_what_another_process_stored_after_the_acquire(
    make_breaker: BreakerFactory,
) -> None:
    worker, other = make_breaker(TRIP_AT_2), make_breaker(TRIP_AT_2)
    with worker.guard("gpt-4o"):
        other.record_failure("gpt-4o")  # counted below the threshold: same generation
    assert [s.consecutive_failures for s in other.status()] == [0]
    with worker.guard("gpt-4o"):
        other.record_failure("gpt-4o")
        other.record_failure("gpt-4o")  # a trip: the success is late, audited, not applied
    assert other.state("gpt-4o") is CircuitState.OPEN
    assert other.history("gpt-4o")[-1].reason is not None
    assert "late result" in (other.history("gpt-4o")[-1].reason or "")


def test_a_success_clears_a_failure_another_thread_counted_after_the_check(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=3))
    breaker.check("k")  # this thread: clean
    done = threading.Event()

    def elsewhere() -> None:
        breaker.record_failure("k")
        done.set()

    threading.Thread(target=elsewhere).start()
    assert done.wait(10)
    breaker.record_success("k")
    assert [s.consecutive_failures for s in breaker.status()] == [0]


def test_a_caller_sqlite_engine_with_its_own_pool_is_used_as_it_is(clock: FakeClock) -> None:
    """An in-memory database on one shared connection: only the caller's engine reaches it."""
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    try:
        with CircuitBreaker(engine, TRIP_AT_2, clock=clock) as breaker:
            breaker.check("k")
            breaker.record_failure("k")
            breaker.record_failure("k")
            assert breaker.state("k") is CircuitState.OPEN
            with pytest.raises(CircuitOpenError):
                breaker.check("k")
    finally:
        engine.dispose()


def test_record_success_on_a_closed_breaker_says_so(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(TRIP_AT_2)
    breaker.check("k")
    breaker.close()
    with pytest.raises(DurableBreakerError, match="closed"):
        breaker.record_success("k")


def test_an_interrupted_sqlite_write_leaves_no_lock_behind(tmp_path: Any) -> None:
    path = tmp_path / "b.db"
    with CircuitBreaker(f"sqlite:///{path}", TRIP_AT_2) as breaker:
        breaker.record_failure("k")
        version = breaker._store.read("k").version

        class Interrupts:
            def __conform__(self, protocol: object) -> object:
                raise KeyboardInterrupt  # while the write holds BEGIN IMMEDIATE

        now = datetime.now(UTC)
        change = Change(
            "default",
            "k",
            ("open", 2, 0, now, None, None, 1, 2, 30.0, 1, 30.0, "me"),
            now,
            version,
            (
                *("default", "k", "closed", "open", "failure", now, 2, Interrupts(), "me"),
                *(1, None, None, None, None),
            ),
        )
        with pytest.raises(KeyboardInterrupt):
            breaker._store._raw.write(change)
        other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # would be "database is locked" had it stayed held
        other.execute("ROLLBACK")
        other.close()
        breaker.record_failure("k")  # the breaker's own connection works on
        assert breaker.state("k") is CircuitState.OPEN


def test_sqlite_times_are_written_as_sqlalchemy_writes_them(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    early = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)
    with CircuitBreaker(url, TRIP_AT_2, clock=early.timestamp) as breaker:
        breaker.record_failure("k")  # an optimistic insert on the raw driver
        with breaker._store.engine.begin() as connection:
            text = connection.exec_driver_sql("SELECT updated_at FROM durable_breaker_circuit")
            assert text.scalar() == "0999-01-02 03:04:05.000000"
        assert breaker.history("k") == []
        assert breaker.status()[0].consecutive_failures == 1


def _traced_reads(breaker: CircuitBreaker) -> list[str]:
    """The statements the local view's proofs and this thread's reads run from now on."""
    statements: list[str] = []
    breaker.check("warm-up")  # both connections are open
    rule = breaker._store.view.rule
    assert isinstance(rule, DataVersion) and rule._cursor is not None
    rule._cursor.connection.set_trace_callback(statements.append)
    held = breaker._store._raw._thread_connection()  # type: ignore[union-attr]
    held.connection.set_trace_callback(statements.append)
    return statements


def test_sqlite_rereads_a_row_only_when_another_connection_has_committed(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(hours=1))
    with CircuitBreaker(url, config) as breaker:
        breaker.check("gpt-4o")
        statements = _traced_reads(breaker)
        breaker.check("gpt-4o")  # nothing committed since: no row read
        breaker.record_success("gpt-4o")  # nor for a success that changes nothing
        assert statements == ["PRAGMA data_version"] * 2
        statements.clear()
        # Another process trips it (the CLI, committing through its own connection).
        script = Path(sys.executable).parent / "durable-breaker"
        done = subprocess.run(
            [str(script), "--url", url, "open", "gpt-4o", "--yes", "--new"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        with pytest.raises(CircuitOpenError):
            breaker.check("gpt-4o")
        assert [s.split()[0] for s in statements] == ["PRAGMA", "SELECT"]


def test_sqlite_rereads_a_key_it_wrote_itself(tmp_path: Any) -> None:
    # Its own commit cannot be told from another's: the row it wrote is read again.
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(hours=1))
    with CircuitBreaker(f"sqlite:///{tmp_path / 'b.db'}", config) as breaker:
        breaker.check("gpt-4o")
        breaker.check("gpt-4o")  # answered from what it read
        breaker.record_failure("gpt-4o")  # a trip, written on this thread's connection
        statements = _traced_reads(breaker)
        with pytest.raises(CircuitOpenError):
            breaker.check("gpt-4o")
        assert [s.split()[0] for s in statements] == ["PRAGMA", "SELECT"]


def test_sqlite_stops_asking_for_data_version_while_others_commit_between_most_reads(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with CircuitBreaker(url) as breaker, CircuitBreaker(url) as other:
        breaker.check("gpt-4o")
        statements = _traced_reads(breaker)
        for round_ in range(12):
            other.record_failure(f"other-{round_}")  # another connection commits
            breaker.check("gpt-4o")
        verbs = [s.split()[0] for s in statements]
        # Four checks find data_version changed (a pragma, then the read): then reads only.
        assert verbs == ["PRAGMA", "SELECT"] * 4 + ["SELECT"] * 8


def test_the_local_view_holds_at_most_cached_keys_keys(db_url: str) -> None:
    config = CircuitBreakerConfig(cached_keys=2)
    with CircuitBreaker(db_url, config) as breaker:
        for key in ("a", "b", "c", "d", "e"):
            breaker.check(key)
            breaker.record_failure(key)
        assert len(breaker._store.view) == 2
        assert "e" in breaker._store.view.rows  # the latest are kept


def test_a_circuit_decided_in_process_is_never_committed_by_a_later_write(
    tmp_path: Any,
) -> None:
    """A failure the fallback counted in process (the file was locked) must not ride on the
    next failure's optimistic write: the database's count wins once it answers."""
    path = tmp_path / "b.db"
    config = CircuitBreakerConfig(failure_threshold=3, store_timeout=timedelta(seconds=0.3))
    with CircuitBreaker(f"sqlite:///{path}", config) as breaker:
        breaker.record_failure("k")  # stored: 1
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock too long
        breaker.record_failure("k")  # counted in process only: 2 there
        breaker.record_failure("new")  # a key not stored yet: 1 there
        other.execute("ROLLBACK")
        other.close()
        breaker.record_failure("k")  # stored: 2, not the in-process 3 (a trip)
        breaker.record_failure("new")  # stored: 1, not 2
        assert [(s.key, s.state, s.consecutive_failures) for s in breaker.status()] == [
            ("k", CircuitState.CLOSED, 2),
            ("new", CircuitState.CLOSED, 1),
        ]
        assert breaker.history("k") == []


def test_a_forked_child_proves_nothing_with_its_parents_data_version(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(url, config) as writer:
        writer.disable("k")
        writer.reset("k")  # a Closed row
    breaker = CircuitBreaker(url, config)
    breaker.check("k")
    breaker.check("k")  # held and proved by the parent's watch connection
    pid = os.fork()
    if pid == 0:  # the child: its own watch connection numbers from the start again
        code = 1
        try:
            with CircuitBreaker(url, config) as other:
                other.record_failure("k")  # trips it
            try:
                breaker.check("k")
                code = 2  # admitted on the parent's stale row
            except CircuitOpenError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    breaker.close()
    assert os.waitstatus_to_exitcode(status) == 0
