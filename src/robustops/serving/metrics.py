"""Prometheus metrics of the guard, correct with one worker or several.

With several uvicorn workers each process counts in its own memory-mapped files under
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode; ``robustops serve`` sets a
fresh folder under ``<state_dir>/metrics`` for every run); ``/metrics`` then merges every
worker's files into a fresh registry, so a scrape gives the service's totals whichever worker
answers it. Without that variable (one process, tests) the metrics live in a registry of their
own per app. Which mode applies is what prometheus-client itself chose when it was imported, so
a single in-process worker started after the variable was set still counts in memory and
reports what it counted.

What is counted, for ``POST /v1/predict`` only (by :class:`ObserveMiddleware`, so refusals
before the handler, 401 and 413, count too):

- ``robustops_guard_requests_total{status,decision,action}``: ``decision`` is ``predict`` or
  ``abstain`` (any input abstained) when the model ran, else why not: ``unauthorized``,
  ``too-large``, ``rate-limited``, ``auth-limited`` (too many failed authentications from the
  client's address), ``invalid``, ``busy``, ``forbidden`` or ``error``;
  ``action`` is the detector's (``ok``, ``log``, ``flag``, ``throttle``, ``block``), ``none``
  when the model did not run.
- ``robustops_guard_request_latency_seconds``: a histogram with buckets from 0.5 ms to 5 s.
- ``robustops_guard_predictions_total{decision}``: inputs answered or abstained on.
- ``robustops_guard_abstentions_total{reason}``: abstained inputs by reason category.
- ``robustops_guard_flags_total{reason}``: requests the detector acted on, by reason category.
- ``robustops_guard_in_flight``: requests in progress (summed over live workers).
- ``robustops_guard_workers``: live workers; ``robustops_guard_model_info{name,version,
  weights_sha256}``: 1 for the served model (0 for one a worker swapped away from, when it
  follows a registry alias; during a swap two versions may both be 1).
- ``robustops_guard_model_swaps_total{result}``: alias-following checks that swapped the
  model (``ok``) or could not (``load-failed``, ``registry-unreachable``, ``check``).
- ``robustops_guard_auth_failures_total{result}``: failed authentications on any route
  (``unauthorized``: 401) and requests refused for too many of them from one client address
  (``limited``: 429).
- ``robustops_guard_request_log_errors_total``: request log lines that could not be written
  to the file (the request was answered anyway).

``GET /metrics`` needs an ``admin`` key: open counters would tell a client whether its own
queries were just flagged. Prometheus sends one with its scrape config's ``authorization``
(``credentials_file`` holding the key; type ``Bearer``).

Key names are not labels (a label per API key multiplies every series by the number of keys);
per-key figures are in the JSON request log and the dashboard's store of flagged keys.
Reasons are reduced to a category (``out-of-distribution score 12.3 above …`` → ``ood``) so
free text with numbers never becomes a label value.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from robustops.serving.guard import Outcome

PREFIX = "robustops_guard"
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Latency buckets (seconds): fine between 0.5 and 30 ms, where CPU inference of a small model
and the guard's own work lie, coarse above."""

PREDICT_PATH = "/v1/predict"
_STATE_KEY = "robustops_observed"
_REFUSED = {
    401: "unauthorized",
    403: "forbidden",
    413: "too-large",
    422: "invalid",
    429: "rate-limited",
    503: "busy",
}
_CATEGORY = re.compile(r"[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")


def reason_category(reason: str) -> str:
    """A bounded label for a free-text reason: ``ood`` for an out-of-distribution score,
    ``low-confidence`` for a confidence below the minimum, else the reason's leading word
    (lower case, at most 32 characters; ``other`` when it has none)."""
    text = reason.strip().lower()
    if text.startswith(("out-of-distribution", "ood")):
        return "ood"
    if text.startswith(("confidence", "low confidence", "low-confidence")):
        return "low-confidence"
    m = _CATEGORY.match(text)
    return m.group(0)[:32] if m else "other"


def multiprocess_dir() -> str | None:
    """The folder of the multiprocess files when prometheus-client counts in them in this
    process, else None (in memory)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and getattr(values.ValueClass, "_multiprocess", False) and os.path.isdir(path):
        return path
    return None


@dataclass
class Snapshot:
    """The service's metrics at one moment, summed over its workers.

    ``buckets`` are the histogram's cumulative counts per upper bound (seconds, the last one
    ``inf``)."""

    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)
    buckets: list[tuple[float, float]] = field(default_factory=list)
    latency_count: float = 0.0
    latency_sum: float = 0.0
    predictions: dict[str, float] = field(default_factory=dict)
    abstentions: dict[str, float] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)
    in_flight: float = 0.0
    workers: float = 0.0
    model: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Requests counted."""
        return round(sum(self.requests.values()))

    def by(self, index: int) -> dict[str, int]:
        """Request counts by status (0), decision (1) or action (2)."""
        out: dict[str, int] = {}
        for labels, n in self.requests.items():
            out[labels[index]] = out.get(labels[index], 0) + round(n)
        return dict(sorted(out.items()))


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile estimated from cumulative histogram buckets the way Prometheus'
    ``histogram_quantile`` does: linear within the bucket it falls in; a quantile in the
    ``+Inf`` bucket is the highest finite bound. None when there is no observation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = (bound if not math.isinf(bound) else lower_bound), count
    return lower_bound


class GuardMetrics:
    """The guard's Prometheus metrics for one worker (see the module docstring).

    ``identity`` is the served model's ``name``, ``version`` and ``weights_sha256``."""

    def __init__(self, identity: dict[str, Any]) -> None:
        self.multiprocess_path = multiprocess_dir()
        # In multiprocess mode the values live in the per-process files; registering them
        # anywhere would only duplicate what MultiProcessCollector reads back.
        self.registry: CollectorRegistry | None = (
            None if self.multiprocess_path else CollectorRegistry()
        )
        self.epoch = self.multiprocess_path or f"pid{os.getpid()}-{time.time():.6f}"
        reg = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Prediction requests by HTTP status, decision and detector action.",
            ["status", "decision", "action"],
            registry=reg,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "Time from a prediction request's arrival to its answer.",
            buckets=BUCKETS,
            registry=reg,
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions",
            "Inputs answered (predict) or abstained on (abstain).",
            ["decision"],
            registry=reg,
        )
        self.abstentions = Counter(
            f"{PREFIX}_abstentions",
            "Abstained inputs by reason category (an input may have several).",
            ["reason"],
            registry=reg,
        )
        self.flags = Counter(
            f"{PREFIX}_flags",
            "Requests the attack-in-progress detector acted on, by reason category.",
            ["reason"],
            registry=reg,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight",
            "Prediction requests in progress.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.workers = Gauge(
            f"{PREFIX}_workers",
            "Live worker processes.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "The served model (value 1).",
            ["name", "version", "weights_sha256"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.model_swaps = Counter(
            f"{PREFIX}_model_swaps",
            "Alias-following model swaps by result (ok, load-failed, registry-unreachable).",
            ["result"],
            registry=reg,
        )
        self.request_log_errors = Counter(
            f"{PREFIX}_request_log_errors",
            "Request log lines that could not be written to the log file.",
            registry=reg,
        )
        self.auth_failures = Counter(
            f"{PREFIX}_auth_failures",
            "Failed authentications (unauthorized: 401) and requests refused because their "
            "client address made too many of them (limited: 429, before any key check).",
            ["result"],
            registry=reg,
        )
        self.pass_requests = Histogram(
            f"{PREFIX}_pass_requests",
            "Requests run together in one pass of the model, abstainer and detector "
            "(serve.batching; 1 when the worker was idle).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=reg,
        )
        self.identity = _identity(identity)
        self.workers.set(1)
        self.model_info.labels(**self.identity).set(1)
        self._closed = False

    def set_model(self, identity: dict[str, Any]) -> None:
        """The worker now serves the model ``identity`` (after an alias move)."""
        new = _identity(identity)
        if new != self.identity:
            self.model_info.labels(**self.identity).set(0)
            self.identity = new
        self.model_info.labels(**new).set(1)

    def observe(
        self,
        status: int,
        seconds: float,
        outcome: Outcome | None,
        *,
        decision: str | None = None,
    ) -> tuple[str, str]:
        """Count one prediction request that got ``status`` after ``seconds``; ``outcome`` is
        the guard's when the model ran; ``decision`` names a refusal the status does not (see
        :func:`note_refusal`). Returns its ``(decision, action)`` labels."""
        if outcome is None:
            decision = decision or _REFUSED.get(status, "error" if status >= 500 else "other")
            action = "none"
        else:
            abstained = [p for p in outcome.predictions if p.decision == "abstain"]
            decision = "abstain" if abstained else "predict"
            action = outcome.action
            if len(outcome.predictions) > len(abstained):
                self.predictions.labels("predict").inc(len(outcome.predictions) - len(abstained))
            if abstained:
                self.predictions.labels("abstain").inc(len(abstained))
            for p in abstained:
                for category in sorted({reason_category(r) for r in p.reasons} or {"other"}):
                    self.abstentions.labels(category).inc()
            if flagged(outcome):
                for category in flag_categories(outcome):
                    self.flags.labels(category).inc()
        self.requests.labels(str(status), decision, action).inc()
        self.latency.observe(seconds)
        return decision, action

    def collect_registry(self) -> CollectorRegistry:
        """A registry holding the service's metrics: this process's own, or every worker's
        merged from the multiprocess files (a fresh registry per call, as prometheus-client
        requires)."""
        if self.registry is not None:
            return self.registry
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg, path=self.multiprocess_path)  # type: ignore[no-untyped-call]
        return reg

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of :meth:`collect_registry` and its content type."""
        return generate_latest(self.collect_registry()), CONTENT_TYPE_LATEST

    def snapshot(self) -> Snapshot:
        """The current values, summed over the workers."""
        snap = Snapshot()
        bucket_counts: dict[float, float] = {}
        for family in self.collect_registry().collect():
            for s in family.samples:
                _take(snap, bucket_counts, s.name, s.labels, s.value)
        snap.buckets = sorted(bucket_counts.items())
        if not snap.model:
            snap.model = dict(self.identity)
        return snap

    def close(self) -> None:
        """This worker is exiting: drop its live gauges (workers, in flight, model) from the
        merged view. Counters and the histogram keep what it counted."""
        if self._closed:
            return
        self._closed = True
        if self.multiprocess_path is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_path)  # type: ignore[no-untyped-call]
        else:
            self.workers.set(0)


def _identity(identity: dict[str, Any]) -> dict[str, str]:
    return {k: str(identity.get(k) or "") for k in ("name", "version", "weights_sha256")}


def _take(
    snap: Snapshot, buckets: dict[float, float], name: str, labels: dict[str, str], value: float
) -> None:
    """Add one sample to ``snap``."""
    if name == f"{PREFIX}_requests_total":
        k = (labels.get("status", ""), labels.get("decision", ""), labels.get("action", ""))
        snap.requests[k] = snap.requests.get(k, 0.0) + value
    elif name == f"{PREFIX}_request_latency_seconds_bucket":
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    elif name == f"{PREFIX}_request_latency_seconds_count":
        snap.latency_count += value
    elif name == f"{PREFIX}_request_latency_seconds_sum":
        snap.latency_sum += value
    elif name == f"{PREFIX}_predictions_total":
        d = labels.get("decision", "")
        snap.predictions[d] = snap.predictions.get(d, 0.0) + value
    elif name == f"{PREFIX}_abstentions_total":
        r = labels.get("reason", "")
        snap.abstentions[r] = snap.abstentions.get(r, 0.0) + value
    elif name == f"{PREFIX}_flags_total":
        r = labels.get("reason", "")
        snap.flags[r] = snap.flags.get(r, 0.0) + value
    elif name == f"{PREFIX}_in_flight":
        snap.in_flight += value
    elif name == f"{PREFIX}_workers":
        snap.workers += value
    elif name == f"{PREFIX}_model_info" and value > 0:
        snap.model = {k: labels.get(k, "") for k in ("name", "version", "weights_sha256")}


def flagged(outcome: Outcome) -> bool:
    """Whether the detector acted on this request (any action but ``ok``, or any reason)."""
    return outcome.action != "ok" or bool(outcome.flags)


def flag_categories(outcome: Outcome) -> list[str]:
    """The reason categories of a flagged request (``unspecified`` when it gave none)."""
    return sorted({reason_category(r) for r in outcome.flags} or {"unspecified"})


def note_refusal(request: Request, decision: str) -> None:
    """Tell :class:`ObserveMiddleware` why this request was refused before the handler ran
    (its ``decision`` label, e.g. ``auth-limited``) when the status alone does not say it."""
    request.state.robustops_refusal = decision


def note_outcome(request: Request, key: str, outcome: Outcome) -> None:
    """Hand the guard's outcome of this request (and the key's name) to
    :class:`ObserveMiddleware`, which counts it once the answer is sent."""
    request.state.robustops_observed = (key, outcome)


FlagSink = Any
"""Anything with ``record_flag(key, action, reasons)`` (the dashboard's store)."""


class FlagBuffer:
    """Collects flagged requests in memory (called on the event loop: no thread hop, no
    database write per request) and hands them to ``sink`` in a thread, ``delay`` seconds
    after the first one not yet written (:meth:`flush` writes them at once, e.g. before the
    dashboard's data are read)."""

    def __init__(self, sink: FlagSink, delay: float = 0.25) -> None:
        self.sink, self.delay = sink, delay
        self._pending: list[tuple[str, str, list[str]]] = []
        self._lock = threading.Lock()  # the list
        self._writing = threading.Lock()  # one flush at a time, in order
        self._scheduled = False

    def record_flag(self, key: str, action: str, reasons: list[str]) -> None:
        """Keep one flagged request of ``key``; schedules a flush when none is (on the running
        event loop; without one, writes at once)."""
        with self._lock:
            self._pending.append((key, action, reasons))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        loop.call_later(self.delay, lambda: loop.run_in_executor(None, self.flush))

    def flush(self) -> None:
        """Write every pending flag to the sink, oldest first."""
        with self._writing:
            with self._lock:
                items, self._pending = self._pending, []
                self._scheduled = False
            for key, action, reasons in items:
                self.sink.record_flag(key, action, reasons)


class ObserveMiddleware:
    """ASGI middleware: times and counts every ``POST /v1/predict`` (whatever answered it),
    keeps the in-flight gauge, hands flagged requests' key, action and reason categories to
    ``sink`` (a :class:`FlagBuffer` on the event loop; any other sink off the response path,
    in a thread), and closes the metrics when the worker's
    lifespan ends."""

    def __init__(self, app: ASGIApp, metrics: GuardMetrics, sink: FlagSink | None = None) -> None:
        self.app, self.metrics, self.sink = app, metrics, sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http" or scope.get("path") != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, counted = 500, False
        observed: tuple[str, Outcome] | None = None

        def count() -> None:
            nonlocal counted, observed
            counted = True
            state = scope.get("state") or {}
            observed = state.get(_STATE_KEY)
            self.metrics.observe(
                status,
                time.perf_counter() - started,
                observed[1] if observed else None,
                decision=state.get("robustops_refusal"),
            )

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last byte leaves, so a client that reads /metrics
                # right after its answer finds it counted.
                self.metrics.in_flight.dec()
                count()
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, capture)
        finally:
            if not counted:
                self.metrics.in_flight.dec()
                count()
        if observed is not None and self.sink is not None and flagged(observed[1]):
            key, outcome = observed
            if isinstance(self.sink, FlagBuffer):
                self.sink.record_flag(key, outcome.action, flag_categories(outcome))
            else:
                await run_in_threadpool(
                    self.sink.record_flag, key, outcome.action, flag_categories(outcome)
                )

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self.metrics.close()
            await send(message)

        return wrapped


def merged_counts(items: Iterable[tuple[str, float]]) -> dict[str, int]:
    """``{label: count}`` as integers, largest first."""
    out = {k: round(v) for k, v in items if round(v) > 0}
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
