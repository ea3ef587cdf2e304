"""A small, format-neutral document model: the report is built once as sections of blocks and
then written by a backend (:mod:`robustops.report.markdown`, :mod:`robustops.report.html`).

Every string held here is plain text (never markup): each backend escapes it for its format.
Figures hold rendered PNG bytes and a file name unique within the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "Block",
    "Cell",
    "Document",
    "Figure",
    "Gallery",
    "GalleryItem",
    "KeyValues",
    "Paragraph",
    "Section",
    "Status",
    "Table",
    "slug",
]


@dataclass(frozen=True)
class Status:
    """A ``pass``/``warn``/``fail``/``skip`` badge (coloured in HTML, bold in Markdown)."""

    value: str


Cell = str | Status
"""A table cell or a piece of a paragraph: plain text or a status badge."""


@dataclass(frozen=True)
class Paragraph:
    """A line of text and badges; ``note``: de-emphasised; ``callout``: a status
    (``pass``, ``warn``, ``fail``, ``skip``) whose colour frames the paragraph."""

    parts: tuple[Cell, ...]
    note: bool = False
    callout: str | None = None

    @classmethod
    def of(cls, *parts: Cell, note: bool = False, callout: str | None = None) -> Paragraph:
        return cls(tuple(parts), note=note, callout=callout)


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
    """One entry of a gallery: a title, a caption and any of a figure and a table."""

    title: str
    caption: str
    figure: Figure | None = None
    table: Table | None = None
    note: str = ""


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
