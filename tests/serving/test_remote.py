"""Attacking through the wire: :class:`~robustops.models.remote.RemoteClassifier` presents a
live guard to the attack library, counts every query, keeps to its budget, batches, waits out
429s and reports abstentions. Servers are real (uvicorn on a free loopback port): in a thread
around an app whose model counts its inputs, or ``robustops serve`` in a subprocess whose JSON
request log is counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from robustops.attacks import available_attacks, build_attack
from robustops.data import load_digits
from robustops.errors import SpecError
from robustops.models import mlp
from robustops.models.remote import QueryBudgetExceeded, RemoteClassifier, RemoteError
from robustops.serving.config import ServeConfig
from robustops.serving.limits import MemoryLimiter
from robustops.serving.model import module_logits
from robustops.serving.validation import Batch
from robustops.threats import Knowledge, ThreatModel

from .fuzz_helpers import (
    CountingLogits,
    in_process_guard,
    live_guard,
    threaded_server,
    tiny_served_model,
    train_tiny,
)

DIGITS = load_digits()
X = DIGITS.x_test[:12].float()


def _threat(knowledge: Knowledge, budget: int | None = None, eps: float = 0.3) -> ThreatModel:
    return ThreatModel(
        name="linf", norm="linf", epsilon=eps, knowledge=knowledge, query_budget=budget
    )


def _counting_guard(tmp_path: Path, **kw: Any) -> tuple[Any, CountingLogits]:
    counting = CountingLogits(module_logits(mlp(input_dim=64, hidden=(16,), seed=0).eval()))
    return in_process_guard(tmp_path, tiny_served_model(logits=counting), **kw), counting


def test_decision_based_attack_counts_every_query(tmp_path: Path) -> None:
    """Uniform noise (decision-based) through HTTP in chunks of 5: the adapter's count, the
    model's own count on the server and the attack's count (+ its verification pass) agree."""
    g, counting = _counting_guard(tmp_path)
    with threaded_server(g.app) as url, RemoteClassifier(url, g.key, max_batch=5) as remote:
        assert remote.knowledge == "decision-based" and remote.num_classes == 10
        y = remote(X).argmax(1)  # the service's own labels: every sample starts clean-correct
        assert remote.queries == counting.inputs == len(X) and remote.requests == 3
        remote.reset_counters()
        counting.inputs = 0
        before = g.app.paths.get(("/v1/predict", 200), 0)

        attack = build_attack("uniform_noise", _threat("decision-based", budget=8), draws=50)
        result = attack(remote, X, y)

        assert int(result.queries.max()) <= 8  # the threat's per-sample budget
        assert remote.queries == counting.inputs == int(result.queries.sum()) + len(X)
        assert remote.requests == g.app.paths[("/v1/predict", 200)] - before
        assert remote.rate_limited == remote.abstentions == 0
        assert torch.equal(result.predictions, remote(result.adversarial).argmax(1))


def test_labels_output_is_one_hot_and_top1_is_partial_scores(tmp_path: Path) -> None:
    g, _ = _counting_guard(tmp_path)
    with threaded_server(g.app) as url:
        labels = RemoteClassifier(url, g.key)
        top1 = RemoteClassifier(url, g.key, output="top1")
        assert top1.knowledge == "score-based"
        one_hot = labels(X)
        assert one_hot.shape == (len(X), 11) and torch.equal(one_hot.sum(1), torch.ones(len(X)))
        scores = top1(X)
        answers = top1.answers(X)
        assert torch.equal(scores.argmax(1), one_hot.argmax(1))
        for row, (label, confidence) in zip(scores, answers, strict=True):
            assert label is not None
            assert row[label].exp().item() == pytest.approx(confidence, rel=1e-5)
            others = torch.cat([row[:label], row[label + 1 : 10]]).exp()
            assert torch.allclose(others, torch.full_like(others, (1 - confidence) / 9), rtol=1e-4)
            assert row[10] < row[:10].min()  # the abstain column: known not to be the answer


def test_score_based_attack_on_partial_scores(tmp_path: Path) -> None:
    """Square reads margins from the top-1 confidence; its queries are counted the same way."""
    g, counting = _counting_guard(tmp_path)
    with threaded_server(g.app) as url, RemoteClassifier(url, g.key, output="top1") as remote:
        y = remote(X).argmax(1)
        remote.reset_counters()
        counting.inputs = 0
        attack = build_attack("square", _threat("score-based", budget=15, eps=0.2))
        result = attack(remote, X, y)
        assert int(result.queries.max()) <= 15
        assert remote.queries == counting.inputs == int(result.queries.sum()) + len(X)


def test_query_budget_is_never_passed(tmp_path: Path) -> None:
    """A forward that would pass the adapter's budget is refused before anything is sent."""
    g, counting = _counting_guard(tmp_path)
    with threaded_server(g.app) as url:
        remote = RemoteClassifier(url, g.key, max_batch=4, query_budget=30)
        y = remote(X).argmax(1)
        attack = build_attack("uniform_noise", _threat("decision-based"), draws=50)
        with pytest.raises(QueryBudgetExceeded):
            attack(remote, X, y)
        assert remote.queries == counting.inputs <= 30
        with pytest.raises(QueryBudgetExceeded):
            remote(X[: 31 - remote.queries])
        assert counting.inputs == remote.queries


def test_rate_limit_is_waited_out(tmp_path: Path) -> None:
    """429 with Retry-After: the adapter waits (a fake clock shared with the limiter) and
    retries; every 429 is counted, and a wait past ``max_wait`` raises."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = MemoryLimiter(rate=1.0, burst=2, clock=lambda: now[0])
    g, counting = _counting_guard(tmp_path, limiter=limiter)
    with threaded_server(g.app) as url:
        remote = RemoteClassifier(url, g.key, max_batch=1, sleep=sleep)
        remote(X[:5])
        assert remote.queries == counting.inputs == 5
        assert remote.rate_limited == g.app.paths[("/v1/predict", 429)] == 3
        assert remote.requests == 8 and now[0] == 3.0
        impatient = RemoteClassifier(url, g.key, max_batch=1, max_wait=0.5, sleep=sleep)
        with pytest.raises(RemoteError) as err:
            impatient(X[:1])
        assert err.value.status == 429


class _AbstainBright:
    """Abstains on inputs whose mean pixel is over 0.5 (features are the flattened inputs)."""

    def decide(self, logits: Tensor, features: Tensor | None) -> list[list[str]]:
        assert features is not None
        return [["test: bright"] if float(f.mean()) > 0.5 else [] for f in features]


def test_abstentions_are_their_own_outcome(tmp_path: Path) -> None:
    model = tiny_served_model()
    plain = model.logits
    model.features = lambda x: (plain(x), x.flatten(1))
    g = in_process_guard(tmp_path, model, abstainer=_AbstainBright())
    x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8), torch.full((1, 8, 8), 0.2)])
    with threaded_server(g.app) as url:
        labels = RemoteClassifier(url, g.key)
        out = labels(x)
        assert out.argmax(1)[1] == labels.abstain_index == 10
        assert int(out.argmax(1)[0]) < 10 and int(out.argmax(1)[2]) < 10
        assert labels.abstentions == 1 and labels.answers(x[1:2])[0][0] is None
        top1 = RemoteClassifier(url, g.key, output="top1")
        scores = top1(x)
        assert scores.argmax(1)[1] == 10 and scores[1, 10] == 0.0
        # the library's success test: an abstention is not the true label (untargeted)...
        from robustops.attacks import is_adversarial

        y = torch.tensor([int(out.argmax(1)[0])] * 3)
        assert bool(is_adversarial(out, y, None)[1])
        # ...and never a target
        assert not bool(is_adversarial(out, y, torch.tensor([3, 3, 3]))[1])


class _Policy:
    """A detector stub: flags inputs with mean over 0.25, blocks over 0.75."""

    def observe(
        self, key: str, batch: Batch, embedding: Tensor | None, *, own: bool = False
    ) -> tuple[str, list[str]]:
        assert isinstance(batch.inputs, Tensor)
        m = float(batch.inputs.mean())
        return ("block", ["test"]) if m > 0.75 else ("flag", ["test"]) if m > 0.25 else ("ok", [])


def test_flags_are_counted_and_a_block_raises(tmp_path: Path) -> None:
    g = in_process_guard(tmp_path, detector=_Policy())
    with threaded_server(g.app) as url:
        remote = RemoteClassifier(url, g.key, max_batch=1)
        remote(torch.stack([torch.zeros(1, 8, 8), torch.full((1, 8, 8), 0.5)]))
        assert remote.flagged == 1 and remote.queries == 2
        with pytest.raises(RemoteError) as err:
            remote(torch.ones(1, 1, 8, 8))
        assert err.value.status == 403 and remote.queries == 2


def test_large_bodies_are_split(tmp_path: Path) -> None:
    """413: the chunk is halved until the body fits."""
    config = ServeConfig.model_validate({"limits": {"max_body_bytes": 4096}})
    g, counting = _counting_guard(tmp_path, config=config)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with threaded_server(g.app) as url:
        remote = RemoteClassifier(url, g.key, max_batch=8)
        assert remote(x).shape == (8, 11)
        assert remote.queries == counting.inputs == 8
        assert g.app.paths[("/v1/predict", 413)] >= 1


def test_refusals(tmp_path: Path) -> None:
    g, counting = _counting_guard(tmp_path)
    with threaded_server(g.app) as url:
        with pytest.raises(RemoteError) as err:
            RemoteClassifier(url, "rok_00000000_" + "A" * 43)
        assert err.value.status == 401
        remote = RemoteClassifier(url, g.key)
        with pytest.raises(SpecError):
            remote(torch.zeros(2, 64))  # wrong shape: refused before sending
        with pytest.raises(RemoteError) as err:
            remote(torch.full((1, 1, 8, 8), 2.0))  # out of the bounds: the guard's 422
        assert err.value.status == 422 and "[0.0, 1.0]" in str(err.value)
        assert remote.queries == counting.inputs == 0
    with pytest.raises(SpecError):
        RemoteClassifier("ftp://example.org", "k")
    with pytest.raises(RemoteError):  # nothing listens there any more
        RemoteClassifier(url, g.key, timeout=2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``robustops serve`` (a subprocess, uvicorn) of a digits MLP trained through the CLI."""
    workdir = tmp_path_factory.mktemp("remote")
    spec = train_tiny(workdir)
    with live_guard(workdir, spec, key_name="attacker") as live:
        yield live


def _log_lines(live: Any) -> list[dict[str, Any]]:
    return [r for r in live.log_records() if r.get("event") == "predict"]


ATTACKS = [
    ("uniform_noise", "labels", {"draws": 40}, 1),
    ("square", "top1", {}, 8),
    *[("hopskipjump", "labels", {}, 16) for _ in ["hsj"] if "hopskipjump" in available_attacks()],
]


@pytest.mark.parametrize(
    ("name", "output", "options", "batch"), ATTACKS, ids=[a[0] for a in ATTACKS]
)
def test_attack_through_robustops_serve(
    served: Any, name: str, output: str, options: dict[str, Any], batch: int
) -> None:
    """The library's attacks against ``robustops serve`` over HTTP with a budget of 20 queries
    per sample: the server's JSON log has exactly one line per request the adapter counted, the
    inputs answered are what the attack reports plus its verification pass, and the budget
    holds. (HopSkipJump joins when the attack library has it.)"""
    remote = RemoteClassifier(served.url, served.key, max_batch=batch, output=output)  # type: ignore[arg-type]
    x = DIGITS.x_test[:10].float()
    y = remote(x).argmax(1)
    remote.reset_counters()
    lines_before = len(_log_lines(served))

    attack = build_attack(name, _threat(remote.knowledge, budget=20, eps=0.3), **options)
    result = attack(remote, x, y)

    lines = _log_lines(served)[lines_before:]
    assert len(lines) == remote.requests and all(r["status"] == 200 for r in lines)
    assert all(r["key"] == "attacker" for r in lines)
    assert remote.queries == int(result.queries.sum()) + len(x)
    assert int(result.queries.max()) <= 20
    if batch == 1:
        assert remote.queries == len(lines)
    print(
        f"{name}: {int(result.success.sum())}/{len(x)} adversarial, "
        f"{remote.queries} queries in {remote.requests} requests"
    )
