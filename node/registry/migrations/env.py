"""Alembic environment: uses the engine handed over by node.registry.migrate when present."""

from alembic import context
from sqlalchemy import create_engine

from node.registry.models import Base

config = context.config
target_metadata = Base.metadata

engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
