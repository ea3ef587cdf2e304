"""The HTML backend: one self-contained page.

Nothing is fetched: figures are inlined as ``data:image/png;base64,`` URIs, the CSS is inline,
there is no JavaScript, no external font, and a Content-Security-Policy forbids any load other
than inline data images and styles (so a mistake shows up as a blocked request, not a leak).
Every string from the result goes through :func:`html.escape`. Spans: ``removed`` as ``<del>``,
``added`` as ``<ins>``, ``char`` labels as a marked ``<span>`` (its title the character's name),
``plain`` as a ``<span>`` kept on one line.
"""

from __future__ import annotations

import base64
from html import escape

from robustops.report.document import (
    Block,
    Cell,
    Details,
    Document,
    Figure,
    Gallery,
    GalleryItem,
    KeyValues,
    Paragraph,
    Section,
    Span,
    Status,
    Table,
)

__all__ = ["CSP", "HTML_NAME", "to_html"]

HTML_NAME = "report.html"

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)

_STATUS_TEXT = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}

_CSS = """
:root { --pass: #1a7f37; --warn: #9a6700; --fail: #cf222e; --skip: #6e7781;
  --line: #d0d7de; --muted: #57606a; --bg-soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color: #1f2328; margin: 0; line-height: 1.45; }
main, header, nav, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { font-size: 1.7rem; margin: 0 0 12px; word-break: break-word; }
h2 { font-size: 1.35rem; border-bottom: 1px solid var(--line); padding-bottom: 4px;
  margin-top: 36px; }
h3 { font-size: 1.1rem; margin-top: 24px; }
h4 { font-size: 1rem; margin: 0 0 6px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.kv dt { font-weight: 600; color: var(--muted); }
dl.kv dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.9rem; word-break: break-all; }
nav ul { columns: 2; margin: 8px 0; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.9rem; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 0.82rem;
  padding-top: 4px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
th { background: var(--bg-soft); text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
  font-weight: 700; font-size: 0.8rem; letter-spacing: 0.03em; vertical-align: middle; }
.badge-pass { background: var(--pass); } .badge-warn { background: var(--warn); }
.badge-fail { background: var(--fail); } .badge-skip { background: var(--skip); }
.callout { border-left: 6px solid var(--skip); background: var(--bg-soft); padding: 10px 14px;
  font-size: 1.05rem; margin: 14px 0; }
.callout-pass { border-color: var(--pass); background: #dafbe1; }
.callout-warn { border-color: var(--warn); background: #fff8c5; }
.callout-fail { border-color: var(--fail); background: #ffebe9; }
.callout .badge { font-size: 1rem; padding: 2px 12px; }
p.note { color: var(--muted); font-size: 0.88rem; }
figure { margin: 12px 0; }
figure img, .card img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.85rem; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr));
  gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px; background: #fff; }
.card p { margin: 4px 0; font-size: 0.88rem; }
.scroll { overflow-x: auto; }
details.more { max-width: 26em; overflow-wrap: anywhere; }
details.more summary { cursor: pointer; }
details.more[open] summary { margin-bottom: 2px; }
blockquote.quote { margin: 8px 0; padding: 6px 10px; border-left: 4px solid var(--line);
  background: var(--bg-soft); line-height: 1.9; overflow-x: auto; }
blockquote.quote p { margin: 0; }
.group, del, ins { white-space: nowrap; }
del { background: #ffebe9; color: #82071e; text-decoration: line-through; padding: 0 2px; }
ins { background: #dafbe1; color: #116329; text-decoration: none; font-weight: 600;
  padding: 0 2px; }
.char { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.78em; font-weight: 400; color: #8250df; background: #fbefff;
  border: 1px solid #d8b9ff; border-radius: 3px; padding: 0 2px; margin: 0 1px; }
footer { color: var(--muted); font-size: 0.8rem; padding-bottom: 24px; margin-top: 36px; }
"""


def _badge(s: Status) -> str:
    v = s.value if s.value in _STATUS_TEXT else "skip"
    return f'<span class="badge badge-{v}">{escape(_STATUS_TEXT.get(s.value, s.value))}</span>'


_SPAN_TAG = {"removed": "del", "added": "ins"}


def _cell(c: Cell) -> str:
    if isinstance(c, Status):
        return _badge(c)
    if isinstance(c, Details):
        if c.summary == c.full:
            return escape(c.full)
        return (
            f'<details class="more"><summary>{escape(c.summary)}</summary>'
            f"{escape(c.full)}</details>"
        )
    if isinstance(c, Span):
        inner = "".join(_cell(p) for p in c.parts)
        title = f' title="{escape(c.title)}"' if c.title else ""
        if c.style == "char":
            return f'<span class="char"{title}>{inner}</span>'
        tag = _SPAN_TAG.get(c.style)
        if tag is None:
            return f'<span class="group"{title}>{inner}</span>'
        return f"<{tag}{title}>{inner}</{tag}>"
    return escape(c)


def _paragraph(b: Paragraph) -> str:
    classes = []
    if b.note:
        classes.append("note")
    if b.callout:
        v = b.callout if b.callout in _STATUS_TEXT else "skip"
        classes += ["callout", f"callout-{v}"]
    attr = f' class="{" ".join(classes)}"' if classes else ""
    p = f"<p{attr}>" + "".join(_cell(c) for c in b.parts) + "</p>"
    return f'<blockquote class="quote">{p}</blockquote>' if b.quote else p


def _table(t: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i in t.numeric else ""

    head = "".join(f"<th{cls(i)}>{escape(c)}</th>" for i, c in enumerate(t.columns))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_cell(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in t.rows
    )
    caption = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _img(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(f.alt)}">'


def _figure(f: Figure) -> str:
    caption = f"<figcaption>{escape(f.caption)}</figcaption>" if f.caption else ""
    return f"<figure>{_img(f)}{caption}</figure>"


def _card(item: GalleryItem, level: int) -> str:
    h = min(level + 1, 6)
    parts = [f"<h{h}>{escape(item.title)}</h{h}>"]
    if item.figure is not None:
        parts.append(_img(item.figure))
    parts.append(f"<p>{escape(item.caption)}</p>")
    parts.extend(_paragraph(p) for p in item.body)
    if item.table is not None:
        parts.append(_table(item.table))
    if item.note:
        parts.append(f'<p class="note">{escape(item.note)}</p>')
    return '<article class="card">' + "".join(parts) + "</article>"


def _blocks(blocks: list[Block], level: int) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Paragraph):
            out.append(_paragraph(b))
        elif isinstance(b, KeyValues):
            rows = "".join(f"<dt>{escape(k)}</dt><dd>{_cell(v)}</dd>" for k, v in b.items)
            out.append(f'<dl class="kv">{rows}</dl>')
        elif isinstance(b, Table):
            out.append(_table(b))
        elif isinstance(b, Figure):
            out.append(_figure(b))
        elif isinstance(b, Gallery):
            cards = "".join(_card(i, level) for i in b.items)
            out.append(f'<div class="gallery">{cards}</div>')
    return "\n".join(out)


def _section(s: Section) -> str:
    h = min(s.level, 6)
    status = f" {_badge(s.status)}" if s.status is not None else ""
    parts = [
        f'<section id="{escape(s.anchor)}">',
        f"<h{h}>{escape(s.title)}{status}</h{h}>",
        _blocks(s.blocks, s.level),
        *(_section(sub) for sub in s.subsections),
        "</section>",
    ]
    return "\n".join(p for p in parts if p)


def _toc(doc: Document) -> str:
    items = []
    for s in doc.sections:
        subs = "".join(
            f'<li><a href="#{escape(sub.anchor)}">{escape(sub.title)}</a></li>'
            for sub in s.subsections
        )
        subs = f"<ul>{subs}</ul>" if subs else ""
        items.append(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a>{subs}</li>')
    return f'<nav aria-label="contents"><ul>{"".join(items)}</ul></nav>'


def to_html(doc: Document) -> str:
    """``doc`` as one self-contained HTML page."""
    title = escape(doc.title)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="robustops report">',
            f"<title>{title}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<header><h1>{title}</h1>",
            _blocks(doc.header, 1),
            "</header>",
            _toc(doc),
            "<main>",
            *(_section(s) for s in doc.sections),
            "</main>",
            "<footer>Generated by robustops report. Self-contained: no network access "
            "needed.</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )
