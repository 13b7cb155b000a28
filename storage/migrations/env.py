"""Alembic environment: runs against the engine handed over in ``config.attributes``."""

from alembic import context

from storage.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` command line: build the engine from Darkroom's settings
    from darkroom.settings import get_settings
    from storage.db import make_engine

    engine = make_engine(get_settings().db_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
