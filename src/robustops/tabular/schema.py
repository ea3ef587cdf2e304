"""The feature schema of a table: what each column is and what an attacker may do to it.

A :class:`FeatureSchema` lists the columns of a table in model order. Each column has a kind
(``continuous``, ``integer`` or ``categorical``), a range in raw units, and the attacker's
constraints on it: ``immutable`` (may not change), ``monotone`` (may only increase, or only
decrease) and, for integers, a grid ``step``. Categorical columns are the members of one-hot
groups (:class:`OneHotGroup`): exactly one member of a group is 1, the others 0.

The model sees the columns min-max scaled to [0, 1] with the schema's fixed ranges
(:meth:`FeatureSchema.scale`), so a :class:`~robustops.threats.ThreatModel` with bounds
``(0, 1)`` and an epsilon in scaled units applies to every column alike. Everything below works
on scaled inputs ``(N, D)`` unless it says otherwise.

Three uses:

* serving-time validation: :meth:`FeatureSchema.validate` lists every ``(row, feature, reason)``
  that breaks the schema (optionally against an original row, for immutables and monotone
  columns), with messages in raw units naming the feature;
* :meth:`FeatureSchema.is_feasible`: the same as one bool per row;
* :meth:`FeatureSchema.project`: maps any point onto the feasible set intersected with a
  threat's ball and bounds (see :func:`robustops.tabular.constraints.project_feasible`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from robustops.errors import SpecError
from robustops.tabular.constraints import (
    Constraints,
    GroupConstraint,
    in_threat,
    project_feasible,
    violating_rows,
    violation_masks,
)
from robustops.threats import ThreatModel, validation_error_to_spec_error

__all__ = ["Feature", "FeatureKind", "FeatureSchema", "Monotone", "OneHotGroup", "Violation"]

FeatureKind = Literal["continuous", "integer", "categorical"]
Monotone = Literal["increase", "decrease"]

_MAX_LEVELS = 10_000
"""Most grid points an integer column may have: beyond, float32 cannot tell neighbours apart
reliably once scaled to [0, 1]."""


_COMPILED: dict[tuple[str, torch.dtype, str], Constraints] = {}
_COMPILED_MAX = 64


class Violation(NamedTuple):
    """One broken constraint: ``row`` of the batch, the ``feature`` (or one-hot group) name and
    a human-readable ``reason`` in raw units."""

    row: int
    feature: str
    reason: str


def _num(v: float) -> str:
    return f"{v:.6g}"


class Feature(BaseModel):
    """One column of the table.

    Attributes:
        name: unique column name (as a serving payload would carry it).
        kind: ``continuous``; ``integer`` (values on the grid ``low + k * step``); or
            ``categorical`` (a 0/1 member of a one-hot group, see :class:`OneHotGroup`).
        range: ``(low, high)`` in raw units; scaled to [0, 1]. Categorical columns: ``(0, 1)``.
        immutable: the attacker cannot change this column.
        monotone: ``increase`` or ``decrease``: the attacker may only move the value that way
            (``None``: either way). Not for categorical columns.
        step: integer columns only: the grid step in raw units (default 1); it must divide the
            range.
        neutral: the raw value the column takes when a submitter blanks it (e.g. the value an
            intake system imputes); used by the feature-masking attack. Default: the range's
            midpoint (integers: the grid point nearest to it). Categorical columns: set on the
            group.
        description: free text.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    kind: FeatureKind = "continuous"
    range: tuple[float, float] = (0.0, 1.0)
    immutable: bool = False
    monotone: Monotone | None = None
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    neutral: float | None = Field(default=None, allow_inf_nan=False)
    description: str = ""

    @model_validator(mode="after")
    def _coherent(self) -> Feature:
        where = f"feature {self.name!r}"
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"{where}, field `range`: must be finite with low < high, got {self.range}"
            )
        if self.kind == "categorical":
            if self.range != (0.0, 1.0):
                raise ValueError(
                    f"{where}, field `range`: a categorical (one-hot) column has range (0, 1), "
                    f"got {self.range}"
                )
            for field in ("monotone", "step", "neutral"):
                if getattr(self, field) is not None:
                    hint = " (set it on the one-hot group)" if field == "neutral" else ""
                    raise ValueError(
                        f"{where}, field `{field}`: not allowed on a categorical column{hint}"
                    )
        if self.kind == "continuous" and self.step is not None:
            raise ValueError(f"{where}, field `step`: applies to integer columns only")
        if self.kind == "integer":
            levels = (high - low) / self.grid_step
            if abs(levels - round(levels)) > 1e-9 * max(1.0, levels) or round(levels) < 1:
                raise ValueError(
                    f"{where}, field `step`: {_num(self.grid_step)} must divide the range "
                    f"[{_num(low)}, {_num(high)}] into a whole number of steps"
                )
            if round(levels) > _MAX_LEVELS:
                raise ValueError(
                    f"{where}, field `step`: the range holds {round(levels)} grid points, more "
                    f"than {_MAX_LEVELS}; model it as continuous"
                )
        if self.neutral is not None:
            if not low <= self.neutral <= high:
                raise ValueError(
                    f"{where}, field `neutral`: {_num(self.neutral)} is outside the range "
                    f"[{_num(low)}, {_num(high)}]"
                )
            if self.kind == "integer":
                k = (self.neutral - low) / self.grid_step
                if abs(k - round(k)) > 1e-9 * max(1.0, abs(k)):
                    raise ValueError(
                        f"{where}, field `neutral`: {_num(self.neutral)} is not on the integer "
                        f"grid {_num(low)} + k * {_num(self.grid_step)}"
                    )
        return self

    @property
    def grid_step(self) -> float:
        """The integer grid step in raw units (1 unless ``step`` says otherwise)."""
        return 1.0 if self.step is None else float(self.step)

    @property
    def levels(self) -> int:
        """Integer columns: grid intervals in the range (``(high - low) / step``); else 0."""
        if self.kind != "integer":
            return 0
        low, high = self.range
        return round((high - low) / self.grid_step)

    def neutral_raw(self) -> float:
        """The neutral (blanked) value in raw units."""
        low, high = self.range
        if self.neutral is not None:
            return float(self.neutral)
        mid = 0.5 * (low + high)
        if self.kind == "integer":
            return low + round((mid - low) / self.grid_step) * self.grid_step
        return mid


class OneHotGroup(BaseModel):
    """A categorical variable encoded one-hot over several categorical columns.

    Attributes:
        name: the variable's name (reported by :meth:`FeatureSchema.validate`).
        features: names of its member columns (at least two, all ``kind: categorical``), one per
            category.
        immutable: the attacker cannot change the category. Members may also say
            ``immutable: true``, but then all of them must.
        neutral: the member (category) a blanked field is imputed to; default the first.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    features: list[str] = Field(min_length=2)
    immutable: bool = False
    neutral: str | None = None


class FeatureSchema(BaseModel):
    """The columns of a table, in model order, and the one-hot groups among them.

    Build one from Python, or from a mapping with :meth:`parse` (errors become a
    :class:`~robustops.errors.SpecError` whose paths and messages name the field, e.g.
    ``features.3: feature 'age', field `step`: ...``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    features: list[Feature] = Field(min_length=1)
    groups: list[OneHotGroup] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="after")
    def _coherent(self) -> FeatureSchema:
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"field `features`: names must be unique; repeated: {dup}")
        by_name = {f.name: f for f in self.features}
        group_names = [g.name for g in self.groups]
        dup = sorted({n for n in group_names if group_names.count(n) > 1})
        if dup:
            raise ValueError(f"field `groups`: group names must be unique; repeated: {dup}")
        owner: dict[str, str] = {}
        for i, g in enumerate(self.groups):
            where = f"groups.{i} ({g.name!r})"
            if len(set(g.features)) != len(g.features):
                raise ValueError(f"{where}, field `features`: a member is listed twice")
            for m in g.features:
                if m not in by_name:
                    raise ValueError(f"{where}, field `features`: unknown feature {m!r}")
                if by_name[m].kind != "categorical":
                    raise ValueError(
                        f"{where}, field `features`: feature {m!r} is {by_name[m].kind}, "
                        "but one-hot members must be categorical"
                    )
                if m in owner:
                    raise ValueError(
                        f"{where}, field `features`: feature {m!r} is already in group {owner[m]!r}"
                    )
                owner[m] = g.name
            flags = {by_name[m].immutable for m in g.features}
            if len(flags) > 1:
                raise ValueError(
                    f"{where}, field `immutable`: some members are immutable and some are not; "
                    "mark all of them, or set `immutable` on the group"
                )
            if g.neutral is not None and g.neutral not in g.features:
                raise ValueError(
                    f"{where}, field `neutral`: {g.neutral!r} is not one of its features"
                )
        loose = [f.name for f in self.features if f.kind == "categorical" and f.name not in owner]
        if loose:
            raise ValueError(
                f"field `groups`: categorical features {loose} belong to no one-hot group"
            )
        return self

    @classmethod
    def parse(cls, data: Any, source: str | None = None, prefix: str = "") -> FeatureSchema:
        """Validate ``data`` (a mapping), raising :class:`SpecError` with field paths."""
        if isinstance(data, FeatureSchema):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error_to_spec_error(exc, prefix=prefix, source=source) from None

    # ------------------------------------------------------------------ structure

    @property
    def dim(self) -> int:
        """Number of columns ``D``."""
        return len(self.features)

    @property
    def names(self) -> list[str]:
        """Column names, in model order."""
        return [f.name for f in self.features]

    def index(self, name: str) -> int:
        """Position of column ``name``; :class:`SpecError` naming it if unknown."""
        for i, f in enumerate(self.features):
            if f.name == name:
                return i
        raise SpecError.single("feature", f"schema {self.name!r} has no feature {name!r}")

    def feature(self, name: str) -> Feature:
        """The column called ``name``."""
        return self.features[self.index(name)]

    def constraints(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> Constraints:
        """The schema compiled to tensors (scaled units), cached per content, dtype and device."""
        # Keyed by content: equal schemas compile alike, and a copy with other fields never
        # sees a stale entry.
        key = (self.model_dump_json(), dtype, str(torch.device(device)))
        compiled = _COMPILED.get(key)
        if compiled is None:
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            compiled = _COMPILED[key] = self._compile(dtype, torch.device(device))
        return compiled

    def _compile(self, dtype: torch.dtype, device: torch.device) -> Constraints:
        d = self.dim
        groups = []
        group_immutable = set()
        for g in self.groups:
            members = [self.index(m) for m in g.features]
            immutable = g.immutable or self.features[members[0]].immutable
            if immutable:
                group_immutable.update(members)
            neutral_pos = g.features.index(g.neutral) if g.neutral is not None else 0
            groups.append(
                GroupConstraint(
                    name=g.name,
                    columns=torch.tensor(members, dtype=torch.int64, device=device),
                    immutable=immutable,
                    neutral=neutral_pos,
                )
            )

        def mask(pred: Iterable[bool]) -> Tensor:
            return torch.tensor(list(pred), dtype=torch.bool, device=device)

        f64 = torch.float64
        neutral = torch.tensor(
            [
                self._scale_one(i, f.neutral_raw()) if f.kind != "categorical" else 0.0
                for i, f in enumerate(self.features)
            ],
            dtype=f64,
            device=device,
        )
        for gc in groups:
            neutral[gc.columns[gc.neutral]] = 1.0
        return Constraints(
            dim=d,
            names=tuple(self.names),
            immutable=mask(
                f.immutable or i in group_immutable for i, f in enumerate(self.features)
            ),
            increase=mask(f.monotone == "increase" for f in self.features),
            decrease=mask(f.monotone == "decrease" for f in self.features),
            categorical=mask(f.kind == "categorical" for f in self.features),
            integer=mask(f.kind == "integer" for f in self.features),
            levels=torch.tensor([float(f.levels) for f in self.features], dtype=f64, device=device),
            range_low=torch.zeros(d, dtype=f64, device=device),
            range_high=torch.ones(d, dtype=f64, device=device),
            neutral=neutral,
            groups=tuple(groups),
            dtype=dtype,
        )

    # ------------------------------------------------------------------ scaling

    def _scale_one(self, i: int, raw: float) -> float:
        low, high = self.features[i].range
        return (raw - low) / (high - low)

    def _spans(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        low = torch.tensor([f.range[0] for f in self.features], dtype=torch.float64)
        high = torch.tensor([f.range[1] for f in self.features], dtype=torch.float64)
        return low.to(ref.device), (high - low).to(ref.device)

    def scale(self, raw: Any) -> Tensor:
        """Raw rows ``(N, D)`` (tensor or array-like) → scaled float64 ``(low → 0, high → 1)``.
        Values are not clipped: a raw value outside its range scales outside [0, 1]."""
        t = self._as_rows(raw, "raw")
        low, span = self._spans(t)
        return (t - low) / span

    def _spans_np(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.array([f.range[0] for f in self.features], dtype=np.float64)
        high = np.array([f.range[1] for f in self.features], dtype=np.float64)
        return low, high - low

    def check_raw(self, raw: np.ndarray) -> tuple[np.ndarray, Violation | None]:
        """Raw rows ``(N, D)`` scaled (float64, the values of :meth:`scale`, computed in numpy)
        and the first violation that ``validate(raw, raw=True, limit=1)`` reports, or ``None``.

        For many rows at once (a table being loaded): the rows are checked over whole columns
        (:func:`~robustops.tabular.constraints.violating_rows`, the same tests as
        :meth:`validate`) and only the first breaking row goes through :meth:`validate`, for
        the message; its ``row`` is that row's position in ``raw``."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise SpecError.single(
                "raw",
                f"schema {self.name!r} expects rows of {self.dim} features "
                f"(shape (N, {self.dim})), got shape {tuple(x.shape)}",
            )
        low, span = self._spans_np()
        with np.errstate(over="ignore", invalid="ignore"):  # as torch: inf, checked below
            scaled = x - low  # the float64 operations of scale(), elementwise, in one array
            scaled /= span
        bad = violating_rows(scaled, self.constraints(torch.float64))
        if not bad.any():
            return scaled, None
        i = int(np.argmax(bad))
        found = self.validate(np.array(x[i : i + 1]), raw=True, limit=1)
        if not found:  # cannot happen: both test the same constraints
            raise RuntimeError(f"schema {self.name!r}: row {i} fails a check validate() passes")
        return scaled, found[0]._replace(row=i)

    def unscale(self, x: Any) -> Tensor:
        """Scaled rows ``(N, D)`` → raw units, float64."""
        t = self._as_rows(x, "x")
        low, span = self._spans(t)
        return t * span + low

    def _as_rows(self, x: Any, what: str) -> Tensor:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        if t.dim() == 1 and t.shape[0] == self.dim:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[1] != self.dim:
            raise SpecError.single(
                what,
                f"schema {self.name!r} expects rows of {self.dim} features (shape (N, {self.dim})), "
                f"got shape {tuple(t.shape)}",
            )
        return t.detach().to(torch.float64)

    # ------------------------------------------------------------------ validation

    def validate(  # type: ignore[override]  # pydantic's deprecated classmethod of that name
        self, x: Any, x_orig: Any | None = None, *, raw: bool = False, limit: int | None = None
    ) -> list[Violation]:
        """Every broken constraint of rows ``x`` ``(N, D)`` (or one row ``(D,)``), in row then
        column order.

        Checked: finite values, ranges, the integer grid (within a thousandth of a step), and
        one-hot groups (members 0 or 1, exactly one 1). With ``x_orig`` (the rows before any
        change, same shape) also: immutable columns unchanged, monotone columns moved their way
        only (exact comparisons). ``raw``: the rows are in raw units (a serving payload) rather
        than scaled. ``limit``: stop after that many violations. Messages give raw values.

        Raises :class:`SpecError` (field ``x`` / ``x_orig``) when the shape does not fit.
        """
        xs = self.scale(x) if raw else self._as_rows(x, "x")
        xo = None
        if x_orig is not None:
            xo = self.scale(x_orig) if raw else self._as_rows(x_orig, "x_orig")
            if xo.shape != xs.shape:
                raise SpecError.single(
                    "x_orig", f"must have the shape of x {tuple(xs.shape)}, got {tuple(xo.shape)}"
                )
        c = self.constraints(torch.float64, xs.device)
        masks = violation_masks(xs, xo, c)
        raw_x = self.unscale(xs)
        raw_o = self.unscale(xo) if xo is not None else None
        found: list[tuple[int, int, str, str]] = []  # row, column, feature, reason
        group_of = {int(col): g for g in c.groups for col in g.columns.tolist()}
        for kind, m in masks.items():
            for row, col in m.nonzero().tolist():
                feature = self.features[col]
                if kind == "one_hot":
                    g = group_of[col]
                    members = [self.features[j].name for j in g.columns.tolist()]
                    values = [_num(float(xs[row, j])) for j in g.columns.tolist()]
                    reason = (
                        f"one-hot group {g.name!r} must have exactly one member equal to 1 and "
                        f"the others 0; got {dict(zip(members, values, strict=True))}"
                    )
                    found.append((row, col, g.name, reason))
                    continue
                if kind == "group_immutable":
                    g = group_of[col]
                    found.append((row, col, g.name, f"one-hot group {g.name!r} is immutable"))
                    continue
                found.append((row, col, feature.name, self._reason(kind, col, row, raw_x, raw_o)))
        found.sort(key=lambda t: (t[0], t[1]))
        out = [Violation(row, name, reason) for row, _, name, reason in found]
        return out if limit is None else out[:limit]

    def _reason(self, kind: str, col: int, row: int, raw_x: Tensor, raw_o: Tensor | None) -> str:
        f = self.features[col]
        v = float(raw_x[row, col])
        low, high = f.range
        if kind == "nonfinite":
            return f"value is {v}, not a finite number"
        if kind == "range":
            return f"value {_num(v)} is outside the range [{_num(low)}, {_num(high)}]"
        if kind == "grid":
            return (
                f"value {_num(v)} is not on the integer grid {_num(low)} + k * {_num(f.grid_step)}"
            )
        assert raw_o is not None
        o = float(raw_o[row, col])
        if kind == "immutable":
            return f"immutable, but changed from {_num(o)} to {_num(v)}"
        if kind == "increase":
            return f"may only increase, but went from {_num(o)} down to {_num(v)}"
        return f"may only decrease, but went from {_num(o)} up to {_num(v)}"

    def is_feasible(
        self, x: Tensor, x_orig: Tensor | None = None, threat: ThreatModel | None = None
    ) -> Tensor:
        """``(N,)`` bool: row ``i`` of ``x`` (scaled, ``(N, D)``) breaks no constraint of the
        schema (see :meth:`validate`; immutables and monotone columns need ``x_orig``) and,
        with ``threat``, lies in its bounds and in its ball around ``x_orig`` (exact in ``x``'s
        floating-point type)."""
        xs = self._as_rows(x, "x")
        xo = self._as_rows(x_orig, "x_orig") if x_orig is not None else None
        c = self.constraints(torch.float64, xs.device)
        masks = violation_masks(xs, xo, c)
        ok = torch.ones(xs.shape[0], dtype=torch.bool, device=xs.device)
        for m in masks.values():
            ok &= ~m.any(dim=1)
        if threat is not None:
            if x_orig is None:
                raise SpecError.single("x_orig", "needed to check the threat's ball")
            ok &= in_threat(x.flatten(1), x_orig.flatten(1), threat)
        return ok

    def project(
        self,
        x_adv: Tensor,
        x_orig: Tensor,
        threat: ThreatModel,
        eps: float | Tensor | None = None,
    ) -> Tensor:
        """Map ``x_adv`` onto the feasible set around ``x_orig`` intersected with the threat's
        ball and bounds; see :func:`robustops.tabular.constraints.project_feasible`."""
        return project_feasible(
            x_adv, x_orig, self.constraints(x_orig.dtype, x_orig.device), threat, eps
        )
