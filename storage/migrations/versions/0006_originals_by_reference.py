"""originals held by reference: where a worker finds each image's original (images.original)

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every image registered so far has its copy in the blob store.
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("original", sa.String(length=16), server_default="blob", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("original")
