"""Hypothesis strategies of the tabular tests: random schemas and rows that satisfy them."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from robustops.tabular import Feature, FeatureSchema, OneHotGroup


@st.composite
def schemas(draw: st.DrawFn) -> FeatureSchema:
    """A random schema: continuous, integer and one-hot columns in random order, some immutable,
    some monotone, integer grids of 1-20 steps."""
    n_cont = draw(st.integers(0, 4))
    n_int = draw(st.integers(0, 3))
    n_groups = draw(st.integers(0, 2))
    if n_cont + n_int + n_groups == 0:
        n_cont = 1
    features: list[Feature] = []
    for i in range(n_cont):
        low = draw(st.sampled_from([0.0, -5.0, 10.0]))
        features.append(
            Feature(
                name=f"c{i}",
                range=(low, low + draw(st.sampled_from([1.0, 3.5, 100.0]))),
                immutable=draw(st.booleans()) and draw(st.booleans()),
                monotone=draw(st.sampled_from([None, None, "increase", "decrease"])),
            )
        )
    for i in range(n_int):
        step = draw(st.sampled_from([1.0, 0.5, 2.0]))
        levels = draw(st.integers(1, 20))
        features.append(
            Feature(
                name=f"i{i}",
                kind="integer",
                range=(0.0, step * levels),
                step=step,
                immutable=draw(st.booleans()) and draw(st.booleans()),
                monotone=draw(st.sampled_from([None, None, "increase", "decrease"])),
            )
        )
    groups = []
    for g in range(n_groups):
        size = draw(st.integers(2, 4))
        members = [f"g{g}_{j}" for j in range(size)]
        features += [Feature(name=m, kind="categorical") for m in members]
        groups.append(
            OneHotGroup(
                name=f"g{g}",
                features=members,
                immutable=draw(st.booleans()) and draw(st.booleans()),
            )
        )
    order = draw(st.permutations(range(len(features))))
    return FeatureSchema(name="random", features=[features[i] for i in order], groups=groups)


def feasible_rows(schema: FeatureSchema, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random rows that satisfy ``schema`` (scaled, float32), corners included."""
    x = torch.rand((n, schema.dim), generator=gen, dtype=torch.float64)
    x[0, :] = 0.0
    if n > 1:
        x[1, :] = 1.0
    for j, f in enumerate(schema.features):
        if f.kind == "integer":
            x[:, j] = (x[:, j] * f.levels).round() / f.levels
    for g in schema.groups:
        cols = [schema.index(m) for m in g.features]
        pick = torch.randint(0, len(cols), (n,), generator=gen)
        x[:, cols] = torch.nn.functional.one_hot(pick, len(cols)).double()
    return x.float()
