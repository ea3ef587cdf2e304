"""``robustops canary``: attack the live endpoint with a fixed, registered canary set and
compare what it withstands with what the production version's accepted result says it
withstood; a significant drop opens a vulnerability and (where the policy says so) rolls
production back.

The registry is ``--registry``, else the spec's ``registry.home``; the model is
``monitor.rollback.model``, else ``registry.model``, else the spec's name.

**The canary set** (:func:`init_canary`). ``monitor.canary.samples`` samples drawn (seeded by
``monitor.canary.seed``) from the evaluated samples of the *accepted* result of the version
``monitor.rollback.model:monitor.rollback.alias`` points to: the newest result whose gate
passed under the policy in force for that alias (else, with a warning, the newest evaluation
attached to the version). Each canary sample carries its input, label, test-split index, its
position in that result and that result's per-sample outcomes (clean correct; robust per
threat). The set is one JSON file (format ``robustops-canary/1``), registered as a data set of
kind ``canary`` (``<spec name>-canary`` unless ``monitor.canary.dataset`` names it).

**A run** (:func:`run_canary`). Reads the served version from ``GET /v1/model``, attacks the
canary inputs through :class:`~robustops.models.remote.RemoteClassifier` with the canary API
key (``$ROBUSTOPS_CANARY_KEY``, i.e. ``monitor.canary.key_env``): one clean pass, then, for each
``linf``/``l2`` threat of the spec that is not targeted, a query attack that works over HTTP
(``square`` on the guard's top-1 scores, or ``hopskipjump`` on labels), at most
``monitor.canary.queries_per_sample`` queries per sample (the threat's own ``query_budget``
when smaller). Other families (patch, spatial, corruption, text) are listed as not attacked.
A sample is robust when the service answered its true label on the clean input and the
attack failed (an abstention counts as a failure of the service, the conservative reading).

The baseline is the accepted result of the *served* version when it has one (a legitimately
promoted version is judged against its own acceptance), else the canary set's source result
(the last accepted production version: a break-glass promotion is judged against what it
replaced). Clean accuracy and each threat's robust accuracy are compared on the same samples
with the gate's exact one-sided McNemar test (:func:`robustops.gate.mcnemar_exact`); a
comparison is *significant* when ``p < monitor.canary.alpha`` and the canary's rate is below
the baseline's. A significant run opens one critical vulnerability on the served version
(origin ``canary``; evidence: canary data set version, served version and weights, per-test
counts and p-values; a later run against the same version joins its open record instead of
opening another) and, with ``monitor.rollback.on_canary``, rolls the
alias back (:func:`robustops.monitoring.rollback.roll_back`, only while it still points to the
served version).

**Budget.** Before a run, its query allowance is the smaller of (a)
``monitor.canary.queries_per_hour`` minus the queries of the canary runs recorded in the last
hour (the run records in ``monitor.canary.records``) and (b), when
``monitor.canary.max_traffic_share`` < 1, the canary inputs the share allows given the guard's
request log of the last hour (``monitor.request_log``; inputs, i.e. the ``n`` of each line:
with share ``s`` and ``C`` non-canary inputs, canary inputs may reach ``s / (1 - s) · C``,
minus the canary inputs already logged). The adapter refuses any request past the allowance;
a run that reaches it stops, compares the samples it finished, and says so in its record
(``stopped``). A run whose allowance cannot cover even the clean pass is recorded as skipped.

**Record.** Every run writes ``canary-<UTC time>.json`` in ``monitor.canary.records``; every run
that was not skipped also stores it in the registry with an audit event ``canary-run`` (its
hash, the verdict and the counts), next to the ``vuln-open`` and ``alias`` events it caused.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from robustops.attacks import build_attack
from robustops.config import PipelineSpec
from robustops.data import TextDataset
from robustops.errors import RobustOpsError
from robustops.evaluation.result import SuiteResult
from robustops.gate import mcnemar_exact
from robustops.io import atomic_write_text
from robustops.models.remote import QueryBudgetExceeded, RemoteClassifier, RemoteError
from robustops.monitoring.config import MonitorConfig
from robustops.monitoring.rollback import check_actor, parse_model_label, roll_back
from robustops.registry.service import Registry, label
from robustops.registry.vulnerabilities import (
    DEDUPE_STATUSES,
    list_vulnerabilities,
    open_vulnerability,
)
from robustops.runner import load_spec_dataset
from robustops.threats import ThreatModel

__all__ = [
    "CANARY_FORMAT",
    "Baseline",
    "CanaryError",
    "canary_budget",
    "find_baseline",
    "init_canary",
    "load_canary_set",
    "request_log_inputs",
    "run_canary",
]

CANARY_FORMAT = "robustops-canary/1"
_HOUR = 3600.0
_CHUNK = 25  # samples attacked per call: the budget stops a run between chunks at most this late


class CanaryError(RobustOpsError):
    """A canary set or run that cannot be made as asked (no accepted result, data that does not
    match it, no canary key, an endpoint that refuses); the message names the field or input."""


def _monitor(spec: PipelineSpec) -> MonitorConfig:
    return spec.monitor or MonitorConfig()


def _home(spec: PipelineSpec, given: str | Path | None) -> str | Path | None:
    """The registry folder: ``given``, else the spec's ``registry.home`` (else the default)."""
    return given if given is not None else (spec.registry.home if spec.registry else None)


def _model(spec: PipelineSpec) -> str:
    """The registry model: ``monitor.rollback.model``, else ``registry.model``, else the
    spec's name."""
    section = spec.registry
    return _monitor(spec).rollback.model or (section.model if section else None) or spec.name


def _dataset_name(spec: PipelineSpec) -> str:
    return _monitor(spec).canary.dataset or f"{spec.name}-canary"


def _utc(t: float | None = None) -> str:
    return (
        datetime.fromtimestamp(time.time() if t is None else t, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


# -- baseline ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """The result a version is judged against: its version (``NAME@N``), the stored result's
    hash, the gate record that accepted it (None for a fallback evaluation) and the result."""

    version: str
    result_sha256: str
    gate_record: int | None
    result: SuiteResult

    @property
    def accepted(self) -> bool:
        """Whether a passed gate record under the alias's policy backs it."""
        return self.gate_record is not None


def find_baseline(
    reg: Registry,
    ref: str,
    alias: str,
    *,
    fallback: bool = True,
    warn: Callable[[str], None] | None = None,
) -> Baseline | None:
    """The accepted result of version ``ref`` for ``alias`` (the newest passed gate record under
    the policy in force). Without one: with ``fallback`` the newest attached evaluation (and a
    warning through ``warn``), else None; None too when the version has no evaluation."""
    v = reg.get(ref)
    gate = reg.accepted_gate(label(v), alias)
    if gate is not None:
        sha, gate_id = gate.result_sha256, gate.id
    else:
        if not fallback:
            return None
        evaluations = reg.evaluations(label(v))
        if not evaluations:
            return None
        sha, gate_id = evaluations[-1].result_sha256, None
        if warn is not None:
            warn(
                f"{label(v)} has no passed gate record under the policy of {v.name}:{alias}; "
                f"using its newest attached evaluation ({sha[:12]}…) as the baseline"
            )
    reg.store.artifacts.verify(sha)
    result = SuiteResult.load(reg.store.artifacts.path(sha))
    return Baseline(label(v), sha, gate_id, result)


# -- the canary set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryInit:
    """What :func:`init_canary` made: the file, the registered data set version (``NAME@N``),
    its content hash and the baseline it was drawn from."""

    path: Path
    dataset: str
    sha256: str
    baseline: Baseline
    n_samples: int


def init_canary(
    spec: PipelineSpec,
    *,
    registry_home: str | Path | None,
    actor: str,
    out: str | Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> CanaryInit:
    """Draw the canary set from the accepted result of the alias's version, write it to
    ``out`` (default ``<monitor.canary.records>/canary-set.json``) and register it as a data set
    of kind ``canary`` (see the module docstring)."""
    cfg = _monitor(spec)
    model = _model(spec)
    reg = Registry.open(_home(spec, registry_home))
    try:
        baseline = find_baseline(
            reg, f"{model}:{cfg.rollback.alias}", cfg.rollback.alias, warn=warn
        )
        if baseline is None:
            raise CanaryError(
                f"monitor.rollback.model: {model}:{cfg.rollback.alias} has no evaluation to draw "
                "a canary set from; attach one (robustops gate --register)"
            )
        doc = _draw(spec, baseline)
        path = Path(out) if out is not None else Path(cfg.canary.records) / "canary-set.json"
        atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
        ds = reg.register_dataset(
            actor,
            _dataset_name(spec),
            "canary",
            path,
            meta={k: v for k, v in doc.items() if k != "samples"}
            | {
                "positions": [s["position"] for s in doc["samples"]],
                "indices": [s["index"] for s in doc["samples"]],
            },
            n_samples=len(doc["samples"]),
            description=f"canary set of {model}:{cfg.rollback.alias} drawn from "
            f"{baseline.version}'s {'accepted' if baseline.accepted else 'newest'} result",
        )
        return CanaryInit(path, ds.ref, ds.content_sha256, baseline, ds.n_samples)
    finally:
        reg.close()


def _draw(spec: PipelineSpec, baseline: Baseline) -> dict[str, Any]:
    cfg = _monitor(spec).canary
    result = baseline.result
    data = load_spec_dataset(spec)
    if result.data.get("fingerprint") != data.fingerprint:
        raise CanaryError(
            f"data: the spec's data set (fingerprint {data.fingerprint[:12]}…) is not the one "
            f"{baseline.version}'s result evaluated ({str(result.data.get('fingerprint'))[:12]}…)"
        )
    n = len(result.samples.indices)
    if cfg.samples > n:
        raise CanaryError(
            f"monitor.canary.samples: {cfg.samples} is more than the {n} samples "
            f"{baseline.version}'s result evaluated"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    positions = sorted(torch.randperm(n, generator=gen)[: cfg.samples].tolist())
    text = isinstance(data, TextDataset)
    samples = []
    for p in positions:
        index, y = result.samples.indices[p], result.samples.labels[p]
        if int(data.y_test[index]) != y:
            raise CanaryError(
                f"data: test sample {index} has label {int(data.y_test[index])}, the result says "
                f"{y}; not the same split"
            )
        entry: dict[str, Any] = {
            "position": p,
            "index": index,
            "label": y,
            "clean_correct": result.samples.clean_correct[p],
            "robust": {t.name: t.robust[p] for t in result.threats},
        }
        if isinstance(data, TextDataset):
            entry["text"] = data.texts_test[index]
        else:
            entry["input"] = data.x_test[index].float().tolist()
        samples.append(entry)
    return {
        "format": CANARY_FORMAT,
        "spec": spec.name,
        "modality": "text" if text else "tensor",
        "source_version": baseline.version,
        "source_result_sha256": baseline.result_sha256,
        "source_gate_record": baseline.gate_record,
        "accepted": baseline.accepted,
        "data_fingerprint": data.fingerprint,
        "split": result.samples.split,
        "seed": cfg.seed,
        "threats": [t.name for t in result.threats],
        "samples": samples,
    }


def load_canary_set(path: str | Path) -> dict[str, Any]:
    """A canary set file, checked (format, one entry per sample with label, index, position,
    outcomes and an input or text)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CanaryError(f"canary set: cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CANARY_FORMAT:
        raise CanaryError(f"canary set: {path} is not a {CANARY_FORMAT} file")
    samples = doc.get("samples")
    if not isinstance(samples, list) or not samples:
        raise CanaryError(f"canary set: {path} holds no samples")
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not {"label", "index", "position", "robust"} <= set(s):
            raise CanaryError(f"canary set: samples.{i} lacks label/index/position/robust")
        if ("input" in s) == ("text" in s):
            raise CanaryError(f"canary set: samples.{i} needs exactly one of input, text")
    return doc


# -- budget ------------------------------------------------------------------------------------


def request_log_inputs(folder: str | Path, since: float) -> tuple[int, int]:
    """``(canary inputs, other inputs)`` the guard logged at or after Unix time ``since`` in
    its request log folder (``*.jsonl``, one JSON object per line; ``role`` canary or not,
    ``n`` inputs; a partial last line is skipped). A missing folder counts nothing."""
    canary = other = 0
    root = Path(folder)
    if not root.is_dir():
        return 0, 0
    for f in sorted(root.glob("*.jsonl")):
        try:
            if f.stat().st_mtime < since:
                continue
            with f.open("rb") as fh:
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break  # being written
                    try:
                        line = json.loads(raw)
                        ts, n = float(line["ts"]), int(line.get("n") or 0)
                    except (ValueError, KeyError, TypeError):
                        continue
                    if ts < since:
                        continue
                    if line.get("role") == "canary":
                        canary += n
                    else:
                        other += n
        except OSError:
            continue
    return canary, other


def _recent_records(folder: Path, since: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("canary-2*.json")):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and float(rec.get("started_ts", 0)) >= since:
            out.append(rec)
    return out


def canary_budget(spec: PipelineSpec, now: float) -> dict[str, Any]:
    """The query allowance of a run starting at Unix time ``now`` and how it was reached (see
    the module docstring): ``allowance``, ``spent_last_hour``, and when the share applies
    ``log_canary_inputs``, ``log_other_inputs``, ``share_allowance``."""
    cfg = _monitor(spec)
    c = cfg.canary
    since = now - _HOUR
    spent = sum(int(r.get("queries", 0)) for r in _recent_records(Path(c.records), since))
    out: dict[str, Any] = {
        "queries_per_hour": c.queries_per_hour,
        "spent_last_hour": spent,
        "max_traffic_share": c.max_traffic_share,
    }
    allowance = max(c.queries_per_hour - spent, 0)
    if c.max_traffic_share < 1.0:
        logged_canary, logged_other = request_log_inputs(cfg.request_log, since)
        share = c.max_traffic_share
        by_share = max(math.floor(share / (1.0 - share) * logged_other) - logged_canary, 0)
        out.update(
            request_log=cfg.request_log,
            log_canary_inputs=logged_canary,
            log_other_inputs=logged_other,
            share_allowance=by_share,
        )
        allowance = min(allowance, by_share)
    out["allowance"] = allowance
    return out


# -- a run -------------------------------------------------------------------------------------


class RemoteTextClassifier:
    """A text guard endpoint as the text attacks' model (``num_classes``,
    ``predict_logits(texts)``): each text goes to ``POST /v1/predict`` (``{"texts": [...]}``)
    and comes back as the guard's top label and its confidence, completed to ``(N, K + 1)``
    log-scores as :class:`~robustops.models.remote.RemoteClassifier` does in ``top1`` mode
    (column ``K``: an abstention). ``queries`` counts texts answered; a call that would pass
    ``query_budget`` raises :class:`QueryBudgetExceeded` before anything is sent; 429/503 are
    retried after ``Retry-After`` for at most ``max_wait`` seconds per chunk."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        query_budget: int | None = None,
        max_batch: int = 64,
        timeout: float = 30.0,
        max_wait: float = 120.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise CanaryError(f"--url: must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/")
        self.query_budget, self.max_batch, self.max_wait = query_budget, max_batch, max_wait
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self.queries = self.requests = self.rate_limited = self.abstentions = 0
        status, _, body = self._send("/v1/model", None)
        if status != 200:
            raise RemoteError(f"GET /v1/model: HTTP {status}", status)
        self.info: dict[str, Any] = json.loads(body)
        if self.info.get("modality") != "text":
            raise RemoteError(
                f"the endpoint serves a {self.info.get('modality')!r} model, not text"
            )
        self.num_classes = int(self.info["num_classes"])

    def _send(self, path: str, payload: Any) -> tuple[int, dict[str, str], bytes]:
        """One request (GET without ``payload``, else a JSON POST): status, headers, body."""
        import urllib.error
        import urllib.request

        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
        except OSError as exc:
            raise RemoteError(f"{path}: {type(exc).__name__}: {exc}") from None

    def answers(self, texts: list[str]) -> list[tuple[int | None, float]]:
        """``(label, confidence)`` per text; ``label`` None for an abstention."""
        if self.query_budget is not None and self.queries + len(texts) > self.query_budget:
            raise QueryBudgetExceeded(
                f"query budget: {self.queries} of {self.query_budget} texts answered; "
                f"{len(texts)} more would pass it"
            )
        out: list[tuple[int | None, float]] = []
        for start in range(0, len(texts), self.max_batch):
            chunk = texts[start : start + self.max_batch]
            waited = 0.0
            while True:
                status, headers, body = self._send("/v1/predict", {"texts": chunk})
                self.requests += 1
                if status in (429, 503):
                    self.rate_limited += status == 429
                    retry = {k.lower(): v for k, v in headers.items()}.get("retry-after", "1")
                    try:
                        wait = max(float(retry), 0.0)
                    except ValueError:
                        wait = 1.0
                    if waited + wait > self.max_wait:
                        raise RemoteError(f"still refused ({status})", status)
                    time.sleep(wait)
                    waited += wait
                    continue
                if status != 200:
                    raise RemoteError(f"POST /v1/predict: HTTP {status}: {body[:200]!r}", status)
                break
            try:
                preds = json.loads(body)["predictions"]
                if len(preds) != len(chunk):
                    raise ValueError(f"{len(preds)} predictions for {len(chunk)} texts")
                for p in preds:
                    lab = (
                        None
                        if p["decision"] == "abstain" or p["label"] is None
                        else int(p["label"])
                    )
                    out.append((lab, float(p["confidence"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise RemoteError(f"unexpected predict response: {exc}", 200) from None
            self.queries += len(chunk)
        self.abstentions += sum(lab is None for lab, _ in out)
        return out

    def predict_logits(self, texts: Any) -> torch.Tensor:
        """``(N, K + 1)`` log-scores of ``texts`` (see the class docstring)."""
        k = self.num_classes
        answers = self.answers(list(texts))
        out = torch.full((len(answers), k + 1), math.log(1e-12))
        for i, (lab, conf) in enumerate(answers):
            if lab is None:
                out[i, k] = 0.0
                continue
            p = min(max(conf, 1e-12), 1.0)
            rest = math.log(max((1.0 - p) / max(k - 1, 1), 1e-12))
            out[i, :k] = min(rest, math.log(p) - 1e-6)
            out[i, lab] = math.log(p)
        return out

    def close(self) -> None:
        """Nothing to release (one connection per request)."""

    def __enter__(self) -> RemoteTextClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attackable(threat: ThreatModel, text: bool) -> str | None:
    """Why the canary does not attack ``threat`` over HTTP (None: it does)."""
    families = ("word-edits",) if text else ("linf", "l2")
    if threat.norm not in families:
        return f"{threat.norm}: no query attack over HTTP for this family"
    if threat.targeted and threat.target_class is None:
        return "targeted at a random class per sample: only a fixed target_class is attacked"
    return None


def _compare(baseline: list[bool], new: list[bool], alpha: float) -> dict[str, Any]:
    b, c, p = mcnemar_exact(baseline, new)
    n = len(new)
    base_rate = sum(baseline) / n if n else 0.0
    new_rate = sum(new) / n if n else 0.0
    drop = base_rate - new_rate
    return {
        "n": n,
        "baseline_correct": sum(baseline),
        "canary_correct": sum(new),
        "baseline_rate": base_rate,
        "canary_rate": new_rate,
        "drop": drop,
        "baseline_only": b,
        "canary_only": c,
        "p_value": p,
        "significant": bool(n and p < alpha and drop > 0),
    }


def _served_ref(info: dict[str, Any], model: str) -> str | None:
    """The registry label ``NAME@N`` of the served version (from ``/v1/model``'s ``version``),
    or None when the endpoint does not serve a registry version of ``model``."""
    version = info.get("version")
    if not isinstance(version, str):
        return None
    try:
        name, n = parse_model_label(version)
    except RobustOpsError:
        return None
    return f"{name}@{n}" if n is not None and name == model else None


def run_canary(
    spec: PipelineSpec,
    url: str,
    *,
    registry_home: str | Path | None,
    actor: str | None = None,
    key: str | None = None,
    now: Callable[[], float] = time.time,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One canary run against the guard at ``url`` (see the module docstring); returns the
    run record (also written to ``monitor.canary.records`` and stored in the registry).
    ``actor`` defaults to ``monitor.rollback.actor``; ``key`` to ``$<monitor.canary.key_env>``."""
    cfg = _monitor(spec)
    c, rb = cfg.canary, cfg.rollback
    actor = actor or rb.actor
    key = key or os.environ.get(c.key_env)
    if not key:
        raise CanaryError(f"monitor.canary.key_env: ${c.key_env} holds no canary API key")
    model = _model(spec)
    started = now()
    t0 = time.monotonic()
    reg = Registry.open(_home(spec, registry_home))
    try:
        check_actor(reg, actor)
        ds = reg.dataset(_dataset_name(spec))
        canary_set = load_canary_set(reg.dataset_path(ds))
        record: dict[str, Any] = {
            "kind": "canary-run",
            "started_at": _utc(started),
            "started_ts": started,
            "url": url,
            "model": model,
            "alias": rb.alias,
            "dataset": ds.ref,
            "dataset_sha256": ds.content_sha256,
            "queries": 0,
            "requests": 0,
            "stopped": None,
            "verdict": "ok",
            "tests": {},
            "not_attacked": {},
            "vulnerability": None,
            "rollback": None,
        }
        budget = canary_budget(spec, started)
        record["budget"] = budget
        samples = canary_set["samples"]
        if budget["allowance"] < len(samples):
            record.update(
                verdict="skipped",
                stopped=f"budget: {budget['allowance']} queries allowed, the clean pass alone "
                f"needs {len(samples)}",
            )
            return _finish(reg, spec, record, actor, t0, audit=False)
        _attack_live(spec, url, key, canary_set, record, budget["allowance"])
        _judge(reg, spec, canary_set, record, actor, warn)
        return _finish(reg, spec, record, actor, t0)
    finally:
        reg.close()


def _attack_live(
    spec: PipelineSpec,
    url: str,
    key: str,
    canary_set: dict[str, Any],
    record: dict[str, Any],
    allowance: int,
) -> None:
    """The clean pass and the threats' attacks through HTTP; fills ``record['outcomes']``."""
    c = _monitor(spec).canary
    samples = canary_set["samples"]
    text = canary_set.get("modality") == "text"
    remote: RemoteClassifier | RemoteTextClassifier
    try:
        if text:
            remote = RemoteTextClassifier(url, key, query_budget=allowance, max_batch=c.max_batch)
        else:
            output: Literal["top1", "labels"] = "top1" if c.attack == "square" else "labels"
            remote = RemoteClassifier(
                url, key, output=output, query_budget=allowance, max_batch=c.max_batch
            )
    except RemoteError as exc:
        raise CanaryError(f"--url: {url}: {exc}") from None
    with remote:
        record["served"] = {
            "version": remote.info.get("version"),
            "name": remote.info.get("name"),
            "weights_sha256": remote.info.get("weights_sha256"),
        }
        y = torch.tensor([int(s["label"]) for s in samples])
        x: Any
        if text:
            x = [str(s["text"]) for s in samples]
            answers = remote.answers(x)
        else:
            assert isinstance(remote, RemoteClassifier)
            x = torch.tensor([s["input"] for s in samples], dtype=torch.float32)
            x = x.reshape(len(samples), *remote.input_shape)
            answers = remote.answers(x)
        clean = [lab == int(t) for (lab, _), t in zip(answers, y.tolist(), strict=True)]
        outcomes: dict[str, list[bool | None]] = {"clean": list(clean)}
        threats = spec.evaluation.threats if spec.evaluation is not None else []
        for ts in threats:
            threat = ts.threat()
            why = _attackable(threat, text)
            if why is not None:
                record["not_attacked"][threat.name] = why
                continue
            budget = min(c.queries_per_sample, threat.query_budget or c.queries_per_sample)
            if text:
                live = threat.model_copy(update={"query_budget": budget})
                attacks = [
                    build_attack(a.name, live, **(a.params() | {"seed": c.seed}))
                    for a in ts.attacks
                ]
            else:
                knowledge = "score-based" if c.attack == "square" else "decision-based"
                live = threat.model_copy(update={"knowledge": knowledge, "query_budget": budget})
                attacks = [build_attack(c.attack, live, queries=budget, seed=c.seed)]
            # A fixed target class exempts the samples of that class (robust when correct).
            exempt = threat.target_class if threat.targeted else None
            robust: list[bool | None] = [
                (True if int(t) == exempt else None) if ok else False
                for ok, t in zip(clean, y.tolist(), strict=True)
            ]
            # Chunk by chunk through every attack (each on the chunk's still-robust samples,
            # as the suite does), so a run stopped by its budget leaves whole chunks finished:
            # the chunk in progress is dropped entirely, not just its unbroken samples (that
            # would bias the comparison toward broken ones).
            pending = [i for i, r in enumerate(robust) if r is None]
            try:
                for start in range(0, len(pending), _CHUNK):
                    chunk = pending[start : start + _CHUNK]
                    for attack in attacks:
                        idx = [i for i in chunk if robust[i] is None]
                        if not idx:
                            break
                        xs = [x[i] for i in idx] if text else x[idx]
                        targets = torch.full((len(idx),), exempt) if exempt is not None else None
                        res = attack(remote, xs, y[idx], targets=targets)
                        for i, broken in zip(idx, res.success.tolist(), strict=True):
                            if broken:
                                robust[i] = False
                    for i in chunk:
                        if robust[i] is None:
                            robust[i] = True
            except QueryBudgetExceeded:
                record["stopped"] = (
                    f"budget: the allowance of {allowance} queries was spent during threat "
                    f"{threat.name}; compared the samples finished"
                )
                for i in chunk:
                    robust[i] = None
                for i in pending[start + _CHUNK :]:
                    robust[i] = None
            outcomes[threat.name] = robust
            if record["stopped"]:
                break
        record["queries"] = remote.queries
        record["requests"] = remote.requests
        record["abstentions"] = remote.abstentions
        record["rate_limited"] = remote.rate_limited
        record["outcomes"] = outcomes


def _judge(
    reg: Registry,
    spec: PipelineSpec,
    canary_set: dict[str, Any],
    record: dict[str, Any],
    actor: str,
    warn: Callable[[str], None] | None,
) -> None:
    """Compare the outcomes with the baseline; open a vulnerability and roll back when a
    comparison is significant."""
    cfg = _monitor(spec)
    c, rb = cfg.canary, cfg.rollback
    model = record["model"]
    samples = canary_set["samples"]
    served = _served_ref(record.get("served", {}), model)
    base_clean = [bool(s["clean_correct"]) for s in samples]
    base_robust = {
        t: [bool(s["robust"].get(t, False)) for s in samples] for t in canary_set["threats"]
    }
    record["baseline"] = {
        "version": canary_set["source_version"],
        "result_sha256": canary_set["source_result_sha256"],
        "accepted": canary_set.get("accepted", False),
        "source": "canary set",
    }
    try:
        own = find_baseline(reg, served, rb.alias, fallback=False) if served else None
    except RobustOpsError:
        own, served = None, None  # the endpoint names a version this registry does not hold
    if own is not None and own.result_sha256 != canary_set["source_result_sha256"]:
        by_index = {i: p for p, i in enumerate(own.result.samples.indices)}
        positions = [by_index.get(int(s["index"])) for s in samples]
        if all(p is not None for p in positions) and (
            own.result.data.get("fingerprint") == canary_set.get("data_fingerprint")
        ):
            pos = [p for p in positions if p is not None]
            base_clean = [own.result.samples.clean_correct[p] for p in pos]
            base_robust = {t.name: [t.robust[p] for p in pos] for t in own.result.threats}
            record["baseline"] = {
                "version": own.version,
                "result_sha256": own.result_sha256,
                "accepted": True,
                "source": "the served version's accepted result",
            }
        elif warn is not None:
            warn(f"{served}'s accepted result does not cover the canary samples; using the set's")
    tests: dict[str, Any] = {}
    for name, got in record["outcomes"].items():
        base = base_clean if name == "clean" else base_robust.get(name)
        if base is None:
            record["not_attacked"][name] = "the baseline result has no such threat"
            continue
        done = [i for i, v in enumerate(got) if v is not None]
        tests[name] = _compare([base[i] for i in done], [bool(got[i]) for i in done], c.alpha)
    record["tests"] = tests
    significant = {k: t for k, t in tests.items() if t["significant"]}
    if not significant:
        return
    record["verdict"] = "regression"
    worst = min(significant, key=lambda k: significant[k]["p_value"])
    w = significant[worst]
    what = "clean accuracy" if worst == "clean" else f"robust accuracy under {worst}"
    evidence = {
        "origin": "canary",
        "dataset": record["dataset"],
        "dataset_sha256": record["dataset_sha256"],
        "served": record.get("served"),
        "baseline": record["baseline"],
        "tests": tests,
        "url": record["url"],
        "started_at": record["started_at"],
    }
    if served is None:
        record["vulnerability"] = {
            "refused": f"the endpoint serves {record.get('served', {}).get('version')!r}, not a "
            f"registry version of {model}; no vulnerability record can name it"
        }
        return
    # One record per bad version: a later run against the same version (the guard may still
    # serve it after the alias moved, or the rollback was refused) joins the open record.
    existing = [
        r
        for r in list_vulnerabilities(reg, model=model, status=DEDUPE_STATUSES, version=served)
        if r.evidence.get("origin") == "canary"
    ]
    if existing:
        vuln_id = existing[0].id
        record["vulnerability_existing"] = True
    else:
        vuln_id = open_vulnerability(
            reg,
            actor,
            served,
            threat=worst,
            title=f"canary: {what} on the live endpoint fell from {w['baseline_rate']:.2f} to "
            f"{w['canary_rate']:.2f} on {w['n']} canary samples (McNemar p={w['p_value']:.2g})",
            severity="critical",
            evidence=evidence,
            origin="canary",
        ).id
    record["vulnerability"] = vuln_id
    if rb.on_canary:
        outcome = roll_back(
            reg,
            actor=actor,
            model=model,
            alias=rb.alias,
            reason=f"canary: {what} dropped significantly (p={w['p_value']:.2g}); {vuln_id}",
            evidence={"vulnerability": vuln_id, "tests": tests, "dataset": record["dataset"]},
            only_if=served,
        )
        record["rollback"] = outcome.to_json()


def _finish(
    reg: Registry,
    spec: PipelineSpec,
    record: dict[str, Any],
    actor: str,
    t0: float,
    *,
    audit: bool = True,
) -> dict[str, Any]:
    """Write the record and (``audit``) store it in the registry with an audit event; returns
    it. A skipped run is not audited: at a short period they would flood the log."""
    record["wall_time_s"] = round(time.monotonic() - t0, 3)
    folder = Path(_monitor(spec).canary.records)
    stamp = record["started_at"].replace(":", "").replace("-", "")
    path = folder / f"canary-{stamp}.json"
    atomic_write_text(path, json.dumps(record, indent=1, default=str))
    summary = {
        "verdict": record["verdict"],
        "dataset": record["dataset"],
        "served": (record.get("served") or {}).get("version"),
        "queries": record["queries"],
        "stopped": record["stopped"],
        "tests": {
            k: {
                "n": t["n"],
                "baseline_correct": t["baseline_correct"],
                "canary_correct": t["canary_correct"],
                "p_value": t["p_value"],
            }
            for k, t in record["tests"].items()
        },
        "vulnerability": record["vulnerability"],
        "rolled_back": bool((record.get("rollback") or {}).get("rolled_back")),
    }
    record["record_path"] = str(path)
    if not audit:
        return record
    sha, seq = reg.record_run(
        actor, "canary-run", f"{record['model']}:{record['alias']}", path, summary
    )
    record["record_sha256"] = sha
    record["audit_seq"] = seq
    return record
