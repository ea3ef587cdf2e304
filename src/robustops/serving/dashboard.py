"""The guard's live dashboard: ``GET /dashboard`` (the page) and ``GET /dashboard/data`` (JSON).

**Access.** The page is static and served to anyone: it holds no data. Its data needs an API
key with role ``admin`` (401 without a valid key, 403 with a key of another role), sent by the
page as ``X-API-Key``. The page asks for the key and keeps it in ``sessionStorage`` (this tab
only, gone when it closes); opening ``/dashboard#key=rok_…`` hands it over too: the fragment
never reaches the server or its logs, and the page removes it from the address bar at once.

**Figures, correct across workers.** Request counts, abstentions, flags, in-flight requests,
live workers and the served model come from the merged Prometheus metrics
(:mod:`robustops.serving.metrics`), so whichever worker answers, it reports the service.
Latency percentiles are estimated from the histogram's buckets (as Prometheus'
``histogram_quantile`` does), since start and over the last minute. The request rate and the
last-minute percentiles need an earlier reading: every answer to ``/dashboard/data`` keeps one
(at most every half second, for two minutes) in the shared SQLite store, and compares with the
oldest one within the window; the first answer after a start has no rate yet. Top flagged keys
come from the same store, where every worker adds each request the detector acted on to its
key's row (count, last action, reason categories; at most :data:`MAX_KEYS` rows, the least
recently flagged dropped first). The store is ``<state_dir>/dashboard.db`` under
``robustops serve``, in memory when none is given.

Nothing here holds or shows a request's input: only key names, counts, reason categories,
latencies and the model's identity.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustops.serving.metrics import GuardMetrics, Snapshot, merged_counts, quantile

log = logging.getLogger("robustops.guard")

MAX_KEYS = 1000
"""Rows kept in the flagged-keys table."""
TOP_KEYS = 10
"""Flagged keys the dashboard lists."""
RATE_WINDOW = 10.0
"""Seconds the request rate is averaged over (at most)."""
RECENT_WINDOW = 60.0
"""Seconds of the recent latency percentiles (at most)."""
_KEEP_SAMPLES = 120.0
_MIN_SPACING = 0.5
QUANTILES = (0.5, 0.95, 0.99)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS flagged_keys (
        key TEXT PRIMARY KEY,
        flags INTEGER NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        last_action TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS flagged_reasons (
        key TEXT NOT NULL,
        reason TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (key, reason)
    )""",
    """CREATE TABLE IF NOT EXISTS samples (
        epoch TEXT NOT NULL,
        at REAL NOT NULL,
        total REAL NOT NULL,
        buckets TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS flagged_keys_last ON flagged_keys (last_at)",
    "CREATE INDEX IF NOT EXISTS samples_at ON samples (epoch, at)",
)


@dataclass(frozen=True)
class Reading:
    """An earlier reading of the metrics: when (Unix time), the request total, the latency
    histogram's cumulative bucket counts and its sum (seconds)."""

    at: float
    total: float
    buckets: list[float]
    latency_sum: float


class DashboardStore:
    """Flagged keys and recent metric readings in the SQLite file ``path`` shared by the
    workers (in memory, this process only, when ``path`` is None)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path) if self.path is not None else ":memory:",
            timeout=30,
            isolation_level=None,
            check_same_thread=False,
        )
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            for statement in _SCHEMA:
                self._db.execute(statement)
        self._writes = 0

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def record_flag(self, key: str, action: str, reasons: list[str]) -> None:
        """Add one flagged request of ``key`` (its detector action and reason categories).
        Best effort: a store that cannot be written logs a warning and the request is only
        in the metrics and the log."""
        now = time.time()
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(
                        "INSERT INTO flagged_keys VALUES (?, 1, ?, ?, ?) ON CONFLICT(key) DO "
                        "UPDATE SET flags = flags + 1, last_at = excluded.last_at, "
                        "last_action = excluded.last_action",
                        (key, now, now, action),
                    )
                    for reason in reasons:
                        self._db.execute(
                            "INSERT INTO flagged_reasons VALUES (?, ?, 1) ON CONFLICT(key, reason) "
                            "DO UPDATE SET n = n + 1",
                            (key, reason),
                        )
                    self._writes += 1
                    if self._writes % 100 == 0:
                        self._prune_keys()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            log.warning(json.dumps({"event": "dashboard-store", "error": str(exc)}))

    def _prune_keys(self) -> None:
        self._db.execute(
            "DELETE FROM flagged_keys WHERE key NOT IN "
            "(SELECT key FROM flagged_keys ORDER BY last_at DESC LIMIT ?)",
            (MAX_KEYS,),
        )
        self._db.execute(
            "DELETE FROM flagged_reasons WHERE key NOT IN (SELECT key FROM flagged_keys)"
        )

    def top_keys(self, limit: int = TOP_KEYS) -> list[dict[str, Any]]:
        """The most flagged keys, most first: name, flags, first and last time (Unix),
        last action and reason categories with their counts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, flags, first_at, last_at, last_action FROM flagged_keys "
                "ORDER BY flags DESC, last_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
            reasons: dict[str, list[tuple[str, int]]] = {str(r[0]): [] for r in rows}
            for key, reason, n in self._db.execute(
                "SELECT key, reason, n FROM flagged_reasons WHERE key IN "
                f"({','.join('?' * len(rows))}) ORDER BY n DESC, reason",
                [r[0] for r in rows],
            ).fetchall():
                reasons[str(key)].append((str(reason), int(n)))
        return [
            {
                "key": str(k),
                "flags": int(n),
                "first_at": float(first),
                "last_at": float(last),
                "last_action": str(action),
                "reasons": dict(reasons[str(k)]),
            }
            for k, n, first, last, action in rows
        ]

    def sample(
        self, epoch: str, now: float, total: float, buckets: list[float], latency_sum: float
    ) -> tuple[Reading | None, Reading | None]:
        """Keep this reading (unless one is younger than half a second) and return the
        oldest earlier readings of ``epoch`` within :data:`RATE_WINDOW` and
        :data:`RECENT_WINDOW` (None where there is none)."""
        with self._lock:
            latest = self._db.execute(
                "SELECT MAX(at) FROM samples WHERE epoch = ?", (epoch,)
            ).fetchone()[0]
            if latest is None or now - float(latest) >= _MIN_SPACING:
                self._db.execute(
                    "DELETE FROM samples WHERE epoch != ? OR at < ?", (epoch, now - _KEEP_SAMPLES)
                )
                self._db.execute(
                    "INSERT INTO samples VALUES (?, ?, ?, ?)",
                    (epoch, now, total, json.dumps({"buckets": buckets, "sum": latency_sum})),
                )
            found: list[Reading | None] = []
            for window in (RATE_WINDOW, RECENT_WINDOW):
                row = self._db.execute(
                    "SELECT at, total, buckets FROM samples WHERE epoch = ? AND at >= ? "
                    "AND at <= ? ORDER BY at LIMIT 1",
                    (epoch, now - window, now - _MIN_SPACING),
                ).fetchone()
                if row is None:
                    found.append(None)
                    continue
                latency = json.loads(row[2])
                found.append(
                    Reading(float(row[0]), float(row[1]), latency["buckets"], latency["sum"])
                )
        return found[0], found[1]


def _percentiles(buckets: list[tuple[float, float]]) -> dict[str, float | None]:
    """``{"p50", "p95", "p99"}`` in milliseconds (None without observations) and ``count``."""
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        v = quantile(q, buckets)
        out[f"p{round(q * 100)}"] = None if v is None else round(v * 1000, 3)
    out["count"] = round(buckets[-1][1]) if buckets else 0
    return out


def dashboard_data(
    metrics: GuardMetrics, store: DashboardStore, now: float | None = None
) -> dict[str, Any]:
    """The JSON the page shows (see the module docstring)."""
    now = time.time() if now is None else now
    snap: Snapshot = metrics.snapshot()
    counts = [c for _, c in snap.buckets]
    rate_ref, recent_ref = store.sample(metrics.epoch, now, snap.total, counts, snap.latency_sum)
    rate = None
    if rate_ref is not None and snap.total >= rate_ref.total:
        rate = round((snap.total - rate_ref.total) / (now - rate_ref.at), 3)
    recent = None
    if recent_ref is not None and len(recent_ref.buckets) == len(counts):
        diff = [
            (b, max(0.0, c - old))
            for (b, c), old in zip(snap.buckets, recent_ref.buckets, strict=True)
        ]
        n = diff[-1][1] if diff else 0.0
        recent_mean = (snap.latency_sum - recent_ref.latency_sum) / n * 1000 if n else None
        recent = {
            **_percentiles(diff),
            "mean": None if recent_mean is None else round(recent_mean, 3),
            "window_seconds": round(now - recent_ref.at, 1),
        }
    mean = snap.latency_sum / snap.latency_count * 1000 if snap.latency_count else None
    flagged = sum(snap.requests.get(k, 0.0) for k in snap.requests if k[2] not in ("ok", "none"))
    return {
        "generated_at": now,
        "model": snap.model,
        "workers": round(snap.workers),
        "in_flight": round(snap.in_flight),
        "requests": {
            "total": snap.total,
            "by_status": snap.by(0),
            "by_decision": snap.by(1),
            "by_action": snap.by(2),
        },
        "rate_per_second": rate,
        "rate_window_seconds": None if rate_ref is None else round(now - rate_ref.at, 1),
        "latency_ms": {
            "since_start": {
                **_percentiles(snap.buckets),
                "mean": None if mean is None else round(mean, 3),
            },
            "recent": recent,
        },
        "predictions": merged_counts(snap.predictions.items()),
        "abstentions": {
            "inputs": round(snap.predictions.get("abstain", 0.0)),
            "by_reason": merged_counts(snap.abstentions.items()),
        },
        "flags": {
            "requests": round(flagged),
            "by_reason": merged_counts(snap.flags.items()),
        },
        "top_flagged_keys": store.top_keys(),
    }


_STYLE = """
:root { --line: #d0d7de; --muted: #57606a; --soft: #f6f8fa; --accent: #0969da; --bad: #cf222e; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  color: #1f2328; margin: 0; line-height: 1.45; }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: baseline; }
h1 { font-size: 1.4rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 24px 0 8px; }
.muted { color: var(--muted); }
.bad { color: var(--bad); }
code { font-size: .9em; }
form { display: flex; gap: 8px; margin: 12px 0; }
input { font: inherit; padding: 4px 8px; min-width: 24rem; }
button { font: inherit; padding: 4px 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px;
  margin-top: 16px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; background: var(--soft); }
.card .label { font-size: .8rem; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.card .value { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 0 32px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; }
td.num, th.num { text-align: right; }
meter { width: 8rem; }
[hidden] { display: none !important; }
"""

_SCRIPT = r"""
"use strict";
const STORE = "robustops.dashboard.key";
const DATA = location.pathname.replace(/\/+$/, "") + "/data";
const $ = (id) => document.getElementById(id);
let timer = null;

function takeKeyFromFragment() {
  const m = location.hash.match(/^#key=(.+)$/);
  if (m) {
    sessionStorage.setItem(STORE, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function text(id, value) { $(id).textContent = value; }
function ms(v) { return v === null || v === undefined ? "\u2014" : (v < 10 ? v.toFixed(2) : v.toFixed(1)) + " ms"; }
function num(v) { return v === null || v === undefined ? "\u2014" : String(v); }
function when(t) { return new Date(t * 1000).toLocaleTimeString(); }

function rows(id, entries, cells) {
  const body = $(id);
  body.replaceChildren();
  if (entries.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 9;
    td.className = "muted";
    td.textContent = "none";
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const entry of entries) {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells(entry)) {
      const td = document.createElement("td");
      if (value instanceof Node) td.append(value); else td.textContent = value;
      if (cls) td.className = cls;
      tr.append(td);
    }
    body.append(tr);
  }
}

function counts(id, map) {
  const entries = Object.entries(map);
  const max = Math.max(1, ...entries.map(([, n]) => n));
  rows(id, entries, ([name, n]) => {
    const bar = document.createElement("meter");
    bar.min = 0; bar.max = max; bar.value = n;
    return [[name], [String(n), "num"], [bar]];
  });
}

function render(d) {
  const m = d.model || {};
  text("model-name", m.name || "\u2014");
  text("model-version", m.version || "(spec weights)");
  text("model-sha", m.weights_sha256 ? m.weights_sha256.slice(0, 12) : "\u2014");
  text("requests-total", num(d.requests.total));
  text("rate", d.rate_per_second === null ? "\u2014" : d.rate_per_second.toFixed(2) + "/s");
  text("rate-window", d.rate_window_seconds === null ? "needs a second reading" : "over " + d.rate_window_seconds.toFixed(1) + " s");
  text("in-flight", num(d.in_flight));
  text("workers", num(d.workers));
  text("abstained", num(d.abstentions.inputs));
  text("flagged", num(d.flags.requests));
  const all = d.latency_ms.since_start;
  text("lat-all-p50", ms(all.p50)); text("lat-all-p95", ms(all.p95));
  text("lat-all-p99", ms(all.p99)); text("lat-all-mean", ms(all.mean));
  text("lat-all-count", num(all.count));
  const r = d.latency_ms.recent;
  text("lat-recent-label", r ? "last " + r.window_seconds.toFixed(0) + " s" : "last minute");
  text("lat-recent-p50", ms(r && r.p50)); text("lat-recent-p95", ms(r && r.p95));
  text("lat-recent-p99", ms(r && r.p99)); text("lat-recent-mean", ms(r && r.mean));
  text("lat-recent-count", num(r && r.count));
  counts("by-status", d.requests.by_status);
  counts("by-decision", d.requests.by_decision);
  counts("by-action", d.requests.by_action);
  counts("abstentions", d.abstentions.by_reason);
  counts("flags", d.flags.by_reason);
  rows("top-keys", d.top_flagged_keys, (k) => [
    [k.key], [String(k.flags), "num"], [k.last_action],
    [Object.entries(k.reasons).map(([r, n]) => r + " \u00d7" + n).join(", ")], [when(k.last_at)],
  ]);
  text("status", "updated " + when(d.generated_at));
  $("status").className = "muted";
}

function start() {
  if (timer === null) timer = setInterval(poll, 2000);
  poll();
}

function askForKey(message) {
  clearInterval(timer);
  timer = null;
  $("key-form").hidden = false;
  $("forget").hidden = true;
  text("status", message);
  $("status").className = "bad";
}

async function poll() {
  const key = sessionStorage.getItem(STORE);
  if (!key) { askForKey("an admin API key is needed to read the figures"); return; }
  $("key-form").hidden = true;
  $("forget").hidden = false;
  try {
    const resp = await fetch(DATA, { headers: { "X-API-Key": key }, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      sessionStorage.removeItem(STORE);
      askForKey(resp.status === 401 ? "that key was refused" : "that key is not an admin key");
      return;
    }
    if (!resp.ok) { text("status", "the service answered " + resp.status); $("status").className = "bad"; return; }
    render(await resp.json());
  } catch (err) {
    text("status", "cannot reach the service");
    $("status").className = "bad";
  }
}

takeKeyFromFragment();
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("key-input").value.trim();
  $("key-input").value = "";
  if (value) { sessionStorage.setItem(STORE, value); start(); }
});
$("forget").addEventListener("click", () => { sessionStorage.removeItem(STORE); askForKey("key forgotten"); });
start();
"""

_BODY = """
<header>
  <h1>RobustOps guard</h1>
  <span>model <strong id="model-name">\u2014</strong> version <strong id="model-version">\u2014</strong>
    <span class="muted">weights <code id="model-sha">\u2014</code></span></span>
  <span id="status" class="muted">loading\u2026</span>
  <button id="forget" type="button" hidden>forget key</button>
</header>
<main>
  <form id="key-form" hidden>
    <input id="key-input" type="password" autocomplete="off" placeholder="admin API key (rok_\u2026)"
      aria-label="admin API key">
    <button type="submit">show</button>
  </form>
  <section class="cards" aria-label="totals">
    <div class="card"><div class="label">requests</div><div class="value" id="requests-total">\u2014</div></div>
    <div class="card"><div class="label">request rate</div><div class="value" id="rate">\u2014</div>
      <div class="muted" id="rate-window"></div></div>
    <div class="card"><div class="label">in flight</div><div class="value" id="in-flight">\u2014</div></div>
    <div class="card"><div class="label">workers</div><div class="value" id="workers">\u2014</div></div>
    <div class="card"><div class="label">abstained inputs</div><div class="value" id="abstained">\u2014</div></div>
    <div class="card"><div class="label">flagged requests</div><div class="value" id="flagged">\u2014</div></div>
  </section>
  <h2>Latency</h2>
  <table id="latency">
    <thead><tr><th></th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th>
      <th class="num">mean</th><th class="num">requests</th></tr></thead>
    <tbody>
      <tr><th>since start</th><td class="num" id="lat-all-p50">\u2014</td><td class="num" id="lat-all-p95">\u2014</td>
        <td class="num" id="lat-all-p99">\u2014</td><td class="num" id="lat-all-mean">\u2014</td>
        <td class="num" id="lat-all-count">\u2014</td></tr>
      <tr><th id="lat-recent-label">last minute</th><td class="num" id="lat-recent-p50">\u2014</td>
        <td class="num" id="lat-recent-p95">\u2014</td><td class="num" id="lat-recent-p99">\u2014</td>
        <td class="num" id="lat-recent-mean">\u2014</td><td class="num" id="lat-recent-count">\u2014</td></tr>
    </tbody>
  </table>
  <p class="muted">Percentiles are estimated from the latency histogram's buckets.</p>
  <div class="grid">
    <section><h2>Top flagged keys</h2>
      <table><thead><tr><th>key</th><th class="num">flags</th><th>last action</th><th>reasons</th>
        <th>last flagged</th></tr></thead><tbody id="top-keys"></tbody></table></section>
    <section><h2>Flags by reason</h2>
      <table><thead><tr><th>reason</th><th class="num">requests</th><th></th></tr></thead>
        <tbody id="flags"></tbody></table></section>
    <section><h2>Abstentions by reason</h2>
      <table><thead><tr><th>reason</th><th class="num">inputs</th><th></th></tr></thead>
        <tbody id="abstentions"></tbody></table></section>
    <section><h2>Requests by status</h2>
      <table><thead><tr><th>status</th><th class="num">requests</th><th></th></tr></thead>
        <tbody id="by-status"></tbody></table></section>
    <section><h2>Requests by decision</h2>
      <table><thead><tr><th>decision</th><th class="num">requests</th><th></th></tr></thead>
        <tbody id="by-decision"></tbody></table></section>
    <section><h2>Requests by detector action</h2>
      <table><thead><tr><th>action</th><th class="num">requests</th><th></th></tr></thead>
        <tbody id="by-action"></tbody></table></section>
  </div>
</main>
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


CSP = (
    f"default-src 'none'; script-src '{_sha256(_SCRIPT)}'; style-src '{_sha256(_STYLE)}'; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The page's Content-Security-Policy: its one inline script and stylesheet by hash, fetches to
this origin only, nothing else loads, and no other site may frame it."""

PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<meta name="referrer" content="no-referrer">\n'
    "<title>RobustOps guard dashboard</title>\n"
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n</body>\n</html>\n"
)
"""The dashboard page: self-contained, no external asset."""

PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Headers sent with the page (and, but for the CSP, with its data)."""
