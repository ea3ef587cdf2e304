"""Tabular data: feature schemas and the schema-aware projection.

* :class:`FeatureSchema` (with :class:`Feature` and :class:`OneHotGroup`): what each column is
  and what an attacker may do to it; :meth:`FeatureSchema.validate` for serving-time checks,
  :meth:`FeatureSchema.is_feasible` and :meth:`FeatureSchema.project`.
* a registry of schemas by name (``breast_cancer`` ships, see
  :mod:`robustops.tabular.breast_cancer`).

The attacks that respect a schema (``tabular-pgd``, ``tabular-noise``, ``feature-masking``) are
in :mod:`robustops.attacks.tabular`; this package sits below the attack library.
"""

from robustops.tabular.breast_cancer import BREAST_CANCER_SCHEMA, encode_breast_cancer
from robustops.tabular.constraints import Constraints, project_feasible
from robustops.tabular.registry import (
    SCHEMAS,
    available_schemas,
    get_schema,
    register_schema,
    resolve_schema,
)
from robustops.tabular.schema import Feature, FeatureSchema, OneHotGroup, Violation

__all__ = [
    "BREAST_CANCER_SCHEMA",
    "SCHEMAS",
    "Constraints",
    "Feature",
    "FeatureSchema",
    "OneHotGroup",
    "Violation",
    "available_schemas",
    "encode_breast_cancer",
    "get_schema",
    "project_feasible",
    "register_schema",
    "resolve_schema",
]
