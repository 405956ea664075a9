"""Baseline: the schema of the release before migrations (commit 7a1a624).

A registry that release created has these tables and no version table; ``migrate`` stamps it
at this revision and upgrades from here. A new database runs it like any revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Name = sa.String(length=128)
Text = sa.String()
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "lr_adapter",
        sa.Column("name", Name, nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lr_adapter_name", "lr_adapter", ["name"], unique=True)
    op.create_table(
        "lr_blob",
        sa.Column("digest", Text, nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "lr_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "lr_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", Text, nullable=False),
        sa.Column("token_hash", Text, nullable=False),
        sa.Column("scope", Text, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lr_token_token_hash", "lr_token", ["token_hash"], unique=True)
    op.create_table(
        "lr_version",
        sa.Column("base_model_id", Text, nullable=True),
        sa.Column("base_fingerprint", Text, nullable=True),
        sa.Column("peft_type", Text, nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("dtype", Text, nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("domain", Text, nullable=True),
        sa.Column("description", Text, nullable=True),
        sa.Column("routing_examples", sa.JSON(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("parent", Text, nullable=True),
        sa.Column("data_digest", Text, nullable=True),
        sa.Column("training_config", sa.JSON(), nullable=True),
        sa.Column("author", Text, nullable=True),
        sa.Column("license", Text, nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", Text, nullable=False),
        sa.Column("files_json", sa.JSON(), nullable=True),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["lr_adapter.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_id", "number", name="uq_lr_version_number"),
        sa.UniqueConstraint("adapter_id", "digest", name="uq_lr_version_digest"),
    )
    for column in ("adapter_id", "base_fingerprint", "digest", "domain"):
        op.create_index(f"ix_lr_version_{column}", "lr_version", [column])
    op.create_table(
        "lr_alias",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", Name, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["lr_adapter.id"]),
        sa.ForeignKeyConstraint(["version_id"], ["lr_version.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_id", "name", name="uq_lr_alias"),
    )
    op.create_index("ix_lr_alias_adapter_id", "lr_alias", ["adapter_id"])
    op.create_index("ix_lr_alias_version_id", "lr_alias", ["version_id"])
    op.create_table(
        "lr_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", Text, nullable=False),
        sa.Column("blob_digest", Text, nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["blob_digest"], ["lr_blob.digest"]),
        sa.ForeignKeyConstraint(["version_id"], ["lr_version.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "path", name="uq_lr_file_path"),
    )
    op.create_index("ix_lr_file_blob", "lr_file", ["blob_digest"])
    op.create_index("ix_lr_file_version_id", "lr_file", ["version_id"])
    # the release created the state row with its tables
    op.execute(sa.text("INSERT INTO lr_state (id, revision) VALUES (1, 0)"))


def downgrade() -> None:
    for table in ("lr_file", "lr_alias", "lr_version", "lr_token", "lr_state", "lr_blob"):
        op.drop_table(table)
    op.drop_table("lr_adapter")
