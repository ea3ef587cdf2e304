"""Human-readable reports of a suite result: Markdown (with PNG figures beside it) and one
self-contained HTML page (figures inlined, no network, no JavaScript).

Both are written from the same :class:`~robustops.report.document.Document` (built by
:func:`build_document`): header (run, model and data hashes, environment), summary with Wilson
intervals and latency, robust accuracy against epsilon (with the masking audit's sweep), the
attacks of each threat, the masking audit, calibration, certification, and a gallery of
adversarial examples rendered per modality (:mod:`robustops.report.examples`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from robustops.errors import SpecError
from robustops.evaluation.result import SuiteResult
from robustops.io import atomic_write_text
from robustops.report.build import audit_sweep, build_document, wilson_interval
from robustops.report.document import Document
from robustops.report.examples import (
    ExampleContext,
    ExampleRenderer,
    register_example_renderer,
)
from robustops.report.html import HTML_NAME, to_html
from robustops.report.markdown import MARKDOWN_NAME, to_markdown, write_markdown

__all__ = [
    "FORMATS",
    "HTML_NAME",
    "MARKDOWN_NAME",
    "Document",
    "ExampleContext",
    "ExampleRenderer",
    "audit_sweep",
    "build_document",
    "parse_formats",
    "register_example_renderer",
    "render_html",
    "render_markdown",
    "to_html",
    "to_markdown",
    "wilson_interval",
    "write_report",
]

FORMATS = ("md", "html")
"""Report formats :func:`write_report` knows."""


def render_markdown(result: SuiteResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.md`` and its figures (PNG files beside it, linked relatively);
    returns the Markdown file's path."""
    return write_markdown(build_document(result), out_dir)


def render_html(result: SuiteResult) -> str:
    """The report as one self-contained HTML page."""
    return to_html(build_document(result))


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """``"md,html"`` or ``["md", "html"]`` as a list of known formats without duplicates
    (case and blanks ignored); :class:`SpecError` on ``formats`` for an unknown or no format."""
    if isinstance(formats, str):
        formats = formats.split(",")
    out: list[str] = []
    for f in formats:
        f = f.strip().lower()
        if not f:
            continue
        if f not in FORMATS:
            raise SpecError.single("formats", f"unknown format {f!r}; expected some of {FORMATS}")
        if f not in out:
            out.append(f)
    if not out:
        raise SpecError.single("formats", f"no format given; expected some of {FORMATS}")
    return out


def write_report(
    result: SuiteResult, out_dir: str | Path, formats: Iterable[str] = FORMATS
) -> list[Path]:
    """Write the report of ``result`` to ``out_dir`` in each of ``formats`` (``"md"``:
    ``report.md`` and its PNG figures; ``"html"``: ``report.html``, self-contained) and return
    the report files written, in the order of ``formats``. The figures are drawn once.

    Raises:
        SpecError: an unknown or empty ``formats`` (see :func:`parse_formats`).
        OSError: ``out_dir`` cannot be written.
    """
    fmts = parse_formats(formats)
    doc = build_document(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for f in fmts:
        if f == "md":
            written.append(write_markdown(doc, out))
        else:
            path = out / HTML_NAME
            atomic_write_text(path, to_html(doc))
            written.append(path)
    return written
