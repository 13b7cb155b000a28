"""perceptual hashes (the phash task) and the retry flag of task runs

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "phashes",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.BigInteger(), nullable=False),
        sa.Column("band0", sa.Integer(), nullable=False),
        sa.Column("band1", sa.Integer(), nullable=False),
        sa.Column("band2", sa.Integer(), nullable=False),
        sa.Column("band3", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_phashes_image_id_images"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_phashes")),
    )
    for band in range(4):
        op.create_index(op.f(f"ix_phashes_band{band}"), "phashes", [f"band{band}"], unique=False)
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("retry_pending", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Runs that were waiting for their retry message under 0001 said so in their error text.
    op.execute("UPDATE task_runs SET retry_pending = true WHERE error LIKE 'retrying: %' AND status = 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("retry_pending")
    for band in range(4):
        op.drop_index(op.f(f"ix_phashes_band{band}"), table_name="phashes")
    op.drop_table("phashes")
