"""Eval results of versions (``lr_eval``) and the quality gate's record of promotions to the
serving alias (``lr_promotion``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "lr_eval",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("dataset_digest", sa.String(length=71), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=256), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["lr_version.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lr_eval_version_id", "lr_eval", ["version_id"])
    op.create_index("ix_lr_eval_key", "lr_eval", ["dataset_digest", "metric"])
    op.create_table(
        "lr_promotion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("from_number", sa.Integer(), nullable=True),
        sa.Column("to_number", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("tolerance", sa.Float(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lr_promotion_name", "lr_promotion", ["name"])


def downgrade() -> None:
    op.drop_table("lr_promotion")
    op.drop_table("lr_eval")
