"""Alembic environment for the durable-breaker tables: run by the library and by `alembic`."""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection

from durable_breaker._engine import DEFAULT_URL, make_engine, write_transaction
from durable_breaker._migrations import lock_for_migration
from durable_breaker._tables import VERSION_TABLE, metadata

config = context.config


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("DURABLE_BREAKER_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_URL
    )


def _run_online(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


# The library passes its own connection (already inside a locked transaction).
library_connection = config.attributes.get("connection")
if library_connection is not None:
    _run_online(library_connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    if context.is_offline_mode():
        _configure(url=_url(), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = make_engine(_url())
        try:
            with write_transaction(engine) as connection:
                lock_for_migration(connection)
                _run_online(connection)
        finally:
            engine.dispose()
