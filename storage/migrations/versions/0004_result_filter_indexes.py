"""indexes for `results`' filters and keyset pages at a million photos

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The images with a run in a state, in image order: `results --status failed|queued|running`
    # pages through the few such images without reading the others (and --faces 0 through the
    # images whose faces run is done: task is in the index).
    op.create_index("ix_task_runs_status_image", "task_runs", ["status", "image_id", "task"])
    # The images a classifier gave a label (any case), in image order: `results --label TEXT
    # [--min-score S] [--model M]`.
    op.create_index("ix_labels_model_label", "labels", ["model", sa.text("lower(label)"), "image_id", "score"])
    # The images with at least N faces (a face numbered N-1), in image order: `results --faces N[+]`.
    op.create_index("ix_faces_idx_image", "faces", ["idx", "image_id"])
    # The images registered since a time: `results --since`.
    op.create_index("ix_images_created_at", "images", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_images_created_at", table_name="images")
    op.drop_index("ix_faces_idx_image", table_name="faces")
    op.drop_index("ix_labels_model_label", table_name="labels")
    op.drop_index("ix_task_runs_status_image", table_name="task_runs")
