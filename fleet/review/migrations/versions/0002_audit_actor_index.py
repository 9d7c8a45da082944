"""Index the audit log by actor and action: sign-in throttling counts a username's recent failures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_actor_action", "audit", ["actor", "action", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_actor_action", table_name="audit")
