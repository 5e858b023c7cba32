"""Shared fixtures: one database per test on every backend, a fake clock, leak checks."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from durable_breaker import CircuitBreaker, CircuitBreakerConfig

from .processes import run_in_processes

__all__ = ["run_in_processes"]  # re-exported for the tests

POSTGRES_URL = os.environ.get("DURABLE_BREAKER_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

# "ci" keeps the whole suite well inside CI's budget; "dev" (the default) explores more.
_SLOW_BY_DESIGN = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile(
    "ci",
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=_SLOW_BY_DESIGN,
)
settings.register_profile(
    "dev",
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=_SLOW_BY_DESIGN,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


class FakeClock:
    """A clock the tests move by hand: POSIX seconds, starting at a fixed instant.

    It counts whole microseconds, so a run of advances lands exactly where their sum
    says (summed floats drift by a microsecond now and then, and cooldown boundaries
    are compared to the microsecond).
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    @property
    def now(self) -> float:
        return self._micros / 1_000_000

    @now.setter
    def now(self, seconds: float) -> None:
        self._micros = round(seconds * 1_000_000)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self._micros += round(seconds * 1_000_000)


def run_in_threads(target: Callable[[], object], count: int) -> None:
    """Run `target` in `count` threads released at once; re-raise the first error any raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            target()
        except BaseException as error:  # handed to the test below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL test server; skipped when not configured, an error in CI when down."""
    if not POSTGRES_URL:
        if IN_CI:
            pytest.fail("CI=true but DURABLE_BREAKER_TEST_POSTGRES_URL is not set")
        pytest.skip("set DURABLE_BREAKER_TEST_POSTGRES_URL to run the PostgreSQL tests")
    engine = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        message = f"PostgreSQL at DURABLE_BREAKER_TEST_POSTGRES_URL is unreachable: {error}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    finally:
        engine.dispose()
    return POSTGRES_URL


def postgres_schema_url(admin_url: str) -> Iterator[str]:
    """A fresh schema on the test server, dropped afterwards; its URL selects it."""
    schema = f"db_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in admin_url else "?"
        yield f"{admin_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url(postgres_admin_url: str) -> Iterator[str]:
    """An empty PostgreSQL schema (for tests that only make sense on PostgreSQL)."""
    yield from postgres_schema_url(postgres_admin_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'breaker.db'}"
        return
    yield from postgres_schema_url(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BreakerFactory = Callable[..., CircuitBreaker]


@pytest.fixture
def make_breaker(db_url: str, clock: FakeClock) -> Iterator[BreakerFactory]:
    """Build breakers on the test database; afterwards assert none leaked a connection."""
    made: list[CircuitBreaker] = []

    def make(config: CircuitBreakerConfig | None = None, **kwargs: Any) -> CircuitBreaker:
        kwargs.setdefault("clock", clock)
        breaker = CircuitBreaker(kwargs.pop("url", db_url), config, **kwargs)
        made.append(breaker)
        return breaker

    yield make
    for breaker in made:
        pool = breaker._store.engine.pool
        checked_out = pool.checkedout() if isinstance(pool, sa.pool.QueuePool) else 0
        breaker.close()
        assert checked_out == 0, "a pooled connection was not returned"
