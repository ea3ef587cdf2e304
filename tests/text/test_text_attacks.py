"""Text attacks: evasion of undefended SMS spam models (targeted spam → ham), budgets (queries
and edited words), exact replay of the recorded edits, determinism, sanitizer round trips, the
packaged word embedding and its neighbour filters, and argument validation."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from robustops.attacks import available_attacks, build_attack, get_attack
from robustops.attacks.text import (
    TextAttack,
    TextAttackResult,
    TextEdit,
    apply_edits,
    edit_violation,
    split_words,
)
from robustops.errors import SpecError
from robustops.text.embeddings import WordEmbeddings, load_minilm_embeddings
from robustops.text.sanitize import sanitize
from robustops.text.tables import (
    CONFUSABLE_TO_ASCII,
    HOMOGLYPHS,
    INVISIBLE_CHARS,
    KEYBOARD_NEIGHBOURS,
    LEET,
    LEET_TO_LETTER,
)
from robustops.threats import ThreatModel

ATTACKS = ("char-edit", "homoglyph", "invisible", "leet", "split", "synonym")
BUDGET = 200  # queries per message in the evasion tests
N_SPAM = 60  # test spam messages attacked per model

# Minimum evasion rate (targeted spam → ham, default max_edit_share 0.2, 200 queries) on the
# first 60 test spam messages each undefended model detects. Measured with seeds 0/1/2 (the
# tests use seed 0): each floor sits at about half of the lowest measurement. The char n-gram
# EmbeddingBag model (``spam_model``) resists edits of a fifth of the words far better than the
# word TF-IDF model: a character edit leaves most of a word's n-grams intact and mean pooling
# dilutes the rest, while any change to a word makes it unknown to TF-IDF.
MIN_SUCCESS: dict[tuple[str, str], float] = {
    ("char-edit", "spam_model"): 0.05,  # measured 0.100 / 0.100 / 0.083
    ("homoglyph", "spam_model"): 0.05,  # 0.117 / 0.117 / 0.117
    ("invisible", "spam_model"): 0.08,  # 0.167 / 0.167 / 0.167
    ("leet", "spam_model"): 0.015,  # 0.033 (2 of 60; readable leet only, see Leet)
    ("split", "spam_model"): 0.2,  # 0.367 / 0.367 / 0.367
    ("synonym", "spam_model"): 0.015,  # 0.033 (deterministic: no random choice)
    ("char-edit", "tfidf_model"): 0.3,  # 0.533 / 0.533 / 0.567
    ("homoglyph", "tfidf_model"): 0.3,  # 0.533 / 0.533 / 0.533
    ("invisible", "tfidf_model"): 0.45,  # 0.767 / 0.783 / 0.800
    ("leet", "tfidf_model"): 0.2,  # 0.333 / 0.333 / 0.333
    ("split", "tfidf_model"): 0.45,  # 0.767 / 0.733 / 0.767
    ("synonym", "tfidf_model"): 0.08,  # 0.167
}
# Share of messages whose spam → ham margin the attack improves (measured: 0.98 to 1.0).
MIN_IMPROVED = 0.9


# --- helpers -------------------------------------------------------------------------------------


def replay(text: str, edits: Sequence[TextEdit]) -> str:
    """The original with its edits applied, written independently of the module's helpers."""
    parts = re.split(r"(\S+)", text)  # separators at even indices, words at odd ones
    for e in edits:
        assert parts[2 * e.position + 1] == e.before
        parts[2 * e.position + 1] = e.after
    return "".join(parts)


def margin(model: Any, texts: list[str], target: int) -> Tensor:
    """The attacker's targeted objective: p_target - max other p."""
    p = torch.softmax(model.predict_logits(texts).double(), dim=1)
    own = p[:, target]
    return own - p.scatter(1, torch.full((len(texts), 1), target), -1.0).amax(1)


class Counting:
    """Wraps a text classifier and counts the texts it evaluates."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.num_classes = model.num_classes
        self.texts = 0

    def predict_logits(self, texts: Sequence[str]) -> Tensor:
        self.texts += len(texts)
        out: Tensor = self.model.predict_logits(texts)
        return out


class Keywords:
    """A tiny deterministic spam scorer: spam logit = sum of keyword weights - 2 (ham logit 0)."""

    num_classes = 2
    WEIGHTS: ClassVar[dict[str, float]] = {
        "free": 1.5,
        "win": 1.2,
        "cash": 1.0,
        "prize": 1.4,
        "call": 0.8,
        "txt": 0.9,
    }

    def predict_logits(self, texts: Sequence[str]) -> Tensor:
        rows = []
        for t in texts:
            score = sum(self.WEIGHTS.get(w, 0.0) for w in re.findall(r"[a-z]+", t.lower()))
            rows.append([0.0, score - 2.0])
        return torch.tensor(rows)


def check_result(
    res: TextAttackResult, texts: list[str], attack: TextAttack, budget: int | None
) -> None:
    """The invariants every result satisfies."""
    assert len(res) == len(texts) == len(res.edits)
    assert res.queries.dtype == torch.int64 and res.predictions.dtype == torch.int64
    assert res.success.dtype == torch.bool
    if budget is not None:
        assert max(res.queries.tolist(), default=0) <= budget
    assert bool((res.queries >= 1).all()) or not texts
    for text, adv, edits, share in zip(
        texts, res.adversarial, res.edits, res.edit_share.tolist(), strict=True
    ):
        n = len(text.split())
        assert replay(text, edits) == adv == apply_edits(text, edits)
        assert len({e.position for e in edits}) == len(edits)
        assert share == (len(edits) / n if n else 0.0)
        assert share <= attack.max_edit_share
        assert all(e.before != e.after for e in edits)
        assert [edit_violation(e) for e in edits] == [None] * len(edits)  # what the suite checks


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detected_spam(request: pytest.FixtureRequest, sms: Any) -> dict[str, list[str]]:
    """Per model fixture name, the first N_SPAM test spam messages it classifies as spam."""
    spam = [t for t, y in zip(sms.texts_test, sms.y_test.tolist(), strict=True) if y == 1]
    out = {}
    for name in ("spam_model", "tfidf_model"):
        model = request.getfixturevalue(name)
        pred = model.predict_logits(spam).argmax(1).tolist()
        out[name] = [t for t, p in zip(spam, pred, strict=True) if p == 1][:N_SPAM]
        assert len(out[name]) == N_SPAM
    return out


def text_attack(
    name: str,
    *,
    share: float = 0.2,
    budget: int | None = None,
    targeted: bool = False,
    **params: Any,
) -> TextAttack:
    """Text attack ``name`` built, as every attack, from its threat: a word-edits budget of
    ``share`` of the words, ``budget`` queries per text, and the goal."""
    threat = ThreatModel(
        name=f"{name}-test",
        norm="word-edits",
        epsilon=share,
        knowledge="score-based",
        query_budget=budget,
        targeted=targeted,
    )
    attack = build_attack(name, threat, **params)
    assert isinstance(attack, TextAttack)
    return attack


_RUNS: dict[tuple[str, str], tuple[Any, list[str], TextAttack, TextAttackResult]] = {}


def _attack_spam(
    request: pytest.FixtureRequest, detected_spam: dict[str, list[str]], name: str, model: str
) -> tuple[Any, list[str], TextAttack, TextAttackResult]:
    """Attack ``name`` on ``model``'s detected spam, targeted to ham (memoised per session)."""
    if (name, model) not in _RUNS:
        clf = request.getfixturevalue(model)
        texts = detected_spam[model]
        attack = text_attack(name, targeted=True, budget=BUDGET, seed=0)
        ones = torch.ones(len(texts), dtype=torch.int64)
        _RUNS[name, model] = (
            clf,
            texts,
            attack,
            attack(clf, texts, ones, targets=torch.zeros_like(ones)),
        )
    return _RUNS[name, model]


# --- 1. evasion of the undefended models ----------------------------------------------------------


@pytest.mark.parametrize("model", ["spam_model", "tfidf_model"])
@pytest.mark.parametrize("name", ATTACKS)
def test_evades_undefended_spam_filters(
    request: pytest.FixtureRequest, detected_spam: dict[str, list[str]], name: str, model: str
) -> None:
    clf, texts, attack, res = _attack_spam(request, detected_spam, name, model)
    check_result(res, texts, attack, BUDGET)
    rate = res.success.float().mean().item()
    assert rate >= MIN_SUCCESS[(name, model)], f"{name} on {model}: {rate:.2f}"
    assert bool((res.predictions[res.success] == 0).all())
    kinds = {e.kind for edits in res.edits for e in edits}
    assert kinds, "no edit at all"
    for edits, ok in zip(res.edits, res.success.tolist(), strict=True):
        assert ok <= bool(edits)  # the model detected every message: success needs an edit
        assert all(e.score_change > 0 for e in edits)  # only improving edits are kept
    # score_change adds up to the objective change between original and adversarial text
    m0 = margin(clf, texts, target=0)
    m1 = margin(clf, res.adversarial, target=0)
    total = torch.tensor([sum(e.score_change for e in edits) for edits in res.edits])
    torch.testing.assert_close(total.double(), m1 - m0, atol=1e-4, rtol=0)
    # where the model does not flip, the attack still moves most messages towards ham
    improved = (m1 > m0).double().mean().item()
    assert improved >= MIN_IMPROVED, improved


def test_kinds_of_char_edits(request: pytest.FixtureRequest, detected_spam: Any) -> None:
    _, _, _, res = _attack_spam(request, detected_spam, "char-edit", "tfidf_model")
    kinds = {e.kind for edits in res.edits for e in edits}
    assert kinds <= {"swap", "delete", "insert", "keyboard"}
    assert len(kinds) >= 3


# --- 2. budgets, replay and determinism on a toy model (property-based) -------------------------

_WORDS = st.sampled_from(
    ["free", "FREE!!", "Win", "cash", "prize.", "call", "txt", "a", "to", "the", "you", "08712",
     "£100", ":-)", "don't", "T&C's", "claim", "now", "u", "x"]
)  # fmt: skip
_SEPS = st.sampled_from([" ", " ", " ", "  ", "\n", "\t", " \n "])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    words = draw(st.lists(_WORDS, min_size=0, max_size=14))
    seps = draw(st.lists(_SEPS, min_size=len(words) + 1, max_size=len(words) + 1))
    seps[0] = draw(st.sampled_from(["", "", " ", "\n"]))
    seps[-1] = draw(st.sampled_from(["", "", " ", "\n"]))
    out = seps[0]
    for w, s in zip(words, seps[1:], strict=True):
        out += w + s
    return out


@pytest.mark.parametrize("name", ATTACKS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(_texts(), min_size=1, max_size=4),
    share=st.sampled_from([0.05, 0.1, 0.2, 1 / 3, 0.5, 1.0]),
    budget=st.one_of(st.none(), st.integers(1, 30)),
    targeted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_budgets_replay_and_determinism(
    name: str,
    texts: list[str],
    share: float,
    budget: int | None,
    targeted: bool,
    seed: int,
) -> None:
    model = Counting(Keywords())
    attack = text_attack(name, share=share, budget=budget, targeted=targeted, seed=seed)
    labels = model.predict_logits(texts).argmax(1)
    model.texts = 0
    targets = 1 - labels if targeted else None
    res = attack(model, texts, labels, targets=targets)
    check_result(res, texts, attack, budget)
    # every text the model evaluated is a counted query, except the verification pass
    assert model.texts == int(res.queries.sum()) + len(texts)
    expected = 1 - labels if targeted else labels
    verified = res.predictions == expected if targeted else res.predictions != expected
    assert torch.equal(res.success, verified)
    again = attack(model, texts, labels, targets=targets)
    assert again.adversarial == res.adversarial and again.edits == res.edits
    assert torch.equal(again.queries, res.queries)
    # a text's result does not depend on the other texts of the call
    alone = attack(
        model, texts[-1:], labels[-1:], targets=None if targets is None else targets[-1:]
    )
    assert alone.adversarial[0] == res.adversarial[-1]
    assert alone.edits[0] == res.edits[-1]


def test_seed_changes_random_choices(tfidf_model: Any, detected_spam: Any) -> None:
    texts = detected_spam["tfidf_model"][:20]
    ones = torch.ones(len(texts), dtype=torch.int64)
    runs = [
        text_attack("char-edit", targeted=True, seed=s)(
            tfidf_model, texts, ones, targets=torch.zeros_like(ones)
        )
        for s in (0, 0, 1)
    ]
    assert runs[0].adversarial == runs[1].adversarial
    assert runs[0].adversarial != runs[2].adversarial


def test_query_budget_cuts_the_search(tfidf_model: Any, detected_spam: Any) -> None:
    texts = detected_spam["tfidf_model"][:30]
    ones = torch.ones(len(texts), dtype=torch.int64)
    full = text_attack("split", targeted=True)(
        tfidf_model, texts, ones, targets=torch.zeros_like(ones)
    )
    for budget in (1, 7, 25):
        model = Counting(tfidf_model)
        res = text_attack("split", targeted=True, budget=budget)(
            model, texts, ones, targets=torch.zeros_like(ones)
        )
        assert int(res.queries.max()) <= budget
        assert model.texts == int(res.queries.sum()) + len(texts)
        # a shorter budget stops the same greedy path earlier
        assert bool((res.success <= full.success).all())
        if budget == 1:  # one query only sees the original message
            assert res.edits == [[]] * len(texts) and res.adversarial == texts


def test_untargeted_attack_flips_ham_and_spam(tfidf_model: Any, sms: Any) -> None:
    texts = sms.texts_test[:40]  # the test split starts ham, spam, ham, spam, ...
    pred = tfidf_model.predict_logits(texts).argmax(1)
    res = text_attack("invisible", share=0.5)(tfidf_model, texts, pred)
    assert bool((res.predictions[res.success] != pred[res.success]).all())
    flipped = set(pred[res.success].tolist())
    assert flipped == {0, 1}  # ham made spam and spam made ham


def test_text_without_editable_words_is_left_alone() -> None:
    model = Keywords()
    texts = ["", "   ", "08712 460324 :-)", "free"]  # "free": one word, share 0.2 allows no edit
    res = text_attack("char-edit", targeted=True)(
        model, texts, torch.ones(4, dtype=torch.int64), targets=torch.zeros(4, dtype=torch.int64)
    )
    assert res.adversarial == texts
    assert res.edits == [[], [], [], []]
    assert res.queries.tolist() == [1, 1, 1, 1]


# --- 3. sanitizer round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["spam_model", "tfidf_model"])
@pytest.mark.parametrize("name", ["homoglyph", "invisible", "leet"])
def test_sanitize_undoes_the_attack_exactly(
    request: pytest.FixtureRequest, detected_spam: Any, name: str, model: str
) -> None:
    _, texts, _, res = _attack_spam(request, detected_spam, name, model)
    edited = [(t, a) for t, a, e in zip(texts, res.adversarial, res.edits, strict=True) if e]
    assert edited
    for text, adv in edited:
        assert adv != text
        assert sanitize(adv) == sanitize(text), (text, adv)


def test_sanitize_covers_the_attack_tables() -> None:
    for letter, glyphs in HOMOGLYPHS.items():
        for g in glyphs:
            assert sanitize(f"x{g}x") == f"x{letter}x", (letter, g)
    for mark in INVISIBLE_CHARS:
        assert sanitize(f"fr{mark}ee") == "free"
    for letter, digit in LEET.items():
        word = f"x{letter}x" if letter.islower() else f"X{letter}X"
        assert sanitize(word.replace(letter, digit)) == word


# --- 4. the packaged word embedding ---------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> WordEmbeddings:
    return load_minilm_embeddings()


def test_embedding_ships_offline(minilm: WordEmbeddings) -> None:
    import subprocess
    import sys

    # in a fresh interpreter: other test modules (test_hf) import transformers themselves
    code = (
        "import sys; from robustops.text.embeddings import load_minilm_embeddings; "
        "load_minilm_embeddings(); "
        "print(any(m in sys.modules for m in ('sentence_transformers', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert minilm.pieces("money") == ["money"]
    vec = minilm.vector("money")
    assert vec is not None and vec.shape == (384,)
    assert minilm.pieces("ringtone") == ["ring", "##tone"]


def test_neighbours_are_filtered(minilm: WordEmbeddings) -> None:
    cash = [w for w, _ in minilm.neighbours("cash", threshold=0.4)]
    assert "money" in cash
    assert "dollars" not in cash  # plural: another part of speech
    call = [w for w, _ in minilm.neighbours("call", threshold=0.3)]
    assert not {"calls", "calling", "called", "caller"} & set(call)  # same family
    good = [w for w, _ in minilm.neighbours("good", threshold=0.3)]
    assert "bad" not in good and "great" in good  # antonyms dropped
    happy = [w for w, _ in minilm.neighbours("happy", threshold=0.3)]
    assert "unhappy" not in happy and "happiness" not in happy
    assert minilm.neighbours("the", threshold=0.0) == []  # stop word
    for word in ("money", "prize", "mobile", "week"):
        sims = [s for _, s in minilm.neighbours(word, k=5, threshold=0.4)]
        assert sims == sorted(sims, reverse=True) and all(s >= 0.4 for s in sims)
        assert len(sims) <= 5


def test_synonym_attack_keeps_case_and_uses_neighbours(
    tfidf_model: Any, detected_spam: Any
) -> None:
    texts = detected_spam["tfidf_model"]
    ones = torch.ones(len(texts), dtype=torch.int64)
    attack = text_attack("synonym", targeted=True)
    res = attack(tfidf_model, texts, ones, targets=torch.zeros_like(ones))
    emb = load_minilm_embeddings()
    edits = [e for es in res.edits for e in es]
    assert edits
    affixes = re.compile(r"^(\W*)(.*?)(\W*)$")
    for e in edits:
        lead, core, trail = affixes.match(e.before).groups()  # type: ignore[union-attr]
        assert e.after.startswith(lead) and e.after.endswith(trail)
        new = e.after[len(lead) : len(e.after) - len(trail)]
        assert new.lower() in [w for w, _ in emb.neighbours(core, threshold=0.4)]
        assert new.isupper() == core.isupper()
        assert new[:1].isupper() == core[:1].isupper()


# --- 5. tables ------------------------------------------------------------------------------------


def test_tables_are_invertible() -> None:
    for letter, glyphs in HOMOGLYPHS.items():
        for g in glyphs:
            assert CONFUSABLE_TO_ASCII[g] == letter and not g.isascii()
            assert unicodedata.normalize("NFKC", g) == g  # NFKC alone does not undo them
    assert all(unicodedata.category(c) == "Cf" for c in INVISIBLE_CHARS)
    assert len(set(LEET.values())) == len(LEET) // 2  # one digit per letter (both cases)
    assert all(LEET_TO_LETTER[d] == c.lower() for c, d in LEET.items())
    assert all(c in KEYBOARD_NEIGHBOURS[n] for c, ns in KEYBOARD_NEIGHBOURS.items() for n in ns)


# --- 6. registry and validation ------------------------------------------------------------------


def test_registry() -> None:
    assert set(ATTACKS) <= set(available_attacks())  # one registry for every modality
    for name in ATTACKS:
        cls = get_attack(name)
        assert cls.name == name and cls.knowledge == "score-based"
        attack = text_attack(name, share=0.3, seed=3)
        assert attack.threat.epsilon == 0.3 and attack.max_edit_share == 0.3
        assert attack.params()["seed"] == 3
        assert attack.with_params(seed=4).params()["seed"] == 4
    with pytest.raises(SpecError) as err:
        get_attack("textfooler")
    assert err.value.errors[0][0] == "name"
    with pytest.raises(SpecError) as err:
        text_attack("leet", candidates=2, epsilon=0.1)
    assert [f for f, _ in err.value.errors] == ["epsilon"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"query_budget": 0}, "query_budget"),
        ({"query_budget": 2.5}, "query_budget"),
    ],
)
def test_bad_budgets_name_their_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        ThreatModel.parse({"name": "t", "norm": "word-edits", "epsilon": 0.2, **params})
    assert err.value.errors[0][0] == field


@pytest.mark.parametrize(
    ("params", "field"), [({"seed": True}, "seed"), ({"batch_size": 0}, "batch_size")]
)
def test_bad_parameters_name_their_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        text_attack("char-edit", **params)
    assert err.value.errors[0][0] == field


def test_bad_calls_name_their_field() -> None:
    model = Keywords()
    one = torch.ones(1, dtype=torch.int64)
    untargeted, targeted = text_attack("leet"), text_attack("leet", targeted=True)
    cases: list[tuple[Any, tuple[Any, ...], str]] = [
        (untargeted, (object(), ["free"], one), "model"),
        (untargeted, (model, "free cash", one), "texts"),
        (untargeted, (model, ["free", 3], torch.ones(2, dtype=torch.int64)), "texts"),
        (untargeted, (model, ["free"], torch.ones(2, dtype=torch.int64)), "labels"),
        (untargeted, (model, ["free"], torch.ones(1)), "labels"),
        (untargeted, (model, ["free"], one * 5), "labels"),
        (untargeted, (model, ["free"], one, one), "targets"),
        (targeted, (model, ["free"], one), "targets"),
        (targeted, (model, ["free"], one, one * 2), "targets"),
    ]
    for attack, args, field in cases:
        with pytest.raises(SpecError) as err:
            attack(*args[:3], targets=args[3] if len(args) > 3 else None)
        assert err.value.errors[0][0] == field, (args, err.value)


def test_apply_edits_checks_what_it_replaces() -> None:
    edit = TextEdit(position=1, kind="leet", before="cash", after="c4sh", score_change=0.1)
    assert apply_edits("win  cash\n", [edit]) == "win  c4sh\n"
    with pytest.raises(SpecError) as err:
        apply_edits("win money", [edit])
    assert err.value.errors[0][0] == "edits.0.before"
    with pytest.raises(SpecError):
        apply_edits("win", [edit])
    assert split_words(" a  b ") == (["a", "b"], [" ", "  ", " "])


@pytest.mark.parametrize(
    ("kind", "before", "after", "ok"),
    [
        ("swap", "cash!", "csah!", True),
        ("swap", "cash", "hsac", False),
        ("delete", "(free)", "(fee)", True),
        ("delete", "free", "", False),
        ("insert", "free", "fxree", True),
        ("insert", "free", "free money now", False),
        ("keyboard", "free", "frer", True),
        ("keyboard", "free", "frez", False),
        ("homoglyph", "cash", "c\u0430sh", True),
        ("homoglyph", "cash", "cbsh", False),
        ("leet", "cash", "c4sh", True),
        ("leet", "cash", "c9sh", False),
        ("invisible", "cash", "ca\u200bsh", True),
        ("invisible", "cash", "ca-sh", False),
        ("split-space", "cash", "c a s h", True),
        ("split-punct", "cash,", "c.ash,", True),
        ("split-space", "cash", "ca sh today", False),
        ("synonym", "money", "cash", True),
        ("synonym", "money", "", False),
        ("synonym", "money", "call me later", False),
        ("synonym", "money.", "cash", False),  # the punctuation is dropped
        ("rewrite", "money", "cash", False),  # no such kind
    ],
)
def test_an_edit_is_what_its_kind_allows(kind: str, before: str, after: str, ok: bool) -> None:
    """``apply_edits`` replays any replacement; the suite also refuses an empty string or a
    sentence passed off as one word edit."""
    edit = TextEdit(position=0, kind=kind, before=before, after=after, score_change=0.0)
    assert (edit_violation(edit) is None) == ok, edit_violation(edit)
