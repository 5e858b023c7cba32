"""The policy in force, and why each transition happened.

On the circuit, the settings the last process that decided for it used (operators' changes
keep them), and who that was:
- `failure_threshold`, `cooldown_s`, `half_open_max`, `probe_timeout_s` (NULL: none),
  `policy_by`. Rows written before this revision have none of them (`policy_by` NULL).

On each transition:
- `generation`: the circuit's generation after it;
- `error_type`, `status_code`: the counted error a failure reported, when it named one;
- `retry_after_s`: the Retry-After a trip applied; `open_until`: the end of the hold.
  Rows written before this revision leave them NULL.

Only columns are added (nullable, no default), so every stored row is kept as it is.

Revision ID: 0004_policy_and_audit_causes
Revises: 0003_manual_control_and_fencing
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_policy_and_audit_causes"
down_revision = "0003_manual_control_and_fencing"
branch_labels = None
depends_on = None


def _circuit_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("failure_threshold", sa.Integer, nullable=True),
        sa.Column("cooldown_s", sa.Float, nullable=True),
        sa.Column("half_open_max", sa.Integer, nullable=True),
        sa.Column("probe_timeout_s", sa.Float, nullable=True),
        sa.Column("policy_by", sa.String(200), nullable=True),
    )


def _transition_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("generation", sa.BigInteger, nullable=True),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("retry_after_s", sa.Float, nullable=True),
        sa.Column("open_until", sa.DateTime(timezone=True), nullable=True),
    )


def upgrade() -> None:
    with op.batch_alter_table("durable_breaker_circuit") as batch:
        for column in _circuit_columns():
            batch.add_column(column)
    with op.batch_alter_table("durable_breaker_transition") as batch:
        for column in _transition_columns():
            batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("durable_breaker_transition") as batch:
        for column in reversed(_transition_columns()):
            batch.drop_column(column.name)
    with op.batch_alter_table("durable_breaker_circuit") as batch:
        for column in reversed(_circuit_columns()):
            batch.drop_column(column.name)
