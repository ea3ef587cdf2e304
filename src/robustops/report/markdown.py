"""The Markdown backend: ``report.md`` with its figures as PNG files next to it (relative links).

Text from the result is escaped for Markdown (HTML-special characters as entities, Markdown
punctuation with backslashes, and a line never starts with block syntax such as ``#`` or
``1.``), so a name such as ``<script>`` or ``a|b`` renders literally. Spans: ``removed`` as
``~~struck~~`` (GitHub-flavoured strikethrough), ``added`` as ``**bold**``, ``char`` labels as
plain text.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from robustops.io import atomic_write_bytes, atomic_write_text
from robustops.report.document import (
    Block,
    Cell,
    Details,
    Document,
    Figure,
    Gallery,
    KeyValues,
    Paragraph,
    Section,
    Span,
    Status,
    Table,
)

__all__ = ["MARKDOWN_NAME", "md_escape", "to_markdown", "write_markdown"]

MARKDOWN_NAME = "report.md"

_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_SPACE = re.compile(r"\s+")
_STATUS = {"pass": "✓ pass", "warn": "⚠ warn", "fail": "✗ FAIL", "skip": "– skip"}
# What would make a line a heading, list item, thematic break or setext underline (">" and "<"
# are entities after md_escape, and "*", "_", "`", "~", "|" are backslash-escaped already).
_BLOCK_START = re.compile(r"^( ?)(#|[-+=]|\d{1,9}(?=[.)]))")
_SPAN_DELIMITER = {"removed": "~~", "added": "**"}


def md_escape(text: str) -> str:
    """``text`` as literal Markdown inline text (one line)."""
    one_line = _SPACE.sub(" ", str(text))
    return _SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def _cell(c: Cell) -> str:
    if isinstance(c, Status):
        return f"**{md_escape(_STATUS.get(c.value, c.value))}**"
    if isinstance(c, Details):
        return md_escape(c.full)
    if isinstance(c, Span):
        inner = "".join(_cell(p) for p in c.parts)
        mark = _SPAN_DELIMITER.get(c.style, "")
        return f"{mark}{inner}{mark}" if inner.strip() else inner
    return md_escape(c)


def _line(text: str) -> str:
    """``text`` (escaped inline Markdown) safe at the start of a line: leading block syntax
    (``#``, ``-``, ``+``, ``=``, ``1.``) backslash-escaped so it stays text."""

    def esc(m: re.Match[str]) -> str:
        lead, mark = m.group(1), m.group(2)
        if mark[0].isdigit():
            return f"{lead}{mark}\\"  # "1." becomes "1\." (the escape goes before the . or ))
        return f"{lead}\\{mark}"

    return _BLOCK_START.sub(esc, text, count=1)


def _paragraph(b: Paragraph) -> str:
    text = _line("".join(_cell(p) for p in b.parts))
    if b.note:
        text = f"*{text}*"
    return f"> {text}" if b.callout or b.quote else text


def _table(t: Table) -> list[str]:
    lines = [
        "| " + " | ".join(md_escape(c) for c in t.columns) + " |",
        "| "
        + " | ".join("---:" if i in t.numeric else "---" for i in range(len(t.columns)))
        + " |",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"*{md_escape(t.caption)}*"]
    return lines


def _figure(f: Figure) -> list[str]:
    lines = [f"![{md_escape(f.alt)}]({f.name})"]
    if f.caption:
        lines += ["", f"*{md_escape(f.caption)}*"]
    return lines


def _blocks(blocks: list[Block], level: int) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Paragraph):
            out += [_paragraph(b), ""]
        elif isinstance(b, KeyValues):
            out += [f"- **{md_escape(k)}**: {_cell(v)}" for k, v in b.items] + [""]
        elif isinstance(b, Table):
            out += [*_table(b), ""]
        elif isinstance(b, Figure):
            out += [*_figure(b), ""]
        elif isinstance(b, Gallery):
            for item in b.items:
                out += [f"{'#' * min(level + 1, 6)} {md_escape(item.title)}", ""]
                out += [_line(md_escape(item.caption)), ""]
                if item.figure is not None:
                    out += [f"![{md_escape(item.figure.alt)}]({item.figure.name})", ""]
                for p in item.body:
                    out += [_paragraph(p), ""]
                if item.table is not None:
                    out += [*_table(item.table), ""]
                if item.note:
                    out += [f"*{md_escape(item.note)}*", ""]
    return out


def _section(s: Section) -> list[str]:
    status = f" · {_cell(s.status)}" if s.status is not None else ""
    out = [f'<a id="{s.anchor}"></a>', "", f"{'#' * s.level} {md_escape(s.title)}{status}", ""]
    out += _blocks(s.blocks, s.level)
    for sub in s.subsections:
        out += _section(sub)
    return out


def to_markdown(doc: Document) -> str:
    """The Markdown text of ``doc`` (figures linked by file name)."""
    out = [f"# {md_escape(doc.title)}", ""]
    out += _blocks(doc.header, 1)
    out += ["**Contents**", ""]
    for s in doc.sections:
        out.append(f"- [{md_escape(s.title)}](#{s.anchor})")
        out += [f"  - [{md_escape(sub.title)}](#{sub.anchor})" for sub in s.subsections]
    out.append("")
    for s in doc.sections:
        out += _section(s)
    out.append("*Generated by robustops report.*")
    return "\n".join(out).rstrip() + "\n"


def write_markdown(doc: Document, out_dir: str | Path) -> Path:
    """Write ``doc`` as ``out_dir/report.md`` with its figures as PNG files beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in doc.figures():
        atomic_write_bytes(out / f.name, f.png)
    path = out / MARKDOWN_NAME
    atomic_write_text(path, to_markdown(doc))
    return path
