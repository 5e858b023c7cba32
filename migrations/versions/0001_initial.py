"""The circuit table (current state per key) and the transition table (audit trail).

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

STATES = "'closed', 'open', 'half_open'"


def upgrade() -> None:
    op.create_table(
        "durable_breaker_circuit",
        sa.Column("namespace", sa.String(100), nullable=False),
        sa.Column("key", sa.String(500), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("half_open_probes", sa.Integer, nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("half_open_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"state IN ({STATES})", name=op.f("ck_durable_breaker_circuit_state")),
        sa.CheckConstraint(
            "consecutive_failures >= 0",
            name=op.f("ck_durable_breaker_circuit_consecutive_failures"),
        ),
        sa.CheckConstraint(
            "half_open_probes >= 0", name=op.f("ck_durable_breaker_circuit_half_open_probes")
        ),
        sa.PrimaryKeyConstraint("namespace", "key", name=op.f("pk_durable_breaker_circuit")),
    )
    op.create_table(
        "durable_breaker_transition",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            autoincrement=True,
            nullable=False,
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
        sa.CheckConstraint(
            f"from_state IN ({STATES})", name=op.f("ck_durable_breaker_transition_from_state")
        ),
        sa.CheckConstraint(
            f"to_state IN ({STATES})", name=op.f("ck_durable_breaker_transition_to_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_durable_breaker_transition")),
    )
    op.create_index(
        op.f("ix_durable_breaker_transition_key"),
        "durable_breaker_transition",
        ["namespace", "key", "id"],
    )
    op.create_index(op.f("ix_durable_breaker_transition_at"), "durable_breaker_transition", ["at"])


def downgrade() -> None:
    op.drop_index("ix_durable_breaker_transition_at", table_name="durable_breaker_transition")
    op.drop_index("ix_durable_breaker_transition_key", table_name="durable_breaker_transition")
    op.drop_table("durable_breaker_transition")
    op.drop_table("durable_breaker_circuit")
