"""SQL storage (SQLAlchemy 2.0, Alembic migrations) and the content-addressed blob store."""
