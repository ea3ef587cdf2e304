"""The ``breast_cancer`` feature schema: scikit-learn's bundled WDBC table as a tampering target.

**The data.** The Wisconsin Diagnostic Breast Cancer set (569 fine-needle aspirates, 212
malignant = class 0, 357 benign = class 1) ships inside scikit-learn. Its 30 columns describe
the cell nuclei of one digitised slide: for ten measurements (radius, texture, perimeter, area,
smoothness, compactness, concavity, concave points, symmetry, fractal dimension) the *mean*,
the standard *error* and the *worst* value (mean of the three largest).

**The story (illustrative, not clinical).** A claims or triage service scores the numeric
report that an image-analysis workstation produced; the party that submits the report wants a
different decision and edits the record before it is scored (report tampering, a classic fraud
pattern). What that party can and cannot do is the schema:

* *immutable*: the size of the nuclei, ``mean radius``, ``mean perimeter``, ``mean area`` and
  their standard errors. The service recomputes them from the archived slide image at audit, so
  changing them is caught.
* *monotone, increase only*: the ten ``worst …`` columns. The submitter can annotate extra
  nuclei on the slide, but cannot remove nuclei the workstation recorded, and adding nuclei can
  only raise the mean of the three largest values.
* *integer*: ``mean texture`` (the standard deviation of the grey levels), which the intake form
  records in whole grey levels. **Derived**: we round scikit-learn's value half up
  (``floor(v + 0.5)``), range [9, 40].
* *categorical*: the intake form reports symmetry as a three-level grade, a one-hot group
  ``mean symmetry grade`` = ``low`` (< 0.165), ``typical`` (0.165 to < 0.195) or ``high``
  (>= 0.195). **Derived** from scikit-learn's ``mean symmetry`` with those fixed cut points
  (169 / 250 / 150 rows); the continuous column is dropped.
* everything else is free inside its range.

Raw ranges are the data's minimum rounded down and maximum rounded up to two significant
digits (fixed here, so scaling never depends on a split). The neutral value of a column, used by
the feature-masking attack ("blank the field and let the intake impute it"), is the median of
the 569 rows to four significant digits (texture: 19; symmetry grade: ``typical``).

What the schema does **not** capture: cross-column consistency (``worst ≥ mean``, perimeter
≈ 2π·radius, area ≈ π·radius²), and the fact that annotating extra nuclei would also move the
``mean`` and ``error`` columns. An attacker held to this schema is therefore still somewhat
stronger than a real one; the constraints are an honest lower bound on the realism, not a
model of it.

Columns (32, in model order): the 30 of scikit-learn in their order, with ``mean texture``
rounded in place and ``mean symmetry`` replaced in place by the three one-hot columns.
"""

from __future__ import annotations

import numpy as np

from robustops.tabular.registry import register_schema
from robustops.tabular.schema import Feature, FeatureSchema, OneHotGroup

__all__ = ["BREAST_CANCER_SCHEMA", "SOURCE_COLUMNS", "SYMMETRY_CUTS", "encode_breast_cancer"]

SYMMETRY_CUTS = (0.165, 0.195)
"""Cut points of the derived symmetry grade (low < 0.165 <= typical < 0.195 <= high)."""

_SYMMETRY_GRADES = ("low", "typical", "high")

# name, raw range, median (neutral), constraint
_IMMUTABLE = "immutable"
_INCREASE = "increase"
_COLUMNS: list[tuple[str, float, float, float, str | None]] = [
    ("mean radius", 6.9, 29.0, 13.37, _IMMUTABLE),
    ("mean texture", 9.0, 40.0, 19.0, "integer"),
    ("mean perimeter", 43.0, 190.0, 86.24, _IMMUTABLE),
    ("mean area", 140.0, 2600.0, 551.1, _IMMUTABLE),
    ("mean smoothness", 0.052, 0.17, 0.09587, None),
    ("mean compactness", 0.019, 0.35, 0.09263, None),
    ("mean concavity", 0.0, 0.43, 0.06154, None),
    ("mean concave points", 0.0, 0.21, 0.0335, None),
    ("mean symmetry", 0.1, 0.31, 0.1792, "grade"),
    ("mean fractal dimension", 0.049, 0.098, 0.06154, None),
    ("radius error", 0.11, 2.9, 0.3242, _IMMUTABLE),
    ("texture error", 0.36, 4.9, 1.108, None),
    ("perimeter error", 0.75, 22.0, 2.287, _IMMUTABLE),
    ("area error", 6.8, 550.0, 24.53, _IMMUTABLE),
    ("smoothness error", 0.0017, 0.032, 0.00638, None),
    ("compactness error", 0.0022, 0.14, 0.02045, None),
    ("concavity error", 0.0, 0.4, 0.02589, None),
    ("concave points error", 0.0, 0.053, 0.01093, None),
    ("symmetry error", 0.0078, 0.079, 0.01873, None),
    ("fractal dimension error", 0.00089, 0.03, 0.003187, None),
    ("worst radius", 7.9, 37.0, 14.97, _INCREASE),
    ("worst texture", 12.0, 50.0, 25.41, _INCREASE),
    ("worst perimeter", 50.0, 260.0, 97.66, _INCREASE),
    ("worst area", 180.0, 4300.0, 686.5, _INCREASE),
    ("worst smoothness", 0.071, 0.23, 0.1313, _INCREASE),
    ("worst compactness", 0.027, 1.1, 0.2119, _INCREASE),
    ("worst concavity", 0.0, 1.3, 0.2267, _INCREASE),
    ("worst concave points", 0.0, 0.3, 0.09993, _INCREASE),
    ("worst symmetry", 0.15, 0.67, 0.2822, _INCREASE),
    ("worst fractal dimension", 0.055, 0.21, 0.08004, _INCREASE),
]

SOURCE_COLUMNS: tuple[str, ...] = tuple(c[0] for c in _COLUMNS)
"""scikit-learn's 30 feature names, in its order (checked when the data set loads)."""

_GRADE_GROUP = "mean symmetry grade"


def _features() -> list[Feature]:
    out = []
    for name, low, high, median, how in _COLUMNS:
        if how == "grade":
            out += [
                Feature(
                    name=f"{_GRADE_GROUP}: {g}",
                    kind="categorical",
                    description=f"derived one-hot member: {name} graded {g}",
                )
                for g in _SYMMETRY_GRADES
            ]
            continue
        out.append(
            Feature(
                name=name,
                kind="integer" if how == "integer" else "continuous",
                range=(low, high),
                immutable=how == _IMMUTABLE,
                monotone="increase" if how == _INCREASE else None,
                step=1.0 if how == "integer" else None,
                neutral=median,
                description="derived: rounded half up to whole grey levels"
                if how == "integer"
                else "",
            )
        )
    return out


BREAST_CANCER_SCHEMA = register_schema(
    FeatureSchema(
        name="breast_cancer",
        features=_features(),
        groups=[
            OneHotGroup(
                name=_GRADE_GROUP,
                features=[f"{_GRADE_GROUP}: {g}" for g in _SYMMETRY_GRADES],
                neutral=f"{_GRADE_GROUP}: typical",
            )
        ],
        description="WDBC nucleus measurements as a tampered lab report; see "
        "robustops.tabular.breast_cancer",
    )
)


def encode_breast_cancer(raw: np.ndarray) -> np.ndarray:
    """scikit-learn's raw rows ``(N, 30)`` → the schema's raw columns ``(N, 32)``: ``mean
    texture`` rounded half up, ``mean symmetry`` replaced by its one-hot grade. Scale the result
    with ``BREAST_CANCER_SCHEMA.scale``."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(_COLUMNS):
        raise ValueError(f"expected rows of {len(_COLUMNS)} raw columns, got shape {raw.shape}")
    parts = []
    for j, (_, _, _, _, how) in enumerate(_COLUMNS):
        col = raw[:, j]
        if how == "integer":
            parts.append(np.floor(col + 0.5)[:, None])
        elif how == "grade":
            grade = np.digitize(col, SYMMETRY_CUTS)  # 0: < 0.165, 1: < 0.195, 2: the rest
            parts.append(np.eye(len(_SYMMETRY_GRADES))[grade])
        else:
            parts.append(col[:, None])
    return np.concatenate(parts, axis=1)
