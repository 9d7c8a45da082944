"""Server-side sessions, failed sign-ins by address, tokens bound to their device, payload hashes.

The session signing key leaves the database (it now lives in a 0600 file or an env var): anyone who
could read the database could forge a session with it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id_sha256", sa.String(64), primary_key=True),
        sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_web_sessions_reviewer", "web_sessions", ["reviewer_id"])
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("username", sa.String(160), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
    )
    op.create_index("ix_login_failures_username", "login_failures", ["username", "at"])
    op.create_index("ix_login_failures_address", "login_failures", ["address", "at"])
    with op.batch_alter_table("device_tokens") as t:
        t.add_column(sa.Column("any_device", sa.Boolean, nullable=False, server_default=sa.text("false")))
    with op.batch_alter_table("items") as t:
        t.add_column(sa.Column("payload_sha256", sa.String(64), nullable=True))
    op.execute("DELETE FROM app_settings WHERE key = 'session_secret'")


def downgrade() -> None:
    with op.batch_alter_table("items") as t:
        t.drop_column("payload_sha256")
    with op.batch_alter_table("device_tokens") as t:
        t.drop_column("any_device")
    op.drop_index("ix_login_failures_address", table_name="login_failures")
    op.drop_index("ix_login_failures_username", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_index("ix_web_sessions_reviewer", table_name="web_sessions")
    op.drop_table("web_sessions")
