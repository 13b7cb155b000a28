"""counts kept by triggers: runs per (task, model, status) and images per state, for `status`

Revision ID: 0007
Revises: 0006

``ledger_counts`` holds count rows that are summed when read; ``dirty_images`` the images whose
state is to be counted again (see storage.ledger.fold_counts). Triggers on ``task_runs`` add a
count row per change of a run (a statement-level trigger with transition tables on PostgreSQL, so
a bulk insert or COPY of a million runs costs one grouped insert; row triggers on SQLite) and
mark the run's image; triggers on ``images`` mark new and re-examined images and take a deleted
image out of its count. The counts of what is there already are made here, once.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: An image's state from its runs, as storage.ledger.image_status computes it.
STATE = """CASE
    WHEN images.rejected_reason IS NOT NULL THEN 'rejected'
    ELSE COALESCE((
        SELECT CASE MIN(CASE r.status WHEN 'running' THEN 0 WHEN 'queued' THEN 1 WHEN 'done' THEN 3 ELSE 2 END)
                   WHEN 0 THEN 'running' WHEN 1 THEN 'queued' WHEN 2 THEN 'failed' ELSE 'done' END
        FROM task_runs r WHERE r.image_id = images.id), 'done')
END"""

POSTGRES = [
    """
    CREATE FUNCTION darkroom_runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n)
            SELECT 'run', task, model, status, count(*) FROM new_rows GROUP BY task, model, status;
        INSERT INTO dirty_images (image_id) SELECT DISTINCT image_id FROM new_rows;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION darkroom_runs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Most updates (sent, claimed's worker, retried's error) change no state: nothing to count.
        WITH changed AS (
            SELECT o.task AS old_task, o.model AS old_model, o.status AS old_status, o.image_id AS old_image,
                   n.task, n.model, n.status, n.image_id
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE (o.status, o.task, o.model, o.image_id) IS DISTINCT FROM (n.status, n.task, n.model, n.image_id)
        ), counted AS (
            INSERT INTO ledger_counts (kind, task, model, status, n)
            SELECT 'run', task, model, status, SUM(n) FROM (
                SELECT task, model, status, 1 AS n FROM changed
                UNION ALL SELECT old_task, old_model, old_status, -1 FROM changed
            ) d GROUP BY task, model, status HAVING SUM(n) <> 0
        )
        INSERT INTO dirty_images (image_id)
            SELECT image_id FROM changed UNION SELECT old_image FROM changed;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION darkroom_runs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n)
            SELECT 'run', task, model, status, -count(*) FROM old_rows GROUP BY task, model, status;
        INSERT INTO dirty_images (image_id) SELECT DISTINCT image_id FROM old_rows;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION darkroom_images_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO dirty_images (image_id) SELECT id FROM new_rows;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION darkroom_image_reexamined() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO dirty_images (image_id) VALUES (NEW.id);
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION darkroom_image_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n) VALUES ('image', '', '', OLD.counted_state, -1);
        RETURN NULL;
    END $$
    """,
    """CREATE TRIGGER darkroom_runs_inserted AFTER INSERT ON task_runs REFERENCING NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION darkroom_runs_inserted()""",
    """CREATE TRIGGER darkroom_runs_updated AFTER UPDATE ON task_runs
       REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION darkroom_runs_updated()""",
    """CREATE TRIGGER darkroom_runs_deleted AFTER DELETE ON task_runs REFERENCING OLD TABLE AS old_rows
       FOR EACH STATEMENT EXECUTE FUNCTION darkroom_runs_deleted()""",
    """CREATE TRIGGER darkroom_images_inserted AFTER INSERT ON images REFERENCING NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION darkroom_images_inserted()""",
    """CREATE TRIGGER darkroom_image_reexamined AFTER UPDATE OF rejected_reason ON images FOR EACH ROW
       WHEN (OLD.rejected_reason IS DISTINCT FROM NEW.rejected_reason)
       EXECUTE FUNCTION darkroom_image_reexamined()""",
    """CREATE TRIGGER darkroom_image_deleted AFTER DELETE ON images FOR EACH ROW
       WHEN (OLD.counted_state IS NOT NULL) EXECUTE FUNCTION darkroom_image_deleted()""",
]

POSTGRES_DROP = [
    "DROP TRIGGER IF EXISTS darkroom_runs_inserted ON task_runs",
    "DROP TRIGGER IF EXISTS darkroom_runs_updated ON task_runs",
    "DROP TRIGGER IF EXISTS darkroom_runs_deleted ON task_runs",
    "DROP TRIGGER IF EXISTS darkroom_images_inserted ON images",
    "DROP TRIGGER IF EXISTS darkroom_image_reexamined ON images",
    "DROP TRIGGER IF EXISTS darkroom_image_deleted ON images",
    "DROP FUNCTION IF EXISTS darkroom_runs_inserted()",
    "DROP FUNCTION IF EXISTS darkroom_runs_updated()",
    "DROP FUNCTION IF EXISTS darkroom_runs_deleted()",
    "DROP FUNCTION IF EXISTS darkroom_images_inserted()",
    "DROP FUNCTION IF EXISTS darkroom_image_reexamined()",
    "DROP FUNCTION IF EXISTS darkroom_image_deleted()",
]

SQLITE = [
    """CREATE TRIGGER darkroom_runs_inserted AFTER INSERT ON task_runs BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n) VALUES ('run', NEW.task, NEW.model, NEW.status, 1);
        INSERT INTO dirty_images (image_id) VALUES (NEW.image_id);
    END""",
    """CREATE TRIGGER darkroom_runs_updated AFTER UPDATE OF status, task, model, image_id ON task_runs
    WHEN OLD.status IS NOT NEW.status OR OLD.task IS NOT NEW.task OR OLD.model IS NOT NEW.model
         OR OLD.image_id IS NOT NEW.image_id
    BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n) VALUES ('run', OLD.task, OLD.model, OLD.status, -1);
        INSERT INTO ledger_counts (kind, task, model, status, n) VALUES ('run', NEW.task, NEW.model, NEW.status, 1);
        INSERT INTO dirty_images (image_id) VALUES (NEW.image_id);
        INSERT INTO dirty_images (image_id) SELECT OLD.image_id WHERE OLD.image_id IS NOT NEW.image_id;
    END""",
    """CREATE TRIGGER darkroom_runs_deleted AFTER DELETE ON task_runs BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n) VALUES ('run', OLD.task, OLD.model, OLD.status, -1);
        INSERT INTO dirty_images (image_id) VALUES (OLD.image_id);
    END""",
    """CREATE TRIGGER darkroom_images_inserted AFTER INSERT ON images BEGIN
        INSERT INTO dirty_images (image_id) VALUES (NEW.id);
    END""",
    """CREATE TRIGGER darkroom_image_reexamined AFTER UPDATE OF rejected_reason ON images
    WHEN OLD.rejected_reason IS NOT NEW.rejected_reason BEGIN
        INSERT INTO dirty_images (image_id) VALUES (NEW.id);
    END""",
    """CREATE TRIGGER darkroom_image_deleted AFTER DELETE ON images WHEN OLD.counted_state IS NOT NULL BEGIN
        INSERT INTO ledger_counts (kind, task, model, status, n) VALUES ('image', '', '', OLD.counted_state, -1);
    END""",
]

SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS darkroom_runs_inserted",
    "DROP TRIGGER IF EXISTS darkroom_runs_updated",
    "DROP TRIGGER IF EXISTS darkroom_runs_deleted",
    "DROP TRIGGER IF EXISTS darkroom_images_inserted",
    "DROP TRIGGER IF EXISTS darkroom_image_reexamined",
    "DROP TRIGGER IF EXISTS darkroom_image_deleted",
]

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_counts",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_counts")),
    )
    op.create_table(
        "dirty_images",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dirty_images")),
    )
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("counted_state", sa.String(length=16), nullable=True))
    # What is there already, counted once (before the triggers exist, so nothing is counted twice).
    op.execute(f"UPDATE images SET counted_state = {STATE}")
    op.execute("INSERT INTO ledger_counts (kind, task, model, status, n) "
               "SELECT 'image', '', '', counted_state, count(*) FROM images GROUP BY counted_state")
    op.execute("INSERT INTO ledger_counts (kind, task, model, status, n) "
               "SELECT 'run', task, model, status, count(*) FROM task_runs GROUP BY task, model, status")
    for statement in POSTGRES if op.get_bind().dialect.name == "postgresql" else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    for statement in POSTGRES_DROP if op.get_bind().dialect.name == "postgresql" else SQLITE_DROP:
        op.execute(statement)
    with op.batch_alter_table("images") as batch:
        batch.drop_column("counted_state")
    op.drop_table("dirty_images")
    op.drop_table("ledger_counts")
