"""The text trainer (:func:`robustops.training.text.fit_text`) and its adversarial data
augmentation (``Recipe.augment``), the factory :func:`char_ngram_classifier`, and the split of
:func:`train_text_classifier` into the two (bit-identical weights)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.attacks import build_attack
from robustops.attacks.text import TextEdit, apply_edits
from robustops.data.sms_spam import TextDataset
from robustops.errors import SpecError
from robustops.text import (
    CharNgramVocab,
    EmbeddingBagClassifier,
    TorchTextClassifier,
    char_ngram_classifier,
    sanitize,
    text_accuracy,
)
from robustops.threats import ThreatModel
from robustops.training import fit
from robustops.training.recipe import AugmentSpec, Recipe, ScheduleSpec
from robustops.training.schedules import learning_rate
from robustops.training.text import (
    TextEpochMetrics,
    TextTrainResult,
    fit_text,
    text_recipe_errors,
    train_text_classifier,
)

SPAM_TO_HAM = {
    "name": "spam-to-ham",
    "norm": "word-edits",
    "epsilon": 0.3,
    "targeted": True,
    "target_class": 0,
}


SMALL = {"lr": 0.1, "batch_size": 32}  # learns the 800 texts of `small` in 2-3 epochs


def _augment(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"threat": SPAM_TO_HAM, "attacks": [{"name": "char-edit"}]}
    return {**base, **kw}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def small(sms: TextDataset) -> tuple[list[str], Tensor]:
    """The first 800 training texts (~100 spam) and their labels."""
    return list(sms.texts_train[:800]), sms.y_train[:800].clone()


def _small_classifier(texts: Sequence[str], seed: int = 0) -> TorchTextClassifier:
    return char_ngram_classifier(texts, embed_dim=16, min_count=1, seed=seed)


# --- factory + trainer == train_text_classifier ---------------------------------------------


def _legacy_train(
    texts: Sequence[str],
    labels: Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.02,
    seed: int = 0,
    embed_dim: int = 64,
    ngram_range: tuple[int, int] = (1, 4),
    vocab_size: int = 50_000,
    min_count: int = 2,
    preprocess: Any = None,
) -> EmbeddingBagClassifier:
    """The training loop of ``train_text_classifier`` before the factory/trainer split."""
    y = labels.to(torch.int64)
    k = int(y.max()) + 1
    prepared = [preprocess(t) for t in texts] if preprocess is not None else list(texts)
    probe = CharNgramVocab([], ngram_range=ngram_range, lowercase=True)
    grams = [probe.ngrams_of(t) for t in prepared]
    vocab = probe._from_grams(grams, vocab_size, min_count)
    encoded = [torch.tensor(vocab.ids_of(g), dtype=torch.int64) for g in grams]
    gen = make_generator(seed)
    module = EmbeddingBagClassifier(len(vocab), num_classes=k, embed_dim=embed_dim, sparse=True)
    module.reset_parameters(gen)
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SparseAdam(list(module.embedding.parameters()), lr=lr),
        torch.optim.Adam(module.fc.parameters(), lr=lr),
    ]
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    n = len(prepared)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            parts = [encoded[i] for i in batch]
            lengths = torch.tensor([0] + [p.numel() for p in parts[:-1]], dtype=torch.int64)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss = loss_fn(module(torch.cat(parts), torch.cumsum(lengths, 0)), y[batch])
            loss.backward()
            for opt in optimizers:
                opt.step()
    return module.eval()


def test_train_text_classifier_unchanged_by_the_split(
    sms: TextDataset, spam_model: TorchTextClassifier
) -> None:
    # the session fixture is train_text_classifier(texts_train, y_train, seed=0)
    legacy = _legacy_train(sms.texts_train, sms.y_train, seed=0)
    assert _same_weights(spam_model.module, legacy)


def test_train_text_classifier_unchanged_other_options(small: tuple[list[str], Tensor]) -> None:
    texts, y = small
    opts: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "seed": 3,
        "embed_dim": 16,
        "ngram_range": (2, 3),
        "vocab_size": 3000,
        "min_count": 1,
        "preprocess": sanitize,
    }
    legacy = _legacy_train(texts, y, **opts)
    new = train_text_classifier(texts, y, **opts)
    assert _same_weights(new.module, legacy)
    assert new.preprocess is sanitize
    # the factory and the trainer, sharing one generator, are that function
    gen = make_generator(3)
    clf = char_ngram_classifier(
        texts,
        embed_dim=16,
        ngram_range=(2, 3),
        vocab_size=3000,
        min_count=1,
        preprocess=sanitize,
        seed=gen,
    )
    fit_text(clf, texts, y, Recipe(epochs=2, batch_size=32, lr=0.05), seed=gen)
    assert clf.vocab == new.vocab
    assert _same_weights(clf.module, legacy)


def test_char_ngram_classifier_factory(small: tuple[list[str], Tensor]) -> None:
    texts, _ = small
    a = char_ngram_classifier(texts, num_classes=3, embed_dim=8, ngram_range=[2, 3], seed=1)
    b = char_ngram_classifier(texts, num_classes=3, embed_dim=8, ngram_range=(2, 3), seed=1)
    assert _same_weights(a.module, b.module) and a.vocab == b.vocab
    assert a.num_classes == 3 and a.vocab.ngram_range == (2, 3)
    assert a.predict_logits(texts[:4]).shape == (4, 3)
    by_name = char_ngram_classifier(texts, preprocess="robustops.text.sanitize:sanitize")
    assert by_name.preprocess is sanitize
    with pytest.raises(SpecError) as err:
        char_ngram_classifier(texts, preprocess="robustops.text.sanitize:nothing")
    assert err.value.errors[0][0] == "model.kwargs.preprocess"
    with pytest.raises(SpecError):
        char_ngram_classifier([])


# --- the trainer ------------------------------------------------------------------------------


def test_schedule_and_metrics(small: tuple[list[str], Tensor]) -> None:
    texts, y = small
    recipe = Recipe(epochs=3, batch_size=32, lr=0.1, schedule=ScheduleSpec(kind="cosine"))
    seen: list[TextEpochMetrics] = []
    clf = _small_classifier(texts)
    result = fit_text(clf, texts, y, recipe, seed=0, on_epoch=seen.append)
    assert isinstance(result, TextTrainResult) and result.augmented == []
    assert seen == result.history and [m.epoch for m in seen] == [1, 2, 3]
    n_batches = 25
    for m in seen:
        last_t = m.epoch - 1 + (n_batches - 1) / n_batches
        assert m.lr == learning_rate(recipe.schedule, 0.1, last_t, 3)
        assert m.n_train == 800 and m.augment is None
        json.dumps(m.to_json())
    assert seen[-1].lr < seen[0].lr < 0.1
    assert seen[-1].loss < seen[0].loss and seen[-1].train_accuracy > 0.9
    assert not clf.module.training


def _run(
    texts: Sequence[str], y: Tensor, recipe: Recipe, seed: int = 0
) -> tuple[TorchTextClassifier, TextTrainResult]:
    clf = _small_classifier(texts)
    return clf, fit_text(clf, texts, y, recipe, seed=seed)


def test_augmentation_is_deterministic(small: tuple[list[str], Tensor]) -> None:
    texts, y = small
    recipe = Recipe.model_validate(
        {
            "epochs": 3,
            **SMALL,
            "augment": _augment(
                samples=40,
                start_epoch=2,
                attacks=[{"name": "char-edit"}, {"name": "homoglyph"}],
            ),
        }
    )
    a, ra = _run(texts, y, recipe)
    b, rb = _run(texts, y, recipe)
    assert ra.augmented, "nothing fooled the model: the test checks nothing"
    assert _same_weights(a.module, b.module)
    assert ra.augmented == rb.augmented
    c, _ = _run(texts, y, recipe, seed=1)
    assert not _same_weights(a.module, c.module)
    json.dumps([t.to_json() for t in ra.augmented])


class _Recorder:
    """Wraps a text attack; records what it was asked to attack."""

    def __init__(self, attack: Any, calls: list[dict[str, Any]]) -> None:
        self.attack, self.calls, self.name = attack, calls, attack.name

    def __call__(self, model: Any, texts: list[str], labels: Tensor, targets: Tensor | None) -> Any:
        self.calls.append({"texts": texts, "labels": labels, "targets": targets})
        return self.attack(model, texts, labels, targets=targets)


def test_rounds_run_on_schedule_and_attack_only_attackable(
    small: tuple[list[str], Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, y = small
    calls: list[dict[str, Any]] = []
    original = AugmentSpec.build_attacks

    def recording(self: AugmentSpec, seed: int) -> list[Any]:
        return [_Recorder(a, calls) for a in original(self, seed)]

    monkeypatch.setattr(AugmentSpec, "build_attacks", recording)
    recipe = Recipe.model_validate(
        {
            "epochs": 6,
            **SMALL,
            "augment": _augment(
                samples=30,
                start_epoch=2,
                every=2,
                attacks=[{"name": "char-edit"}, {"name": "leet"}],
            ),
        }
    )
    _, result = _run(texts, y, recipe)
    rounds = [m.epoch for m in result.history if m.augment is not None]
    assert rounds == [2, 4, 6]
    assert {t.epoch for t in result.augmented} <= {2, 4, 6}
    assert len(calls) == 2 * 3  # two attacks per round
    spam = {t for t, label in zip(texts, y.tolist(), strict=True) if label == 1}
    for m in result.history:
        if m.augment is not None:
            assert m.augment.attacked == 30
    for call in calls:  # round robin: 15 texts per attack, all spam, all pushed to ham
        assert len(call["texts"]) == 15
        assert set(call["texts"]) <= spam
        assert bool((call["labels"] == 1).all()) and bool((call["targets"] == 0).all())
    # untargeted: every class is attackable, ham included
    calls.clear()
    untargeted = {"name": "any", "norm": "word-edits", "epsilon": 0.3}
    recipe = Recipe.model_validate(
        {"epochs": 2, **SMALL, "augment": _augment(threat=untargeted, samples=200)}
    )
    _run(texts, y, recipe)
    labels = torch.cat([c["labels"] for c in calls])
    assert labels.numel() == 200 and set(labels.tolist()) == {0, 1}
    assert all(c["targets"] is None for c in calls)


def test_pool_replace_keeps_only_the_latest_round(small: tuple[list[str], Tensor]) -> None:
    texts, y = small
    spec = _augment(samples=60, start_epoch=2, every=1, attacks=[{"name": "char-edit"}])
    out = {}
    for pool in ("accumulate", "replace"):
        recipe = Recipe.model_validate({"epochs": 4, **SMALL, "augment": {**spec, "pool": pool}})
        out[pool] = _run(texts, y, recipe)[1]
    acc = [m.augment for m in out["accumulate"].history[1:]]
    rep = [m.augment for m in out["replace"].history[1:]]
    assert all(r is not None for r in acc + rep)
    assert sum(r.added for r in rep if r is not None) >= 3, "too few adversarial texts to check"
    total = 0
    for m in out["accumulate"].history[1:]:
        assert m.augment is not None
        total += m.augment.added
        assert m.augment.pool_size == total and m.n_train == 800 + total
    for m in out["replace"].history[1:]:
        assert m.augment is not None
        assert m.augment.pool_size == m.augment.added and m.n_train == 800 + m.augment.added
    assert out["replace"].history[0].n_train == 800
    assert out["replace"].history[-1].n_train < out["accumulate"].history[-1].n_train
    assert len(out["replace"].augmented) == sum(r.added for r in rep if r is not None)


# --- validation -------------------------------------------------------------------------------


def _recipe_error_paths(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as err:
        Recipe.model_validate(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.value.errors()]


def test_augment_spec_validation(small: tuple[list[str], Tensor]) -> None:
    linf = {"name": "l", "norm": "linf", "epsilon": 0.1}
    errs = _recipe_error_paths({"augment": _augment(threat=linf)})
    assert errs[0][0] == "augment.threat" and "word-edits" in errs[0][1]
    errs = _recipe_error_paths({"augment": _augment(attacks=[])})
    assert errs[0][0] == "augment.attacks"
    errs = _recipe_error_paths({"augment": _augment(samples=0)})
    assert errs[0][0] == "augment.samples"
    errs = _recipe_error_paths({"augment": _augment(poool="replace")})
    assert errs[0][0] == "augment.poool"
    errs = _recipe_error_paths({"epochs": 3, "augment": _augment(start_epoch=4)})
    assert "start_epoch" in errs[0][1]

    def build_errors(attacks: list[dict[str, Any]]) -> list[tuple[str, str]]:
        spec = AugmentSpec.model_validate(_augment(attacks=attacks))
        with pytest.raises(SpecError) as err:
            spec.build_attacks(0)
        return err.value.errors

    assert [p for p, _ in build_errors([{"name": "pgd"}])] == ["augment.attacks.0.name"]
    paths = [p for p, _ in build_errors([{"name": "char-edit"}, {"name": "leet", "foo": 1}])]
    assert paths == ["augment.attacks.1.foo"]
    paths = [p for p, _ in build_errors([{"name": "char-edit", "candidates_per_kind": 0}])]
    assert paths == ["augment.attacks.0.candidates_per_kind"]
    paths = [p for p, _ in build_errors([{"name": "char-edit", "max_edit_share": 0.5}])]
    assert paths == ["augment.attacks.0.max_edit_share"]
    assert [p for p, _ in build_errors([{"name": "leet", "seed": 3}])] == ["augment.attacks.0.seed"]
    built = AugmentSpec.model_validate(_augment()).build_attacks(7)
    assert built[0].seed == 7 and built[0].targeted and built[0].max_edit_share == 0.3

    # the trainer refuses bad attacks before training (train.-prefixed) and a target class the
    # model does not have
    texts, y = small
    bad = Recipe.model_validate({"augment": _augment(attacks=[{"name": "char-edit", "x": 1}])})
    with pytest.raises(SpecError) as err:
        fit_text(_small_classifier(texts), texts, y, bad)
    assert err.value.errors[0][0] == "train.augment.attacks.0.x"
    far = Recipe.model_validate({"augment": _augment(threat={**SPAM_TO_HAM, "target_class": 5})})
    with pytest.raises(SpecError) as err:
        fit_text(_small_classifier(texts), texts, y, far)
    assert err.value.errors[0][0] == "train.augment.threat.target_class"


def test_image_trainer_refuses_augment() -> None:
    recipe = Recipe.model_validate({"augment": _augment()})
    with pytest.raises(SpecError) as err:
        fit(nn.Linear(4, 2), torch.rand(8, 4), torch.zeros(8, dtype=torch.int64), recipe)
    assert err.value.errors[0][0] == "train.augment"
    assert "text" in err.value.errors[0][1]


def test_text_recipe_errors(small: tuple[list[str], Tensor]) -> None:
    pgd = Recipe.model_validate(
        {
            "objective": {"name": "pgd-at", "steps": 3},
            "threats": [{"kind": "linf", "epsilon": 0.1}],
            "weight_decay": 0.0,
            "validation": {"holdout": 10},
            "optimizer": {"name": "sgd"},
        }
    )
    paths = [p for p, _ in text_recipe_errors(pgd)]
    assert paths == [
        "train.objective",
        "train.optimizer",
        "train.threats",
        "train.validation",
        "train.weight_decay",
    ]
    assert all("not used by the text trainer" in m for _, m in text_recipe_errors(pgd))
    fine = Recipe.model_validate(
        {
            "epochs": 2,
            "lr": 0.01,
            "batch_size": 32,
            "objective": {"name": "standard"},
            "schedule": {"kind": "cosine"},
            "validation": {},
            "threats": [],
            "augment": _augment(),
        }
    )
    assert text_recipe_errors(fine) == []

    class WithOut(Recipe):
        out: str = "runs"

    assert text_recipe_errors(WithOut(out="elsewhere", keep_best=False)) == [
        ("train.keep_best", text_recipe_errors(Recipe(keep_best=False))[0][1])
    ]
    texts, y = small
    with pytest.raises(SpecError) as err:
        fit_text(_small_classifier(texts), texts, y, Recipe(weight_decay=1e-4))
    assert err.value.errors == [("train.weight_decay", text_recipe_errors(pgd)[-1][1])]


# --- augmentation on SMS spam: lineage and effect -------------------------------------------

EFFECT_RECIPE = {"epochs": 4, "batch_size": 64, "lr": 0.02}
EFFECT_AUGMENT = _augment(samples=512, start_epoch=2, every=2)


@pytest.fixture(scope="module")
def augmented_run(
    sms: TextDataset,
) -> tuple[TorchTextClassifier, TextTrainResult, dict[int, dict[str, Tensor]]]:
    """Full SMS spam training set, char-edit augmentation (spam -> ham, 30% of words) before
    epochs 2 and 4 on every training spam; the weights after each epoch (0: initial)."""
    torch.set_num_threads(1)
    recipe = Recipe.model_validate({**EFFECT_RECIPE, "augment": EFFECT_AUGMENT})
    clf = char_ngram_classifier(sms.texts_train, seed=0)
    snaps = {0: copy.deepcopy(clf.module.state_dict())}

    def snapshot(m: TextEpochMetrics) -> None:
        snaps[m.epoch] = copy.deepcopy(clf.module.state_dict())

    result = fit_text(clf, sms.texts_train, sms.y_train, recipe, seed=0, on_epoch=snapshot)
    return clf, result, snaps


def test_pooled_texts_fooled_the_model_they_were_made_against(
    sms: TextDataset,
    augmented_run: tuple[TorchTextClassifier, TextTrainResult, dict[int, dict[str, Tensor]]],
) -> None:
    clf, result, snaps = augmented_run
    n_spam = int((sms.y_train == 1).sum())
    rounds = {m.epoch: m.augment for m in result.history if m.augment is not None}
    assert sorted(rounds) == [2, 4]
    assert all(r.attacked == n_spam for r in rounds.values())
    assert len(result.augmented) == sum(r.added for r in rounds.values()) >= 40
    past = copy.deepcopy(clf)
    for epoch in (2, 4):
        made = [t for t in result.augmented if t.epoch == epoch]
        assert made and len(made) == rounds[epoch].added
        past.module.load_state_dict(snaps[epoch - 1])  # the model the round attacked
        pred = past.predict_logits([t.text for t in made]).argmax(dim=1)
        assert pred.tolist() == [0] * len(made)  # fooled: spam taken for ham
        for t in made:
            assert t.label == int(sms.y_train[t.source]) == 1 and t.target == 0
            edits = [TextEdit(**e) for e in t.edits]
            assert len(edits) >= 1 and apply_edits(sms.texts_train[t.source], edits) == t.text
            assert t.attack == "char-edit"
    n = len(sms.texts_train)
    pool_after = [0, rounds[2].pool_size, rounds[2].pool_size, rounds[4].pool_size]
    assert rounds[4].pool_size == rounds[2].added + rounds[4].added  # accumulate
    assert [m.n_train for m in result.history] == [n + p for p in pool_after]


def _evasion_rate(clf: TorchTextClassifier, sms: TextDataset) -> float:
    """Share of the held-out spam that char-edit (another seed than training's) turns into ham
    within 30% of the words."""
    spam = [t for t, label in zip(sms.texts_test, sms.y_test.tolist(), strict=True) if label]
    attack = build_attack("char-edit", ThreatModel.model_validate(SPAM_TO_HAM), seed=1234)
    ones = torch.ones(len(spam), dtype=torch.int64)
    return float(attack(clf, spam, ones, targets=torch.zeros_like(ones)).success.float().mean())


def test_augmentation_makes_spam_harder_to_disguise(
    sms: TextDataset,
    augmented_run: tuple[TorchTextClassifier, TextTrainResult, dict[int, dict[str, Tensor]]],
) -> None:
    hardened = augmented_run[0]
    plain = char_ngram_classifier(sms.texts_train, seed=0)
    fit_text(plain, sms.texts_train, sms.y_train, Recipe.model_validate(EFFECT_RECIPE), seed=0)
    base, aug = _evasion_rate(plain, sms), _evasion_rate(hardened, sms)
    # measured over training seeds 0-7 and attack seeds 1234/99: without augmentation 0.20-0.24,
    # with 0.09-0.17; the per-seed gap was never below 0.054 (seed 0: 0.223 -> 0.098)
    assert aug <= base - 0.03, (base, aug)
    assert base >= 0.15  # the attack is not toothless to begin with
    assert text_accuracy(hardened, sms.texts_test, sms.y_test) >= 0.98
