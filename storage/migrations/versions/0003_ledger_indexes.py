"""indexes for the ledger's hot statements at a million photos

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNSENT = "status = 'queued' AND enqueued_at IS NULL"


def upgrade() -> None:
    # The runs still to be sent, in id order: the producer looks on every turn.
    op.create_index("ix_task_runs_unsent", "task_runs", ["id"], postgresql_where=sa.text(UNSENT),
                    sqlite_where=sa.text(UNSENT))
    # Pending runs of a model, oldest first: a worker filling its batch.
    op.create_index("ix_task_runs_task_model_status", "task_runs", ["task", "model", "status", "id"])
    # Failed and rejected runs, newest first: `status`.
    op.create_index("ix_task_runs_status_finished", "task_runs", ["status", "finished_at"])
    # Rejected images and refused files: few, and listed by `status`.
    op.create_index("ix_images_rejected", "images", ["id"], postgresql_where=sa.text("rejected_reason IS NOT NULL"),
                    sqlite_where=sa.text("rejected_reason IS NOT NULL"))
    op.create_index("ix_files_refused", "files", ["id"], postgresql_where=sa.text("refused_reason IS NOT NULL"),
                    sqlite_where=sa.text("refused_reason IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_files_refused", table_name="files")
    op.drop_index("ix_images_rejected", table_name="images")
    op.drop_index("ix_task_runs_status_finished", table_name="task_runs")
    op.drop_index("ix_task_runs_task_model_status", table_name="task_runs")
    op.drop_index("ix_task_runs_unsent", table_name="task_runs")
