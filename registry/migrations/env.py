"""Alembic's environment: migrations run on the connection :mod:`loraroute.registry.migrate`
hands over (``config.attributes["connection"]``), inside its transaction."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=config.attributes["version_table"],
    transactional_ddl=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
