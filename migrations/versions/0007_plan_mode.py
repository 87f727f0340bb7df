"""A plan's mode and k as columns: "split" (one model placed unit by unit) or "cooperative" (a draft
proposes k tokens per round, the target verifies them), so history queries select and group by them
without reading the plan document. Existing rows take theirs from the document.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("plans", sa.Column("mode", sa.String(20), nullable=False, server_default="split"))
    op.add_column("plans", sa.Column("k", sa.Integer(), nullable=True))
    conn = op.get_bind()
    plans = sa.table("plans", sa.column("id", sa.Integer()), sa.column("document", sa.JSON()),
                     sa.column("mode", sa.String(20)), sa.column("k", sa.Integer()))
    for row in conn.execute(sa.select(plans.c.id, plans.c.document)):
        doc = row.document if isinstance(row.document, dict) else {}
        if doc.get("mode") == "cooperative":
            k = doc.get("k")
            conn.execute(plans.update().where(plans.c.id == row.id)
                         .values(mode="cooperative", k=int(k) if isinstance(k, int) else None))


def downgrade() -> None:
    # Not a batch (copy and move) on SQLite: other tables reference `plans`, whose rows would have to
    # go with the old table. SQLite drops a column in place since 3.35.
    op.drop_column("plans", "k")
    op.drop_column("plans", "mode")
