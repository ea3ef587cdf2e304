"""Adversarial examples in a report, one renderer per input modality.

A renderer turns one :class:`~robustops.evaluation.result.AdversarialExample` into a
:class:`~robustops.report.document.GalleryItem` (a figure and/or a table with a caption); the
Markdown and HTML backends lay those out. The first registered renderer whose ``accepts``
returns true is used, so a new modality (text, audio, …) is one class and one
:func:`register_example_renderer` call:

* :class:`TextRenderer` (tried first): texts (``clean_text`` set): the text as a word-level
  diff (each edited word struck through and followed by its replacement), invisible and
  look-alike characters made visible, and a table of the edits with their effect on the
  attacker's objective.
* :class:`ImageRenderer`: shape ``(C, H, W)`` with ``C`` in {1, 3}: clean image, adversarial
  image, signed perturbation and signed attribution heatmaps.
* :class:`FeatureRenderer` (the fallback, any shape): the features that changed, sorted by
  ``|attribution|``.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from robustops.evaluation.plots import figure_png, image_example_figure
from robustops.evaluation.result import AdversarialExample, ExampleEdit
from robustops.format import percent
from robustops.report.document import Cell, Figure, GalleryItem, Paragraph, Span, Table
from robustops.threats import ThreatModel

__all__ = [
    "ExampleContext",
    "ExampleRenderer",
    "FeatureRenderer",
    "ImageRenderer",
    "TextRenderer",
    "char_label",
    "class_label",
    "example_caption",
    "example_renderers",
    "find_renderer",
    "register_example_renderer",
    "render_example",
    "visible_text",
]

MAX_FEATURE_ROWS = 20
"""Changed features listed per tabular example (the rest are counted in a note)."""

MAX_EDIT_ROWS = 40
"""Edits listed per text example (the rest are counted in a note)."""

MAX_DIFF_WORDS = 300
"""Longer texts are shown as the words around the edits (:data:`DIFF_CONTEXT` either side)."""

DIFF_CONTEXT = 12
"""Unedited words shown either side of an edit in a text longer than :data:`MAX_DIFF_WORDS`."""

MAX_CHAR_NAME = 48
"""Unicode names up to this length are given with a code point (longer ones are left out)."""

INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Co", "Cn", "Cs"})
"""Unicode categories shown as a ``⟨U+XXXX⟩`` label instead of the character: format
characters (zero-width, joiners, bidirectional controls, soft hyphen), controls, private use,
unassigned code points and lone surrogates."""

_NORM_SYMBOL = {"linf": "‖δ‖∞", "l2": "‖δ‖₂", "l1": "‖δ‖₁", "l0": "‖δ‖₀"}


@dataclass(frozen=True)
class ExampleContext:
    """What a renderer knows besides the example: the threat it broke (norm, bounds) and
    ``figure_name(stem)``, which returns a file name unique in the report."""

    threat_name: str
    threat: ThreatModel
    figure_name: Callable[[str], str]
    class_names: tuple[str, ...] = ()
    """Class names by index when the result's data records them (e.g. ``("ham", "spam")``)."""


class ExampleRenderer(Protocol):
    """Renders the examples of one modality."""

    modality: str

    def accepts(self, example: AdversarialExample) -> bool:
        """Whether this renderer handles ``example`` (its shape, its fields)."""
        ...

    def render(self, example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
        """The gallery entry of ``example``."""
        ...


def _class_name(k: int, class_names: Sequence[str]) -> str:
    return str(class_names[k]) if 0 <= k < len(class_names) else ""


def class_label(k: int, class_names: Sequence[str] = ()) -> str:
    """Class ``k`` for a reader: ``spam (1)`` when its name is known, else ``1``."""
    name = _class_name(k, class_names)
    return f"{name} ({k})" if name else str(k)


def _prediction(k: int, confidence: float, class_names: Sequence[str]) -> str:
    name = _class_name(k, class_names)
    return f"{name} ({k}, {percent(confidence)})" if name else f"{k} ({percent(confidence)})"


def example_caption(
    ex: AdversarialExample,
    threat: ThreatModel,
    class_names: Sequence[str] = (),
    *,
    size: str | None = None,
) -> str:
    """``label 7 → clean prediction 7 (99.0%), adversarial 3 (61.2%); attack pgd; ‖δ‖∞ = 0.1``
    (with the target of a targeted threat; classes named ``spam (1)`` when ``class_names``
    has them; a word-edits threat gives the edited share of the words). ``size`` replaces the
    last part (the size of the perturbation)."""
    target = f"; target {class_label(ex.target, class_names)}" if ex.target is not None else ""
    if size is None:
        if threat.norm == "word-edits":
            size = f"{percent(ex.perturbation_norm)} of the words edited"
        else:
            symbol = _NORM_SYMBOL.get(threat.norm, f"‖δ‖ ({threat.norm})")
            size = f"{symbol} = {ex.perturbation_norm:.4g}"
    return (
        f"label {class_label(ex.label, class_names)} → clean prediction "
        f"{_prediction(ex.clean_prediction, ex.clean_confidence, class_names)}, adversarial "
        f"{_prediction(ex.adversarial_prediction, ex.adversarial_confidence, class_names)}"
        f"{target}; attack {ex.attack}; {size}"
    )


def _arrays(ex: AdversarialExample) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(clean, adversarial, attribution)`` as float arrays of ``ex.shape``, or ``None`` when
    the lengths do not match the shape."""
    size = math.prod(ex.shape) if ex.shape else 0
    if size <= 0 or not (len(ex.clean) == len(ex.adversarial) == len(ex.attribution) == size):
        return None
    return tuple(  # type: ignore[return-value]
        np.asarray(v, dtype=np.float64).reshape(ex.shape)
        for v in (ex.clean, ex.adversarial, ex.attribution)
    )


def _title(ex: AdversarialExample) -> str:
    return f"sample {ex.index}"


class ImageRenderer:
    """Images ``(C, H, W)``, ``C`` in {1, 3}: one figure with the clean and adversarial images
    (in the threat's bounds), the perturbation (signed; per pixel the channel change of largest
    magnitude) and the attribution (signed; summed over channels, its additive share per pixel),
    both on a diverging colormap with a scale symmetric around 0."""

    modality = "image"

    def accepts(self, example: AdversarialExample) -> bool:
        s = example.shape
        return len(s) == 3 and s[0] in (1, 3) and s[1] > 1 and s[2] > 1

    def render(self, example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
        caption = example_caption(example, ctx.threat, ctx.class_names)
        arrays = _arrays(example)
        if arrays is None:
            return GalleryItem(
                _title(example), caption, note="malformed example: values do not match its shape"
            )
        fig = image_example_figure(*arrays, bounds=ctx.threat.bounds)
        name = ctx.figure_name(f"example-{ctx.threat_name}-{example.index}")
        alt = (
            f"sample {example.index} under {ctx.threat_name}: clean image, adversarial image, "
            "perturbation and attribution heatmaps"
        )
        return GalleryItem(
            _title(example), caption, figure=Figure(name, figure_png(fig), alt, caption)
        )


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class FeatureRenderer:
    """Any shape (feature vectors, e.g. tabular data): a table of the features that changed
    with their clean and adversarial values, the change and the attribution, sorted by
    ``|attribution|`` (at most :data:`MAX_FEATURE_ROWS` rows)."""

    modality = "features"

    def accepts(self, example: AdversarialExample) -> bool:
        return True

    def render(self, example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
        caption = example_caption(example, ctx.threat, ctx.class_names)
        arrays = _arrays(example)
        if arrays is None:
            return GalleryItem(
                _title(example), caption, note="malformed example: values do not match its shape"
            )
        clean, adv, attr = (a.reshape(-1) for a in arrays)
        delta = adv - clean
        changed = np.flatnonzero(delta != 0)
        order = changed[np.argsort(-np.abs(attr[changed]), kind="stable")]
        shown = order[:MAX_FEATURE_ROWS]
        multi = len(example.shape) > 1

        def name(i: int) -> str:
            if not multi:
                return str(i)
            return "(" + ", ".join(str(int(j)) for j in np.unravel_index(i, example.shape)) + ")"

        rows = tuple(
            (name(int(i)), _fmt(clean[i]), _fmt(adv[i]), f"{delta[i]:+.4g}", f"{attr[i]:+.4g}")
            for i in shown
        )
        table = Table(
            ("feature", "clean", "adversarial", "delta", "attribution"),
            rows,
            numeric=frozenset({1, 2, 3, 4}),
        )
        notes = [f"{len(changed)} of {clean.size} features changed"]
        if len(order) > len(shown):
            notes.append(f"the {len(shown)} with the largest |attribution| shown")
        return GalleryItem(_title(example), caption, table=table, note="; ".join(notes))


# --- texts --------------------------------------------------------------------------------------


def char_label(ch: str) -> str:
    """``⟨U+200B⟩``: the code point of one character, as shown in reports."""
    return f"⟨U+{ord(ch):04X}⟩"


def _char_name(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name if len(name) <= MAX_CHAR_NAME else ""


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) in INVISIBLE_CATEGORIES


def _char_span(ch: str) -> Span:
    name = _char_name(ch)
    title = f"U+{ord(ch):04X} {name}".rstrip()
    return Span.of("char", char_label(ch), title=title)


def visible_text(text: str, flag: Collection[str] = ()) -> tuple[Cell, ...]:
    """``text`` as document cells a reader can check: every character of an
    :data:`INVISIBLE_CATEGORIES` category (``U+200B`` zero width space, bidirectional controls,
    …) replaced by a ``⟨U+200B⟩`` label, and each character in ``flag`` (e.g. a look-alike from
    another script) followed by its label, so ``frее`` reads ``frе⟨U+0435⟩е⟨U+0435⟩``. Labels
    are ``char`` spans titled with the character's Unicode name."""
    out: list[Cell] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            out.append("".join(buf))
            buf.clear()

    for ch in text:
        if _invisible(ch):
            flush()
            out.append(_char_span(ch))
        elif ch in flag:
            buf.append(ch)
            flush()
            out.append(_char_span(ch))
        else:
            buf.append(ch)
    flush()
    return tuple(out)


def _flagged(edit: ExampleEdit) -> list[str]:
    """The visible characters of ``edit.after`` a reader must be told about: every non-ASCII
    one of a homoglyph edit, and any non-ASCII one another edit introduced (in order, once)."""
    out: list[str] = []
    for ch in edit.after:
        if ch.isascii() or _invisible(ch) or ch.isspace() or ch in out:
            continue
        if edit.kind == "homoglyph" or ch not in edit.before:
            out.append(ch)
    return out


def _characters(edit: ExampleEdit) -> str:
    """``е U+0435 CYRILLIC SMALL LETTER IE; ⟨U+200B⟩ ZERO WIDTH SPACE``: the unusual characters
    of ``edit.after`` with their code points and names ("" when none)."""
    seen: list[str] = []
    for ch in edit.after:
        if ch not in seen and _invisible(ch):
            seen.append(ch)
    seen += [ch for ch in _flagged(edit) if ch not in seen]
    parts = []
    for ch in seen:
        shown = char_label(ch) if _invisible(ch) else f"{ch} U+{ord(ch):04X}"
        parts.append(f"{shown} {_char_name(ch)}".rstrip())
    return "; ".join(parts)


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def _replay(words: list[str], edits: Sequence[ExampleEdit]) -> dict[int, ExampleEdit] | None:
    """The edits by word position, or ``None`` when they do not apply to ``words`` (a position
    out of range or edited twice, or a ``before`` that is not the word there)."""
    by_pos: dict[int, ExampleEdit] = {}
    for e in edits:
        if not 0 <= e.position < len(words) or e.position in by_pos:
            return None
        if words[e.position] != e.before:
            return None
        by_pos[e.position] = e
    return by_pos


def _shown_positions(n_words: int, edited: Collection[int]) -> list[int | None]:
    """Word positions to show, ``None`` for a gap: every word of a short text, the words within
    :data:`DIFF_CONTEXT` of an edit in a text longer than :data:`MAX_DIFF_WORDS`."""
    if n_words <= MAX_DIFF_WORDS:
        return list(range(n_words))
    if not edited:
        return [*range(MAX_DIFF_WORDS), None]
    keep = sorted(
        {
            i
            for p in edited
            for i in range(max(p - DIFF_CONTEXT, 0), min(p + DIFF_CONTEXT + 1, n_words))
        }
    )
    out: list[int | None] = []
    for i in keep:
        if (out and out[-1] is not None and out[-1] != i - 1) or (not out and i > 0):
            out.append(None)
        out.append(i)
    if keep and keep[-1] < n_words - 1:
        out.append(None)
    return out


def _diff(words: list[str], by_pos: dict[int, ExampleEdit]) -> tuple[Cell, ...]:
    """The word-level diff: each edited word struck through (``removed``) and followed by its
    replacement (``added``), words separated by single spaces."""
    parts: list[Cell] = []
    for i in _shown_positions(len(words), by_pos):
        if parts:
            parts.append(" ")
        if i is None:
            parts.append("…")
            continue
        e = by_pos.get(i)
        if e is None:
            parts.extend(visible_text(words[i]))
        else:
            parts.append(Span(visible_text(e.before), "removed"))
            parts.append(" ")
            parts.append(Span(visible_text(e.after, _flagged(e)), "added"))
    return tuple(parts)


def _whole(label: str, text: str | None) -> Paragraph:
    words = (text or "").split()
    parts: list[Cell] = [f"{label}: "]
    for k, w in enumerate(words):
        parts += [" "] if k else []
        parts.extend(visible_text(w))
    if text is None:
        parts.append("(not recorded)")
    elif not words:
        parts.append("(empty)")
    return Paragraph(tuple(parts), quote=True)


class TextRenderer:
    """Texts (examples with ``clean_text``): the caption (predictions, target, attack, words
    edited), the text as a word-level diff (each edited word struck through, its replacement in
    bold; in texts longer than :data:`MAX_DIFF_WORDS` words only the words around the edits),
    and a table of the edits in the order the attack applied them: word position, kind, the
    word before and after, the change of the attacker's objective when the edit was applied,
    and how much the objective drops when only that edit is reverted in the final text.

    Characters a reader could not see (zero-width and other format characters, controls) are
    shown as ``⟨U+200B⟩`` labels and non-ASCII characters an edit introduced (homoglyphs) are
    followed by their code point; the table names them. When the recorded edits do not
    reproduce the recorded adversarial text, both texts are shown in full instead of the diff.
    """

    modality = "text"

    def accepts(self, example: AdversarialExample) -> bool:
        return example.clean_text is not None

    def render(self, example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
        clean = example.clean_text or ""
        words = clean.split()
        n = len(words)
        edits = list(example.edits)
        k = len({e.position for e in edits}) if edits else round(example.perturbation_norm * n)
        size = (
            f"{k} of {n} word{'s' if n != 1 else ''} edited ({percent(example.perturbation_norm)})"
        )
        caption = example_caption(example, ctx.threat, ctx.class_names, size=size)
        notes: list[str] = []
        by_pos = _replay(words, edits)
        adversarial = example.adversarial_text
        if by_pos is not None and adversarial is not None:
            replayed = [by_pos[i].after if i in by_pos else w for i, w in enumerate(words)]
            if " ".join(replayed).split() != adversarial.split():
                by_pos = None
        if by_pos is not None and n:
            body: tuple[Paragraph, ...] = (Paragraph(_diff(words, by_pos), quote=True),)
            if n > MAX_DIFF_WORDS:
                notes.append(f"the words within {DIFF_CONTEXT} of an edit shown")
        else:
            body = (_whole("clean", example.clean_text), _whole("adversarial", adversarial))
            if edits or clean != adversarial:
                notes.append(
                    "the recorded edits do not reproduce the adversarial text: both texts shown "
                    "as recorded"
                )
        if not edits:
            notes.append("no edits recorded")
            return GalleryItem(_title(example), caption, note="; ".join(notes), body=body)
        shown = edits[:MAX_EDIT_ROWS]
        if len(edits) > len(shown):
            notes.append(f"the first {len(shown)} of {len(edits)} edits listed")
        table = _edits_table(shown, targeted=example.target is not None)
        return GalleryItem(_title(example), caption, table=table, note="; ".join(notes), body=body)


def _edits_table(shown: Sequence[ExampleEdit], *, targeted: bool) -> Table:
    """The edits of a text example, in the order applied, with their effect on the objective
    (and the characters an edit brought in, when any did)."""
    chars = [_characters(e) for e in shown]
    columns = [
        "word #",
        "kind",
        "before",
        "after",
        "score change when applied",
        "contribution when reverted",
    ]
    with_chars = any(chars)
    if with_chars:
        columns.append("characters")
    rows: list[tuple[Cell, ...]] = []
    for e, c in zip(shown, chars, strict=True):
        row: list[Cell] = [
            str(e.position),
            e.kind,
            Span(visible_text(e.before)),
            Span(visible_text(e.after, _flagged(e))),
            _signed(e.score_change),
            _signed(e.contribution),
        ]
        if with_chars:
            row.append(c or "—")
        rows.append(tuple(row))
    goal = "the target class" if targeted else "a wrong class"
    return Table(
        tuple(columns),
        tuple(rows),
        numeric=frozenset({0, 4, 5}),
        caption="edits in the order applied; word # counts the whitespace-separated words "
        f"of the original from 0; objective: the probability margin towards {goal}",
    )


_RENDERERS: list[ExampleRenderer] = [TextRenderer(), ImageRenderer(), FeatureRenderer()]


def example_renderers() -> Sequence[ExampleRenderer]:
    """The registered renderers, in the order they are tried."""
    return tuple(_RENDERERS)


def register_example_renderer(renderer: ExampleRenderer, *, first: bool = True) -> None:
    """Add ``renderer``, tried before the others (``first``) or just before the catch-all
    :class:`FeatureRenderer`."""
    if first:
        _RENDERERS.insert(0, renderer)
    else:
        _RENDERERS.insert(max(len(_RENDERERS) - 1, 0), renderer)


def find_renderer(example: AdversarialExample) -> ExampleRenderer | None:
    """The first registered renderer that accepts ``example`` (``None``: none does)."""
    for r in _RENDERERS:
        if r.accepts(example):
            return r
    return None


def render_example(example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
    """``example`` rendered by the first registered renderer that accepts it."""
    r = find_renderer(example)
    if r is not None:
        return r.render(example, ctx)
    return GalleryItem(_title(example), example_caption(example, ctx.threat, ctx.class_names))
