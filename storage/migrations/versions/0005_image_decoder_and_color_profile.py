"""how each image is decoded and the colour profile it came with (images.decoder, images.color_profile)

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Images registered before this know neither: NULL (every one of them was read by Pillow).
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("decoder", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("color_profile", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("color_profile")
        batch.drop_column("decoder")
