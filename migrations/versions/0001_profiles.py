"""Profiles: hardware classes, models, profiles and their units (what the profiler stores).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations spell out their types instead of importing the models: a revision must keep creating
# the schema it created on the day it was written, whatever the models become later.
UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "hardware_classes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hardware_classes"),
        sa.UniqueConstraint("name", name="uq_hardware_classes_name"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("family", sa.String(100), nullable=True),
        sa.Column("weights", sa.String(1000), nullable=True),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(50), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("input_spec", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("n_units", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_profiles"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_profiles_model_id_models"),
    )
    op.create_index("ix_profiles_model_id", "profiles", ["model_id"])
    op.create_index("ix_profiles_digest", "profiles", ["digest"])
    op.create_index("ix_profiles_created_at", "profiles", ["created_at"])
    op.create_table(
        "profile_hardware",
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("hardware_class_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "hardware_class_id", name="pk_profile_hardware"),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.id"], ondelete="CASCADE",
                                name="fk_profile_hardware_profile_id_profiles"),
        sa.ForeignKeyConstraint(["hardware_class_id"], ["hardware_classes.id"],
                                name="fk_profile_hardware_hardware_class_id_hardware_classes"),
    )
    op.create_table(
        "profile_units",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("unit_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("param_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mem_bytes", sa.BigInteger(), nullable=False),
        sa.Column("flops", sa.JSON(), nullable=False),
        sa.Column("out_bytes", sa.JSON(), nullable=False),
        sa.Column("latency_s", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_profile_units"),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.id"], ondelete="CASCADE",
                                name="fk_profile_units_profile_id_profiles"),
        sa.UniqueConstraint("profile_id", "unit_index", name="uq_profile_units_profile_id_unit_index"),
    )


def downgrade() -> None:
    op.drop_table("profile_units")
    op.drop_table("profile_hardware")
    op.drop_index("ix_profiles_created_at", table_name="profiles")
    op.drop_index("ix_profiles_digest", table_name="profiles")
    op.drop_index("ix_profiles_model_id", table_name="profiles")
    op.drop_table("profiles")
    op.drop_table("models")
    op.drop_table("hardware_classes")
