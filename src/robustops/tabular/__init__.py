"""Tabular data: feature schemas, schema-aware projection and attacks.

* :class:`FeatureSchema` (with :class:`Feature` and :class:`OneHotGroup`): what each column is
  and what an attacker may do to it; :meth:`FeatureSchema.validate` for serving-time checks,
  :meth:`FeatureSchema.is_feasible` and :meth:`FeatureSchema.project`.
* a registry of schemas by name (``breast_cancer`` ships, see
  :mod:`robustops.tabular.breast_cancer`).
* attacks registered with :mod:`robustops.attacks` (through its entry-point group): ``tabular-pgd``, ``tabular-noise`` and
  ``feature-masking`` (see :mod:`robustops.tabular.attacks`).
"""

from robustops.tabular.attacks import (
    FeatureMasking,
    TabularAttack,
    TabularNoise,
    TabularPGD,
)
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
    "FeatureMasking",
    "FeatureSchema",
    "OneHotGroup",
    "TabularAttack",
    "TabularNoise",
    "TabularPGD",
    "Violation",
    "available_schemas",
    "encode_breast_cancer",
    "get_schema",
    "project_feasible",
    "register_schema",
    "resolve_schema",
]
