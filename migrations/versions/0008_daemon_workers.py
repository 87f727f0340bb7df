"""The local workers a daemon run started, so that the next daemon can adopt those still healthy after a
crash: per node its pid, the process's start time, its host, address, model and when it was started. Never a
token: the workers' credentials are in a file readable only by the user (orchestrator.daemon.adopt),
named by `secrets_key`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("daemon_states") as batch:
        batch.add_column(sa.Column("workers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_states") as batch:
        batch.drop_column("workers")
