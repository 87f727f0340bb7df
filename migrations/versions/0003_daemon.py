"""What the daemon records: decisions, node measurements, and more about probes, plan applications
and runs (the plan version a request ran on).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("candidate_plan_id", sa.Integer(), nullable=False),
        sa.Column("current_plan_id", sa.Integer(), nullable=True),
        sa.Column("network_id", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(100), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("current_s", sa.Float(), nullable=True),
        sa.Column("candidate_s", sa.Float(), nullable=False),
        sa.Column("gain_s", sa.Float(), nullable=True),
        sa.Column("migration_s", sa.Float(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.ForeignKeyConstraint(["candidate_plan_id"], ["plans.id"], name="fk_decisions_candidate_plan_id_plans"),
        sa.ForeignKeyConstraint(["current_plan_id"], ["plans.id"], name="fk_decisions_current_plan_id_plans"),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], name="fk_decisions_network_id_networks"),
    )
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])
    op.create_table(
        "node_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("state", sa.String(50), nullable=False),
        sa.Column("slowdown", sa.Float(), nullable=True),
        sa.Column("measured_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_node_samples"),
    )
    op.create_index("ix_node_samples_node_measured_at", "node_samples", ["node", "measured_at"])
    with op.batch_alter_table("probes") as b:
        b.add_column(sa.Column("kind", sa.String(50), nullable=True))
        b.add_column(sa.Column("samples", sa.Integer(), nullable=True))
    with op.batch_alter_table("plan_applications") as b:
        b.add_column(sa.Column("version", sa.Integer(), nullable=True))
        b.add_column(sa.Column("decision_id", sa.Integer(), nullable=True))
        b.add_column(sa.Column("finished_at", UTC_TIMESTAMP, nullable=True))
        b.add_column(sa.Column("outcome", sa.String(200), nullable=True))
        b.create_foreign_key("fk_plan_applications_decision_id_decisions", "decisions", ["decision_id"], ["id"])
    with op.batch_alter_table("runs") as b:
        b.add_column(sa.Column("plan_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as b:
        b.drop_column("plan_version")
    with op.batch_alter_table("plan_applications") as b:
        b.drop_constraint("fk_plan_applications_decision_id_decisions", type_="foreignkey")
        b.drop_column("outcome")
        b.drop_column("finished_at")
        b.drop_column("decision_id")
        b.drop_column("version")
    with op.batch_alter_table("probes") as b:
        b.drop_column("samples")
        b.drop_column("kind")
    op.drop_table("node_samples")
    op.drop_table("decisions")
