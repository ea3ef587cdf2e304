"""Exports of one registered version: into MLflow, as a model card, as an in-toto attestation.

- :func:`export_mlflow` writes the version into an MLflow tracking store and model registry: one
  run (params: recipe, seed, data, attack parameters; metrics: clean and robust accuracy, attack
  success, calibration, certified accuracy; tags: every hash, the threat models, versions, gate
  verdicts; artifacts: weights, spec, catalog, result JSONs, model card, in-toto statement) and a
  registered model version whose source is the run's ``weights`` folder, with the same tags and,
  optionally, MLflow aliases mirroring the RobustOps ones. MLflow is the optional extra
  ``robustops[mlflow]``, imported only here. MLflow's registry needs a database-backed store
  (``sqlite:///path/mlflow.db`` offline, or a tracking server): MLflow 3 refuses ``file://``
  stores unless ``MLFLOW_ALLOW_FILE_STORE=true``.
- :func:`model_card` builds a model card as JSON-ready data (schema ``robustops.model-card/v1``)
  and :func:`render_card_markdown` renders it; :func:`write_card` writes ``card.md`` and
  ``card.json``. Every share comes with its Wilson 95 % interval from the counts in the result.
- :func:`intoto_statement` is an in-toto Statement v1 whose subject is the weights file (sha256)
  and whose predicate (``https://robustops.dev/evaluation/v1``) binds the evaluation results'
  hashes, the gate records, the threat catalog and spec hashes to it. :func:`sign_statement`
  wraps it in a DSSE envelope signed with the registry's audit Ed25519 key, and
  :func:`verify_dsse` checks such an envelope against a raw public key.

Exports only read the registry; nothing here changes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from pydantic import ValidationError
from sqlalchemy import select

from robustops import __version__
from robustops.evaluation.metrics import wilson_interval
from robustops.evaluation.result import SuiteResult
from robustops.io import atomic_write_text
from robustops.registry.audit import AuditKey
from robustops.registry.lineage import lineage
from robustops.registry.models import (
    GateRecord,
    ModelVersion,
    Vulnerability,
    VulnerabilityVersion,
)
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError
from robustops.threats.catalog import ThreatCatalog

__all__ = [
    "CARD_SCHEMA",
    "DSSE_PAYLOAD_TYPE",
    "MLFLOW_EXTRA",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "AttestationError",
    "dsse_envelope",
    "export_mlflow",
    "intoto_statement",
    "model_card",
    "pae",
    "render_card_markdown",
    "sign_statement",
    "verify_dsse",
    "weights_filename",
    "write_card",
]

MLFLOW_EXTRA = "robustops[mlflow]"
"""The optional extra that brings MLflow (``pip install 'robustops[mlflow]'``)."""
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://robustops.dev/evaluation/v1"
"""The predicate type of RobustOps' evaluation attestations."""
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
CARD_SCHEMA = "robustops.model-card/v1"
_TAG = "robustops."
_SPLIT_KEYS = frozenset({"test_fraction", "val_fraction", "n_train", "n_val", "n_test"})
_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


class AttestationError(RegistryError):
    """A DSSE envelope that is malformed, of another payload type, or whose signature does not
    verify with the key given."""


# -- what every export reads ---------------------------------------------------------------


@dataclass(frozen=True)
class _Bundle:
    """One version with everything the exports read: its row, its lineage, its results (in
    attachment order), its catalog and spec text, and the vulnerabilities affecting it."""

    version: ModelVersion
    info: dict[str, Any]
    results: list[tuple[str, SuiteResult]]
    catalog: ThreatCatalog | None
    spec_text: str | None
    vulnerabilities: list[dict[str, Any]]
    gate_reports: dict[int, str]

    @property
    def newest(self) -> tuple[str, SuiteResult] | None:
        """The most recently attached result (sha256 of its file, parsed), or None."""
        return self.results[-1] if self.results else None

    @property
    def data(self) -> dict[str, Any]:
        """The data record: the training sidecar's, else the newest result's."""
        if self.version.data:
            return dict(self.version.data)
        newest = self.newest
        return dict(newest[1].data) if newest else {}

    @property
    def data_fingerprint(self) -> str | None:
        """The data fingerprint of the version, else of its data record."""
        fp = self.version.data_fingerprint or self.data.get("fingerprint")
        return fp if isinstance(fp, str) else None


def _canonical(data: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8: the bytes hashed and signed."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _gather(reg: Registry, ref: str) -> _Bundle:
    info = lineage(reg, ref)
    label_ = info["version"]["label"]
    v = reg.get(label_)
    arts = reg.store.artifacts
    results = []
    for e in info["evaluations"]:
        sha = e["result_sha256"]
        try:
            parsed = SuiteResult.model_validate(json.loads(arts.read_bytes(sha)))
        except (ValueError, ValidationError) as exc:
            raise RegistryError(
                f"result: the stored result {sha[:12]}… is no longer readable: {exc}"
            ) from None
        results.append((sha, parsed))
    catalog_sha = v.catalog_sha256 or next(
        (r.catalog_sha256 for _, r in reversed(results) if r.catalog_sha256), None
    )
    catalog = None
    if catalog_sha and arts.has(catalog_sha):
        catalog = ThreatCatalog.from_canonical_json(arts.read_bytes(catalog_sha).decode("utf-8"))
    spec_text = arts.read_bytes(v.spec_sha256).decode("utf-8") if v.spec_sha256 else None
    with reg.store.read() as s:
        rows = s.scalars(
            select(Vulnerability)
            .join(VulnerabilityVersion, VulnerabilityVersion.vulnerability_id == Vulnerability.id)
            .where(VulnerabilityVersion.version_id == v.id)
            .order_by(Vulnerability.id)
        ).all()
        vulns = [
            {
                "id": r.id,
                "title": r.title,
                "severity": r.severity,
                "status": r.status,
                "catalog_entry": r.catalog_entry,
                "threat": r.threat,
                "owner": r.owner,
                "opened_at": r.opened_at,
                "closed_at": r.closed_at,
            }
            for r in rows
        ]
        reports = {
            g.id: hashlib.sha256(_canonical(g.report)).hexdigest()
            for g in s.scalars(select(GateRecord).where(GateRecord.version_id == v.id))
        }
    return _Bundle(v, info, results, catalog, spec_text, vulns, reports)


def weights_filename(v: ModelVersion) -> str:
    """The file name a version's weights are exported under: the name it was registered
    with, else (registries from before that was recorded) ``NAME-vN.safetensors``, or
    ``NAME-vN.weights`` when the file is not safetensors (it has no tensor hash)."""
    if v.weights_name:
        return v.weights_name
    return f"{v.name}-v{v.version}.{'safetensors' if v.state_sha256 else 'weights'}"


def _spec_fields(spec_text: str | None) -> dict[str, Any]:
    if not spec_text:
        return {}
    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _share(k: int, n: int) -> dict[str, Any]:
    """A share with its counts and Wilson 95 % interval: ``{value, k, n, ci95: [low, high]}``."""
    low, high = wilson_interval(k, n, 0.95)
    return {"value": k / n if n else 0.0, "k": k, "n": n, "ci95": [low, high]}


def result_figures(sha256: str, r: SuiteResult) -> dict[str, Any]:
    """The figures of one result with their intervals (JSON-ready): identity, clean accuracy,
    per threat robust accuracy and attack success (Wilson 95 %, counts from the per-sample
    record) with the attacked ECE, clean calibration, certified accuracy per radius."""
    n = r.n_samples
    k_clean = sum(r.samples.clean_correct)
    threats = []
    for t in r.threats:
        attacked = t.n_attacked if t.n_attacked is not None else k_clean
        broken = round(t.attack_success_rate * attacked)
        threats.append(
            {
                "name": t.name,
                "threat": t.threat.model_dump(mode="json"),
                "robust_accuracy": _share(t.n_robust, n),
                "attack_success": _share(broken, attacked),
                "ece_attacked": t.calibration.attacked.ece if t.calibration else None,
                "attacks": [{"name": a.name, "params": a.params} for a in t.attacks],
            }
        )
    calibration = None
    if r.calibration is not None:
        calibration = {
            "n_bins": r.calibration.n_bins,
            "ece_clean": r.calibration.clean.ece,
            "ece_clean_scaled": r.calibration.clean_scaled.ece
            if r.calibration.clean_scaled
            else None,
            "temperature": r.calibration.temperature.model_dump(mode="json")
            if r.calibration.temperature
            else None,
        }
    certification = None
    if r.certification is not None:
        c = r.certification
        certification = {
            "sigma": c.sigma,
            "n": c.n,
            "alpha": c.alpha,
            "n_samples": c.n_samples,
            "abstain_rate": c.abstain_rate,
            "average_certified_radius": c.average_certified_radius,
            "certified_accuracy": [
                {"radius": float(radius), **_share(round(acc * c.n_samples), c.n_samples)}
                for radius, acc in sorted(c.certified_accuracy.items(), key=lambda x: float(x[0]))
            ],
        }
    return {
        "result_sha256": sha256,
        "content_sha256": r.content_sha256,
        "name": r.name,
        "created_at": r.created_at,
        "seed": r.seed,
        "tier": r.tier,
        "split": r.samples.split,
        "n_samples": n,
        "catalog_sha256": r.catalog_sha256,
        "clean_accuracy": _share(k_clean, n),
        "threats": threats,
        "calibration": calibration,
        "certification": certification,
    }


# -- model card ----------------------------------------------------------------------------


def model_card(reg: Registry, ref: str) -> dict[str, Any]:
    """The model card of ``ref`` as JSON-ready data (schema :data:`CARD_SCHEMA`).

    Keys: ``model`` (label, hashes, versions, registrant, aliases, recipe), ``intended_use``
    (the version's description, else the spec's name), ``data`` (name, fingerprint, split,
    other details such as shapes),
    ``threat_catalog`` (hash and entries with likelihood, impact, risk, level, covered, worst
    robust accuracy; None without a catalog), ``evaluations`` (see :func:`result_figures`; in
    attachment order, the newest last), ``vulnerabilities`` (id, title, severity, status, …),
    ``lineage`` (parents nearest first, children), ``gates`` and ``approvals``. The same
    registry state always gives the same card (no generation time is stamped).
    """
    return _card(_gather(reg, ref))


def _card(b: _Bundle) -> dict[str, Any]:
    v, info = b.version, b.info
    spec = _spec_fields(b.spec_text)
    spec_name = spec.get("name") if isinstance(spec.get("name"), str) else None
    if v.description:
        use_text = v.description
    elif spec_name:
        use_text = f"The model of the RobustOps pipeline spec {spec_name!r}."
    else:
        use_text = "Not stated at registration."
    newest = b.newest
    data = b.data
    rest = {k: val for k, val in data.items() if k not in ("name", "fingerprint")}
    split = {k: val for k, val in rest.items() if k in _SPLIT_KEYS or k.startswith("split")}
    catalog = None
    if b.catalog is not None:
        names: list[str] = []
        robust: dict[str, float] = {}
        success: dict[str, float] = {}
        if newest is not None:
            names = [t.name for t in newest[1].threats]
            robust = {t.name: t.robust_accuracy for t in newest[1].threats}
            success = {t.name: t.attack_success_rate for t in newest[1].threats}
        catalog = {
            "sha256": b.catalog.content_hash(),
            "evaluated_by": newest[0] if newest else None,
            "entries": [
                row.model_dump(mode="json")
                for row in b.catalog.risk_register(names, robust, success)
            ],
        }
    return {
        "schema": CARD_SCHEMA,
        "model": {
            "label": info["version"]["label"],
            "name": v.name,
            "version": v.version,
            "weights_file": weights_filename(v),
            "weights_sha256": v.weights_sha256,
            "weights_size": v.weights_size,
            "tensor_sha256": v.state_sha256,
            "spec_sha256": v.spec_sha256,
            "catalog_sha256": v.catalog_sha256,
            "robustops_version": v.robustops_version,
            "git_commit": v.git_commit,
            "registered_by": v.registered_by,
            "registered_at": v.registered_at,
            "aliases": info["aliases"],
            "recipe": v.recipe,
        },
        "intended_use": {
            "text": use_text,
            "description": v.description or None,
            "spec_name": spec_name,
        },
        "data": {
            "name": data.get("name"),
            "fingerprint": b.data_fingerprint,
            "split": split,
            "details": {k: val for k, val in rest.items() if k not in split},
            "evaluated_split": newest[1].samples.split if newest else None,
        },
        "threat_catalog": catalog,
        "evaluations": [result_figures(sha, r) for sha, r in b.results],
        "vulnerabilities": b.vulnerabilities,
        "lineage": {"parents": info["parents"], "children": info["children"]},
        "gates": info["gates"],
        "approvals": info["approvals"],
    }


def _fmt_share(s: dict[str, Any]) -> str:
    low, high = s["ci95"]
    return f"{s['value']:.3f} [{low:.3f}, {high:.3f}] ({s['k']}/{s['n']})"


def _cell(value: Any) -> str:
    text = "–" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def render_card_markdown(card: dict[str, Any]) -> str:
    """The model card as GitHub-flavoured Markdown: one section per key of :func:`model_card`,
    figures as ``value [low, high] (k/n)`` with the Wilson 95 % interval."""
    m = card["model"]
    lines = [f"# Model card: {m['label']}", ""]
    lines += ["## Intended use", "", card["intended_use"]["text"], ""]
    lines += ["## Model", ""]
    lines += _table(
        ("field", "value"),
        [
            ("weights file", m["weights_file"]),
            ("weights sha256", f"`{m['weights_sha256']}`"),
            ("size (bytes)", m["weights_size"]),
            ("tensor sha256", m["tensor_sha256"] and f"`{m['tensor_sha256']}`"),
            ("spec sha256", m["spec_sha256"] and f"`{m['spec_sha256']}`"),
            ("recipe", (m["recipe"] or {}).get("recipe")),
            ("RobustOps", m["robustops_version"]),
            ("git commit", m["git_commit"]),
            ("registered", f"{m['registered_at']} by {m['registered_by']}"),
            ("aliases", ", ".join(m["aliases"]) or None),
        ],
    )
    d = card["data"]
    lines += ["## Data", ""]
    lines += _table(
        ("field", "value"),
        [
            ("name", d["name"]),
            ("fingerprint", d["fingerprint"] and f"`{d['fingerprint']}`"),
            *((f"split: {k}", json.dumps(val)) for k, val in sorted(d["split"].items())),
            *((k, json.dumps(val)) for k, val in sorted(d["details"].items())),
            ("evaluated split", d["evaluated_split"]),
        ],
    )
    cat = card["threat_catalog"]
    lines += ["## Threat catalog", ""]
    if cat is None:
        lines += ["No threat catalog was registered with this version.", ""]
    else:
        lines += [f"Catalog `{cat['sha256']}`, ranked by risk (likelihood × impact).", ""]
        lines += _table(
            ("entry", "title", "likelihood", "impact", "risk", "level", "covered by", "robust acc"),
            [
                (
                    e["id"],
                    e["title"],
                    e["likelihood"],
                    e["impact"],
                    e["risk"],
                    e["level"],
                    ", ".join(e["threats"]) if e["covered"] else "**not covered**",
                    None if e["robust_accuracy"] is None else f"{e['robust_accuracy']:.3f}",
                )
                for e in cat["entries"]
            ],
        )
    lines += ["## Figures", ""]
    if not card["evaluations"]:
        lines += ["No evaluation is attached to this version.", ""]
    for ev in reversed(card["evaluations"]):
        lines += [
            f"### Evaluation `{ev['result_sha256'][:12]}…` ({ev['name']}, {ev['created_at']})",
            "",
            f"{ev['n_samples']} samples of the {ev['split']} split, seed {ev['seed']}. Intervals: "
            "Wilson 95 %.",
            "",
        ]
        cal = ev["calibration"] or {}
        rows: list[tuple[Any, ...]] = [
            ("clean", _fmt_share(ev["clean_accuracy"]), None, _num(cal.get("ece_clean")))
        ]
        rows += [
            (
                t["name"],
                _fmt_share(t["robust_accuracy"]),
                _fmt_share(t["attack_success"]),
                _num(t["ece_attacked"]),
            )
            for t in ev["threats"]
        ]
        lines += _table(("inputs", "accuracy", "attack success", "ECE"), rows)
        cert = ev["certification"]
        if cert:
            lines += [
                f"Certified (randomized smoothing, σ = {cert['sigma']}, n = {cert['n']}, "
                f"α = {cert['alpha']}; abstained {cert['abstain_rate']:.3f}):",
                "",
            ]
            lines += _table(
                ("L2 radius", "certified accuracy"),
                [(c["radius"], _fmt_share(c)) for c in cert["certified_accuracy"]],
            )
    lines += ["## Known vulnerabilities", ""]
    if card["vulnerabilities"]:
        lines += _table(
            ("id", "title", "severity", "status", "catalog entry", "threat"),
            [
                (x["id"], x["title"], x["severity"], x["status"], x["catalog_entry"], x["threat"])
                for x in card["vulnerabilities"]
            ],
        )
    else:
        lines += ["None recorded.", ""]
    lin = card["lineage"]
    lines += ["## Lineage", ""]
    lines += [f"- parents (nearest first): {' ← '.join(lin['parents']) or 'none'}"]
    lines += [f"- children: {', '.join(lin['children']) or 'none'}", ""]
    lines += ["## Gate records", ""]
    if card["gates"]:
        lines += _table(
            ("#", "verdict", "result", "policy", "recorded", "failed rules"),
            [
                (
                    g["id"],
                    "passed" if g["passed"] else "**failed**",
                    f"`{g['result_sha256'][:12]}…`",
                    f"`{g['policy_sha256'][:12]}…`",
                    f"{g['recorded_at']} by {g['recorded_by']}",
                    ", ".join(str(r) for r in g["failed_rules"]) or None,
                )
                for g in card["gates"]
            ],
        )
    else:
        lines += ["No gate record.", ""]
    if card["approvals"]:
        lines += ["## Approvals", ""]
        lines += _table(
            ("alias", "by", "at", "comment"),
            [
                (a["alias"], a["principal"], a["approved_at"], a["comment"])
                for a in card["approvals"]
            ],
        )
    return "\n".join(lines).rstrip() + "\n"


def _num(x: float | None) -> str | None:
    return None if x is None else f"{x:.4f}"


def write_card(reg: Registry, ref: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``card.md`` and ``card.json`` (indented, sorted keys) for ``ref`` into ``out_dir``
    (created when missing, each file written atomically); returns their paths."""
    card = model_card(reg, ref)
    out = Path(out_dir)
    md = atomic_write_text(out / "card.md", render_card_markdown(card))
    js = atomic_write_text(out / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    return md, js


# -- in-toto and DSSE ----------------------------------------------------------------------


def intoto_statement(reg: Registry, ref: str) -> dict[str, Any]:
    """An in-toto Statement v1 about ``ref``'s weights.

    ``subject``: the weights file (:func:`weights_filename`) with its sha256. ``predicateType``:
    :data:`PREDICATE_TYPE`. ``predicate``: the version (label, tensor hash, registrant), the
    hashes of the spec, threat catalog and data, every attached evaluation (sha256 of the
    result file, its content hash, and headline figures), every gate record (verdict, result,
    baseline and policy hashes, failed rules, sha256 of the canonical gate report), the
    RobustOps version that registered it and the one that wrote the statement, and the key id
    of the registry's audit key."""
    return _statement(_gather(reg, ref), reg.store.key.key_id)


def _statement(b: _Bundle, key_id: str) -> dict[str, Any]:
    v = b.version
    evaluations = [
        {
            "result_sha256": sha,
            "content_sha256": r.content_sha256,
            "name": r.name,
            "created_at": r.created_at,
            "n_samples": r.n_samples,
            "catalog_sha256": r.catalog_sha256,
            "clean_accuracy": r.clean_accuracy,
            "robust_accuracy": {t.name: t.robust_accuracy for t in r.threats},
        }
        for sha, r in b.results
    ]
    gates = [
        {
            "id": g["id"],
            "passed": g["passed"],
            "result_sha256": g["result_sha256"],
            "baseline_sha256": g["baseline_sha256"],
            "policy_sha256": g["policy_sha256"],
            "report_sha256": b.gate_reports.get(g["id"]),
            "failed_rules": g["failed_rules"],
            "recorded_by": g["recorded_by"],
            "recorded_at": g["recorded_at"],
        }
        for g in b.info["gates"]
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": weights_filename(v), "digest": {"sha256": v.weights_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": {
                "label": b.info["version"]["label"],
                "name": v.name,
                "version": v.version,
                "tensor_sha256": v.state_sha256,
                "weights_size": v.weights_size,
                "registered_by": v.registered_by,
                "registered_at": v.registered_at,
                "parents": b.info["parents"],
            },
            "spec_sha256": v.spec_sha256,
            "threat_catalog_sha256": b.catalog.content_hash() if b.catalog else v.catalog_sha256,
            "data_fingerprint": b.data_fingerprint,
            "evaluations": evaluations,
            "gates": gates,
            "robustops_version": v.robustops_version,
            "attested_by": {"robustops_version": __version__, "audit_key_id": key_id},
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what a DSSE signature signs."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def dsse_envelope(statement: dict[str, Any], key: AuditKey) -> dict[str, Any]:
    """``statement`` in a DSSE envelope (``payloadType`` :data:`DSSE_PAYLOAD_TYPE`, base64
    payload of its canonical JSON) with one Ed25519 signature by ``key`` (``keyid``: the key's
    id, the sha256 of its raw public key)."""
    payload = _canonical(statement)
    sig = key.sign(pae(DSSE_PAYLOAD_TYPE, payload))
    return {
        "payloadType": DSSE_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(sig).decode("ascii")}],
    }


def sign_statement(reg: Registry, ref: str) -> dict[str, Any]:
    """:func:`intoto_statement` of ``ref`` in a DSSE envelope signed with the registry's audit
    key (verify it with :func:`verify_dsse` and ``reg.store.key.public_raw``, or the
    ``public_key`` of that key id in the registry's ``audit_keys``)."""
    return dsse_envelope(intoto_statement(reg, ref), reg.store.key)


def verify_dsse(envelope: dict[str, Any], public_key_raw: bytes) -> dict[str, Any]:
    """The in-toto statement inside ``envelope`` once one of its signatures verifies with the
    raw 32-byte Ed25519 ``public_key_raw``; :class:`AttestationError` when the envelope is
    malformed, of another payload type, not an in-toto Statement v1, or no signature verifies."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise AttestationError(f"attestation: not a DSSE envelope ({exc})") from None
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise AttestationError(
            f"attestation: payload type {payload_type!r}, not {DSSE_PAYLOAD_TYPE!r}"
        )
    try:
        public = Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError as exc:
        raise AttestationError(f"attestation: not an Ed25519 public key ({exc})") from None
    message = pae(payload_type, payload)
    for sig in sigs:
        try:
            public.verify(sig, message)
        except InvalidSignature:
            continue
        break
    else:
        raise AttestationError("attestation: no signature verifies with the key given")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise AttestationError("attestation: the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise AttestationError("attestation: the payload is not an in-toto Statement v1")
    return statement


# -- MLflow --------------------------------------------------------------------------------


def _import_mlflow() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RegistryError(
            f"mlflow export: MLflow is not installed; install the extra: pip install "
            f"'{MLFLOW_EXTRA}'"
        ) from None
    return MlflowClient


def _key(*parts: str) -> str:
    return "/".join(_MLFLOW_KEY.sub("_", p) for p in parts)[:250]


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if value is None:
        return
    if isinstance(value, dict) and value:
        for k, val in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), val, out)
        return
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    out[_MLFLOW_KEY.sub("_", prefix)[:250]] = text[:6000]


def _mlflow_params(b: _Bundle) -> dict[str, str]:
    v = b.version
    out: dict[str, str] = {}
    _flat("", {"recipe": v.recipe, "data": b.data or None}, out)
    if b.data_fingerprint:
        out["data.fingerprint"] = b.data_fingerprint
    newest = b.newest
    if newest is not None:
        r = newest[1]
        _flat("eval", {"seed": r.seed, "n_samples": r.n_samples, "tier": r.tier}, out)
        for t in r.threats:
            for a in t.attacks:
                for p, val in a.params.items():
                    _flat(_key("attack", t.name, a.name, p), val, out)
    return out


def _mlflow_metrics(r: SuiteResult) -> dict[str, float]:
    out = {"clean_accuracy": r.clean_accuracy, "n_samples": float(r.n_samples)}
    for t in r.threats:
        out[_key("robust_accuracy", t.name)] = t.robust_accuracy
        out[_key("attack_success", t.name)] = t.attack_success_rate
        if t.calibration is not None:
            out[_key("ece_attacked", t.name)] = t.calibration.attacked.ece
    if r.calibration is not None:
        out["ece_clean"] = r.calibration.clean.ece
    if r.certification is not None:
        for radius, acc in r.certification.certified_accuracy.items():
            out[_key("certified_accuracy", f"r{radius}")] = acc
        out["certified_abstain_rate"] = r.certification.abstain_rate
        out["certified_average_radius"] = r.certification.average_certified_radius
    return out


def _mlflow_tags(b: _Bundle) -> dict[str, str]:
    v = b.version
    newest = b.newest
    threat_models = [t.threat.model_dump(mode="json") for t in newest[1].threats] if newest else []
    gates = [
        {"id": g["id"], "passed": g["passed"], "policy_sha256": g["policy_sha256"]}
        for g in b.info["gates"]
    ]
    tags = {
        "registry_version": b.info["version"]["label"],
        "weights_sha256": v.weights_sha256,
        "weights_file": weights_filename(v),
        "tensor_sha256": v.state_sha256,
        "spec_sha256": v.spec_sha256,
        "catalog_sha256": b.catalog.content_hash() if b.catalog else v.catalog_sha256,
        "data_fingerprint": b.data_fingerprint,
        "threat_models": json.dumps(threat_models, sort_keys=True, separators=(",", ":")),
        "version": v.robustops_version,
        "exporter_version": __version__,
        "git_commit": v.git_commit,
        "gates": json.dumps(gates, sort_keys=True, separators=(",", ":")),
        "gate_passed": None if not gates else str(gates[-1]["passed"]).lower(),
        "result_sha256": newest[0] if newest else None,
        "results": ",".join(sha for sha, _ in b.results) or None,
        "aliases": ",".join(b.info["aliases"]) or None,
        "parent": b.info["parents"][0] if b.info["parents"] else None,
        "registered_by": v.registered_by,
        "registered_at": v.registered_at,
    }
    return {_TAG + k: str(val)[:8000] for k, val in tags.items() if val is not None}


def _stage_artifacts(reg: Registry, b: _Bundle, folder: Path) -> None:
    v = b.version
    arts = reg.store.artifacts
    (folder / "weights").mkdir()
    shutil.copyfile(arts.path(v.weights_sha256), folder / "weights" / weights_filename(v))
    if b.spec_text is not None:
        (folder / "spec").mkdir()
        (folder / "spec" / "spec.yaml").write_text(b.spec_text, encoding="utf-8")
    if b.catalog is not None:
        (folder / "catalog").mkdir()
        (folder / "catalog" / "catalog.json").write_text(b.catalog.canonical_json(), "utf-8")
    if b.results:
        (folder / "results").mkdir()
        for sha, r in b.results:
            shutil.copyfile(arts.path(sha), folder / "results" / f"{r.name}-{sha[:12]}.json")
    card = _card(b)
    (folder / "card").mkdir()
    (folder / "card" / "card.md").write_text(render_card_markdown(card), "utf-8")
    (folder / "card" / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True), "utf-8")
    (folder / "attestation").mkdir()
    statement = _statement(b, reg.store.key.key_id)
    (folder / "attestation" / "statement.intoto.json").write_text(
        json.dumps(statement, indent=2, sort_keys=True), "utf-8"
    )


def _default_artifact_location(tracking_uri: str) -> str | None:
    """``file://<folder of the database>/mlflow-artifacts`` for a ``sqlite:///`` file store
    (MLflow would otherwise use ``./mlruns`` beside whatever the current folder is)."""
    if tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlflow-artifacts").as_uri()
    return None


def export_mlflow(
    reg: Registry,
    ref: str,
    tracking_uri: str,
    *,
    registered_model_name: str | None = None,
    experiment: str = "robustops",
    registry_uri: str | None = None,
    mirror_aliases: bool = True,
    artifact_location: str | None = None,
) -> dict[str, Any]:
    """Write ``ref`` into the MLflow tracking store and model registry at ``tracking_uri``
    (``registry_uri`` defaults to it). See the module docstring for what the run holds.

    The registered model is ``registered_model_name`` (default: the RobustOps model name). A
    version already exported (same registry label and weights hash in its tags) is not
    exported twice: its aliases are re-synchronised and it is returned with ``created``
    False. With ``mirror_aliases`` every RobustOps alias holding the version is set on the
    MLflow version too (MLflow's reserved ``latest`` and ``vN`` names are skipped).
    ``artifact_location`` is the experiment's artifact root when it is created (default for a
    ``sqlite:///DB`` store: ``mlflow-artifacts`` beside the database file).

    Returns ``{run_id, experiment_id, registered_model, model_version, source, aliases,
    skipped_aliases, created}``. :class:`RegistryError` when MLflow is not installed (the
    extra :data:`MLFLOW_EXTRA`) or refuses the export.
    """
    client_cls = _import_mlflow()
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    b = _gather(reg, ref)
    v = b.version
    model = registered_model_name or v.name
    if not model or any(c in model for c in "'\"\\"):
        raise RegistryError(f"mlflow export: {model!r} is not a usable registered model name")
    tags = _mlflow_tags(b)
    try:
        client = client_cls(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
        existing = None
        if client.search_registered_models(filter_string=f"name='{model}'"):
            for mv in client.search_model_versions(f"name='{model}'"):
                if (
                    mv.tags.get(_TAG + "registry_version") == tags[_TAG + "registry_version"]
                    and mv.tags.get(_TAG + "weights_sha256") == v.weights_sha256
                ):
                    existing = mv
                    break
        else:
            client.create_registered_model(
                model,
                tags={_TAG + "model": v.name},
                description=f"Exported from the RobustOps registry ({v.name}).",
            )
        if existing is None:
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                exp_id = exp.experiment_id
            else:
                location = artifact_location or _default_artifact_location(tracking_uri)
                exp_id = client.create_experiment(experiment, artifact_location=location)
            run_tags = dict(tags)
            if v.description:
                run_tags["mlflow.note.content"] = v.description
            if v.git_commit:
                run_tags["mlflow.source.git.commit"] = v.git_commit.removesuffix("+dirty")
            run = client.create_run(exp_id, run_name=tags[_TAG + "registry_version"], tags=run_tags)
            run_id = run.info.run_id
            params = [Param(k, val) for k, val in sorted(_mlflow_params(b).items())]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])
            now = int(time.time() * 1000)
            metrics = [
                Metric(k, float(val), now, step)
                for step, (_, r) in enumerate(b.results)
                for k, val in sorted(_mlflow_metrics(r).items())
            ]
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i : i + 1000])
            with tempfile.TemporaryDirectory(prefix="robustops-mlflow-") as tmp:
                _stage_artifacts(reg, b, Path(tmp))
                client.log_artifacts(run_id, tmp)
            client.set_terminated(run_id, "FINISHED")
            source = f"{run.info.artifact_uri}/weights"
            mv = client.create_model_version(
                model, source=source, run_id=run_id, tags=tags, description=v.description or None
            )
        else:
            mv = existing
            run_id = mv.run_id
            exp_id = client.get_run(run_id).info.experiment_id
            source = mv.source
        aliases, skipped = [], []
        if mirror_aliases:
            for alias in b.info["aliases"]:
                if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
                    skipped.append(alias)
                    continue
                client.set_registered_model_alias(model, alias, mv.version)
                aliases.append(alias)
    except MlflowException as exc:
        raise RegistryError(f"mlflow export: {exc.message}") from None
    return {
        "run_id": run_id,
        "experiment_id": exp_id,
        "registered_model": model,
        "model_version": str(mv.version),
        "source": source,
        "aliases": aliases,
        "skipped_aliases": skipped,
        "created": existing is None,
    }
