"""What a daemon needs to resume after a crash: its settings, its network (joined nodes included) and the
plan in force with its version, one row per daemon run; `stopped_at` is set by a clean stop.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "daemon_states",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("network", sa.JSON(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("stopped_at", UTC_TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_daemon_states"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_daemon_states_plan_id_plans"),
    )
    op.create_index("ix_daemon_states_model", "daemon_states", ["model"])


def downgrade() -> None:
    op.drop_index("ix_daemon_states_model", table_name="daemon_states")
    op.drop_table("daemon_states")
