"""The SQL schema as SQLAlchemy Core tables: current state per key, and the audit trail.

Migrations (`migrations/`) build exactly this schema; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

from ._state import CircuitState

# Stable constraint names, so that later migrations can refer to them on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# In characters. With 4-byte characters throughout, namespace + key still fit PostgreSQL's
# B-tree row limit (2704 bytes) for the primary key and the history index.
MAX_NAMESPACE_LENGTH = 100
MAX_KEY_LENGTH = 500
MAX_ACTOR_LENGTH = 200
MAX_ERROR_TYPE_LENGTH = 200
VERSION_TABLE = "durable_breaker_alembic_version"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: refuses naive values, and restores UTC where SQLite drops it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: durable-breaker stores aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_STATE_VALUES = ", ".join(f"'{state.value}'" for state in CircuitState)

circuits = Table(
    "durable_breaker_circuit",
    metadata,
    Column("namespace", String(MAX_NAMESPACE_LENGTH), primary_key=True),
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("half_open_probes", Integer, nullable=False),
    Column("last_failure_at", UTCDateTime, nullable=True),
    Column("half_open_since", UTCDateTime, nullable=True),
    Column("open_until", UTCDateTime, nullable=True),
    # Bumped on every state change: permits are fenced by it.
    Column("generation", BigInteger, nullable=False, server_default="0"),
    # Bumped on every write: optimistic writes land only on the version they read.
    Column("version", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # The settings the last process that decided for the key used, and who it was (an
    # operator's change keeps them): what `status` and `explain` compute waits with.
    Column("failure_threshold", Integer, nullable=True),
    Column("cooldown_s", Float, nullable=True),
    Column("half_open_max", Integer, nullable=True),
    Column("probe_timeout_s", Float, nullable=True),  # NULL with policy_by set: no probe timeout
    Column("policy_by", String(MAX_ACTOR_LENGTH), nullable=True),  # NULL: written before 0004
    CheckConstraint(f"state IN ({_STATE_VALUES})", name="state"),
    CheckConstraint("consecutive_failures >= 0", name="consecutive_failures"),
    CheckConstraint("half_open_probes >= 0", name="half_open_probes"),
)

transitions = Table(
    "durable_breaker_transition",
    metadata,
    # BIGINT on PostgreSQL; SQLite only autoincrements an INTEGER PRIMARY KEY.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("namespace", String(MAX_NAMESPACE_LENGTH), nullable=False),
    Column("key", String(MAX_KEY_LENGTH), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("reason", Text, nullable=True),
    Column("actor", String(MAX_ACTOR_LENGTH), nullable=False),
    # Why, beyond the reason's words (NULL where it does not apply, and before revision 0004):
    Column("generation", BigInteger, nullable=True),  # the circuit's, after this transition
    Column("error_type", String(MAX_ERROR_TYPE_LENGTH), nullable=True),  # a counted error's
    Column("status_code", Integer, nullable=True),  # its HTTP status
    Column("retry_after_s", Float, nullable=True),  # the Retry-After a trip applied (capped)
    Column("open_until", UTCDateTime, nullable=True),  # the end of the hold it set
    CheckConstraint(f"from_state IN ({_STATE_VALUES})", name="from_state"),
    CheckConstraint(f"to_state IN ({_STATE_VALUES})", name="to_state"),
    Index("ix_durable_breaker_transition_key", "namespace", "key", "id"),
    Index("ix_durable_breaker_transition_at", "at"),
)
