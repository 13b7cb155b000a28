"""capture metadata and ignored files (issue 14): when, with what and where each photo was taken, how
many frames it has, and the files the producer left alone

Columns are added with ADD COLUMN (no batch table recreation: on SQLite that would drop the triggers
of migration 0007 on ``images``). Images registered before this know none of it: NULL.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("frames", sa.Integer),
    ("taken_local", lambda: sa.DateTime(timezone=False)),
    ("taken_offset", sa.Integer),
    ("taken_at", lambda: sa.DateTime(timezone=True)),
    ("camera_make", sa.Text),
    ("camera_model", sa.Text),
    ("camera_make_key", lambda: sa.String(length=200)),
    ("camera_model_key", lambda: sa.String(length=200)),
    ("lens", sa.Text),
    ("gps_lat", sa.Float),
    ("gps_lon", sa.Float),
    ("gps_alt", sa.Float),
    ("orientation", sa.Integer),
)
_INDEXES = (
    ("ix_images_taken_local", ["taken_local"]),
    ("ix_images_taken_at", ["taken_at"]),
    ("ix_images_camera", ["camera_make_key", "camera_model_key"]),
    ("ix_images_camera_model", ["camera_model_key"]),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("images", sa.Column(name, kind(), nullable=True))
    for name, columns in _INDEXES:
        op.create_index(name, "images", columns)
    op.create_table(
        "ignored_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),  # ShownText in the models: text
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ignored_files")),
        sa.UniqueConstraint("path", name=op.f("uq_ignored_files_path")),
    )
    op.create_table(
        "ignored_counts",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_ignored_counts")),
    )


def downgrade() -> None:
    op.drop_table("ignored_counts")
    op.drop_table("ignored_files")
    for name, _columns in _INDEXES:
        op.drop_index(name, table_name="images")
    with op.batch_alter_table("images", recreate="never") as batch:  # DROP COLUMN, SQLite >= 3.35
        for name, _kind in reversed(_COLUMNS):
            batch.drop_column(name)
