"""Alembic's environment: migrations run on the connection :mod:`loraroute.registry.migrate`
hands over (``config.attributes["connection"]``), inside its transaction."""

from __future__ import annotations

from alembic import context


def run_migrations(config) -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        version_table=config.attributes["version_table"],
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


# Alembic gives its context proxy a config only while it runs this script; imported by
# anything else (a tool walking the installed package), the module defines and runs nothing
if hasattr(context, "config"):
    run_migrations(context.config)
