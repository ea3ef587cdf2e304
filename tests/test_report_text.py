"""Reports of text threats: a hand-built SMS-spam result (schema 1.2.0) with a word-edits threat
and text examples (homoglyphs, an invisible character, a message carrying HTML and Markdown)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from robustops import ThreatModel
from robustops.evaluation.result import (
    SCHEMA_VERSION,
    AdversarialExample,
    AttackFigures,
    ExampleEdit,
    SamplesRecord,
    SuiteResult,
    ThreatResult,
)
from robustops.report import build_document, render_html, render_markdown, write_report
from robustops.report.document import Paragraph, Span, Table, cell_text
from robustops.report.examples import (
    ExampleContext,
    TextRenderer,
    example_renderers,
    find_renderer,
    visible_text,
)
from robustops.report.html import to_html

HAM, SPAM = 0, 1
ZWSP = "\u200b"
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: would reverse the rest of the line if left raw
IE = "\u0435"  # CYRILLIC SMALL LETTER IE, looks like "e"
IOTA = "\u0399"  # GREEK CAPITAL LETTER IOTA, looks like "I"
SCRIPT = "<script>alert(1)</script>"

THREAT = ThreatModel(
    name="word-edits-0.2",
    norm="word-edits",
    epsilon=0.2,
    knowledge="score-based",
    query_budget=500,
    targeted=True,
    target_class=HAM,
)


def _example(
    index: int,
    clean: str,
    adversarial: str,
    edits: list[ExampleEdit],
    attack: str = "homoglyph",
) -> AdversarialExample:
    return AdversarialExample(
        index=index,
        label=SPAM,
        target=HAM,
        attack=attack,
        clean_text=clean,
        adversarial_text=adversarial,
        edits=edits,
        clean_prediction=SPAM,
        clean_confidence=0.97,
        adversarial_prediction=HAM,
        adversarial_confidence=0.58,
        perturbation_norm=len(edits) / len(clean.split()),
    )


def _homoglyph() -> AdversarialExample:
    clean = "WINNER!! Claim your free prize now, txt WIN to 80086"
    adv = f"W{IOTA}NNER!! Claim your fr{IE}{IE} prize now, txt WIN to 80086"
    return _example(
        1,
        clean,
        adv,
        [
            ExampleEdit(
                position=3,
                kind="homoglyph",
                before="free",
                after=f"fr{IE}{IE}",
                score_change=0.412,
                contribution=0.3,
            ),
            ExampleEdit(
                position=0,
                kind="homoglyph",
                before="WINNER!!",
                after=f"W{IOTA}NNER!!",
                score_change=0.25,
                contribution=0.125,
            ),
        ],
    )


def _invisible() -> AdversarialExample:
    clean = "URGENT call now to claim your cash prize"
    adv = f"URGENT call now to claim your ca{ZWSP}sh prize"
    edit = ExampleEdit(
        position=6,
        kind="invisible",
        before="cash",
        after=f"ca{ZWSP}sh",
        score_change=0.7,
        contribution=0.66,
    )
    return _example(2, clean, adv, [edit], attack="invisible")


def _hostile() -> AdversarialExample:
    """A message carrying HTML, Markdown syntax and a bidirectional override."""
    clean = (
        f"#1 {SCRIPT} *win* __big__ [cash](http://evil.example) a|b `x` ~~no~~ "
        f'<img src=x onerror="alert(2)"> {RLO}gnp.exe &amp; more'
    )
    words = clean.split()
    adv_words = list(words)
    adv_words[1] = "<script>alret(1)</script>"
    adv_words[3] = "_\\_big__"
    edits = [
        ExampleEdit(
            position=1,
            kind="swap",
            before=SCRIPT,
            after=adv_words[1],
            score_change=0.2,
            contribution=0.1,
        ),
        ExampleEdit(
            position=3,
            kind="delete",
            before="__big__",
            after=adv_words[3],
            score_change=-0.05,
            contribution=-0.01,
        ),
    ]
    return _example(3, clean, " ".join(adv_words), edits, attack="char-edit")


def _result(examples: list[AdversarialExample] | None = None) -> SuiteResult:
    """10 messages: 6 spam (one misclassified clean) and 4 ham. The threat targets ham, so the
    5 correctly classified spam messages are attacked and 3 of them are broken."""
    labels = [SPAM] * 6 + [HAM] * 4
    clean_correct = [True] * 5 + [False] + [True] * 4
    broken_by: list[str | None] = ["homoglyph", "homoglyph", "invisible"] + [None] * 7
    robust = [b is None and ok for b, ok in zip(broken_by, clean_correct, strict=True)]
    threat = ThreatResult(
        name=THREAT.name,
        threat=THREAT,
        robust_accuracy=sum(robust) / 10,
        attack_success_rate=3 / 5,
        n_robust=sum(robust),
        n_attacked=5,
        attacks=[
            AttackFigures(
                name="homoglyph",
                params={"candidates": 3},
                n_attacked=5,
                n_broken=2,
                success_rate=0.4,
                mean_queries=40.0,
                total_queries=200,
                median_perturbation=0.2,
                wall_time_s=0.5,
                mean_queries_per_success=31.5,
                mean_edits=1.5,
            ),
            AttackFigures(
                name="invisible",
                params={"candidates": 3},
                n_attacked=3,
                n_broken=1,
                success_rate=1 / 3,
                mean_queries=60.0,
                total_queries=180,
                median_perturbation=0.125,
                wall_time_s=0.25,
                mean_queries_per_success=12.0,
                mean_edits=1.0,
            ),
        ],
        total_queries=380,
        wall_time_s=0.8,
        robust=robust,
        broken_by=broken_by,
        queries=[40, 45, 95, 100, 100] + [0] * 5,  # homoglyph 200, then invisible 3 x 60
        targets=[HAM] * 10,
        examples=examples if examples is not None else [_homoglyph(), _invisible(), _hostile()],
    )
    return SuiteResult(
        schema_version=SCHEMA_VERSION,
        name="sms spam filter <b>v2</b>",
        created_at="2025-01-01T00:00:00+00:00",
        seed=0,
        device="cpu",
        n_samples=10,
        clean_accuracy=0.9,
        threats=[threat],
        data={"name": "sms_spam", "fingerprint": "ef" * 32, "classes": ["ham", "spam"]},
        model={"factory": "robustops.text.models:bigram", "weights_sha256": "ab" * 32},
        environment={"python": "3.11", "robustops": "0.1.0"},
        samples=SamplesRecord(indices=list(range(10)), labels=labels, clean_correct=clean_correct),
        wall_time_s=1.0,
    )


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    c.close()
    return c


@pytest.fixture(scope="module")
def result() -> SuiteResult:
    res = _result()
    # Valid per the schema: survives a JSON round trip.
    return SuiteResult.model_validate_json(res.model_dump_json())


@pytest.fixture(scope="module")
def page(result: SuiteResult) -> str:
    return render_html(result)


@pytest.fixture(scope="module")
def markdown(result: SuiteResult, tmp_path_factory: pytest.TempPathFactory) -> str:
    return render_markdown(result, tmp_path_factory.mktemp("md")).read_text(encoding="utf-8")


def _ctx(result: SuiteResult) -> ExampleContext:
    t = result.threats[0]
    return ExampleContext(t.name, t.threat, lambda stem: f"{stem}.png", ("ham", "spam"))


def test_text_renderer_is_tried_first(result: SuiteResult) -> None:
    assert example_renderers()[0].modality == "text"
    for ex in result.threats[0].examples:
        renderer = find_renderer(ex)
        assert renderer is not None and renderer.modality == "text"
    image_like = _homoglyph().model_copy(
        update={"clean_text": None, "adversarial_text": None, "edits": []}
    )
    renderer = find_renderer(image_like)
    assert renderer is not None and renderer.modality != "text"


def test_edits_table_rows_in_order_with_score_changes(result: SuiteResult) -> None:
    item = TextRenderer().render(_homoglyph(), _ctx(result))
    assert item.figure is None and isinstance(item.table, Table)
    assert item.table.columns == (
        "word #",
        "kind",
        "before",
        "after",
        "score change when applied",
        "contribution when reverted",
        "characters",
    )
    rows = [tuple(cell_text(c) for c in row) for row in item.table.rows]
    assert rows == [
        (
            "3",
            "homoglyph",
            "free",
            f"fr{IE}⟨U+0435⟩{IE}⟨U+0435⟩",
            "+0.412",
            "+0.300",
            f"{IE} U+0435 CYRILLIC SMALL LETTER IE",
        ),
        (
            "0",
            "homoglyph",
            "WINNER!!",
            f"W{IOTA}⟨U+0399⟩NNER!!",
            "+0.250",
            "+0.125",
            f"{IOTA} U+0399 GREEK CAPITAL LETTER IOTA",
        ),
    ]
    # Predictions with class names, the target and the edited share of the words.
    assert item.caption == (
        "label spam (1) → clean prediction spam (1, 97.0%), adversarial ham (0, 58.0%); "
        "target ham (0); attack homoglyph; 2 of 10 words edited (20.0%)"
    )
    # The diff: the original word struck out, its replacement added, labels as char spans.
    (diff,) = item.body
    assert diff.quote
    removed = [p for p in diff.parts if isinstance(p, Span) and p.style == "removed"]
    added = [p for p in diff.parts if isinstance(p, Span) and p.style == "added"]
    assert [p.plain() for p in removed] == ["WINNER!!", "free"]
    assert [p.plain() for p in added] == [f"W{IOTA}⟨U+0399⟩NNER!!", f"fr{IE}⟨U+0435⟩{IE}⟨U+0435⟩"]
    labels = [q for q in added[1].parts if isinstance(q, Span)]
    assert [(q.style, q.title) for q in labels] == [("char", "U+0435 CYRILLIC SMALL LETTER IE")] * 2
    negative = TextRenderer().render(_hostile(), _ctx(result))
    assert negative.table is not None
    assert [r[4] for r in negative.table.rows] == ["+0.200", "-0.050"]
    assert "characters" not in negative.table.columns  # nothing unusual to name


def test_invisible_characters_are_labelled() -> None:
    assert [cell_text(c) for c in visible_text(f"ca{ZWSP}sh")] == ["ca", "⟨U+200B⟩", "sh"]
    (label,) = (c for c in visible_text(f"a{ZWSP}b") if isinstance(c, Span))
    assert label.style == "char" and label.title == "U+200B ZERO WIDTH SPACE"
    # Controls, private use and lone surrogates too (a surrogate could not even be written).
    shown = "".join(cell_text(c) for c in visible_text("a\x00b\ue000c\ud800"))
    assert shown == "a⟨U+0000⟩b⟨U+E000⟩c⟨U+D800⟩"
    # Ordinary non-ASCII text is left alone unless flagged.
    assert [cell_text(c) for c in visible_text("café")] == ["café"]


def test_html_escapes_untrusted_text(page: str) -> None:
    parsed = _parse(page)
    text = "".join(parsed.text)
    assert "script" not in parsed.tags
    assert parsed.tags.count("img") == 1  # the robustness curve, not the message's <img>
    assert "<script>" not in page and "<img src=x" not in page
    assert 'href="http://evil.example"' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The message is shown literally (decoded back by the parser).
    assert SCRIPT in text and '<img src=x onerror="alert(2)">' in text
    assert "[cash](http://evil.example)" in text and "&amp;amp; more" in page
    # Struck original and inserted replacement.
    assert f"<del>{'&lt;script&gt;alert(1)&lt;/script&gt;'}</del>" in page
    assert "<ins>&lt;script&gt;alret(1)&lt;/script&gt;</ins>" in page
    # Invisible and bidirectional-control characters never reach the page raw.
    assert ZWSP not in page and RLO not in page
    assert "⟨U+200B⟩" in text and "⟨U+202E⟩" in text
    assert '<span class="char" title="U+200B ZERO WIDTH SPACE">⟨U+200B⟩</span>' in page
    assert f"fr{IE}<span" in page and "CYRILLIC SMALL LETTER IE" in page
    # The run name is escaped as well.
    assert "sms spam filter &lt;b&gt;v2&lt;/b&gt;" in page


def test_word_edits_threat_reads_as_a_share_of_words(page: str, markdown: str) -> None:
    text = " ".join(_parse(page).text)
    for out in (text, markdown):
        assert "word edits ≤ 20% of the words" in out
        assert "targeted at class ham (0)" in out
        assert "ε = 0.2" not in out and "‖δ‖" not in out and "bounds [" not in out
        assert "query budget 500" in out
        assert "of the 5 samples attacked" in out
    assert "word edits, targeted" in text
    assert "| threat | word-edit budget | robust accuracy |" in markdown
    assert "| word-edits-0.2 | 20% | 60.0% |" in markdown
    assert "| clean | 0% | 90.0% |" in markdown
    assert (
        "| attack | params | attacked | broken | success rate | mean queries | queries per "
        "success | mean words edited | median share of words edited | wall time (s) |"
    ) in markdown
    assert "| homoglyph | candidates=3 | 5 | 2 | 40.0% | 40.0 | 31.5 | 1.50 | 20% | 0.50 |" in (
        markdown
    )
    assert "| invisible | candidates=3 | 3 | 1 | 33.3% | 60.0 | 12.0 | 1.00 | 12.5% | 0.25 |" in (
        markdown
    )


def test_markdown_renders_the_diff(markdown: str) -> None:
    assert "~~free~~ **fr" + IE + "⟨U+0435⟩" + IE + "⟨U+0435⟩**" in markdown
    assert f"~~WINNER!!~~ **W{IOTA}⟨U+0399⟩NNER!!**" in markdown
    assert "~~cash~~ **ca⟨U+200B⟩sh**" in markdown
    assert ZWSP not in markdown and RLO not in markdown and "⟨U+202E⟩gnp.exe" in markdown
    # Markdown and HTML specials of the message are escaped; the line does not become a
    # heading.
    (line,) = (ln for ln in markdown.splitlines() if "alret" in ln and ln.startswith(">"))
    assert line.startswith("> \\#1 ~~&lt;script&gt;alert(1)&lt;/script&gt;~~ ")
    assert "\\*win\\*" in line and "\\[cash\\](http://evil.example)" in line
    assert "a\\|b" in line and "\\`x\\`" in line and "\\~\\~no\\~\\~" in line
    assert "<script>" not in markdown and "<img" not in markdown
    # Edits table rows in order.
    rows = [ln for ln in markdown.splitlines() if re.match(r"\| \d+ \| [a-z-]+ \| ", ln)]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| 3", "homoglyph"],
        ["| 0", "homoglyph"],
        ["| 6", "invisible"],
        ["| 1", "swap"],
        ["| 3", "delete"],
    ]
    assert rows[0].split(" | ")[4:6] == ["+0.412", "+0.300"]


def test_markdown_rendered_by_a_commonmark_parser(markdown: str) -> None:
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark").enable(["strikethrough", "table"])
    html = md.render(markdown)
    assert "<s>free</s> <strong>fr" + IE + "⟨U+0435⟩" + IE + "⟨U+0435⟩</strong>" in html
    assert "<s>&lt;script&gt;alert(1)&lt;/script&gt;</s>" in html
    assert "<strong>_\\_big__</strong>" in html
    assert "<script" not in html and "<img src=x" not in html and 'onerror="' not in html
    assert 'href="http://evil.example"' not in html
    assert not re.search(r"<h\d[^>]*>#?1 ", html)  # "#1" stays text
    assert "<td>+0.412</td>" in html or '<td style="text-align:right">+0.412</td>' in html


def test_text_report_without_tensor_sections(result: SuiteResult, tmp_path: Path) -> None:
    doc = build_document(result)
    ids = [s.anchor for s in doc.sections]
    assert ids == ["summary", "curves", "threats", "examples"]
    assert len(doc.figures()) == 1  # the robustness curve; texts need no figure
    written = write_report(result, tmp_path)
    assert [p.name for p in written] == ["report.md", "report.html"]
    page = written[1].read_text(encoding="utf-8")
    assert 'id="audit"' not in page and 'id="certification"' not in page
    # The gallery explains texts only.
    note = doc.sections[-1].blocks[0]
    assert isinstance(note, Paragraph)
    legend = cell_text(note.parts[0])
    assert "Texts:" in legend and "Images:" not in legend


def test_edits_that_do_not_replay_show_both_texts(result: SuiteResult) -> None:
    ex = _invisible()
    wrong = ex.model_copy(update={"adversarial_text": "something else entirely"})
    item = TextRenderer().render(wrong, _ctx(result))
    assert [cell_text(p.parts[0]) for p in item.body] == ["clean: ", "adversarial: "]
    assert "do not reproduce" in item.note
    bad_position = ex.model_copy(
        update={"edits": [ex.edits[0].model_copy(update={"position": 99})]}
    )
    assert "do not reproduce" in TextRenderer().render(bad_position, _ctx(result)).note
    page = to_html(build_document(_result([wrong, ex.model_copy(update={"clean_text": ""})])))
    assert "(empty)" in page


def test_long_texts_show_the_words_around_the_edits(result: SuiteResult) -> None:
    words = [f"w{i}" for i in range(400)]
    adv = list(words)
    adv[200] = "w2OO"
    edit = ExampleEdit(
        position=200, kind="leet", before="w200", after="w2OO", score_change=0.5, contribution=0.5
    )
    item = TextRenderer().render(_example(9, " ".join(words), " ".join(adv), [edit]), _ctx(result))
    (diff,) = item.body
    shown = "".join(cell_text(p) for p in diff.parts)
    assert shown.startswith("… w188 ") and shown.endswith(" w212 …")
    assert "w200 w2OO" in shown and "w100" not in shown
    assert "within 12 of an edit" in item.note
