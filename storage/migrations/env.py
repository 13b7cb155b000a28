"""Alembic environment: runs against the engine handed over in ``config.attributes``."""

from alembic import context

from storage.db import make_engine
from storage.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None and config.attributes.get("connection") is None:
    # the plain `alembic` command line: the URL from alembic.ini's sqlalchemy.url
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("darkroom: run `darkroom migrate` (it passes the engine), or set sqlalchemy.url for alembic")
    engine = make_engine(url)


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():  # none of its own inside a caller's transaction
        context.run_migrations()


# storage.db.migrate hands over its connection on PostgreSQL: the one whose transaction holds the
# migration lock, so that migrating takes one connection, and the lock ends with the migration.
connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with engine.connect() as connection:
        run(connection)
