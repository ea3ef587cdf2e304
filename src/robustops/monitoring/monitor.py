"""The monitor loop: request log → signals → calibrated change detectors → alerts (outbox) →
rollback → sinks.

One :meth:`Monitor.step`:

1. reads every complete new line of the request log folder (:func:`read_new`);
2. for each kept record, in order: a ``model-swap`` (or a new ``model`` label on a predict
   record) marks a version going live; a non-canary ``predict`` record gives each rule its
   signal value. A rule first fills its calibration window (the first ``calibration.requests``
   values), then fits its detector on them (:func:`robustops.monitoring.detectors.calibrate`)
   and from the next value on feeds it. A firing detector makes an alert and is reset; firings
   within ``cooldown_requests`` of the last alert of the same stream are counted, not alerted;
3. commits, in ONE SQLite transaction, the new file offsets, calibration windows, detector
   states and the new alerts with their pending deliveries (the outbox);
4. runs the rollbacks that new rollback-worthy alerts owe, recording each result on its alert;
5. delivers every owed alert to every sink, marking each delivered after a 2xx (or append).

A monitor killed anywhere resumes from its last commit: requests after it are read again and
fire the same alerts with the same ids (nothing lost, nothing doubled in the outbox); a
delivery that succeeded but was not yet marked is sent again (receivers dedupe by ``id``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustops.errors import RobustOpsError, SpecError
from robustops.monitoring.alerts import (
    ALERT_SCHEMA,
    DeliveryError,
    FileDelivery,
    Sink,
    WebhookDelivery,
    alert_id,
    backoff_seconds,
)
from robustops.monitoring.config import AlertRule, MonitorConfig, RollbackConfig
from robustops.monitoring.detectors import ChangeDetector, calibrate, from_state_dict
from robustops.monitoring.logtail import LogRecord, read_new
from robustops.monitoring.rare import KIND as RARE_KIND
from robustops.monitoring.rare import MAX_EVENT_SHARE, RareEvents, fit_rare_events
from robustops.monitoring.signals import Signal, get_signal, is_monitored
from robustops.monitoring.state import MonitorState

__all__ = [
    "Monitor",
    "MonitorBusy",
    "StepReport",
    "calibrate_from_log",
    "calibration_summary",
    "default_sinks",
    "monitor_status",
    "signal_calibrations",
]

log = logging.getLogger(__name__)

EXAMPLES = 5
"""Example request ids an alert carries."""
RECENT = 32
"""Recent (request id, value) pairs a stream keeps to choose the examples from."""
READ_BYTES = 1 << 20
"""Most bytes read per log file per step (one transaction)."""


class MonitorBusy(RobustOpsError):
    """Another monitor holds the state file's lock."""


def rule_fingerprint(rule: AlertRule, config: MonitorConfig) -> str:
    """A hash of what a rule's calibration and detector depend on: a change re-calibrates."""
    text = json.dumps(
        [
            rule.signal,
            rule.detector,
            rule.direction,
            config.calibration.requests,
            config.calibration.false_alarms_per_10k,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seed(rule: AlertRule) -> int:
    return int.from_bytes(hashlib.sha256(rule.name.encode()).digest()[:4], "big")


def calibration_summary(values: list[float]) -> dict[str, float | int]:
    """``n``, ``mean``, ``std`` and quantiles ``min``, ``p01``, ``p50``, ``p99``, ``max``."""
    xs = sorted(values)
    n = len(xs)

    def q(p: float) -> float:
        return xs[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {
        "n": n,
        "mean": statistics.fmean(xs),
        "std": statistics.pstdev(xs) if n > 1 else 0.0,
        "min": xs[0],
        "p01": q(0.01),
        "p50": q(0.5),
        "p99": q(0.99),
        "max": xs[-1],
    }


MIN_VALUES = {"kswin": 200}
"""Calibration values a detector kind needs at least (100 for the others)."""
BATCH_WINDOW = 200
"""The batch test's window (values), at most half the calibration window."""


def _fit(
    rule: AlertRule, signal: Signal, config: MonitorConfig, values: list[float]
) -> ChangeDetector | RareEvents:
    """The rule's detector fitted on ``values``; a :class:`RareEvents` when every value is
    the same (no flag, no 4xx in the whole window), or when the change detectors refuse a
    window of a few events (at most ``MAX_EVENT_SHARE``): neither can be standardised."""
    target = config.calibration.false_alarms_per_10k
    rare = fit_rare_events(values, direction=rule.direction, false_alarms_per_10k=target)
    if rare is not None:
        return rare
    kwargs: dict[str, Any] = {"categorical": True} if signal.categorical else {}
    if rule.detector == "batch-test":
        kwargs["window"] = min(BATCH_WINDOW, len(values) // 2)
    try:
        return _calibrate(rule, config, values, kwargs)
    except Exception:
        rare = fit_rare_events(
            values, direction=rule.direction, false_alarms_per_10k=target, max_share=MAX_EVENT_SHARE
        )
        if rare is None:
            raise
        return rare


def _calibrate(
    rule: AlertRule, config: MonitorConfig, values: list[float], kwargs: dict[str, Any]
) -> ChangeDetector:
    return calibrate(
        rule.detector,
        values,
        direction=rule.direction,
        false_alarms_per_10k=config.calibration.false_alarms_per_10k,
        seed=_seed(rule),
        **kwargs,
    )


def _restore(state: dict[str, Any]) -> ChangeDetector | RareEvents:
    """A detector continuing from its ``state_dict``."""
    if state.get("kind") == RARE_KIND:
        return RareEvents.from_state_dict(state)
    return from_state_dict(state)


def _detection_dict(detection: Any) -> dict[str, Any]:
    if hasattr(detection, "as_dict"):
        raw = detection.as_dict()
    elif dataclasses.is_dataclass(detection) and not isinstance(detection, type):
        raw = dataclasses.asdict(detection)
    else:
        raw = {k: v for k, v in vars(detection).items() if not k.startswith("_")}
    out: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    return out


@dataclass
class Stream:
    """One detector over one rule's values (one API key's for per-key rules) and the window of
    requests it has seen since its last reset."""

    detector: ChangeDetector | RareEvents
    seen: int = 0
    window: dict[str, Any] = field(default_factory=dict)
    recent: list[tuple[str, float]] = field(default_factory=list)
    cooldown_until: int = 0
    suppressed: int = 0
    alerts: int = 0
    errors: int = 0

    def state(self) -> dict[str, Any]:
        """JSON state (with the detector's ``state_dict``)."""
        return {
            "detector": self.detector.state_dict(),
            "seen": self.seen,
            "window": self.window,
            "recent": self.recent,
            "cooldown_until": self.cooldown_until,
            "suppressed": self.suppressed,
            "alerts": self.alerts,
            "errors": self.errors,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.detector.load_state_dict(state["detector"])
        self.seen = int(state["seen"])
        self.window = dict(state["window"])
        self.recent = [(str(r), float(v)) for r, v in state["recent"]]
        self.cooldown_until = int(state["cooldown_until"])
        self.suppressed = int(state["suppressed"])
        self.alerts = int(state["alerts"])
        self.errors = int(state.get("errors", 0))

    def observe(self, record: dict[str, Any], value: float) -> None:
        """Note one value in the window (before the detector sees it)."""
        rid = str(record.get("request_id", ""))
        ts = record.get("ts")
        self.seen += 1
        if not self.window:
            self.window = {"first_ts": ts, "first_request_id": rid, "requests": 0}
        self.window["requests"] += 1
        self.window["last_ts"], self.window["last_request_id"] = ts, rid
        self.recent = [*self.recent[-(RECENT - 1) :], (rid, value)]

    def reset(self) -> None:
        """After a firing: a fresh detector state and window."""
        self.detector.reset()
        self.window, self.recent = {}, []


@dataclass
class RuleRuntime:
    """A rule, its signal, its calibration window and its streams."""

    rule: AlertRule
    signal: Signal
    fingerprint: str
    status: str = "collecting"
    source: str = "live"
    values: list[float] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    fitted_at: float | None = None
    error: str | None = None
    template: dict[str, Any] | None = None
    streams: dict[str, Stream] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The calibration row to store."""
        return {
            "fingerprint": self.fingerprint,
            "status": self.status,
            "source": self.source,
            "values": self.values,
            "summary": self.summary,
            "fitted_at": self.fitted_at,
            "error": self.error,
            "template": self.template,
        }

    def stream(self, key: str) -> Stream:
        """The stream for ``key`` (a fresh copy of the fitted detector when new)."""
        s = self.streams.get(key)
        if s is None:
            assert self.template is not None
            s = self.streams[key] = Stream(_restore(self.template))
        return s


@dataclass
class StepReport:
    """What one :meth:`Monitor.step` did: ``records`` read (kept ones), ``more`` whether a file
    had more than one read's worth, new ``alerts`` (committed), ``delivered`` and
    ``failed`` delivery attempts."""

    records: int = 0
    more: bool = False
    alerts: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0


def default_sinks(config: MonitorConfig, alerts_file: str | Path | None) -> list[Sink]:
    """The spec's webhooks plus the alerts file (JSON lines) when given."""
    sinks: list[Sink] = [WebhookDelivery(w) for w in config.webhooks]
    if alerts_file is not None:
        sinks.append(FileDelivery(Path(alerts_file)))
    return sinks


def _check_rules(config: MonitorConfig) -> list[tuple[AlertRule, Signal]]:
    errors, out, names = [], [], set()
    for i, rule in enumerate(config.rules):
        try:
            out.append((rule, get_signal(rule.signal)))
        except KeyError as exc:
            errors.append((f"monitor.rules.{i}.signal", str(exc.args[0])))
        if rule.name in names:
            errors.append((f"monitor.rules.{i}.name", f"rule {rule.name!r} is named twice"))
        names.add(rule.name)
        need = MIN_VALUES.get(rule.detector, 100)
        if config.calibration.requests < need:
            errors.append(
                (
                    "monitor.calibration.requests",
                    f"rule {rule.name!r} ({rule.detector}) needs at least {need} calibration "
                    f"values, got {config.calibration.requests}",
                )
            )
    if errors:
        raise SpecError(errors)
    return out


class Monitor:
    """The monitor over ``config`` (the spec's ``monitor`` section).

    ``sinks`` receive every alert (default: the spec's webhooks); ``registry_home`` is handed to
    the rollback (with ``config.rollback``: its ``model`` unset, the rollback takes the registry
    model from the alert's served version label); ``on_alert`` is called with each new alert after its commit (the CLI prints it)."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        sinks: list[Sink] | None = None,
        registry_home: str | None = None,
        on_alert: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.rules = [
            RuleRuntime(rule, signal, rule_fingerprint(rule, config))
            for rule, signal in _check_rules(config)
        ]
        self.sinks = list(sinks) if sinks is not None else default_sinks(config, None)
        self.registry_home = registry_home
        self.rollback_config: RollbackConfig = config.rollback
        self.on_alert = on_alert
        self._lock_fh: Any = None
        self.state = self._open_locked(Path(config.state))
        self._load()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- state
    def _open_locked(self, path: Path) -> MonitorState:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(f"{path}.lock", "a+")  # noqa: SIM115 - held for the monitor's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise MonitorBusy(f"another monitor is running on {path} (its lock is held)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh
        return MonitorState(path)

    def close(self) -> None:
        """Close the state and release the lock."""
        self.state.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def _load(self) -> None:
        """Everything in memory from the state file (at start, and after a failed commit)."""
        self.offsets = self.state.offsets()
        self.last_swap: dict[str, Any] | None = self.state.get_meta("last_swap")
        self.last_model: str | None = self.state.get_meta("last_model")
        self.rules = [RuleRuntime(rt.rule, rt.signal, rt.fingerprint) for rt in self.rules]
        cals = self.state.calibrations()
        streams = self.state.streams()
        stale = []
        for rt in self.rules:
            row = cals.get(rt.rule.name)
            if row is None:
                continue
            if row["fingerprint"] != rt.fingerprint:
                log.warning(
                    "rule %s changed since its calibration: calibrating again", rt.rule.name
                )
                stale.append(rt.rule.name)
                continue
            rt.status, rt.source, rt.values = row["status"], row["source"], row["values"]
            rt.summary, rt.fitted_at = row["summary"], row["fitted_at"]
            rt.error, rt.template = row["error"], row["template"]
            if rt.status == "fitted":
                for (rule, key), st in streams.items():
                    if rule == rt.rule.name:
                        rt.streams[key] = Stream(_restore(st["detector"]))
                        rt.streams[key].load(st)
        if stale:
            with self.state.transaction() as db:
                for name in stale:
                    self.state.drop_rule(db, name)

    # ---- one step
    def step(self) -> StepReport:
        """Read, detect, commit, roll back, deliver (see the module docstring)."""
        report = StepReport()
        read = read_new(self.config.request_log, self.offsets, max_bytes=READ_BYTES)
        report.records = len(read.records)
        report.more = read.more
        new_alerts: list[tuple[dict[str, Any], bool]] = []
        dirty_cal: set[str] = set()
        dirty_streams: set[tuple[str, str]] = set()
        for lr in read.records:
            self._process(lr, new_alerts, dirty_cal, dirty_streams)
        if read.offsets != self.offsets or new_alerts or dirty_cal or dirty_streams:
            sink_names = [s.name for s in self.sinks]
            by_name = {rt.rule.name: rt for rt in self.rules}
            try:
                with self.state.transaction() as db:
                    self.state.set_offsets(db, read.offsets)
                    self.state.set_meta(db, "last_swap", self.last_swap)
                    self.state.set_meta(db, "last_model", self.last_model)
                    for name in sorted(dirty_cal):
                        self.state.put_calibration(db, name, by_name[name].row())
                    for name, key in sorted(dirty_streams):
                        st = by_name[name].streams[key].state()
                        self.state.put_stream(db, name, key, st)
                    for alert, due in new_alerts:
                        if self.state.add_alert(db, alert, sink_names, due):
                            report.alerts.append(alert)
            except BaseException:
                # memory ran ahead of the state file: fall back to what it holds
                report.alerts.clear()
                self._load()
                raise
            self.offsets = read.offsets
        for alert in report.alerts:
            log.info("alert %s: %s (%s)", alert["id"], alert["rule"], alert["summary"])
            if self.on_alert is not None:
                self.on_alert(alert)
        self.run_rollbacks()
        report.delivered, report.failed = self.deliver()
        return report

    def _process(
        self,
        lr: LogRecord,
        new_alerts: list[tuple[dict[str, Any], bool]],
        dirty_cal: set[str],
        dirty_streams: set[tuple[str, str]],
    ) -> None:
        rec = lr.record
        if rec.get("event") == "model-swap":
            self._swap(rec.get("to", rec.get("model")), rec.get("from"), lr.ts)
            return
        if not is_monitored(rec):
            return
        model = rec.get("model")
        if isinstance(model, str) and model != self.last_model:
            if self.last_model is not None:
                self._swap(model, self.last_model, lr.ts)
            self.last_model = model
        for rt in self.rules:
            for value in rt.signal.values(rec):
                if rt.status != "fitted":
                    rt.values.append(value)
                    if len(rt.values) >= self.config.calibration.requests:
                        self._fit_rule(rt, "live")
                    dirty_cal.add(rt.rule.name)
                    continue
                key = str(rec.get("key", "")) if rt.signal.per_key else ""
                stream = rt.stream(key)
                stream.observe(rec, value)
                dirty_streams.add((rt.rule.name, key))
                try:
                    detection = stream.detector.update(value)
                except Exception as exc:  # a value the detector refuses must not wedge the log
                    stream.errors += 1
                    log.error("rule %s: value %r refused: %s", rt.rule.name, value, exc)
                    continue
                if detection is None:
                    continue
                if stream.seen < stream.cooldown_until:
                    stream.suppressed += 1
                else:
                    stream.alerts += 1
                    stream.cooldown_until = stream.seen + rt.rule.cooldown_requests
                    new_alerts.append(self._alert(rt, key, stream, lr, detection))
                stream.reset()

    def _swap(self, model: Any, previous: Any, ts: float) -> None:
        """A version went live at ``ts``: the guard's ``model-swap`` event (``from``/``to``),
        or a predict record with a new ``model`` label. Each worker logs its own swap; the
        first one to the same version starts the after-promotion window."""
        if not isinstance(model, str):
            return
        if self.last_swap is None or self.last_swap.get("model") != model:
            prev = previous if isinstance(previous, str) else self.last_model
            self.last_swap = {"ts": ts, "model": model, "previous": prev}
        self.last_model = model

    def _fit_rule(self, rt: RuleRuntime, source: str) -> None:
        """Fit the rule's detector on its window; a window the detector cannot use (constant,
        say: no flag at all) is recorded as the rule's error and collection starts over."""
        try:
            detector = _fit(rt.rule, rt.signal, self.config, rt.values)
        except Exception as exc:  # recorded on the rule (status shows it); collection restarts
            log.error("rule %s: cannot calibrate on its window: %s", rt.rule.name, exc)
            rt.error = f"{source} window of {len(rt.values)} values unusable: {exc}"
            rt.values, rt.status = [], "collecting"
            return
        rt.template = detector.state_dict()
        rt.status, rt.source, rt.fitted_at, rt.error = "fitted", source, time.time(), None
        rt.summary = {**calibration_summary(rt.values), "detector": detector.calibration}
        rt.streams = {}
        log.info("rule %s calibrated on %d values", rt.rule.name, len(rt.values))

    def _alert(
        self, rt: RuleRuntime, key: str, stream: Stream, lr: LogRecord, detection: Any
    ) -> tuple[dict[str, Any], bool]:
        rec, rule = lr.record, rt.rule
        rid = str(rec.get("request_id", ""))
        mean = float((rt.summary or {}).get("mean", 0.0))
        sign = {"up": 1.0, "down": -1.0}.get(rule.direction)

        def dev(v: float) -> float:
            return sign * (v - mean) if sign else abs(v - mean)

        examples = sorted(stream.recent, key=lambda rv: -dev(rv[1]))[:EXAMPLES]
        det = _detection_dict(detection)
        swap = self.last_swap
        since_swap = lr.ts - float(swap["ts"]) if swap else None
        due = bool(
            rule.rollback
            and since_swap is not None
            and 0 <= since_swap <= self.rollback_config.after_promotion_seconds
        )
        statistic, threshold = det.get("statistic"), det.get("threshold")
        who = f" for key {key}" if key else ""
        alert = {
            "schema": ALERT_SCHEMA,
            "id": alert_id(rule.name, key or None, lr.file, lr.end, rid),
            "rule": rule.name,
            "signal": rule.signal,
            "detector": rule.detector,
            "direction": rule.direction,
            "severity": rule.severity,
            "key": key or None,
            "model": rec.get("model"),
            "fired_ts": lr.ts,
            "fired_at": _iso(lr.ts),
            "summary": f"{rule.signal}{who} changed ({det.get('direction', rule.direction)}): "
            f"{_verdict(det)} after {stream.window.get('requests', 0)} requests",
            "window": dict(stream.window),
            "statistic": statistic,
            "threshold": threshold,
            "detection": det,
            "calibration": {**(rt.summary or {}), "source": rt.source},
            "examples": [{"request_id": r, "value": v} for r, v in examples],
            "log": {"file": lr.file, "end": lr.end},
            "rollback": {
                "rule_allows": rule.rollback,
                "eligible": due,
                "last_swap": swap,
                "seconds_since_swap": since_swap,
            },
        }
        return alert, due

    # ---- rollback and delivery
    def run_rollbacks(self) -> None:
        """Call the rollback for every alert that owes one; record its result (or error)."""
        for alert in self.state.pending_rollbacks():
            try:
                from robustops.monitoring.rollback import (  # type: ignore[import-not-found, unused-ignore]
                    roll_back_on_alert,
                )

                result: Any = roll_back_on_alert(self.rollback_config, alert, self.registry_home)
            except Exception as exc:  # recorded on the alert; the on-call reads it there
                log.error("rollback on alert %s failed: %s", alert["id"], exc)
                result = {"error": f"{type(exc).__name__}: {exc}"}
            self.state.set_rollback_result(alert["id"], result)

    def deliver(self, *, ignore_backoff: bool = False) -> tuple[int, int]:
        """Deliver every owed alert that is due (all when ``ignore_backoff``); returns
        ``(delivered, failed)``."""
        by_name = {s.name: s for s in self.sinks}
        now = time.time()
        ok = bad = 0
        for aid, sink_name, attempts, alert in self.state.pending_deliveries(
            math.inf if ignore_backoff else now
        ):
            sink = by_name.get(sink_name)
            if sink is None or alert["rollback"].get("pending"):
                continue
            try:
                sink.deliver(_public(alert))
            except DeliveryError as exc:
                bad += 1
                cap = max((w.max_backoff_seconds for w in self.config.webhooks), default=300.0)
                wait = backoff_seconds(attempts + 1, cap)
                log.warning(
                    "alert %s to %s failed (%s); retry in %.0f s", aid, sink_name, exc, wait
                )
                self.state.mark_failed(aid, sink_name, str(exc), now + wait)
                continue
            ok += 1
            self.state.mark_delivered(aid, sink_name)
        return ok, bad

    def run(self, *, once: bool = False, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Step until ``should_stop()`` (every ``poll_seconds`` when idle); with ``once``,
        until the log is read to its end and then retry failed deliveries twice."""
        while not should_stop():
            report = self.step()
            if once and not report.more:
                break
            if not report.more:
                time.sleep(self.config.poll_seconds)
        if once:
            for wait in (1.0, 2.0):
                if not self.state.pending_deliveries(math.inf):
                    break
                time.sleep(wait)
                self.deliver(ignore_backoff=True)


def _public(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert as sinks get it: the stored payload with the rollback result, without the
    outbox's bookkeeping (acknowledgements, deliveries)."""
    out = {k: v for k, v in alert.items() if k not in ("acked_by", "acked_at", "ack_note")}
    rb = dict(out.get("rollback", {}))
    rb.pop("pending", None)
    out["rollback"] = rb
    return out


def _verdict(det: dict[str, Any]) -> str:
    """The detection in words: a batch test's p-value under alpha and effect over its minimum,
    a sequential detector's statistic over its threshold (each by its name)."""
    stat, thr = det.get("statistic"), det.get("threshold")
    sname, tname = (
        det.get("statistic_name") or "statistic",
        det.get("threshold_name") or "threshold",
    )
    if det.get("p_value") is not None and det.get("effect_size") is not None:
        return (
            f"p-value {_num(det['p_value'])} ≤ alpha {_num(det.get('alpha'))} and effect "
            f"{_num(det['effect_size'])} ≥ {_num(det.get('min_effect'))}"
        )
    return f"{sname} {_num(stat)} ≥ {tname} {_num(thr)}"


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)


def calibrate_from_log(config: MonitorConfig, folder: str | Path) -> dict[str, dict[str, Any]]:
    """Fit every rule's calibration from a log folder of stable traffic (the first
    ``calibration.requests`` non-canary values of its signal) and store it in the state,
    replacing the rule's calibration and detector streams. Returns the summaries by rule.

    Raises :class:`SpecError` (at ``--log``) when the folder holds too few values for a rule."""
    checked = _check_rules(config)
    need = config.calibration.requests
    by_signal = _collect_values(folder, {s.name: s for _, s in checked}, need)
    values = {rule.name: by_signal[rule.signal] for rule, _ in checked}
    short = [
        (rule.name, len(values[rule.name]), rule.signal)
        for rule, _ in checked
        if len(values[rule.name]) < need
    ]
    if short:
        raise SpecError.single(
            "--log",
            f"{folder} has too few values (calibration.requests is {need}): "
            + ", ".join(f"rule {n} ({s}) {k}" for n, k, s in short),
        )
    out = {}
    with Monitor(config, sinks=[]) as mon, mon.state.transaction() as db:
        for rt in mon.rules:
            rt.values = values[rt.rule.name]
            mon._fit_rule(rt, f"log:{folder}")
            if rt.status != "fitted":
                raise SpecError.single("--log", f"rule {rt.rule.name}: {rt.error}")
            mon.state.drop_rule(db, rt.rule.name)
            mon.state.put_calibration(db, rt.rule.name, rt.row())
            out[rt.rule.name] = rt.summary or {}
    return out


def _collect_values(
    folder: str | Path, signals: dict[str, Signal], need: int
) -> dict[str, list[float]]:
    """The first ``need`` values of each signal in a log folder's non-canary predict records
    (fewer when the folder holds fewer)."""
    values: dict[str, list[float]] = {name: [] for name in signals}
    offsets: dict[str, int] = {}
    while True:
        read = read_new(folder, offsets)
        for lr in read.records:
            if not is_monitored(lr.record):
                continue
            for name, signal in signals.items():
                values[name].extend(signal.values(lr.record)[: need - len(values[name])])
        if read.offsets == offsets:
            return values
        offsets = read.offsets


def signal_calibrations(
    config: MonitorConfig, names: tuple[str, ...], log_folder: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """Calibration summaries of the signals ``names``: from a log folder of stable traffic
    when given (its first ``calibration.requests`` values), else from the fitted rules in the
    state. Signals with neither are left out."""
    if log_folder is not None:
        vals = _collect_values(
            log_folder, {n: get_signal(n) for n in names}, config.calibration.requests
        )
        return {
            n: {**calibration_summary(v), "source": f"log:{log_folder}"}
            for n, v in vals.items()
            if v
        }
    path = Path(config.state)
    if not path.exists():
        return {}
    st = MonitorState(path)
    try:
        cals = st.calibrations()
    finally:
        st.close()
    out: dict[str, dict[str, Any]] = {}
    for rule in config.rules:
        cal = cals.get(rule.name)
        if rule.signal in names and cal and cal["status"] == "fitted" and cal["summary"]:
            out.setdefault(rule.signal, {**cal["summary"], "source": cal["source"]})
    return out


def monitor_status(config: MonitorConfig, *, alerts: int = 10) -> dict[str, Any]:
    """What the state holds: per rule its calibration (status, progress, summary) and streams
    (requests seen, alerts, suppressed firings, detector state), the bytes of the request log
    not processed yet (``unread_bytes``: the monitor's lag), the last model swap, the
    ``alerts`` most recent alerts, and the undelivered deliveries. Reads only."""
    path = Path(config.state)
    if not path.exists():
        raise SpecError.single("monitor.state", f"{path} does not exist (the monitor never ran)")
    st = MonitorState(path)
    try:
        cals = st.calibrations()
        streams = st.streams()
        rules = []
        for rule in config.rules:
            cal = cals.get(rule.name)
            rs = {k: v for (r, k), v in streams.items() if r == rule.name}
            rules.append(
                {
                    "rule": rule.name,
                    "signal": rule.signal,
                    "detector": rule.detector,
                    "severity": rule.severity,
                    "calibration": None
                    if cal is None
                    else {
                        "status": cal["status"],
                        "source": cal["source"],
                        "values": len(cal["values"]),
                        "needed": config.calibration.requests,
                        "summary": cal["summary"],
                        "error": cal["error"],
                        "current": cal["fingerprint"] == rule_fingerprint(rule, config),
                    },
                    "streams": {
                        k or "*": {
                            "seen": s["seen"],
                            "alerts": s["alerts"],
                            "suppressed": s["suppressed"],
                            "window": s["window"],
                            "detector": s["detector"],
                        }
                        for k, s in sorted(rs.items())
                    },
                }
            )
        offsets = st.offsets()
        sizes = {
            p.name: p.stat().st_size
            for p in Path(config.request_log).glob("*.jsonl")
            if p.is_file()
        }
        return {
            "state": str(path),
            "request_log": config.request_log,
            "files": offsets,
            "unread_bytes": sum(max(0, n - offsets.get(f, 0)) for f, n in sizes.items()),
            "last_swap": st.get_meta("last_swap"),
            "rules": rules,
            "alerts": st.alerts(limit=alerts),
            "undelivered": st.undelivered(),
            "delivery_errors": st.delivery_errors(),
        }
    finally:
        st.close()
