"""Name → feature schema registry, so that specs can say ``schema: breast_cancer``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustops.errors import SpecError
from robustops.tabular.schema import FeatureSchema

__all__ = ["SCHEMAS", "available_schemas", "get_schema", "register_schema", "resolve_schema"]

SCHEMAS: dict[str, FeatureSchema] = {}


def register_schema(schema: FeatureSchema, *, replace: bool = False) -> FeatureSchema:
    """Make ``schema`` reachable by its ``name``; a different schema of the same name is refused
    unless ``replace``."""
    if not isinstance(schema, FeatureSchema):
        raise SpecError.single("schema", f"expected a FeatureSchema, got {type(schema).__name__}")
    old = SCHEMAS.get(schema.name)
    if old is not None and old != schema and not replace:
        raise SpecError.single(
            "schema", f"a different schema is already registered as {schema.name!r}"
        )
    SCHEMAS[schema.name] = schema
    return schema


def available_schemas() -> list[str]:
    """Sorted names of the registered schemas."""
    return sorted(SCHEMAS)


def get_schema(name: str) -> FeatureSchema:
    """The schema registered as ``name``; :class:`SpecError` (field ``schema``) otherwise."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise SpecError.single(
            "schema", f"unknown feature schema {name!r}; available: {available_schemas()}"
        ) from None


def resolve_schema(spec: Any, field: str = "schema") -> FeatureSchema | None:
    """A schema from what a spec may hold: ``None``, a :class:`FeatureSchema`, a registered name,
    or an inline mapping (validated; errors are prefixed with ``field``)."""
    if spec is None or isinstance(spec, FeatureSchema):
        return spec
    if isinstance(spec, str):
        try:
            return get_schema(spec)
        except SpecError as exc:
            raise SpecError([(field, m) for _, m in exc.errors]) from None
    if isinstance(spec, Mapping):
        return FeatureSchema.parse(dict(spec), prefix=field)
    raise SpecError.single(
        field,
        f"must be a FeatureSchema, the name of a registered schema or a mapping, got {type(spec).__name__}",
    )
