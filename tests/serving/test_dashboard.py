"""The dashboard, rendered in headless Chromium against a real server with two workers after
real traffic (answers, abstentions, flagged keys), and its data's access rule (admin keys only).

The server is uvicorn on ``serving.server_helpers:stub_app``: the guard's app exactly as
``robustops serve`` builds it (multiprocess metrics, the dashboard's SQLite store in the state
dir) around a tiny model whose stub detector flags ``prober*`` keys and whose stub abstainer
abstains on bright or dark inputs, so that every panel has something to show.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from real_components import headless_chromium
from robustops.serving.dashboard import CSP
from serving.server_helpers import LiveServer, inputs, running, send_many, start_stub_server

ROLES = {"ops": "admin", "alice": "client", "prober-1": "client", "prober-2": "client"}
MARKER = 0.0123456789  # a distinctive input value that must never show


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from running(start_stub_server(tmp_path_factory.mktemp("dash"), ROLES, workers=2))


@pytest.fixture(scope="module")
def traffic(server: LiveServer) -> dict[str, int]:
    """Requests sent, by kind. An admin reads the data between two batches (as an open
    dashboard would), so the page has an earlier reading to compute a rate from."""
    first = (
        [("alice", inputs(0.5))] * 24
        + [("alice", {"inputs": [[MARKER] * 8]})] * 2  # mean < 0.1: low-confidence
        + [("alice", inputs(0.95))] * 4  # out of distribution
    )
    statuses = send_many(server, first)
    assert server.get("/dashboard/data", "ops").json()["rate_per_second"] is None
    second = [("prober-1", inputs(0.5))] * 7 + [("prober-2", inputs(0.5))] * 3
    statuses += send_many(server, second)
    time.sleep(0.6)  # readings are kept at most every half second
    assert set(statuses) == {200}, statuses
    return {"total": len(first) + len(second), "abstained": 6, "flagged": 10}


def _render(server: LiveServer, key: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The page's DOM after its script has fetched the data a few times, and the console
    messages (errors, CSP violations)."""
    cmd = headless_chromium(
        tmp_path / "profile",
        # Virtual time: the page's 2 s polls run several times; fetches hold the clock.
        "--virtual-time-budget=5000",
        "--dump-dom",
        f"{server.url}/dashboard#key={key}",
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [
        line
        for line in done.stderr.splitlines()
        if "CONSOLE(" in line or ":CONSOLE:" in line or "Uncaught" in line
    ]
    return done.stdout, console


def _text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, re.S)
    assert m is not None, f"#{element_id} not in the page"
    return html.unescape(m.group(1)).strip()


def _rows(dom: str, tbody_id: str) -> list[list[str]]:
    m = re.search(rf'<tbody id="{tbody_id}">(.*?)</tbody>', dom, re.S)
    assert m is not None, f"#{tbody_id} not in the page"
    return [
        [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", r)
        ]
        for r in re.findall(r"<tr>(.*?)</tr>", m.group(1), re.S)
    ]


def _ms(value: str) -> float:
    assert value.endswith(" ms"), value
    return float(value[:-3])


def test_dashboard_shows_live_figures_in_headless_chromium(
    server: LiveServer, traffic: dict[str, int], tmp_path: Path
) -> None:
    dom, console = _render(server, server.keys["ops"], tmp_path)
    assert not console, console
    assert _text(dom, "model-name") == "tiny" and _text(dom, "model-version") == "tiny@3"
    assert _text(dom, "model-sha") == "ab" * 6
    assert _text(dom, "status").startswith("updated")
    assert _text(dom, "requests-total") == str(traffic["total"])
    assert _text(dom, "lat-all-count") == str(traffic["total"])
    assert _text(dom, "workers") == "2" and _text(dom, "in-flight") == "0"
    assert _text(dom, "abstained") == str(traffic["abstained"])
    assert _text(dom, "flagged") == str(traffic["flagged"])
    p50, p95, p99 = (_ms(_text(dom, f"lat-all-p{q}")) for q in (50, 95, 99))
    assert 0 < p50 <= p95 <= p99
    # 10 requests came after the earlier reading: a rate over the time since.
    rate = _text(dom, "rate")
    assert re.fullmatch(r"\d+\.\d\d/s", rate) and float(rate[:-2]) > 0, rate
    assert re.fullmatch(r"over \d+\.\d s", _text(dom, "rate-window"))
    keys = _rows(dom, "top-keys")
    assert [r[:4] for r in keys] == [
        ["prober-1", "7", "flag", "fingerprint ×7"],
        ["prober-2", "3", "flag", "fingerprint ×3"],
    ]
    assert _rows(dom, "flags") == [["fingerprint", "10", ""]]
    assert _rows(dom, "abstentions") == [["ood", "4", ""], ["low-confidence", "2", ""]]
    assert _rows(dom, "by-status") == [["200", str(traffic["total"]), ""]]
    assert ["abstain", str(traffic["abstained"]), ""] in _rows(dom, "by-decision")
    assert str(MARKER) not in dom and server.keys["ops"] not in dom  # no input, no key
    assert 'id="key-form" hidden' in dom  # the key came through the fragment


def test_dashboard_asks_for_an_admin_key_in_headless_chromium(
    server: LiveServer, traffic: dict[str, int], tmp_path: Path
) -> None:
    dom, console = _render(server, server.keys["alice"], tmp_path)
    # The refused fetch is the only console line Chromium may log.
    assert all("403" in line for line in console), console
    assert _text(dom, "status") == "that key is not an admin key"
    assert 'id="key-form" hidden' not in dom
    assert _text(dom, "requests-total") == "—"


def test_dashboard_data_needs_an_admin_key(server: LiveServer, traffic: dict[str, int]) -> None:
    assert server.get("/dashboard/data").status_code == 401
    assert server.get("/dashboard/data", "alice").status_code == 403
    assert server.get("/dashboard/data", "prober-1").status_code == 403
    resp = server.get("/dashboard/data", "ops")
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    assert resp.json()["requests"]["total"] == traffic["total"]
    assert str(MARKER) not in resp.text
    page = server.get("/dashboard")  # the page itself is open and holds no data
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP
    assert "unsafe-inline" not in CSP and "<script src" not in page.text
    assert "http://" not in page.text and "https://" not in page.text


def test_stopped_workers_leave_their_counts_but_not_their_live_gauges(
    server: LiveServer, traffic: dict[str, int]
) -> None:
    # Last in this module: it stops the server. On a clean exit each worker marks itself dead,
    # which drops its live gauges (workers, in flight, model) and keeps what it counted.
    folder = server.state_dir / "metrics" / "run"
    assert len(list(folder.glob("gauge_livesum_*.db"))) == 2
    server.stop()
    assert server.proc.returncode == 0, server.log.read_text()[-2000:]
    assert not list(folder.glob("gauge_live*.db"))
    assert len(list(folder.glob("counter_*.db"))) >= 1
