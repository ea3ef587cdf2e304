"""Ensembles: combine rules, end-to-end gradients, disagreement, loading from a spec factory."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from robustops import ThreatModel
from robustops.attacks import build_attack
from robustops.data import Dataset
from robustops.models import (
    Ensemble,
    MultiHead,
    SmallCNN,
    build_model,
    mlp,
    save_weights,
)
from robustops.training import StandardConfig, train_standard


@pytest.fixture(scope="module")
def second_member(mnist: Dataset) -> nn.Module:
    model = mlp(input_dim=784, num_classes=10, seed=1)
    train_standard(
        model, mnist.x_train, mnist.y_train, StandardConfig(epochs=1, batch_size=128, seed=1)
    )
    return model.eval()


def test_combine_rules(trained_cnn: SmallCNN, second_member: nn.Module, mnist: Dataset) -> None:
    x = mnist.x_test[:50]
    with torch.no_grad():
        a, b = trained_cnn(x), second_member(x)
        by_logits = Ensemble([trained_cnn, second_member])(x)
        by_probs = Ensemble([trained_cnn, second_member], combine="probs")(x)
        weighted = Ensemble([trained_cnn, second_member], weights=[3, 1])(x)
    assert torch.allclose(by_logits, (a + b) / 2, atol=1e-5)
    assert torch.allclose(by_probs.exp(), (a.softmax(1) + b.softmax(1)) / 2, atol=1e-5)
    assert torch.allclose(weighted, 0.75 * a + 0.25 * b, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        Ensemble([trained_cnn, second_member], weights=[1, -1])
    with pytest.raises(ValueError, match="combine"):
        Ensemble([trained_cnn], combine="max")  # type: ignore[arg-type]


def test_attacked_end_to_end(
    trained_cnn: SmallCNN, second_member: nn.Module, mnist: Dataset
) -> None:
    ens = Ensemble([trained_cnn, second_member]).eval()
    x, y = mnist.x_test[:200], mnist.y_test[:200]
    with torch.no_grad():
        ok = ens(x).argmax(1) == y
    x, y = x[ok], y[ok]
    threat = ThreatModel(name="linf-0.15", norm="linf", epsilon=0.15)
    pgd = build_attack("pgd", threat, steps=20, seed=0)
    # The input gradient of the ensemble involves both members.
    xg = x[:8].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(ens(xg), y[:8]).backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0
    direct = pgd(ens, x, y)
    transferred = pgd(trained_cnn, x, y)  # attack one member, hope it transfers
    with torch.no_grad():
        transfer_success = (ens(transferred.adversarial).argmax(1) != y).float().mean()
    assert float(direct.success.float().mean()) >= float(transfer_success)
    assert float(direct.success.float().mean()) > 0.5


def test_disagreement(trained_cnn: SmallCNN, second_member: nn.Module, mnist: Dataset) -> None:
    x = mnist.x_test[:200]
    same = Ensemble([trained_cnn, trained_cnn])
    for kind in ("vote", "js"):
        assert torch.allclose(same.disagreement(x, kind), torch.zeros(200), atol=1e-6)  # type: ignore[arg-type]
    mixed = Ensemble([trained_cnn, second_member])
    vote, js = mixed.disagreement(x, "vote"), mixed.disagreement(x, "js")
    assert vote.shape == js.shape == (200,)
    assert bool(((vote >= 0) & (vote <= 1) & (js >= 0) & (js <= 1)).all())
    with torch.no_grad():
        members_differ = trained_cnn(x).argmax(1) != second_member(x).argmax(1)
    assert torch.equal(vote > 0, members_differ)  # one of two members dissents exactly there
    assert float(js[members_differ].mean()) > float(js[~members_differ].mean())
    # Noise far off the data manifold splits the members more often than test digits do.
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 1, 28, 28, generator=gen)
    assert float(mixed.disagreement(noise, "js").mean()) > float(js.mean())


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out: Tensor = self.body(x)
        return out


def test_multi_head_runs_the_trunk_once(mnist: Dataset) -> None:
    trunk = _Counting()
    heads = [nn.Linear(16, 10) for _ in range(3)]
    model = MultiHead(trunk, heads)
    out = model(mnist.x_test[:4])
    assert out.shape == (4, 10) and trunk.calls == 1
    assert model.member_logits(mnist.x_test[:4]).shape == (3, 4, 10)


def test_built_from_spec_factory_with_one_weights_file(
    trained_cnn: SmallCNN, second_member: nn.Module, mnist: Dataset, tmp_path
) -> None:
    ens = Ensemble([trained_cnn, second_member])
    path = tmp_path / "ens.safetensors"
    sha = save_weights(ens, path)
    kwargs = {
        "members": [
            {"factory": "robustops.models:small_cnn", "kwargs": {}},
            {"factory": "robustops.models:mlp", "kwargs": {"input_dim": 784}},
        ]
    }
    loaded = build_model("robustops.models:ensemble", kwargs, path, sha256=sha)
    x = mnist.x_test[:20]
    with torch.no_grad():
        assert torch.allclose(loaded(x), ens(x), atol=1e-6)
    from robustops.errors import SpecError

    with pytest.raises(SpecError) as info:
        build_model("robustops.models:ensemble", {"members": [{"factory": "nope:x"}]})
    assert "model.kwargs.members.0.factory" in str(info.value.errors)
