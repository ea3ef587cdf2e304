"""model_versions.weights_size as a 64-bit integer (weights over 2 GiB)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.alter_column(
            "weights_size", existing_type=sa.Integer(), type_=sa.BigInteger(), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.alter_column(
            "weights_size", existing_type=sa.BigInteger(), type_=sa.Integer(), nullable=False
        )
