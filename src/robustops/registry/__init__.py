"""The governance registry: model versions with lineage, aliases moved only through a passed gate,
vulnerability records, a risk register per version and a signed, hash-chained audit log.

The store is SQLAlchemy (an SQLite file by default, any SQLAlchemy URL such as PostgreSQL) with
Alembic migrations; artifacts (weights, specs, results, reports) live in a content-addressed
folder beside it.
"""
