"""Alembic migrations of the registry's schema, shipped inside the package and run without an
``alembic.ini`` (:mod:`loraroute.registry.migrate` configures Alembic in code).

``versions/0001`` is the schema of the release before migrations (commit 7a1a624), the
baseline every registry starts from; each later revision changes it one step. A new schema
change is a new revision here, never an edit of ``registry/tables.py`` alone
(tests/registry/test_migrations.py compares the migrated schema with the tables).
"""
