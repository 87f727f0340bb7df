"""Hourly summaries of finished hours kept beside the raw rows: how far each raw table is summarised.

The hourly tables of 0004 (`probe_hours`, `node_sample_hours`, `run_hours`) now hold every finished
hour, not only the hours whose raw rows were deleted, so the time-window queries read one row per key
and hour instead of every raw row. One row per raw table says how far that holds: every raw row
measured before `summarised_before` with an id up to `last_id` is in a summary (rows written later for
an earlier hour have a larger id and are read raw, then merged by the next pass), and raw rows before
`raw_deleted_before` are gone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "summary_marks",
        sa.Column("raw_table", sa.String(50), nullable=False),
        sa.Column("summarised_before", UTC_TIMESTAMP, nullable=True),
        sa.Column("last_id", sa.Integer(), nullable=True),
        sa.Column("raw_deleted_before", UTC_TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("raw_table", name="pk_summary_marks"),
    )


def downgrade() -> None:
    # Summaries of hours whose raw rows still exist would be counted twice by 0004's queries: drop them.
    conn = op.get_bind()
    marks = conn.execute(sa.text("SELECT raw_table, raw_deleted_before FROM summary_marks")).all()
    summary = {"probes": "probe_hours", "node_samples": "node_sample_hours", "runs": "run_hours"}
    for raw_table, deleted_before in marks:
        if raw_table in summary:
            where = "" if deleted_before is None else " WHERE hour >= :c"
            conn.execute(sa.text(f"DELETE FROM {summary[raw_table]}{where}"),
                         {} if deleted_before is None else {"c": deleted_before})
    op.drop_table("summary_marks")
