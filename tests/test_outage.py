"""When the database goes away or is locked: each on_store_error mode, and recovery."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from durable_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    StoreUnavailableError,
    _outage,
)

from .conftest import FakeClock, postgres_schema_url, run_in_threads
from .tcp_proxy import TcpProxy

RECHECK_S = 0.2
PASSWORD = "s3cret-pw"


@pytest.fixture(autouse=True)
def fast_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry the database after 0.2 s instead of 1 s, to keep the tests short."""
    monkeypatch.setattr(_outage, "RECHECK_INTERVAL_S", RECHECK_S)


def _config(mode: str) -> CircuitBreakerConfig:
    return CircuitBreakerConfig(
        failure_threshold=2,
        cooldown=timedelta(seconds=60),
        on_store_error=mode,  # type: ignore[arg-type]
        store_timeout=timedelta(seconds=1),
    )


@pytest.fixture
def proxy(postgres_admin_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A fresh PostgreSQL schema reached through a TCP proxy the test can cut."""
    schema = postgres_schema_url(postgres_admin_url)
    direct = sa.make_url(next(schema))
    tcp_proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    try:
        # Trust authentication ignores the password: it is here to be kept out of messages.
        proxied = direct.set(host="127.0.0.1", port=tcp_proxy.port, password=PASSWORD)
        yield tcp_proxy, proxied.render_as_string(hide_password=False)
    finally:
        tcp_proxy.close()
        next(schema, None)  # drops the schema


def _trip(breaker: CircuitBreaker, key: str) -> None:
    breaker.record_failure(key)
    breaker.record_failure(key)


def _outage_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "durable_breaker"]


@pytest.mark.postgres
def test_fallback_decides_in_process_and_the_database_wins_when_it_returns(
    proxy: tuple[TcpProxy, str], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tcp_proxy, url = proxy
    caplog.set_level(logging.WARNING, logger="durable_breaker")
    with CircuitBreaker(url, _config("fallback"), clock=clock) as breaker:
        _trip(breaker, "tripped")
        breaker.check("healthy")
        tcp_proxy.cut()
        attempts_before = tcp_proxy.accepted

        breaker.check("healthy")  # last seen Closed: admitted
        with pytest.raises(CircuitOpenError) as rejected:
            breaker.check("tripped")  # last seen Open: rejected with its real retry-after
        assert rejected.value.retry_after == 60
        breaker.check("never-seen")  # nothing known: a new, closed circuit
        _trip(breaker, "healthy")  # counted in process: trips there
        assert not breaker.is_available("healthy")
        for _ in range(50):  # an outage costs no connection attempt per call
            breaker.check("never-seen")
        assert tcp_proxy.accepted - attempts_before <= 3
        with pytest.raises(StoreUnavailableError):
            breaker.state("healthy")  # reading the stored state has nothing to fall back on

        tcp_proxy.restore()
        time.sleep(RECHECK_S * 1.5)
        breaker.check("healthy")  # the database's Closed wins: the in-process trip is gone
        assert breaker.history("healthy") == []
        with pytest.raises(CircuitOpenError):
            breaker.check("tripped")
    messages = _outage_messages(caplog)
    assert len(messages) == 2, messages
    assert not any(PASSWORD in message for message in messages)
    assert PASSWORD not in repr(breaker)
    assert messages[0].startswith("database unavailable, on_store_error='fallback'")
    assert "answers again after" in messages[1]


@pytest.mark.postgres
def test_allow_admits_every_call_during_an_outage(
    proxy: tuple[TcpProxy, str], clock: FakeClock
) -> None:
    tcp_proxy, url = proxy
    with CircuitBreaker(url, _config("allow"), clock=clock) as breaker:
        _trip(breaker, "tripped")
        tcp_proxy.cut()
        breaker.check("tripped")
        assert breaker.is_available("tripped")
        breaker.record_failure("other")  # nothing to record it in: dropped, no error
        breaker.record_success("tripped")
        tcp_proxy.restore()
        time.sleep(RECHECK_S * 1.5)
        with pytest.raises(CircuitOpenError):
            breaker.check("tripped")  # the outage changed nothing stored
        assert breaker.state("other") is CircuitState.CLOSED


@pytest.mark.postgres
def test_deny_rejects_every_call_during_an_outage(
    proxy: tuple[TcpProxy, str], clock: FakeClock
) -> None:
    tcp_proxy, url = proxy
    with CircuitBreaker(url, _config("deny"), clock=clock) as breaker:
        breaker.check("healthy")
        tcp_proxy.cut()
        with pytest.raises(CircuitOpenError) as rejected:
            breaker.check("healthy")
        assert isinstance(rejected.value.__cause__, StoreUnavailableError)
        assert rejected.value.retry_after is None
        assert not breaker.is_available("healthy")
        breaker.record_success("healthy")  # dropped, no error
        tcp_proxy.restore()
        time.sleep(RECHECK_S * 1.5)
        breaker.check("healthy")


@pytest.mark.postgres
def test_raise_raises_store_unavailable_not_circuit_open(
    proxy: tuple[TcpProxy, str], clock: FakeClock
) -> None:
    tcp_proxy, url = proxy
    with CircuitBreaker(url, _config("raise"), clock=clock) as breaker:
        breaker.check("healthy")
        tcp_proxy.cut()
        for operation in (breaker.check, breaker.record_failure, breaker.is_available):
            with pytest.raises(StoreUnavailableError) as raised:
                operation("healthy")
            assert not isinstance(raised.value, CircuitOpenError)
            assert PASSWORD not in str(raised.value) and "***" in str(raised.value)
            assert raised.value.unreachable
        tcp_proxy.restore()
        time.sleep(RECHECK_S * 1.5)
        breaker.record_failure("healthy")
        assert breaker.history("healthy") == []  # one failure below the threshold
        _trip(breaker, "healthy")
        assert breaker.state("healthy") is CircuitState.OPEN


@pytest.mark.postgres
def test_a_connection_the_server_dropped_is_replaced_on_the_next_call(
    pg_url: str, postgres_admin_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{pg_url}&application_name=db_test_victim"
    admin = sa.create_engine(postgres_admin_url.replace("postgresql://", "postgresql+psycopg://"))
    caplog.set_level(logging.INFO, logger="durable_breaker")
    try:
        with CircuitBreaker(url, _config("raise"), clock=clock) as breaker:
            breaker.record_failure("k")  # pools a connection
            caplog.clear()
            with admin.begin() as connection:
                killed = connection.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'db_test_victim'"
                    )
                ).scalar_one()
            assert killed >= 1
            # pg_terminate_backend only signals: wait until the sessions have ended (and sent
            # their goodbye), so that the connections are dropped, not dropping mid-write
            # (a write a connection drops under is ambiguous, and said so: another test).
            deadline = time.monotonic() + 10
            while _sessions(admin, "db_test_victim") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _sessions(admin, "db_test_victim") == 0
            breaker.record_failure("k")  # no error: retried at once on a new connection
            assert breaker.state("k") is CircuitState.OPEN
    finally:
        admin.dispose()
    assert _outage_messages(caplog) == []


def _sessions(admin: sa.Engine, application_name: str) -> int:
    with admin.connect() as connection:
        count: int = connection.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        ).scalar_one()
    return count


@pytest.fixture
def locked_sqlite(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """An SQLite database and a function that locks it from another process until released."""
    path = tmp_path / "locked.db"
    holders: list[subprocess.Popen[str]] = []

    def lock() -> subprocess.Popen[str]:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        return holder

    yield f"sqlite:///{path}", lock
    for holder in holders:
        holder.kill()
        holder.wait()


_HOLD_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("mode", ["fallback", "allow", "deny", "raise"])
def test_an_sqlite_file_locked_by_another_process(
    locked_sqlite: tuple[str, Any], clock: FakeClock, mode: str
) -> None:
    url, lock = locked_sqlite
    config = _config(mode)
    with CircuitBreaker(url, config, clock=clock) as breaker:
        breaker.record_failure("k")
        holder = lock()
        # WAL readers never wait for a writer: decisions still come from the database.
        breaker.check("k")
        if mode == "raise":
            with pytest.raises(StoreUnavailableError, match="database is locked") as raised:
                breaker.record_failure("k")
            assert not raised.value.unreachable  # it answered; it is busy, not gone
        else:
            breaker.record_failure("k")  # waits store_timeout, then cannot store it
        holder.stdin.close()
        holder.wait()
        breaker.check("k")  # the failure made while locked was not stored: still closed
        breaker.record_failure("k")
        assert breaker.state("k") is CircuitState.OPEN


@pytest.mark.postgres
def test_fallback_remembers_at_most_cached_keys_least_recently_used_first(
    proxy: tuple[TcpProxy, str], clock: FakeClock
) -> None:
    tcp_proxy, url = proxy
    config = replace(_config("fallback"), cached_keys=2)
    with CircuitBreaker(url, config, clock=clock) as breaker:
        _trip(breaker, "a")
        _trip(breaker, "b")
        with pytest.raises(CircuitOpenError):
            breaker.check("a")  # "a" is now used more recently than "b"
        _trip(breaker, "c")  # a third key: "b", the least recently used, is forgotten
        tcp_proxy.cut()
        for remembered in ("a", "c"):
            with pytest.raises(CircuitOpenError):
                breaker.check(remembered)
        breaker.check("b")  # forgotten: decided as a new, closed circuit


@pytest.mark.postgres
def test_a_server_that_stops_answering_does_not_hang_the_caller(
    proxy: tuple[TcpProxy, str], clock: FakeClock
) -> None:
    """Bytes are accepted and never answered: only the client-side watchdog can end the wait."""
    tcp_proxy, url = proxy
    with CircuitBreaker(url, _config("fallback"), clock=clock) as breaker:
        _trip(breaker, "tripped")
        tcp_proxy.freeze()
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                breaker.check("tripped")
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=30)  # far above the bound (store_timeout + 1 s + a reconnect)
        assert not caller.is_alive(), "check() hung on a server that stopped answering"
        assert len(outcome) == 1 and isinstance(outcome[0], CircuitOpenError)  # from memory
        tcp_proxy.restore()
        time.sleep(RECHECK_S * 1.5)
        with pytest.raises(CircuitOpenError):
            breaker.check("tripped")
        assert breaker.state("tripped") is CircuitState.OPEN  # the database answers again


@pytest.mark.postgres
def test_threads_sharing_a_breaker_ride_out_one_outage_together(
    proxy: tuple[TcpProxy, str], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tcp_proxy, url = proxy
    caplog.set_level(logging.WARNING, logger="durable_breaker")
    with CircuitBreaker(url, _config("fallback"), clock=clock) as breaker:
        for key in ("a", "b", "c"):
            breaker.check(key)
        tcp_proxy.cut()

        def hammer() -> None:
            for i in range(300):
                key = "abc"[i % 3]
                try:
                    breaker.check(key)
                except CircuitOpenError:
                    continue
                (breaker.record_failure if i % 2 else breaker.record_success)(key)

        run_in_threads(hammer, 8)  # re-raises any error a thread met
        tcp_proxy.restore()
        time.sleep(RECHECK_S * 1.5)
        for key in ("a", "b", "c"):
            breaker.check(key)  # the database's Closed again
    messages = _outage_messages(caplog)
    assert len(messages) == 2, messages  # one outage, begun and ended once
    assert "answers again after" in messages[1]
