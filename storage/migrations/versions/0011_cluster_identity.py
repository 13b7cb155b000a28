"""cluster identity (issue 13): one row naming this Darkroom (uuid, created_at, the blob store's URL
without secrets, the host that recorded it, when a blob was first stored), mirrored in Redis; a worker
whose database or blob store is not the producer's refuses to start

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blob_url", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("blobs_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster")),
        sa.UniqueConstraint("uuid", name=op.f("uq_cluster_uuid")),
    )


def downgrade() -> None:
    op.drop_table("cluster")
