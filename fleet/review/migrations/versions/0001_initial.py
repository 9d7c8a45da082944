"""Initial schema: reviewers, device tokens, items and their classes, the audit log, app settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "reviewers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("daily_quota", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "device_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("device", sa.String(128), nullable=False),
        sa.Column("camera", sa.String(128), nullable=False),
        sa.Column("model", sa.String(160), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("image_file", sa.String(255)),
        sa.Column("image_path", sa.String(512)),
        sa.Column("image_url", sa.String(1024)),
        sa.Column("clip_path", sa.String(512)),
        sa.Column("clip_url", sa.String(1024)),
        sa.Column("event_id", sa.String(128)),
        sa.Column("predictions", sa.JSON(), nullable=False),
        sa.Column("captured_at", sa.Float()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("claimed_by", sa.Integer(), sa.ForeignKey("reviewers.id")),
        sa.Column("claimed_at", sa.Float()),
        sa.Column("decision", sa.String(10)),
        sa.Column("labels", sa.JSON()),
        sa.Column("reviewed_by", sa.Integer(), sa.ForeignKey("reviewers.id")),
        sa.Column("reviewed_at", sa.Float()),
        sa.Column("review_seconds", sa.Float()),
    )
    op.create_index("ix_items_queue", "items", ["status", "priority", "created_at", "id"])
    op.create_index("ix_items_recent", "items", ["status", "created_at", "id"])
    op.create_index("ix_items_claimed_by", "items", ["claimed_by"], sqlite_where=sa.text("claimed_by IS NOT NULL"),
                    postgresql_where=sa.text("claimed_by IS NOT NULL"))
    op.create_index("ix_items_claimed_at", "items", ["status", "claimed_at"])
    op.create_index("ix_items_reviewer_day", "items", ["reviewed_by", "reviewed_at"])
    op.create_index("ix_items_reviewed_at", "items", ["reviewed_at"])
    op.create_index("ix_items_facets", "items", ["status", "reason", "site", "camera", "model"])
    for column in ("site", "camera", "model"):
        op.create_index(f"ix_items_{column}", "items", [column])
    op.create_table(
        "item_classes",
        sa.Column("item_id", sa.String(128), sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("class_name", sa.String(64), primary_key=True),
    )
    op.create_index("ix_item_classes_class", "item_classes", ["class_name", "item_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), sa.ForeignKey("reviewers.id")),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("item_id", sa.String(128)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("undone", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_audit_reviewer_action", "audit", ["reviewer_id", "action", "at"])
    op.create_index("ix_audit_item", "audit", ["item_id", "id"])


def downgrade() -> None:
    for table in ("audit", "item_classes", "items", "device_tokens", "reviewers", "app_settings"):
        op.drop_table(table)
