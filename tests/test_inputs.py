"""Bad configuration and input get a clear DurableBreakerError naming the problem."""

from __future__ import annotations

import asyncio
import io
import pickle
import typing
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from durable_breaker import (
    AsyncCircuitBreaker,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    DurableBreakerError,
    InvalidArgumentError,
    KeyStatus,
    StoreError,
    StoreUnavailableError,
    Transition,
)
from durable_breaker._cli import run

from .conftest import BreakerFactory


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", 2.5),
        ("failure_threshold", True),
        ("half_open_max", 0),
        ("cooldown", timedelta(seconds=-1)),
        ("cooldown", 30),
        ("cooldown", None),
        ("probe_timeout", timedelta(microseconds=-1)),
        ("probe_timeout", 30.0),
        ("cooldown", timedelta.max),  # would overflow the cooldown's end
        ("max_retry_after", timedelta(days=3661)),
        ("store_timeout", timedelta(days=30)),  # would overflow libpq's tcp_user_timeout
        ("is_failure", "503"),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as raised:
        CircuitBreakerConfig(**{field: value})  # type: ignore[arg-type]
    assert isinstance(raised.value, DurableBreakerError)


def test_config_is_frozen_and_keyword_only() -> None:
    config = CircuitBreakerConfig(probe_timeout=None)
    with pytest.raises(AttributeError):
        config.failure_threshold = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        CircuitBreakerConfig(3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "not a database URL"),
        ("mysql://u@h/db", "supports SQLite and PostgreSQL, not 'mysql'"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("postgresql+asyncpg://u@h/db", "psycopg 3"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        CircuitBreaker(url)


def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    url = "postgresql://admin:s3cret@127.0.0.1:1/db?connect_timeout=1"
    with pytest.raises(StoreError) as raised:
        CircuitBreaker(url)
    assert "127.0.0.1:1" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_an_sqlite_path_in_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unable to open database file"):
        CircuitBreaker(f"sqlite:///{tmp_path}/no/such/folder/b.db")


def _key_operations(breaker: CircuitBreaker) -> dict[str, Callable[[Any], object]]:
    """Every public way a key reaches the sync breaker."""

    def guarded(key: Any) -> None:
        with breaker.guard(key):
            pass

    def guarded_async(key: Any) -> None:
        async def call() -> None:
            async with breaker.guard_async(key):
                pass

        asyncio.run(call())

    def protected(key: Any) -> None:
        breaker.protect(key=lambda: key)(lambda: None)()

    def protected_async(key: Any) -> None:
        async def call() -> None:
            pass

        asyncio.run(breaker.protect(key=lambda: key)(call)())

    return {
        "check": breaker.check,
        "acquire": breaker.acquire,
        "guard": guarded,
        "guard_async": guarded_async,
        "protect": protected,
        "protect_async": protected_async,
        "record_success": breaker.record_success,
        "record_failure": breaker.record_failure,
        "is_available": breaker.is_available,
        "state": breaker.state,
        "history": breaker.history,
        "reset": breaker.reset,
        "force_open": breaker.force_open,
        "disable": breaker.disable,
        "follow": lambda key: next(iter(breaker.follow(key))),
    }


BAD_KEYS = [
    ("", "1 to 500 characters"),
    ("x" * 501, "1 to 500 characters"),
    ("a\x00b", "without NUL"),
    ("\udc80", "valid text"),
    (None, "key must be a str, got NoneType"),
    (42, "key must be a str, got int"),
    (b"gpt-4o", "key must be a str, got bytes"),
    (("gpt-4o",), "key must be a str, got tuple"),
]


class NoIO:
    """Stands in for a breaker's store: any use of it is a test failure."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name in ("engine", "view", "namespace", "timeout_s"):
            return getattr(self._real, name)
        raise AssertionError(f"the store was used ({name}) before the key was checked")


@pytest.mark.parametrize(("key", "message"), BAD_KEYS)
def test_bad_keys_are_refused_before_touching_the_database(
    make_breaker: BreakerFactory, key: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = make_breaker()
    breaker.check("known")  # a held key too: the hot path must not skip the check
    statements: list[str] = []
    sa.event.listen(
        breaker._store.engine, "before_cursor_execute", lambda *a: statements.append(a[2])
    )
    monkeypatch.setattr(breaker, "_store", NoIO(breaker._store))
    for name, operation in _key_operations(breaker).items():
        if key is None and name == "follow":
            continue  # follow(None) follows every key
        with pytest.raises(InvalidArgumentError, match=message):
            operation(key)
    assert statements == []


@pytest.mark.parametrize(("key", "message"), BAD_KEYS)
def test_the_async_breaker_refuses_bad_keys_before_touching_the_database(
    db_url: str, key: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with AsyncCircuitBreaker(db_url) as breaker:
            monkeypatch.setattr(breaker, "_store", NoIO(breaker._store))

            async def guarded(key: Any) -> None:
                async with breaker.guard(key):
                    pass

            async def protected(key: Any) -> None:
                async def call() -> None:
                    pass

                await breaker.protect(key=lambda: key)(call)()

            operations: list[Callable[[Any], Any]] = [
                breaker.check,
                breaker.acquire,
                guarded,
                protected,
                breaker.record_success,
                breaker.record_failure,
                breaker.is_available,
                breaker.state,
                breaker.history,
                breaker.reset,
                breaker.force_open,
                breaker.disable,
            ]
            for operation in operations:
                with pytest.raises(InvalidArgumentError, match=message):
                    await operation(key)

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["fallback", "allow", "deny", "raise"])
def test_a_bad_key_is_refused_during_an_outage_too(
    make_breaker: BreakerFactory, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(on_store_error=mode))  # type: ignore[arg-type]
    breaker._outage.failed(StoreUnavailableError("simulated"))  # an outage has begun
    for name, operation in _key_operations(breaker).items():
        if name != "follow":
            with pytest.raises(InvalidArgumentError, match="key must be a str"):
                operation(None)


@pytest.mark.parametrize(
    "argv",
    [
        ["reset", "", "--yes"],
        ["open", "", "--yes"],
        ["disable", "x" * 501, "--yes"],
        ["history", "\udcff"],  # undecodable bytes in argv arrive as lone surrogates
    ],
)
def test_the_cli_refuses_bad_keys_in_one_line(tmp_path: Path, argv: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    CircuitBreaker(url).close()
    out, err = io.StringIO(), io.StringIO()
    assert run(["--url", url, *argv], out, err) == 1
    assert err.getvalue().startswith("durable-breaker: error: key must be")
    assert err.getvalue().count("\n") == 1


def test_the_longest_allowed_key_round_trips(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    key = "模" * 500
    breaker.record_failure(key)
    assert breaker.history(key)[0].key == key


@pytest.mark.parametrize("limit", [-1, 1.5, "3", True, 2**63])
def test_bad_history_limit_is_refused(make_breaker: BreakerFactory, limit: object) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        make_breaker().history("k", limit)  # type: ignore[arg-type]


def test_bad_namespace_and_config_are_refused(db_url: str) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        CircuitBreaker(db_url, namespace="")
    with pytest.raises(InvalidArgumentError, match="config must be a CircuitBreakerConfig"):
        CircuitBreaker(db_url, {"failure_threshold": 3})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="clock must be a callable"):
        CircuitBreaker(db_url, clock=1_700_000_000.0)  # type: ignore[arg-type]


def test_a_closed_breaker_says_so(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    breaker.close()
    for operation in _key_operations(breaker).values():
        with pytest.raises(DurableBreakerError, match="closed"):
            operation("k")
    with pytest.raises(DurableBreakerError, match="closed"):
        breaker.status()


@given(key=st.text(min_size=0, max_size=520))
def test_any_text_key_round_trips_or_is_refused_clearly(
    make_breaker: BreakerFactory, key: str
) -> None:
    with make_breaker(CircuitBreakerConfig(failure_threshold=1), namespace=uuid.uuid4().hex) as b:
        try:
            b.record_failure(key, reason=key or None)
        except InvalidArgumentError:
            return
        [trip] = b.history(key)
        assert trip.key == key and trip.reason == (key or None)
        assert [s.key for s in b.status()] == [key]


@pytest.mark.parametrize("reason", ["a\x00b", "\udc80", 503])
def test_an_unstorable_reason_is_refused_and_nothing_is_recorded(
    make_breaker: BreakerFactory, reason: Any
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    with pytest.raises(InvalidArgumentError, match="reason"):
        breaker.record_failure("k", reason=reason)
    assert breaker.status() == []


def test_circuit_open_error_survives_pickling_between_processes() -> None:
    error = CircuitOpenError("gpt-4o", CircuitState.OPEN, 12.5)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.state, copy.retry_after, str(copy)) == (
        "gpt-4o",
        CircuitState.OPEN,
        12.5,
        "circuit breaker open for model gpt-4o",
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@host:abc/db",
        "postgresql://u:s3cret@[::1/db",
        "postgres ql://u:s3cret@h/db",
        "sqlite:///x.db?timeout=abc",
    ],
)
def test_malformed_urls_are_refused_without_echoing_a_password(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        CircuitBreaker(url)
    assert "s3cret" not in str(raised.value)


def test_a_password_in_the_url_query_is_masked_in_errors() -> None:
    url = "postgresql://admin@127.0.0.1:1/db?password=s3cret&connect_timeout=1"
    with pytest.raises(StoreError) as raised:
        CircuitBreaker(url)
    assert "s3cret" not in str(raised.value) and "127.0.0.1:1" in str(raised.value)


@pytest.mark.parametrize("reading", [float("nan"), None, "soon", 1e20])
def test_a_clock_that_returns_no_time_is_named(make_breaker: BreakerFactory, reading: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="the clock returned"):
        make_breaker(clock=lambda: reading)  # refused at once
    readings = iter([0.0, 0.0])  # at construction, and for the first failure
    breaker = make_breaker(clock=lambda: next(readings, reading))  # goes bad later
    breaker.record_failure("k")
    with pytest.raises(InvalidArgumentError, match="the clock returned"):
        breaker.record_failure("k")


def test_the_longest_namespace_and_key_in_four_byte_characters_fit(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1), namespace="🔥" * 100)
    key = "🧠" * 500
    breaker.record_failure(key)
    assert breaker.history(key)[0].key == key
    with pytest.raises(InvalidArgumentError, match="namespace"):
        make_breaker(namespace="🔥" * 101)


def test_the_repr_names_the_database_without_its_password(db_url: str) -> None:
    url = db_url.replace("postgres@", "postgres:s3cret@", 1)  # trust auth ignores it
    breaker = CircuitBreaker(url, namespace="inference")
    assert "s3cret" not in repr(breaker) and "namespace='inference'" in repr(breaker)
    breaker.close()
    assert repr(breaker).endswith(", closed)")


def test_public_types_can_be_introspected() -> None:
    for cls in (CircuitBreakerConfig, Transition, KeyStatus):
        assert typing.get_type_hints(cls)  # pydantic, cattrs and friends rely on this


NASTY_KEYS = [
    "it's",
    'say "hi"',
    "a;b",
    "'; DROP TABLE durable_breaker_circuit; --",
    "x' OR '1'='1",
    "tab\tnew\nline\rbell\x07esc\x1b",
    "🔥gpt-4o🚀",
    "%_\\",
    "$1 ?",
]


@pytest.mark.parametrize("key", NASTY_KEYS)
def test_hostile_keys_round_trip_exactly_through_bound_parameters(
    make_breaker: BreakerFactory, key: str
) -> None:
    breaker = make_breaker(CircuitBreakerConfig(failure_threshold=1))
    statements: list[str] = []
    sa.event.listen(
        breaker._store.engine,
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_: statements.append(statement),
    )
    breaker.record_failure(key, reason=key)
    [trip] = breaker.history(key)
    assert (trip.key, trip.reason) == (key, key)
    assert [s.key for s in breaker.status()] == [key]
    assert breaker.state(key) is CircuitState.OPEN
    assert statements and not any(key in statement for statement in statements)
