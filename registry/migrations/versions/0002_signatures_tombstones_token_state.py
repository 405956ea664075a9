"""Signatures, tombstones of removed versions, token lifecycle (prefix, expiry, revocation).

Before migrations existed, these tables were made by ``create_all`` when a registry was
opened; so each is created only where it is missing, and a database that already has them
upgrades as well.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "lr_signature" not in have:
        op.create_table(
            "lr_signature",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("version_id", sa.Integer(), nullable=False),
            sa.Column("digest", sa.String(), nullable=False),
            sa.Column("kind", sa.String(), nullable=False),
            sa.Column("signer", sa.String(), nullable=False),
            sa.Column("bundle", sa.Text(), nullable=False),
            sa.Column("created_at", When, nullable=False),
            sa.ForeignKeyConstraint(["version_id"], ["lr_version.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("version_id", "digest", name="uq_lr_signature"),
        )
        op.create_index("ix_lr_signature_version_id", "lr_signature", ["version_id"])
    if "lr_token_state" not in have:
        op.create_table(
            "lr_token_state",
            sa.Column("token_id", sa.Integer(), nullable=False),
            sa.Column("name_prefix", sa.String(length=128), nullable=True),
            sa.Column("expires_at", When, nullable=True),
            sa.Column("revoked_at", When, nullable=True),
            sa.Column("last_used_at", When, nullable=True),
            sa.ForeignKeyConstraint(["token_id"], ["lr_token.id"]),
            sa.PrimaryKeyConstraint("token_id"),
        )
    if "lr_tombstone" not in have:
        op.create_table(
            "lr_tombstone",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("number", sa.Integer(), nullable=False),
            sa.Column("digest", sa.String(), nullable=False),
            sa.Column("removed_at", When, nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("name", "number", name="uq_lr_tombstone"),
        )
        op.create_index("ix_lr_tombstone_name", "lr_tombstone", ["name"])


def downgrade() -> None:
    op.drop_table("lr_tombstone")
    op.drop_table("lr_token_state")
    op.drop_table("lr_signature")
