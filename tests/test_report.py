"""Reports: a self-contained HTML page and Markdown with PNG figures, built from a real suite run
(three PGD threats, a masking audit and certification on the session's CNN)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from real_components import headless_chromium
from robustops import ThreatModel
from robustops.attacks import build_attack
from robustops.cli import app
from robustops.data import Dataset
from robustops.defenses.smoothing import certify_dataset
from robustops.errors import SpecError
from robustops.evaluation import (
    SuiteOptions,
    SuiteRecord,
    SuiteResult,
    SuiteThreat,
    audit_gradient_masking,
    run_suite,
)
from robustops.evaluation.metrics import TemperatureFit
from robustops.evaluation.plots import plot_reliability, plot_result
from robustops.evaluation.result import AdversarialExample
from robustops.models import SmallCNN
from robustops.report import (
    audit_sweep,
    build_document,
    parse_formats,
    render_html,
    render_markdown,
    wilson_interval,
    write_report,
)
from robustops.report.document import Document, Table
from robustops.report.examples import ExampleContext, FeatureRenderer, ImageRenderer
from robustops.report.html import to_html

PNG = b"\x89PNG\r\n\x1a\n"
NAME = "<script>alert('x')</script> cnn & co"


@pytest.fixture(scope="module")
def result(trained_cnn: SmallCNN, mnist: Dataset) -> SuiteResult:
    """A real run: L∞ (untargeted, targeted) and L2 PGD on 60 samples with a temperature, an
    audit of the L∞ threat and certificates."""
    x, y = mnist.x_test[:60], mnist.y_test[:60]
    linf = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
    targeted = ThreatModel(name="linf-0.2-targeted", norm="linf", epsilon=0.2, targeted=True)
    l2 = ThreatModel(name="l2-1.5", norm="l2", epsilon=1.5)
    temperature = TemperatureFit(
        temperature=1.5,
        fit_on="clean",
        n_clean=100,
        n_adversarial=0,
        nll_before=0.2,
        nll_after=0.15,
        ece_before=0.05,
        ece_after=0.02,
    )
    res = run_suite(
        trained_cnn,
        x,
        y,
        [
            SuiteThreat(linf, [build_attack("pgd", linf, steps=10)]),
            SuiteThreat(l2, [build_attack("fgsm", l2), build_attack("pgd", l2, steps=10)]),
            SuiteThreat(targeted, [build_attack("pgd", targeted, steps=10)]),
        ],
        SuiteOptions(latency_calls=10, n_examples=3),
        record=SuiteRecord(
            name=NAME,
            data_info=mnist.describe(),
            model_info={"factory": "robustops.models:small_cnn", "weights_sha256": "ab" * 32},
        ),
        temperature=temperature,
    )
    audit = audit_gradient_masking(
        trained_cnn, x, y, linf, steps=5, square_queries=50, noise_draws=5
    )
    cert = certify_dataset(
        trained_cnn, x[:20], y[:20], num_classes=10, sigma=0.25, n0=10, n=100, alpha=0.01
    )
    return res.model_copy(
        update={"audit": [audit], "certification": cert, "catalog_sha256": "cd" * 32}
    )


@pytest.fixture(scope="module")
def document(result: SuiteResult) -> Document:
    return build_document(result)


@pytest.fixture(scope="module")
def page(document: Document) -> str:
    return to_html(document)


def _lean(result: SuiteResult) -> SuiteResult:
    """``result`` without examples (cheap to render: no gallery figures)."""
    return result.model_copy(
        update={"threats": [t.model_copy(update={"examples": []}) for t in result.threats]}
    )


def _tabular(index: int = 3) -> AdversarialExample:
    clean = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    adv = [0.1, 0.25, 0.3, 0.1, 0.5, 0.62]
    attribution = [0.0, 0.01, 0.0, -0.3, 0.0, 0.002]
    return AdversarialExample(
        index=index,
        label=1,
        target=None,
        attack="pgd<b>",
        shape=[6],
        clean=clean,
        adversarial=adv,
        attribution=attribution,
        clean_prediction=1,
        clean_confidence=0.9,
        adversarial_prediction=0,
        adversarial_confidence=0.6,
        perturbation_norm=0.3,
    )


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    c.close()
    return c


def test_html_is_self_contained_and_complete(result: SuiteResult, page: str) -> None:
    assert all(t.examples for t in result.threats), "run_suite keeps adversarial examples"
    parsed = _parse(page)
    text = " ".join(parsed.text)
    for tag, attrs in parsed.tags:
        for key in ("src", "href", "action", "data", "poster", "srcset"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "file:", "ftp:")), (tag, key)
            if key == "href" and key in attrs:
                assert value.startswith("#"), (tag, value)  # only in-page anchors
        assert tag != "script", "no JavaScript at all"
        if tag == "link":
            assert "stylesheet" not in (attrs.get("rel") or "")
    images = [attrs["src"] or "" for tag, attrs in parsed.tags if tag == "img"]
    n_examples = sum(len(t.examples) for t in result.threats)
    # 3 robustness curves (L∞, L∞ targeted, L2), 2 reliability diagrams (raw, scaled),
    # certified accuracy, and one per image example.
    assert len(images) == 6 + n_examples
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    assert "url(" not in page and "@import" not in page
    # Every threat, the audit verdict and the certification.
    for t in result.threats:
        assert t.name in text
    assert 'class="badge badge-pass"' in page or 'class="badge badge-warn"' in page
    verdict = result.audit_verdict()
    assert verdict is not None
    assert f"callout-{verdict}" in page
    for c in result.audit[0].checks:
        assert c.name in text
    assert 'id="certification"' in page and "certified accuracy" in text
    # Threats grouped by (norm, goal); calibration before and after temperature scaling.
    assert "L∞, untargeted" in text and "L∞, targeted" in text and "L2, untargeted" in text
    assert "after temperature scaling" in text and "clean, scaled" in text
    targeted = result.threat("linf-0.2-targeted").examples
    assert targeted and all(f"; target {ex.target};" in text for ex in targeted)
    assert result.model["weights_sha256"] in text
    assert result.data["fingerprint"] in text and result.catalog_sha256 in text
    # The name is escaped wherever it appears, never markup.
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; cnn &amp; co" in page
    assert NAME in text  # decoded back by the parser: shown literally


def test_html_sections_follow_the_result(result: SuiteResult) -> None:
    bare = _lean(result).model_copy(
        update={"audit": [], "certification": None, "calibration": None, "latency": None}
    )
    page = render_html(bare)
    assert 'id="audit"' not in page and 'id="certification"' not in page
    assert 'id="calibration"' not in page and "Latency was not measured" in page
    assert "records no adversarial examples" in page and "<img" in page
    no_threats = result.model_copy(update={"threats": [], "audit": []})
    page = render_html(no_threats)
    assert 'id="certification"' in page and 'id="curves"' not in page


def test_headless_chromium_renders_without_console_errors(page: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    cmd = headless_chromium(tmp_path / "profile", "--dump-dom", path.resolve().as_uri())
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Robustness report:" in done.stdout and "certified accuracy" in done.stdout
    # Page console messages (errors, CSP violations, uncaught exceptions) are logged as
    # "CONSOLE(line)" by older builds and "INFO:CONSOLE:line]" by newer ones.
    console = [
        line
        for line in done.stderr.splitlines()
        if "CONSOLE(" in line or ":CONSOLE:" in line or "Uncaught" in line
    ]
    assert not console, console


def test_attack_params_show_what_differs_from_the_defaults(
    result: SuiteResult, page: str, tmp_path: Path
) -> None:
    # pgd ran with steps=10 (default 40): the cell shows that, the full set folds under it.
    pgd = result.threats[0].attacks[0]
    full = ", ".join(f"{k}={v}" for k, v in pgd.params.items())
    assert pgd.name == "pgd" and pgd.params["steps"] == 10 and len(pgd.params) > 3
    assert f'<details class="more"><summary>steps=10</summary>{full}</details>' in page
    # fgsm ran with its defaults.
    assert '<details class="more"><summary>defaults</summary>seed=0, ' in page
    # Markdown cannot fold: the full set.
    md = render_markdown(_lean(result), tmp_path / "md").read_text()
    assert re.search(r"\| pgd \| seed=0, steps=10, step\\?_size=None, restarts=1, ", md), md
    # An attack this installation does not know (a plug-in): every parameter, nothing folded.
    renamed = [a.model_copy(update={"name": "elsewhere"}) for a in result.threats[0].attacks]
    lean = _lean(result)
    other = lean.model_copy(
        update={
            "threats": [lean.threats[0].model_copy(update={"attacks": renamed})],
            "audit": [],
            "certification": None,
        }
    )
    html = to_html(build_document(other))
    assert f"<td>{full}</td>" in html and "<summary>" not in html


def test_markdown_has_the_tables_and_existing_figures(result: SuiteResult, tmp_path: Path) -> None:
    tabular = result.threats[1].model_copy(update={"examples": [_tabular()]})
    res = result.model_copy(update={"threats": [result.threats[0], tabular, result.threats[2]]})
    md_path = render_markdown(res, tmp_path / "md")
    md = md_path.read_text()
    assert md_path.name == "report.md"
    for header in (
        "| inputs | threat model | accuracy | 95% CI (Wilson) |",
        "| attack | params | attacked | broken | success rate | mean queries |",
        "| check | status | reason |",
        "| L2 radius | certified accuracy |",
        "| inputs | temperature | n | accuracy | confidence | ECE |",
        "| latency p50 | p95 | p99 |",
        "| feature | clean | adversarial | delta | attribution |",
    ):
        assert header in md, header
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 6 + len(result.threats[0].examples) + len(result.threats[2].examples)
    for link in links:
        assert "/" not in link and link.endswith(".png")
        assert (md_path.parent / link).read_bytes().startswith(PNG)
    # The tabular example: changed features only, by |attribution|.
    rows = [
        line for line in md.splitlines() if re.match(r"\| \d \| [\d.]+ \| [\d.]+ \| [+-]", line)
    ]
    assert [r.split(" | ")[0] for r in rows] == ["| 3", "| 1", "| 5"]
    assert "pgd&lt;b&gt;" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    for t in res.threats:
        assert t.name in md


def test_write_report_and_formats(result: SuiteResult, tmp_path: Path) -> None:
    written = write_report(_lean(result), tmp_path / "both")
    assert [p.name for p in written] == ["report.md", "report.html"]
    assert parse_formats(" HTML, md,html ") == ["html", "md"]
    for bad in ("pdf", " , "):
        with pytest.raises(SpecError) as info:
            parse_formats(bad)
        assert info.value.errors[0][0] == "formats"


def test_image_and_feature_renderers(result: SuiteResult) -> None:
    threat = result.threats[0]
    names: list[str] = []

    def name(stem: str) -> str:
        names.append(stem)
        return f"fig-{len(names)}.png"

    ctx = ExampleContext(threat.name, threat.threat, name)
    ex = threat.examples[0]
    assert ex.shape == [1, 28, 28] and ImageRenderer().accepts(ex)
    item = ImageRenderer().render(ex, ctx)
    assert item.figure is not None and item.figure.png.startswith(PNG)
    assert f"label {ex.label}" in item.caption and "‖δ‖∞" in item.caption
    assert ex.attack in item.caption
    rgb = ex.model_copy(
        update={
            "shape": [3, 4, 5],
            "clean": [0.5] * 60,
            "adversarial": [0.5 + 0.01 * (i % 3 - 1) for i in range(60)],
            "attribution": [0.001 * i for i in range(60)],
        }
    )
    rgb_item = ImageRenderer().render(rgb, ctx)
    assert rgb_item.figure is not None and rgb_item.figure.png.startswith(PNG)
    assert len(names) == 2  # one figure name asked per image example
    tab = _tabular()
    assert not ImageRenderer().accepts(tab)
    feat = FeatureRenderer().render(tab, ctx)
    assert isinstance(feat.table, Table) and feat.figure is None
    assert [r[0] for r in feat.table.rows] == ["3", "1", "5"]
    assert feat.table.rows[0][3] == "-0.3" and "3 of 6 features changed" in feat.note
    broken = tab.model_copy(update={"clean": [0.0]})
    assert "malformed" in FeatureRenderer().render(broken, ctx).note


def test_wilson_interval_and_audit_sweep(result: SuiteResult, document: Document) -> None:
    from scipy.stats import binomtest

    for k, n in ((0, 60), (42, 60), (60, 60), (3, 7)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    points, unbounded = audit_sweep(result.audit[0])
    eps = result.threats[0].threat.epsilon
    assert [e for e, _ in points] == pytest.approx([eps * m for m in (0.25, 0.5, 1, 2, 4)])
    assert unbounded is not None and unbounded[0] == pytest.approx(1.0)
    names = [f.name for f in document.figures()]
    assert len(set(names)) == len(names) == 6 + sum(len(t.examples) for t in result.threats)
    assert all(re.fullmatch(r"fig-\d\d-[a-z0-9-]+\.png", n) for n in names)


def test_plot_functions_still_write_files(result: SuiteResult, tmp_path: Path) -> None:
    assert result.calibration is not None
    path = plot_reliability([("$x_1$ clean", result.calibration.clean)], tmp_path / "r.png")
    assert path.read_bytes().startswith(PNG)
    written = plot_result(result, tmp_path / "plots")
    assert [p.name for p in written] == [
        "reliability.png",
        "reliability_scaled.png",
        "certified_accuracy.png",
    ]


def test_cli_report(result: SuiteResult, tmp_path: Path) -> None:
    runner = CliRunner()
    res_path = result.save(tmp_path / "result.json")
    out = tmp_path / "rep"
    ok = runner.invoke(app, ["report", str(res_path), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert str(out / "report.md") in ok.output and str(out / "report.html") in ok.output
    lean = _lean(result).save(tmp_path / "lean.json")
    only_md = runner.invoke(app, ["report", str(lean), "-o", str(tmp_path / "m"), "-f", "md"])
    assert only_md.exit_code == 0, only_md.output
    assert not (tmp_path / "m" / "report.html").exists()
    # An invalid result names the field; an unknown format names the option.
    data = json.loads(res_path.read_text())
    data["threats"][1]["robust_accuracy"] = "high"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    refused = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2
    assert "threats.1.robust_accuracy" in refused.output
    assert not (tmp_path / "x").exists()
    fmt = runner.invoke(app, ["report", str(res_path), "--format", "pdf"])
    assert fmt.exit_code == 2 and "--format" in fmt.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2


def test_a_stochastic_model_and_its_unadapted_attacks_are_reported(
    result: SuiteResult, tmp_path: Path
) -> None:
    from robustops.evaluation.result import StochasticRecord

    st = StochasticRecord(
        detected=True,
        max_logit_gap=2.5,
        eot_samples=10,
        adapted_attacks=["pgd"],
        unadapted_attacks=["plugin-noise"],
    )
    md = render_markdown(result.model_copy(update={"stochastic": st}), tmp_path / "md").read_text()
    assert "Stochastic model" in md and "average 10 passes" in md
    assert "without EOT" in md and "plugin-noise" in md
