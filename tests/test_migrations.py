"""Alembic migrations: one head, up and down, equal to the declared schema, safe first use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import durable_breaker
from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, SchemaError
from durable_breaker import _migrations as migrations
from durable_breaker._engine import make_engine
from durable_breaker._tables import VERSION_TABLE, circuits, metadata

from .conftest import run_in_processes, run_in_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_there_is_exactly_one_head() -> None:
    assert len(ScriptDirectory.from_config(migrations.alembic_config()).get_heads()) == 1


def test_the_shipped_migrations_are_found_inside_an_installed_package() -> None:
    location = migrations.script_location()
    assert (location / "versions" / "0001_initial.py").is_file()
    package = Path(durable_breaker.__file__).parent
    if not (package.parents[1] / "migrations").is_dir():  # installed from a wheel, not a checkout
        assert location == package / "migrations"


def test_upgrade_from_empty_builds_exactly_the_declared_schema(engine: sa.Engine) -> None:
    before, after = migrations.upgrade(engine)
    assert (before, after) == (None, migrations.head())
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(context, metadata) == []
    assert _tables(engine) == set(metadata.tables) | {VERSION_TABLE}


def test_downgrade_to_base_and_upgrade_again(engine: sa.Engine) -> None:
    migrations.upgrade(engine)
    with engine.begin() as connection:
        command.downgrade(migrations.alembic_config(connection), "base")
    assert _tables(engine) & set(metadata.tables) == set()
    assert migrations.upgrade(engine) == (None, migrations.head())
    assert set(metadata.tables) <= _tables(engine)


def test_upgrading_a_current_database_changes_nothing(engine: sa.Engine) -> None:
    migrations.upgrade(engine)
    assert migrations.upgrade(engine) == (migrations.head(), migrations.head())


def test_an_empty_database_is_migrated_on_first_use(db_url: str, engine: sa.Engine) -> None:
    with CircuitBreaker(db_url):
        pass
    with engine.connect() as connection:
        assert migrations.current_revision(connection) == migrations.head()


def test_first_use_after_the_tables_were_dropped_by_hand_builds_the_schema_again(
    db_url: str, engine: sa.Engine
) -> None:
    """On PostgreSQL, dropping the tables leaves the notification function behind."""
    with CircuitBreaker(db_url, CircuitBreakerConfig(failure_threshold=1)) as breaker:
        breaker.record_failure("gpt-4o")
    with engine.begin() as connection:
        for table in (*reversed(metadata.sorted_tables), sa.table(VERSION_TABLE)):
            connection.execute(sa.text(f"DROP TABLE {table.name}"))
        if engine.dialect.name == "postgresql":
            left = "SELECT to_regprocedure('durable_breaker_notify()') IS NOT NULL"
            assert connection.execute(sa.text(left)).scalar()
    with CircuitBreaker(db_url, CircuitBreakerConfig(failure_threshold=1)) as breaker:
        assert breaker.status() == []
        breaker.record_failure("gpt-4o")
        assert breaker.state("gpt-4o") is CircuitState.OPEN
    with engine.connect() as connection:
        assert migrations.current_revision(connection) == migrations.head()


def test_migrate_false_refuses_an_empty_database_and_names_the_command(db_url: str) -> None:
    with pytest.raises(SchemaError, match=r"durable-breaker --url URL migrate"):
        CircuitBreaker(db_url, migrate=False)


def test_many_breakers_starting_at_once_on_an_empty_database_all_come_up(db_url: str) -> None:
    run_in_threads(lambda: CircuitBreaker(db_url).close(), 6)
    with CircuitBreaker(db_url, migrate=False) as breaker:
        assert breaker.status() == []


@pytest.fixture
def newer_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The migrations plus one more revision, as a future version of the library would ship."""
    folder = tmp_path / "migrations"
    shutil.copytree(
        migrations.script_location(), folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    (folder / "versions" / "9000_test_extra.py").write_text(
        f'revision = "9000_test_extra"\ndown_revision = "{migrations.head()}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    monkeypatch.setattr(migrations, "script_location", lambda: folder)
    migrations._scripts.cache_clear()
    yield "9000_test_extra"
    migrations._scripts.cache_clear()


def test_an_older_schema_is_refused_until_migrated(
    db_url: str, engine: sa.Engine, newer_library: str
) -> None:
    with engine.begin() as connection:
        command.upgrade(migrations.alembic_config(connection), "0002_change_notifications")
    with pytest.raises(SchemaError, match=r"older than .*durable-breaker --url URL migrate"):
        CircuitBreaker(db_url)
    with CircuitBreaker(db_url, migrate=True):
        pass
    with engine.connect() as connection:
        assert migrations.current_revision(connection) == newer_library


def test_a_newer_schema_is_refused_and_left_intact(db_url: str, engine: sa.Engine) -> None:
    with CircuitBreaker(db_url, CircuitBreakerConfig(failure_threshold=1)) as breaker:
        breaker.record_failure("k")
    with engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    for migrate in (None, True, False):
        with pytest.raises(SchemaError, match=r"'9999_future'.*upgrade durable-breaker"):
            CircuitBreaker(db_url, migrate=migrate)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT state FROM durable_breaker_circuit")).all() == [
            (CircuitState.OPEN.value,)
        ]


def test_tables_that_are_not_ours_are_refused_and_left_alone(
    db_url: str, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE durable_breaker_circuit (precious INTEGER)"))
        connection.execute(sa.text("INSERT INTO durable_breaker_circuit VALUES (42)"))
    with pytest.raises(SchemaError, match="not made by durable-breaker"):
        CircuitBreaker(db_url)
    with engine.connect() as connection:
        assert connection.execute(
            sa.text("SELECT precious FROM durable_breaker_circuit")
        ).all() == [(42,)]


def test_the_alembic_cli_migrates_from_the_repository_root(db_url: str, engine: sa.Engine) -> None:
    if not (REPO / "alembic.ini").is_file():
        pytest.fail("alembic.ini is missing from the repository root")
    alembic = Path(sys.executable).parent / "alembic"
    env = {**os.environ, "DURABLE_BREAKER_URL": db_url}
    done = subprocess.run(
        [str(alembic), "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with engine.connect() as connection:
        assert migrations.current_revision(connection) == migrations.head()


def test_migrations_build_the_declared_constraint_names(engine: sa.Engine) -> None:
    migrations.upgrade(engine)
    inspector = sa.inspect(engine)
    for table in metadata.tables.values():
        declared = {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)}
        built = {c["name"] for c in inspector.get_check_constraints(table.name)}
        assert built == declared, table.name
        assert inspector.get_pk_constraint(table.name)["name"] == table.primary_key.name


def test_the_database_refuses_a_state_the_library_does_not_know(engine: sa.Engine) -> None:
    migrations.upgrade(engine)
    row = {
        "namespace": "n",
        "key": "k",
        "state": "ajar",
        "consecutive_failures": 0,
        "half_open_probes": 0,
        "version": 1,
        "updated_at": datetime.now(UTC),
    }
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(sa.insert(circuits), row)


def _start(url: str) -> str:
    """In a worker process: open a breaker on the shared database."""
    with CircuitBreaker(url) as breaker:
        return breaker.state("k").value


def test_processes_starting_at_once_on_an_empty_database_all_come_up(db_url: str) -> None:
    assert run_in_processes(_start, 4, db_url) == ["closed"] * 4


def test_a_database_made_by_revision_0002_upgrades_with_its_data_intact(tmp_path: Path) -> None:
    """tests/data/v0002.sqlite was written by the library at revision 0002 (see its commit)."""
    path = tmp_path / "old.sqlite"
    shutil.copy(REPO / "tests" / "data" / "v0002.sqlite", path)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    with engine.connect() as connection:
        before_rows = connection.execute(
            sa.text("SELECT * FROM durable_breaker_circuit ORDER BY key")
        ).all()
        before_trail = connection.execute(
            sa.text("SELECT * FROM durable_breaker_transition ORDER BY id")
        ).all()
        assert migrations.current_revision(connection) == "0002_change_notifications"
    with pytest.raises(SchemaError, match="migrate"):
        CircuitBreaker(url)
    assert migrations.upgrade(engine) == ("0002_change_notifications", migrations.head())
    with engine.connect() as connection:
        after_rows = connection.execute(
            sa.text("SELECT * FROM durable_breaker_circuit ORDER BY key")
        ).all()
        after_trail = connection.execute(
            sa.text("SELECT * FROM durable_breaker_transition ORDER BY id")
        ).all()
    engine.dispose()
    # Every stored value is kept; the new columns start empty (no hold) and at generation 0.
    assert [tuple(row._mapping[c] for c in before_rows[0]._fields) for row in after_rows] == [
        tuple(row) for row in before_rows
    ]
    assert [(row.open_until, row.generation) for row in after_rows] == [(None, 0)] * 4
    assert [tuple(row._mapping[c] for c in before_trail[0]._fields) for row in after_trail] == [
        tuple(row) for row in before_trail
    ]
    clock = lambda: 1_700_000_000.0 + 62  # noqa: E731 - the fixture's clock, when it stopped
    config = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=30))
    with CircuitBreaker(url, config, clock=clock) as breaker:
        states = {s.key: (s.state, s.consecutive_failures) for s in breaker.status()}
        assert states == {
            "claude": (CircuitState.CLOSED, 1),
            "gpt-4o": (CircuitState.OPEN, 2),
            "llama": (CircuitState.CLOSED, 0),
            "mistral": (CircuitState.HALF_OPEN, 2),
        }
        assert [t.reason for t in breaker.history("gpt-4o")] == ["HTTP 503"]
        assert len(breaker.history("llama")) == 3
        breaker.force_open("llama")  # the new states are allowed in the upgraded tables
        breaker.record_failure("mistral")
        assert breaker.state("mistral") is CircuitState.OPEN


def test_downgrade_from_0003_keeps_operator_changes_as_the_nearest_old_state(
    engine: sa.Engine, db_url: str
) -> None:
    migrations.upgrade(engine)
    with CircuitBreaker(db_url) as breaker:
        breaker.force_open("held")
        breaker.disable("off")
    with engine.begin() as connection:
        command.downgrade(migrations.alembic_config(connection), "0002_change_notifications")
    with engine.connect() as connection:
        states: dict[str, str] = dict(
            connection.execute(sa.text("SELECT key, state FROM durable_breaker_circuit")).all()
        )
        trail = connection.execute(
            sa.text("SELECT key, to_state FROM durable_breaker_transition ORDER BY id")
        ).all()
    assert states == {"held": "closed", "off": "closed"}
    assert [tuple(row) for row in trail] == [("held", "open"), ("off", "closed")]


def test_a_database_made_by_revision_0003_upgrades_with_its_data_intact(tmp_path: Path) -> None:
    """tests/data/v0003.sqlite was written by the library at revision 0003 (see its commit):
    every stored value is kept, the new columns start empty, and policies are then stored."""
    path = tmp_path / "old.sqlite"
    shutil.copy(REPO / "tests" / "data" / "v0003.sqlite", path)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    select_circuits = sa.text("SELECT * FROM durable_breaker_circuit ORDER BY key")
    select_trail = sa.text("SELECT * FROM durable_breaker_transition ORDER BY id")
    with engine.connect() as connection:
        before_rows = connection.execute(select_circuits).all()
        before_trail = connection.execute(select_trail).all()
        assert migrations.current_revision(connection) == "0003_manual_control_and_fencing"
    with pytest.raises(SchemaError, match="migrate"):
        CircuitBreaker(url)
    assert migrations.upgrade(engine) == ("0003_manual_control_and_fencing", migrations.head())
    with engine.connect() as connection:
        after_rows = connection.execute(select_circuits).all()
        after_trail = connection.execute(select_trail).all()
    engine.dispose()
    assert len(before_rows) == 5 and len(before_trail) == 5
    for before, after in [
        *zip(before_rows, after_rows, strict=True),
        *zip(before_trail, after_trail, strict=True),
    ]:
        assert {c: after._mapping[c] for c in before._fields} == dict(before._mapping)
    new_circuit = ("failure_threshold", "cooldown_s", "half_open_max", "probe_timeout_s")
    new_transition = ("generation", "error_type", "status_code", "retry_after_s", "open_until")
    assert {row._mapping[c] for row in after_rows for c in (*new_circuit, "policy_by")} == {None}
    assert {row._mapping[c] for row in after_trail for c in new_transition} == {None}

    clock = lambda: 1_700_000_000.0 + 36  # noqa: E731 - just after the fixture's last write
    config = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=30))
    with CircuitBreaker(url, config, clock=clock, actor="after-0004") as breaker:
        status = {s.key: s for s in breaker.status()}
        assert {key: s.state for key, s in status.items()} == {
            "claude": CircuitState.CLOSED,
            "gemini": CircuitState.DISABLED,
            "gpt-4o": CircuitState.OPEN,
            "llama": CircuitState.FORCED_OPEN,
            "mistral": CircuitState.HALF_OPEN,
        }
        # No policy was stored before 0004: a wait that needs the settings is unknown,
        # one that does not (an operator's hold, a closed circuit) is still given.
        assert all(s.policy is None for s in status.values())
        assert status["gpt-4o"].retry_after is None and status["mistral"].retry_after is None
        assert status["llama"].retry_after == 3600 - 36 + 34
        assert status["claude"].retry_after == 0
        explained = breaker.explain("gpt-4o")
        assert explained.policy is None and explained.retry_after is None
        assert "Retry-After hold and a cooldown end (no process has decided" in str(explained)
        assert [t.reason for t in breaker.history("gpt-4o")] == ["HTTP 429"]
        breaker.record_failure("mistral")  # the failed probe reopens it: now with a policy
        reopened = breaker.status(["mistral"])[0]
        assert reopened.state is CircuitState.OPEN and reopened.retry_after == 30
        assert reopened.policy is not None and reopened.policy.set_by == "after-0004"
        assert breaker.history("mistral")[-1].generation == 3
