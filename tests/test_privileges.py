"""Least privilege: after an owner migrates, an application role needs only row access."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, SchemaError

pytestmark = pytest.mark.postgres

# What an application role is granted; the README lists the same statements.
GRANTS = """
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON durable_breaker_circuit, durable_breaker_transition
    TO {role};
GRANT USAGE ON SEQUENCE durable_breaker_transition_id_seq TO {role};
GRANT SELECT ON durable_breaker_alembic_version TO {role};
"""


@pytest.fixture
def app_url(pg_url: str, postgres_admin_url: str) -> Iterator[str]:
    """`pg_url` migrated by its owner, and a URL for a role with only the grants above."""
    CircuitBreaker(pg_url).close()  # the owner creates the schema
    url = sa.make_url(pg_url)
    schema = str(url.query["options"]).split("=", 1)[1]
    role = f"db_test_app_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
            for statement in GRANTS.format(schema=schema, role=role).split(";"):
                if statement.strip():
                    connection.exec_driver_sql(statement)
        yield url.set(username=role).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_an_application_role_with_row_access_only_runs_everything(app_url: str) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(0))
    with CircuitBreaker(app_url, config, migrate=None) as breaker:
        breaker.record_failure("gpt-4o")
        breaker.check("gpt-4o")
        breaker.record_success("gpt-4o")
        breaker.record_failure("gpt-4o")
        breaker.reset("gpt-4o")
        assert breaker.state("gpt-4o") is CircuitState.CLOSED
        assert len(breaker.history("gpt-4o")) == 5
        assert [s.key for s in breaker.status()] == ["gpt-4o"]
        assert breaker.prune(timedelta(0)) == 4
        # The role really is that limited: it cannot change the schema.
        with (
            pytest.raises(sa.exc.ProgrammingError, match="must be owner"),
            breaker._store.engine.begin() as connection,
        ):
            connection.exec_driver_sql("ALTER TABLE durable_breaker_circuit ADD COLUMN x int")


def test_an_application_role_on_an_unmigrated_database_is_told_who_must_migrate(
    app_url: str, postgres_admin_url: str
) -> None:
    schema = str(sa.make_url(app_url).query["options"]).split("=", 1)[1]
    admin = sa.create_engine(postgres_admin_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as connection:  # back to an empty schema the role may use, not change
        for table in ("circuit", "transition", "alembic_version"):
            connection.exec_driver_sql(f"DROP TABLE {schema}.durable_breaker_{table}")
    admin.dispose()
    with pytest.raises(SchemaError, match="may not create or change") as refused:
        CircuitBreaker(app_url)
    assert "migrate` as a role that owns the schema" in str(refused.value)
