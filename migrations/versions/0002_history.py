"""History: network snapshots, solves (plans), runs, link probes and plan applications.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("origin", sa.String(1000), nullable=True),
        sa.Column("source_node", sa.String(200), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("n_nodes", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_networks"),
    )
    op.create_index("ix_networks_digest", "networks", ["digest"])
    op.create_index("ix_networks_created_at", "networks", ["created_at"])
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("network_id", sa.Integer(), nullable=True),
        sa.Column("objective", sa.String(50), nullable=False),
        sa.Column("solver", sa.String(100), nullable=False),
        sa.Column("status", sa.String(50), nullable=False),
        sa.Column("predicted_latency_s", sa.Float(), nullable=False),
        sa.Column("solve_time_s", sa.Float(), nullable=False),
        sa.Column("gap", sa.Float(), nullable=True),
        sa.Column("bottleneck_s", sa.Float(), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_plans_model_id_models"),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.id"], ondelete="SET NULL",
                                name="fk_plans_profile_id_profiles"),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="SET NULL",
                                name="fk_plans_network_id_networks"),
    )
    op.create_index("ix_plans_model_id", "plans", ["model_id"])
    op.create_index("ix_plans_profile_id", "plans", ["profile_id"])
    op.create_index("ix_plans_network_id", "plans", ["network_id"])
    op.create_index("ix_plans_created_at", "plans", ["created_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("strategy", sa.String(100), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("measured_s", sa.Float(), nullable=False),
        sa.Column("predicted_s", sa.Float(), nullable=True),
        sa.Column("breakdown", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="SET NULL", name="fk_runs_plan_id_plans"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_runs_model_id_models"),
    )
    op.create_index("ix_runs_plan_id", "runs", ["plan_id"])
    op.create_index("ix_runs_model_id", "runs", ["model_id"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "probes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("link", sa.String(300), nullable=False),
        sa.Column("bandwidth_bps", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("measured_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_probes"),
    )
    op.create_index("ix_probes_link_measured_at", "probes", ["link", "measured_at"])
    op.create_table(
        "plan_applications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("previous_plan_id", sa.Integer(), nullable=True),
        sa.Column("applied_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plan_applications"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_plan_applications_plan_id_plans"),
        sa.ForeignKeyConstraint(["previous_plan_id"], ["plans.id"],
                                name="fk_plan_applications_previous_plan_id_plans"),
    )
    op.create_index("ix_plan_applications_plan_id", "plan_applications", ["plan_id"])
    op.create_index("ix_plan_applications_applied_at", "plan_applications", ["applied_at"])


def downgrade() -> None:
    op.drop_table("plan_applications")
    op.drop_table("probes")
    op.drop_table("runs")
    op.drop_table("plans")
    op.drop_table("networks")
