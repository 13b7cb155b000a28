"""each perceptual-hash band indexed with the image and the hash: near-duplicates from the indexes alone

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for band in range(4):
        op.drop_index(f"ix_phashes_band{band}", table_name="phashes")
        op.create_index(f"ix_phashes_band{band}", "phashes", [f"band{band}", "image_id", "hash"])


def downgrade() -> None:
    for band in range(4):
        op.drop_index(f"ix_phashes_band{band}", table_name="phashes")
        op.create_index(f"ix_phashes_band{band}", "phashes", [f"band{band}"])
