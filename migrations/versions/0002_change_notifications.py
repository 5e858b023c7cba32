"""PostgreSQL: every change of a circuit row notifies listeners (the opt-in read cache).

A trigger, so that every writer notifies, whatever its version or settings; NOTIFY is
delivered when the writer's transaction commits. SQLite has no NOTIFY: nothing to do there.
The function is created OR REPLACEd: dropping the tables by hand leaves it behind (it belongs
to no table), and the next first use must still build the schema.

Revision ID: 0002_change_notifications
Revises: 0001_initial
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0002_change_notifications"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

CHANNEL = "durable_breaker"  # the library's _cache.CHANNEL; payload: namespace, US, key


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION durable_breaker_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', OLD.namespace || chr(31) || OLD.key);
            ELSE
                PERFORM pg_notify('{CHANNEL}', NEW.namespace || chr(31) || NEW.key);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER durable_breaker_notify AFTER INSERT OR UPDATE OR DELETE "
        "ON durable_breaker_circuit FOR EACH ROW EXECUTE FUNCTION durable_breaker_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS durable_breaker_notify ON durable_breaker_circuit")
    op.execute("DROP FUNCTION IF EXISTS durable_breaker_notify()")
