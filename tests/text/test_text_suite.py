"""The evaluation suite on texts: same threat, result and per-sample worst case as for tensors,
with a word-edits budget, a fixed target class and the suite's own contract checks."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import Tensor

from robustops.attacks import build_attack
from robustops.attacks.text import (
    TextAttack,
    TextAttackResult,
    TextEdit,
    apply_edits,
    margin_objective,
    max_word_edits,
    split_words,
)
from robustops.data.sms_spam import TextDataset
from robustops.errors import SpecError
from robustops.evaluation import SuiteOptions, SuiteResult, SuiteThreat, run_suite
from robustops.text.models import TorchTextClassifier
from robustops.threats import ThreatModel

N = 120  # test messages: the split alternates ham/spam, so 60 spam

SPAM_TO_HAM = ThreatModel(
    name="spam-evasion",
    norm="word-edits",
    epsilon=0.2,
    knowledge="score-based",
    query_budget=300,
    targeted=True,
    target_class=0,
)


def _suite(model: Any, sms: TextDataset, attacks: list[TextAttack], **kw: Any) -> SuiteResult:
    return run_suite(
        model,
        sms.texts_test[:N],
        sms.y_test[:N],
        [SuiteThreat(SPAM_TO_HAM, attacks)],
        SuiteOptions(latency_calls=10, **kw),
    )


@pytest.fixture(scope="module")
def result(spam_model: TorchTextClassifier, sms: TextDataset) -> SuiteResult:
    attacks = [build_attack(n, SPAM_TO_HAM) for n in ("char-edit", "split", "homoglyph")]
    return _suite(spam_model, sms, attacks)


def test_only_the_attackers_class_is_attacked(result: SuiteResult, sms: TextDataset) -> None:
    t = result.threat("spam-evasion")
    y = sms.y_test[:N]
    correct = torch.tensor(result.samples.clean_correct)
    robust = torch.tensor(t.robust)
    ham = y == 0
    # ham is never attacked: robust exactly when classified correctly
    assert torch.equal(robust[ham], correct[ham])
    assert t.n_attacked == int((correct & ~ham).sum())
    broken = int((correct & ~robust).sum())
    assert broken > 0  # the undefended model is evaded
    assert t.attack_success_rate == pytest.approx(broken / t.n_attacked)
    assert t.robust_accuracy == pytest.approx(int(robust.sum()) / N)
    assert t.targets == [0] * N
    assert all(t.broken_by[i] is None for i in range(N) if bool(ham[i]))
    first = t.attacks[0]
    assert first.n_attacked == t.n_attacked
    assert sum(a.n_broken for a in t.attacks) == broken
    texts = sms.texts_test[:N]
    for a in t.attacks:
        if a.n_broken:
            # no more edits than each broken message's own budget allows, on average
            allowed = [
                max_word_edits(0.2, len(split_words(texts[i])[0]))
                for i, by in enumerate(t.broken_by)
                if by == a.name
            ]
            assert len(allowed) == a.n_broken
            assert a.mean_edits is not None and 1 <= a.mean_edits <= sum(allowed) / len(allowed)
            assert a.mean_queries_per_success is not None and a.mean_queries_per_success <= 300
            assert a.median_perturbation is not None and 0 < a.median_perturbation <= 0.2


def test_examples_replay_and_explain_the_flip(
    result: SuiteResult, spam_model: TorchTextClassifier
) -> None:
    t = result.threat("spam-evasion")
    assert t.examples
    for ex in t.examples:
        assert ex.clean_text is not None and ex.adversarial_text is not None
        assert ex.shape == [] and ex.attribution == []
        edits = [TextEdit(e.position, e.kind, e.before, e.after, e.score_change) for e in ex.edits]
        assert apply_edits(ex.clean_text, edits) == ex.adversarial_text
        assert ex.label == 1 and ex.target == 0 and ex.adversarial_prediction == 0
        assert ex.perturbation_norm == pytest.approx(
            len(edits) / len(split_words(ex.clean_text)[0])
        )
        # each contribution is the objective drop when that edit alone is reverted
        adv_obj = margin_objective(
            spam_model.predict_logits([ex.adversarial_text]), torch.tensor([1]), torch.tensor([0])
        )[0]
        for k, e in enumerate(ex.edits):
            rest = [d for j, d in enumerate(edits) if j != k]
            obj = margin_objective(
                spam_model.predict_logits([apply_edits(ex.clean_text, rest)]),
                torch.tensor([1]),
                torch.tensor([0]),
            )[0]
            assert e.contribution == pytest.approx(float(adv_obj - obj), abs=1e-5)


def test_worst_case_calibration_matches_robust_accuracy(result: SuiteResult) -> None:
    t = result.threat("spam-evasion")
    assert t.calibration is not None
    assert t.calibration.attacked.accuracy == pytest.approx(t.robust_accuracy)
    assert result.latency is not None and result.latency.n_calls == 10


def test_result_round_trips(result: SuiteResult, tmp_path: Any) -> None:
    back = SuiteResult.load(result.save(tmp_path / "r.json"))
    assert back == result.sealed()
    assert back.threats[0].threat.norm == "word-edits"


class _Forger(TextAttack):
    """Claims success; ``mode`` picks how it breaks the contract."""

    name = "forger"

    def __init__(self, threat: ThreatModel, *, mode: str = "lie", **kwargs: Any) -> None:
        super().__init__(threat, **kwargs)
        self.mode = mode

    def _candidates(self, core: str, rng: random.Random) -> list[tuple[str, str]]:
        return []

    def _attack(
        self, model: Any, texts: list[str], labels: Tensor, targets: Tensor | None
    ) -> TextAttackResult:
        n = len(texts)
        adversarial, edits = [], []
        for text in texts:
            words, _ = split_words(text)
            if self.mode == "lie":  # nothing changed
                adversarial.append(text)
                edits.append([])
            elif self.mode == "overspend":  # rewrites every word: far beyond the share
                adversarial.append(" ".join("ok" for _ in words))
                edits.append([TextEdit(i, "synonym", w, "ok", 0.0) for i, w in enumerate(words)])
            elif self.mode in ("sentence", "empty"):  # one "word edit" that is not one
                after = "Sorry, I'll call later" if self.mode == "sentence" else ""
                adversarial.append(apply_edits(text, [TextEdit(0, "synonym", words[0], after, 0)]))
                edits.append([TextEdit(0, "synonym", words[0], after, 0.0)])
            else:  # "unrecorded": a harmless-looking text whose edits do not produce it
                adversarial.append("Sorry, I'll call later")
                edits.append([])
        return TextAttackResult(
            adversarial=adversarial,
            success=torch.ones(n, dtype=torch.bool),
            queries=torch.full((n,), 1000 if self.mode == "overspend" else 1),
            perturbation=torch.zeros(n, dtype=torch.float64),
            predictions=torch.zeros(n, dtype=torch.int64),
            details=edits,
        )


@pytest.mark.parametrize("mode", ["lie", "overspend", "unrecorded", "sentence", "empty"])
def test_contract_breaches_are_not_counted(
    mode: str, spam_model: TorchTextClassifier, sms: TextDataset
) -> None:
    forger = _Forger(SPAM_TO_HAM, mode=mode)
    res = _suite(spam_model, sms, [forger], calibration=False)
    t = res.threat("spam-evasion")
    assert t.attacks[0].n_broken == 0
    assert t.robust_accuracy == res.clean_accuracy


def test_modalities_do_not_mix(spam_model: TorchTextClassifier, sms: TextDataset) -> None:
    linf = ThreatModel(name="linf", epsilon=0.1)
    with pytest.raises(ValueError, match="tensor inputs"):
        run_suite(spam_model, sms.texts_test[:4], sms.y_test[:4], [SuiteThreat(linf, [])])
    with pytest.raises(TypeError):
        run_suite(spam_model, torch.zeros(4, 3), sms.y_test[:4], [])


def test_text_attacks_take_their_budget_from_the_threat() -> None:
    attack = build_attack("leet", SPAM_TO_HAM, candidates=2, seed=4)
    assert attack.threat is SPAM_TO_HAM
    assert isinstance(attack, TextAttack)
    assert (attack.max_edit_share, attack.query_budget, attack.targeted) == (0.2, 300, True)
    with pytest.raises(SpecError) as info:
        build_attack("leet", SPAM_TO_HAM, max_edit_share=0.5)
    assert info.value.errors[0][0] == "max_edit_share"
    with pytest.raises(SpecError, match="word-edits"):
        build_attack("leet", ThreatModel(name="l", epsilon=0.1))
    blind = SPAM_TO_HAM.model_copy(update={"knowledge": "decision-based"})
    with pytest.raises(SpecError, match="score-based"):
        build_attack("leet", blind)


def test_word_edit_threats_validate() -> None:
    with pytest.raises(ValueError, match="share of words"):
        ThreatModel(name="t", norm="word-edits", epsilon=1.5)
    with pytest.raises(ValueError, match="targeted"):
        ThreatModel(name="t", norm="word-edits", epsilon=0.2, target_class=0)
    y = torch.tensor([0, 1, 1, 0])
    assert SPAM_TO_HAM.draw_targets(y, 2, torch.Generator()).tolist() == [0, 0, 0, 0]
    assert SPAM_TO_HAM.attacked(y).tolist() == [False, True, True, False]
    with pytest.raises(SpecError, match="target_class"):
        SPAM_TO_HAM.model_copy(update={"target_class": 5}).draw_targets(y, 2, torch.Generator())
