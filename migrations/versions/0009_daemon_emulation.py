"""The changes a daemon run made to its emulated network through the API (links' bandwidth and latency,
nodes' slowdown), so that the daemon that takes over after a crash emulates the network as it was left.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("daemon_states") as batch:
        batch.add_column(sa.Column("emulation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_states") as batch:
        batch.drop_column("emulation")
