"""near-duplicate pairs stored when a hash is saved: a page's near-duplicates in one indexed read;
images indexed by format

``near_pairs`` holds both directions of every pair of photos whose hashes are within
``storage.results.PAIR_DISTANCE`` bits; ``phashes.paired_within`` says up to which distance a
photo's pairs are stored (NULL for the hashes saved before this revision: those are looked up
through the bands until they are paired, a chunk at a time, by the producer's reconciler).

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "near_pairs",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("other_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("distance", sa.SmallInteger(), nullable=False),
    )
    op.create_index("ix_near_pairs_other", "near_pairs", ["other_id"])
    # A plain ADD COLUMN (no table rebuild on SQLite); the partial index finds the hashes still to pair.
    op.add_column("phashes", sa.Column("paired_within", sa.SmallInteger(), nullable=True))
    op.create_index("ix_phashes_unpaired", "phashes", ["image_id"],
                    postgresql_where=sa.text("paired_within IS NULL"), sqlite_where=sa.text("paired_within IS NULL"))
    # `results --format` (and the gallery's): a format's images in id order.
    op.create_index("ix_images_format", "images", ["format", "id"])


def downgrade() -> None:
    op.drop_index("ix_images_format", table_name="images")
    op.drop_index("ix_phashes_unpaired", table_name="phashes")
    with op.batch_alter_table("phashes") as batch:
        batch.drop_column("paired_within")
    op.drop_index("ix_near_pairs_other", table_name="near_pairs")
    op.drop_table("near_pairs")
