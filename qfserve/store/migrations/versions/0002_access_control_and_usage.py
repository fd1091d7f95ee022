"""access control (soft delete, quotas, endpoints), IAM keys and the usage ledger

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


def upgrade() -> None:
    with op.batch_alter_table("apps") as apps:
        apps.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        for column in ("qps", "rpm", "tpm", "daily", "total"):
            apps.add_column(sa.Column(column, sa.Integer(), nullable=True))
        apps.add_column(sa.Column("endpoints", sa.String(1024), nullable=True))
    op.create_table(
        "iam_keys",
        sa.Column("access_key", sa.String(64), primary_key=True),
        sa.Column(
            "app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_iam_keys_app_id", "iam_keys", ["app_id"])
    op.create_table(
        "usage_records",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("request_id", sa.String(16), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("safety_category", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_usage_records_app_id", "usage_records", ["app_id"])
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])


def downgrade() -> None:
    op.drop_table("usage_records")
    op.drop_table("iam_keys")
    with op.batch_alter_table("apps") as apps:
        for column in ("endpoints", "total", "daily", "tpm", "rpm", "qps", "deleted_at"):
            apps.drop_column(column)
