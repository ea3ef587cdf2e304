"""model_versions.weights_name: the weights file's name when it was registered

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07

Registries made before this revision keep NULL there (exports then name the file
NAME-vN.safetensors).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("weights_name", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("weights_name")
