"""Manual control and permit fencing: two operator states, a hold time and a generation.

- `state` may also be 'forced_open' (held open by an operator) or 'disabled' (admits every
  call), in the circuit table and in the audit trail;
- `open_until`: an Open or ForcedOpen circuit admits no probe before it (a failure's
  Retry-After, a `force_open(until=...)`);
- `generation`: counts a circuit's state changes; permits are fenced by it. Existing rows
  start at 0.

SQLite cannot alter a CHECK constraint, so there the tables are rebuilt (batch mode) from
their definition at revision 0002, and every row is copied.

Revision ID: 0003_manual_control_and_fencing
Revises: 0002_change_notifications
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_manual_control_and_fencing"
down_revision = "0002_change_notifications"
branch_labels = None
depends_on = None

OLD_STATES = "'closed', 'open', 'half_open'"
NEW_STATES = "'closed', 'open', 'half_open', 'forced_open', 'disabled'"
NAMING = {"ck": "ck_%(table_name)s_%(constraint_name)s", "pk": "pk_%(table_name)s"}


def _as_of_0002(states: str) -> tuple[sa.Table, sa.Table]:
    """The two tables as revision 0002 left them (with `states` allowed), for batch mode."""
    metadata = sa.MetaData(naming_convention=NAMING)
    circuit = sa.Table(
        "durable_breaker_circuit",
        metadata,
        sa.Column("namespace", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("half_open_probes", sa.Integer, nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("half_open_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"state IN ({states})", name="state"),
        sa.CheckConstraint("consecutive_failures >= 0", name="consecutive_failures"),
        sa.CheckConstraint("half_open_probes >= 0", name="half_open_probes"),
    )
    transition = sa.Table(
        "durable_breaker_transition",
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("namespace", sa.String(100), nullable=False),
        sa.Column("key", sa.String(500), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.CheckConstraint(f"from_state IN ({states})", name="from_state"),
        sa.CheckConstraint(f"to_state IN ({states})", name="to_state"),
        sa.Index("ix_durable_breaker_transition_key", "namespace", "key", "id"),
        sa.Index("ix_durable_breaker_transition_at", "at"),
    )
    return circuit, transition


def _allow(old: str, new: str) -> None:
    circuit, transition = _as_of_0002(old)
    with op.batch_alter_table(circuit.name, copy_from=circuit) as batch:
        batch.drop_constraint(op.f("ck_durable_breaker_circuit_state"), type_="check")
        batch.create_check_constraint(op.f("ck_durable_breaker_circuit_state"), f"state IN ({new})")
    with op.batch_alter_table(transition.name, copy_from=transition) as batch:
        for column in ("from_state", "to_state"):
            name = op.f(f"ck_durable_breaker_transition_{column}")
            batch.drop_constraint(name, type_="check")
            batch.create_check_constraint(name, f"{column} IN ({new})")


def upgrade() -> None:
    _allow(OLD_STATES, NEW_STATES)
    with op.batch_alter_table("durable_breaker_circuit") as batch:
        batch.add_column(sa.Column("open_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    # Operator states have no equivalent before 0003: such circuits go back to Closed (what
    # a reset would do), and their audit rows are kept under the nearest old state.
    op.execute(
        "UPDATE durable_breaker_circuit SET state = 'closed', consecutive_failures = 0, "
        "half_open_probes = 0, half_open_since = NULL "
        "WHERE state IN ('forced_open', 'disabled')"
    )
    for column in ("from_state", "to_state"):
        op.execute(
            f"UPDATE durable_breaker_transition SET {column} = CASE {column} "
            f"WHEN 'forced_open' THEN 'open' ELSE 'closed' END "
            f"WHERE {column} IN ('forced_open', 'disabled')"
        )
    with op.batch_alter_table("durable_breaker_circuit") as batch:
        batch.drop_column("generation")
        batch.drop_column("open_until")
    _allow(NEW_STATES, OLD_STATES)
