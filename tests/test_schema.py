"""The models (storage/models.py) and the migrations (storage/migrations) describe the same schema,
on SQLite and PostgreSQL: an index or column added to one and not the other fails here."""

from __future__ import annotations

import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.db import make_engine, migrate
from storage.models import Base


def test_the_migrated_schema_is_the_models(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.connect() as conn, warnings.catch_warnings():
        # SQLite cannot reflect an index on an expression (labels' lower(label)); PostgreSQL compares it.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], diff
