"""Schema review once the daemon writes: indexes for the history queries, and the hourly roll-ups that
replace raw probe, node-sample and request rows older than the retention period.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)

# (index, table, columns): every history query filters by time or by one of these keys
INDEXES = (
    ("ix_probes_measured_at", "probes", ["measured_at"]),
    ("ix_node_samples_measured_at", "node_samples", ["measured_at"]),
    ("ix_runs_plan_version_created_at", "runs", ["plan_version", "created_at"]),
    ("ix_plan_applications_version", "plan_applications", ["version"]),
    ("ix_plan_applications_decision_id", "plan_applications", ["decision_id"]),
    ("ix_decisions_candidate_plan_id", "decisions", ["candidate_plan_id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    op.create_table(
        "probe_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("link", sa.String(300), nullable=False),
        sa.Column("hour", UTC_TIMESTAMP, nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("bandwidth_samples", sa.Integer(), nullable=False),
        sa.Column("bandwidth_mean_bps", sa.Float(), nullable=True),
        sa.Column("bandwidth_p10_bps", sa.Float(), nullable=True),
        sa.Column("bandwidth_p50_bps", sa.Float(), nullable=True),
        sa.Column("bandwidth_p90_bps", sa.Float(), nullable=True),
        sa.Column("latency_samples", sa.Integer(), nullable=False),
        sa.Column("latency_mean_s", sa.Float(), nullable=True),
        sa.Column("latency_p50_s", sa.Float(), nullable=True),
        sa.Column("latency_p90_s", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_probe_hours"),
        sa.UniqueConstraint("link", "hour", name="uq_probe_hours_link_hour"),
    )
    op.create_index("ix_probe_hours_hour", "probe_hours", ["hour"])
    op.create_table(
        "node_sample_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("hour", UTC_TIMESTAMP, nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("down_samples", sa.Integer(), nullable=False),
        sa.Column("slowdown_samples", sa.Integer(), nullable=False),
        sa.Column("slowdown_p50", sa.Float(), nullable=True),
        sa.Column("slowdown_p90", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_node_sample_hours"),
        sa.UniqueConstraint("node", "hour", name="uq_node_sample_hours_node_hour"),
    )
    op.create_index("ix_node_sample_hours_hour", "node_sample_hours", ["hour"])
    op.create_table(
        "run_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hour", UTC_TIMESTAMP, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("plan_version", sa.Integer(), nullable=True),
        sa.Column("strategy", sa.String(100), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("measured_sum_s", sa.Float(), nullable=False),
        sa.Column("p50_s", sa.Float(), nullable=False),
        sa.Column("p90_s", sa.Float(), nullable=False),
        sa.Column("p99_s", sa.Float(), nullable=False),
        sa.Column("ratio_samples", sa.Integer(), nullable=False),
        sa.Column("ratio_p50", sa.Float(), nullable=True),
        sa.Column("first_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("last_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_hours"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_run_hours_model_id_models"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_run_hours_plan_id_plans", ondelete="SET NULL"),
    )
    op.create_index("ix_run_hours_hour", "run_hours", ["hour"])


def downgrade() -> None:
    # Rolled-up hours have no raw rows left to return to: a downgrade drops them with their tables.
    op.drop_table("run_hours")
    op.drop_table("node_sample_hours")
    op.drop_table("probe_hours")
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
