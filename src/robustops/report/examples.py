"""Adversarial examples in a report, one renderer per input modality.

A renderer turns one :class:`~robustops.evaluation.result.AdversarialExample` into a
:class:`~robustops.report.document.GalleryItem` (a figure and/or a table with a caption); the
Markdown and HTML backends lay those out. The first registered renderer whose ``accepts``
returns true is used, so a new modality (text, audio, …) is one class and one
:func:`register_example_renderer` call:

* :class:`ImageRenderer`: shape ``(C, H, W)`` with ``C`` in {1, 3}: clean image, adversarial
  image, signed perturbation and signed attribution heatmaps.
* :class:`FeatureRenderer` (the fallback, any shape): the features that changed, sorted by
  ``|attribution|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from robustops.evaluation.plots import figure_png
from robustops.evaluation.result import AdversarialExample
from robustops.report.document import Figure, GalleryItem, Table
from robustops.report.figures import image_example_figure
from robustops.threats import ThreatModel

__all__ = [
    "ExampleContext",
    "ExampleRenderer",
    "FeatureRenderer",
    "ImageRenderer",
    "example_caption",
    "example_renderers",
    "register_example_renderer",
    "render_example",
]

MAX_FEATURE_ROWS = 20
"""Changed features listed per tabular example (the rest are counted in a note)."""

_NORM_SYMBOL = {"linf": "‖δ‖∞", "l2": "‖δ‖₂", "l1": "‖δ‖₁", "l0": "‖δ‖₀"}


@dataclass(frozen=True)
class ExampleContext:
    """What a renderer knows besides the example: the threat it broke (norm, bounds) and
    ``figure_name(stem)``, which returns a file name unique in the report."""

    threat_name: str
    threat: ThreatModel
    figure_name: Callable[[str], str]


class ExampleRenderer(Protocol):
    """Renders the examples of one modality."""

    modality: str

    def accepts(self, example: AdversarialExample) -> bool:
        """Whether this renderer handles ``example`` (its shape, its fields)."""
        ...

    def render(self, example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
        """The gallery entry of ``example``."""
        ...


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def example_caption(ex: AdversarialExample, threat: ThreatModel) -> str:
    """``label 7 → clean prediction 7 (99.0%), adversarial 3 (61.2%); attack pgd; ‖δ‖∞ = 0.1``
    (with the target of a targeted threat)."""
    target = f"; target {ex.target}" if ex.target is not None else ""
    symbol = _NORM_SYMBOL.get(threat.norm, f"‖δ‖ ({threat.norm})")
    return (
        f"label {ex.label} → clean prediction {ex.clean_prediction} "
        f"({_pct(ex.clean_confidence)}), adversarial {ex.adversarial_prediction} "
        f"({_pct(ex.adversarial_confidence)}){target}; attack {ex.attack}; "
        f"{symbol} = {ex.perturbation_norm:.4g}"
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
        caption = example_caption(example, ctx.threat)
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
        caption = example_caption(example, ctx.threat)
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


_RENDERERS: list[ExampleRenderer] = [ImageRenderer(), FeatureRenderer()]


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


def render_example(example: AdversarialExample, ctx: ExampleContext) -> GalleryItem:
    """``example`` rendered by the first registered renderer that accepts it."""
    for r in _RENDERERS:
        if r.accepts(example):
            return r.render(example, ctx)
    return GalleryItem(_title(example), example_caption(example, ctx.threat))
