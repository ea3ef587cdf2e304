"""A small, format-neutral document model: the report is built once as sections of blocks and
then written by a backend (:mod:`robustops.report.markdown`, :mod:`robustops.report.html`).

Every string held here is plain text (never markup): each backend escapes it for its format.
Inline meaning (a struck-out word, an inserted one, a label standing for an invisible character)
is a :class:`Span` around plain text, never markup in the text. Figures hold rendered PNG bytes
and a file name unique within the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Block",
    "Cell",
    "Details",
    "Document",
    "Figure",
    "Gallery",
    "GalleryItem",
    "KeyValues",
    "Paragraph",
    "Section",
    "Span",
    "SpanStyle",
    "Status",
    "Table",
    "cell_text",
    "slug",
]


@dataclass(frozen=True)
class Status:
    """A ``pass``/``warn``/``fail``/``skip`` badge (coloured in HTML, bold in Markdown)."""

    value: str


SpanStyle = Literal["plain", "removed", "added", "char"]
"""What a :class:`Span` means: ``plain`` (a group, e.g. a word, kept on one line where the
format allows; no emphasis), ``removed`` (struck through: e.g. an original word an edit
replaced), ``added`` (emphasised: its replacement), ``char`` (a label such as ``⟨U+200B⟩``
standing for a character a reader could not see or tell apart)."""


@dataclass(frozen=True)
class Span:
    """Inline text with a meaning (:data:`SpanStyle`) each backend renders its own way (HTML:
    a ``span``, ``del``, ``ins``, a marked ``span``; Markdown: plain, ``~~…~~``, ``**…**``,
    plain). ``parts`` are plain text, badges or nested spans; ``title`` is a longer
    description (an HTML tooltip, e.g. a character's Unicode name).

    In Markdown, a ``removed`` or ``added`` span should be set apart by spaces (or start or end
    the line) for its delimiters to be recognised whatever the text inside begins or ends with.
    """

    parts: tuple[Cell, ...]
    style: SpanStyle = "plain"
    title: str = ""

    @classmethod
    def of(cls, style: SpanStyle, *parts: Cell, title: str = "") -> Span:
        return cls(tuple(parts), style, title)

    def plain(self) -> str:
        """The span's text without any styling (badges as their value)."""
        return "".join(cell_text(p) for p in self.parts)


@dataclass(frozen=True)
class Details:
    """A short text standing for a longer one: HTML shows ``summary`` and folds ``full`` away
    under it (a ``details`` element); Markdown, which cannot fold, shows ``full``."""

    summary: str
    full: str


Cell = str | Status | Span | Details
"""A table cell or a piece of a paragraph: plain text, a status badge, a styled span or a
folded text."""


def cell_text(cell: Cell) -> str:
    """``cell`` as plain text (badges as their value, spans without their styling, folded
    text as its summary)."""
    if isinstance(cell, Status):
        return cell.value
    if isinstance(cell, Span):
        return cell.plain()
    if isinstance(cell, Details):
        return cell.summary
    return cell


@dataclass(frozen=True)
class Paragraph:
    """A line of text and badges; ``note``: de-emphasised; ``callout``: a status
    (``pass``, ``warn``, ``fail``, ``skip``) whose colour frames the paragraph; ``quote``:
    quoted data (e.g. a message under attack), set apart as a block quote."""

    parts: tuple[Cell, ...]
    note: bool = False
    callout: str | None = None
    quote: bool = False

    @classmethod
    def of(
        cls, *parts: Cell, note: bool = False, callout: str | None = None, quote: bool = False
    ) -> Paragraph:
        return cls(tuple(parts), note=note, callout=callout, quote=quote)


@dataclass(frozen=True)
class KeyValues:
    """A definition list: ``(key, value)`` rows."""

    items: tuple[tuple[str, Cell], ...]


@dataclass(frozen=True)
class Table:
    """A table of cells; ``numeric`` columns are right-aligned."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: frozenset[int] = frozenset()
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A rendered PNG figure. ``name`` is a file name (``[a-z0-9-]+.png``) unique in the
    document; ``alt`` describes it for screen readers; ``caption`` is shown under it."""

    name: str
    png: bytes
    alt: str
    caption: str = ""


@dataclass(frozen=True)
class GalleryItem:
    """One entry of a gallery: a title, a caption and any of a figure, paragraphs (``body``,
    e.g. a text and its edits) and a table, in that order."""

    title: str
    caption: str
    figure: Figure | None = None
    table: Table | None = None
    note: str = ""
    body: tuple[Paragraph, ...] = ()


@dataclass(frozen=True)
class Gallery:
    """Items laid out side by side in HTML, one after another in Markdown."""

    items: tuple[GalleryItem, ...]


Block = Paragraph | KeyValues | Table | Figure | Gallery


@dataclass
class Section:
    """A titled section (``level`` 2 or deeper) with its blocks and subsections. ``anchor`` is
    a unique ``[a-z0-9-]+`` id, used for the table of contents."""

    title: str
    anchor: str
    level: int = 2
    blocks: list[Block] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)
    status: Status | None = None


@dataclass
class Document:
    """The whole report: a title, header blocks and the sections."""

    title: str
    header: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        """Every figure, in document order."""
        out: list[Figure] = []

        def visit(blocks: list[Block]) -> None:
            for b in blocks:
                if isinstance(b, Figure):
                    out.append(b)
                elif isinstance(b, Gallery):
                    out.extend(i.figure for i in b.items if i.figure is not None)

        def walk(s: Section) -> None:
            visit(s.blocks)
            for sub in s.subsections:
                walk(sub)

        visit(self.header)
        for s in self.sections:
            walk(s)
        return out


def slug(text: str, fallback: str = "x") -> str:
    """``text`` as ``[a-z0-9-]+`` (at most 40 characters), for anchors and file names."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return s or fallback
