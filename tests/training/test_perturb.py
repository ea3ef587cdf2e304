"""Inner maximisation: inside the budget and bounds; draws do not depend on the process count."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustops.training import DistContext
from robustops.training.perturb import BatchRandom, Perturbation, SearchConfig, search

from .conftest import tiny_mlp


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 1.0),
    steps=st.integers(1, 4),
    rel=st.floats(0.01, 3.0),
    trades=st.booleans(),
    bf16=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_search_stays_in_ball_and_bounds(
    kind: str, eps: float, steps: int, rel: float, trades: bool, bf16: bool, seed: int
) -> None:
    model = tiny_mlp().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    adv = search(
        model, x, y, Perturbation(kind, epsilon=eps), BatchRandom(gen, DistContext()),
        SearchConfig(steps=steps, rel_step=rel, loss="kl" if trades else "ce",
                     precision="bfloat16" if bf16 else "float32"),
    )  # fmt: skip
    assert adv.dtype == x.dtype
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if kind == "linf" else delta.norm(dim=1)
    assert bool((size <= eps).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


@settings(max_examples=15, deadline=None)
@given(start=st.floats(0.0, 3.0), rel=st.floats(0.1, 2.0), eps=st.floats(0.01, 0.5))
def test_unclipped_fast_step_stays_in_the_wider_ball(start: float, rel: float, eps: float) -> None:
    model = tiny_mlp().eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    adv = search(model, x, y, Perturbation("linf", epsilon=eps), BatchRandom(gen, DistContext()),
                 SearchConfig(steps=1, rel_step=rel, start_scale=start, clip=False))  # fmt: skip
    assert float((adv - x).abs().max()) <= (start + rel) * eps * (1 + 1e-6)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_search_raises_the_loss() -> None:
    model = tiny_mlp().eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    adv = search(model, x, y, Perturbation("linf", epsilon=0.2), BatchRandom(gen, DistContext()),
                 SearchConfig(steps=5, rel_step=0.5))  # fmt: skip
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert float(ce(model(adv), y)) > float(ce(model(x), y))


def test_patch_changes_only_a_square() -> None:
    model = tiny_mlp().eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    adv = search(model, x, y, Perturbation("patch", size=3), BatchRandom(gen, DistContext()),
                 SearchConfig(steps=2, rel_step=0.25))  # fmt: skip
    changed = (adv != x).squeeze(1)
    assert bool((changed.flatten(1).sum(1) <= 9).all())
    rows, cols = changed.any(2), changed.any(1)
    assert bool((rows.sum(1) <= 3).all()) and bool((cols.sum(1) <= 3).all())


def test_draws_split_across_ranks_like_one_process() -> None:
    """Rank r of N gets rows r::N of what one process draws for the global batch."""
    like = torch.zeros(6, 1, 8, 8)
    whole = BatchRandom(torch.Generator().manual_seed(3), DistContext()).uniform(like)
    for rank in range(2):
        part = BatchRandom(torch.Generator().manual_seed(3), DistContext(rank, 2)).uniform(like[:3])
        assert torch.equal(part, whole[rank::2])


def test_noise_is_clipped_and_not_searched() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=gen)
    out = search(tiny_mlp(), x, torch.zeros(8, dtype=torch.long), Perturbation("noise", sigma=0.5),
                 BatchRandom(gen, DistContext()), SearchConfig(steps=3, rel_step=1.0))  # fmt: skip
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and not torch.equal(out, x)
