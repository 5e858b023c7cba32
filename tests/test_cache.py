"""The opt-in read cache on PostgreSQL (the local view's `Notifications` rule): what it
answers from memory, what it never does, and how it learns of changes made elsewhere."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from durable_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    InvalidArgumentError,
)
from durable_breaker._view import Notifications

from .conftest import FakeClock

pytestmark = pytest.mark.postgres
LISTENER = f"db_test_cache_{uuid.uuid4().hex[:8]}"
CONFIG = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(seconds=30))


def listener(breaker: CircuitBreaker) -> Notifications:
    rule = breaker._store.view.rule
    assert isinstance(rule, Notifications)
    return rule


def proved(breaker: CircuitBreaker, key: str) -> bool:
    """Whether the cache would answer for `key` without reading it."""
    view = breaker._store.view
    return view.current(key, view.rule.proof()) is not None


def eventually(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def cached(
    pg_url: str, clock: FakeClock
) -> Iterator[tuple[CircuitBreaker, CircuitBreaker, list[str]]]:
    """A breaker with the cache on (and listening), another without, and a log of the reads
    and writes the cached one made."""
    # Notifications go to the whole database: a namespace and a listener name of its own keep
    # other test runs on the same server out of this test's counts.
    namespace = f"cache-{uuid.uuid4().hex[:8]}"
    url = f"{pg_url}&application_name={LISTENER}"
    other = CircuitBreaker(pg_url, CONFIG, clock=clock, namespace=namespace)
    breaker = CircuitBreaker(url, CONFIG, clock=clock, cache=True, namespace=namespace)
    assert eventually(lambda: listener(breaker).listening)
    operations: list[str] = []
    load = breaker._store._raw.load

    def counted(namespace: str, key: str) -> Any:
        operations.append("READ")
        return load(namespace, key)

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        operations.append(statement.split()[0].upper())

    write = breaker._store._raw.write

    def written(change: Any) -> Any:
        operations.append("WRITE")
        return write(change)

    breaker._store._raw.load = counted  # type: ignore[method-assign]
    breaker._store._raw.write = written  # type: ignore[method-assign]
    sa.event.listen(breaker._store.engine, "before_cursor_execute", record)
    yield breaker, other, operations
    breaker.close()
    other.close()


def test_closed_and_open_keys_are_answered_without_the_database(
    cached: tuple[CircuitBreaker, CircuitBreaker, list[str]], clock: FakeClock
) -> None:
    breaker, other, operations = cached
    heard: list[str] = []
    listener(breaker).on_change = heard.append
    other.record_failure("tripped")
    assert eventually(lambda: heard == ["tripped"])  # its notification has arrived
    for key in ("healthy", "tripped"):
        for _ in range(2):  # the first reads and fills, the second is answered from memory
            try:
                breaker.check(key)
            except CircuitOpenError as error:
                assert (error.state, error.retry_after) == (CircuitState.OPEN, 30)
    assert operations == ["READ", "READ"]
    breaker.check("healthy")
    breaker.record_success("healthy")  # cached as clean: nothing to write
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.check("tripped")
    assert rejected.value.retry_after == 20
    assert operations == ["READ", "READ"]


def test_a_change_made_elsewhere_reaches_the_cache(
    cached: tuple[CircuitBreaker, CircuitBreaker, list[str]],
) -> None:
    breaker, other, _ = cached
    breaker.check("gpt-4o")  # cached: admit
    other.record_failure("gpt-4o")  # another process trips it

    def rejected() -> bool:
        try:
            breaker.check("gpt-4o")
        except CircuitOpenError:
            return True
        return False

    assert eventually(rejected, seconds=5)


def test_the_cache_never_admits_a_probe(
    cached: tuple[CircuitBreaker, CircuitBreaker, list[str]], clock: FakeClock
) -> None:
    breaker, other, operations = cached
    other.record_failure("gpt-4o")
    with pytest.raises(CircuitOpenError):
        breaker.check("gpt-4o")  # may be cached: reject until the cooldown ends
    clock.advance(30)
    breaker.check("gpt-4o")  # past the cooldown: the probe is admitted by the database
    assert "WRITE" in operations
    assert other.state("gpt-4o") is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        other.check("gpt-4o")  # the only probe is taken: the database knows


def test_a_lost_listener_turns_the_cache_off_until_it_listens_again(
    cached: tuple[CircuitBreaker, CircuitBreaker, list[str]], postgres_admin_url: str
) -> None:
    breaker, _, operations = cached
    cache = listener(breaker)
    breaker.check("gpt-4o")
    admin = sa.create_engine(postgres_admin_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as connection:
        connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": f"{LISTENER} cache"},
        )
    admin.dispose()
    assert eventually(lambda: not cache.listening, seconds=5)
    operations.clear()
    breaker.check("gpt-4o")
    assert operations == ["READ"]  # off: the database answers
    assert eventually(lambda: cache.listening, seconds=10)  # listening again
    assert not proved(breaker, "gpt-4o")  # nothing from before the loss counts


def test_the_cache_needs_postgresql(tmp_path: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="cache=True needs PostgreSQL"):
        CircuitBreaker(f"sqlite:///{tmp_path / 'b.db'}", cache=True)


def test_this_breakers_own_writes_drop_its_answers_at_once(
    cached: tuple[CircuitBreaker, CircuitBreaker, list[str]],
) -> None:
    breaker, _, _ = cached
    breaker.check("gpt-4o")  # cached: admit, and a success would change nothing
    breaker.check("gpt-4o")
    breaker.record_failure("gpt-4o")  # threshold 1: a trip, by this very breaker
    with pytest.raises(CircuitOpenError):
        breaker.check("gpt-4o")  # not the stale "admit", whatever the notification's timing


def test_a_success_after_a_failure_is_not_skipped(pg_url: str, clock: FakeClock) -> None:
    config = CircuitBreakerConfig(failure_threshold=3)
    with CircuitBreaker(pg_url, config, clock=clock, cache=True) as breaker:
        assert eventually(lambda: listener(breaker).listening)
        for _ in range(20):
            breaker.check("gpt-4o")
            breaker.check("gpt-4o")
            breaker.record_failure("gpt-4o")
            breaker.record_success("gpt-4o")  # clears the failure: never skipped
            assert [s.consecutive_failures for s in breaker.status()] == [0]


def test_a_guarded_call_on_a_cached_healthy_key_runs_no_statement_and_a_late_one_is_fenced(
    cached: tuple[CircuitBreaker, CircuitBreaker, list[str]],
) -> None:
    breaker, other, operations = cached
    breaker.check("k")  # fills the cache
    operations.clear()
    with breaker.guard("k"):
        pass
    assert operations == []
    slow = breaker.acquire("k")
    for _ in range(CONFIG.failure_threshold):
        other.record_failure("k")
    assert eventually(lambda: not proved(breaker, "k"))
    slow.succeeded()  # admitted before the trip: read, found late, audited, not applied
    assert "READ" in operations
    assert breaker.state("k") is CircuitState.OPEN


def test_a_read_in_flight_never_hides_this_processes_own_write(
    pg_url: str, clock: FakeClock
) -> None:
    """Thread A reads the row while thread B's trip is being written; B's notification is
    slow. A's older row must not be held as current over B's own write."""
    with CircuitBreaker(pg_url, CONFIG, clock=clock, cache=True) as breaker:
        breaker.disable("k")
        breaker.reset("k")  # a Closed row
        rule = listener(breaker)
        assert eventually(lambda: rule.listening)
        view, raw = breaker._store.view, breaker._store._raw

        class SlowNotifications:  # the trip's own notification arrives late
            def unmark(self, key: str) -> None:
                time.sleep(0.5)
                view.unmark(key)

            def unmark_all(self) -> None:
                view.unmark_all()

        rule.view = SlowNotifications()  # type: ignore[assignment]
        writing, read, written = threading.Event(), threading.Event(), threading.Event()
        real_write, real_load = raw.write, raw.load

        def write(change: Any) -> Any:  # B: after announcing the write, before sending it
            writing.set()
            read.wait(5)
            return real_write(change)

        def load(namespace: str, key: str) -> Any:  # A: the row before the trip...
            row = real_load(namespace, key)
            read.set()
            written.wait(5)  # ...held only after the trip was stored
            return row

        def reader() -> None:
            writing.wait(5)
            breaker.state("k")

        raw.write = write  # type: ignore[method-assign]
        raw.load = load  # type: ignore[method-assign]
        thread = threading.Thread(target=reader)
        thread.start()
        breaker.record_failure("k")  # B trips it (threshold 1)
        written.set()
        thread.join()
        raw.write, raw.load = real_write, real_load  # type: ignore[method-assign]
        with pytest.raises(CircuitOpenError):
            breaker.check("k")
