"""Schema versions: finds the shipped Alembic migrations, checks a database, upgrades it."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, exc, inspect, text

from ._engine import write_transaction
from ._errors import SchemaError
from ._faults import translate_errors
from ._tables import VERSION_TABLE, metadata
from ._urls import safe_url

_log = logging.getLogger("durable_breaker")
# Any fixed number: the key of the PostgreSQL advisory lock held while migrating.
_PG_MIGRATION_LOCK = 0x6475726162


def script_location() -> Path:
    """The migrations folder: inside the installed wheel, or at the root of a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parents[1] / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(
        "the durable-breaker migrations are missing from this installation; reinstall the package"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the shipped migrations, optionally bound to a connection."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this library knows."""
    revision = _scripts().get_current_head()
    if revision is None:
        raise SchemaError(f"no migrations in {script_location()}; reinstall durable-breaker")
    return revision


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at, or None when it has never been migrated."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _refuse_unknown(connection: Connection, revision: str | None) -> None:
    if revision is None:
        ours = set(metadata.tables) & set(inspect(connection).get_table_names())
        if ours:
            raise SchemaError(
                f"{safe_url(connection.engine)} has tables named {sorted(ours)} but no "
                f"{VERSION_TABLE} table: they were not made by durable-breaker's migrations, "
                "so they are left untouched; rename or drop them, or use another database"
            )
        return
    try:
        _scripts().get_revision(revision)
    except CommandError:
        raise SchemaError(
            f"{safe_url(connection.engine)} is at schema revision {revision!r}, which this "
            f"version of durable-breaker does not know (its newest is {head()!r}); "
            "upgrade durable-breaker"
        ) from None


def lock_for_migration(connection: Connection) -> None:
    """Serialise migrations between processes (SQLite: BEGIN IMMEDIATE already does).

    On PostgreSQL a process may wait as long as another takes to migrate, and a migration
    may take as long as it needs: no lock or statement timeout.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET LOCAL lock_timeout = 0"))
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the schema to head under a lock; return (revision before, revision after)."""
    try:
        with (
            translate_errors(engine, "migrate the schema"),
            write_transaction(engine) as connection,
        ):
            lock_for_migration(connection)
            before = current_revision(connection)  # under the lock: another may have won
            _refuse_unknown(connection, before)
            if before != head():
                _upgrade_as_owner(connection)
    except _NotOwner as error:
        raise SchemaError(
            f"{safe_url(engine)} needs its durable-breaker schema created or upgraded, and this "
            f"role may not create or change tables there ({error}); run `durable-breaker --url "
            "URL migrate` as a role that owns the schema, then grant this one row access "
            "(see the README)"
        ) from error
    return before, head()


class _NotOwner(Exception):
    """The connected role lacks the privileges a migration needs."""


def _upgrade_as_owner(connection: Connection) -> None:
    try:
        command.upgrade(alembic_config(connection), "head")
    except exc.DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == "42501":  # insufficient_privilege
            raise _NotOwner(str(error.orig).strip().splitlines()[0]) from error
        raise


def ensure_schema(engine: Engine, migrate: bool | None) -> None:
    """Make sure the schema is at head before first use.

    An empty database is migrated unless `migrate` is False; an older one only when
    `migrate` is True, otherwise the error names the command that upgrades it.
    """
    database = engine.url.database or ""
    is_file_path = engine.dialect.name == "sqlite" and engine.url.query.get("uri") != "true"
    if migrate is False and is_file_path and not os.path.exists(database):
        # Connecting would create the file: say it is missing instead.
        raise SchemaError(
            f"no database file at {database!r}; check the URL, or create it with "
            "`durable-breaker --url URL migrate`"
        )
    with translate_errors(engine, "read the schema version"), engine.connect() as connection:
        revision = current_revision(connection)
        if revision == head():
            return
        # An empty database is judged under the migration lock (upgrade): unlocked, another
        # process may create the tables between reading the version and listing the tables.
        if revision is not None or migrate is False:
            _refuse_unknown(connection, revision)
    if migrate or (revision is None and migrate is None):
        before, after = upgrade(engine)
        if before != after:
            _log.info("migrated %s from %s to %s", safe_url(engine), before or "empty", after)
        return
    state = (
        "has no durable-breaker schema"
        if revision is None
        else (f"is at schema revision {revision!r}, older than this library's {head()!r}")
    )
    raise SchemaError(
        f"{safe_url(engine)} {state}; upgrade it with `durable-breaker --url URL migrate` "
        "(or from Python, CircuitBreaker(..., migrate=True))"
    )
