"""Vulnerability records on a real registry with a really trained (tiny) model: the lifecycle
and its refusals, records opened by a failing gate (one per threat, never a duplicate), a
critical record blocking promotion until mitigated, replaying the recorded attack, the CLI, and
every change in the verified audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from robustops.cli import app
from robustops.config import load_spec
from robustops.evaluation import SuiteResult
from robustops.gate import evaluate_gate, load_policy
from robustops.models import build_model, save_weights
from robustops.registry.models import VulnerabilityNote
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError
from robustops.registry.vulnerabilities import (
    check_transition,
    list_vulnerabilities,
    open_vulnerability,
    replay_inputs,
    show_vulnerability,
    update_vulnerability,
)
from robustops.runner import evaluate_spec, registration_inputs, replay_attack, train_spec
from spec_helpers import digits_mlp

SPEC: dict[str, Any] = digits_mlp(
    "digits-mlp",
    catalog={
        "entries": [
            {  # 4 × 5 = 20: critical
                "id": "digit-evasion",
                "title": "bounded pixel changes",
                "component": "model",
                "channel": "image",
                "perturbation": "linf",
                "likelihood": 4,
                "impact": 5,
                "owner": "ml-team",
                "exercised_by": ["linf"],
            },
            {  # 2 × 3 = 6: medium
                "id": "digit-l2",
                "title": "small l2 changes",
                "component": "model",
                "channel": "image",
                "perturbation": "l2",
                "likelihood": 2,
                "impact": 3,
                "owner": "vision",
                "exercised_by": ["l2"],
            },
        ]
    },
    evaluation={
        "n_samples": 60,
        "batch_size": 25,
        "calibration": {"enabled": False},
        "threats": [
            {
                "name": "linf",
                "epsilon": 0.15,
                "attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 10}],
            },
            {"name": "l2", "norm": "l2", "epsilon": 0.5, "attacks": [{"name": "pgd", "steps": 10}]},
        ],
    },
)


@dataclass(frozen=True)
class Trained:
    """A trained model, a second version of it, and their real results."""

    spec: Path
    weights: Path
    result: Path
    spec2: Path
    weights2: Path
    result2: Path
    strict: Path  # a policy every threat fails
    lenient: Path  # a policy the model passes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    spec = load_spec(spec_path)
    train_spec(spec)
    evaluate_spec(spec).save(root / "result.json")
    # A second version: the same network, slightly perturbed, evaluated for real.
    model = build_model("robustops.models:mlp", SPEC["model"]["kwargs"], root / "w/mlp.safetensors")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    save_weights(model, root / "w/mlp2.safetensors")
    spec2 = json.loads(json.dumps(SPEC))
    spec2["model"]["weights"] = "w/mlp2.safetensors"
    del spec2["train"]
    spec2_path = root / "spec2.yaml"
    spec2_path.write_text(yaml.safe_dump(spec2))
    evaluate_spec(load_spec(spec2_path)).save(root / "result2.json")
    strict, lenient = root / "strict.yaml", root / "lenient.yaml"
    strict.write_text(yaml.safe_dump({"min_robust_accuracy": {"*": 0.95}}))
    lenient.write_text(yaml.safe_dump({"min_robust_accuracy": {"*": 0.05}}))
    return Trained(
        spec_path,
        root / "w/mlp.safetensors",
        root / "result.json",
        spec2_path,
        root / "w/mlp2.safetensors",
        root / "result2.json",
        strict,
        lenient,
    )


@pytest.fixture
def reg(tmp_path: Path, trained: Trained) -> Any:
    r = Registry.open(tmp_path / "reg")
    r.add_principal("alice", "alice", "admin")
    r.add_principal("alice", "eve", "engineer")
    r.add_principal("alice", "bob", "approver")
    r.add_principal("alice", "vic", "viewer")
    side, text, catalog = registration_inputs(trained.weights, trained.spec)
    r.register(
        "eve", "digits", trained.weights, sidecar=side, spec_text=text, catalog=catalog,
        results=[trained.result],
    )  # fmt: skip
    yield r
    r.close()


def _gate(reg: Registry, result: Path, policy: Path, actor: str = "eve") -> Any:
    report = evaluate_gate(SuiteResult.load(result), None, load_policy(policy))
    return reg.record_gate(actor, report.model_dump(mode="json"), result=result)


def _register_v2(reg: Registry, trained: Trained) -> None:
    _, text, catalog = registration_inputs(trained.weights2, trained.spec2)
    reg.register(
        "eve", "digits", trained.weights2, spec_text=text, catalog=catalog, parent="digits@1"
    )


def _vuln_events(reg: Registry) -> list[Any]:
    return [e for e in reg.audit_events() if e.action.startswith("vuln-")]


def _strongest(result: SuiteResult, threat: str) -> tuple[str, dict[str, Any], list[int]]:
    t = result.threat(threat)
    counts = [(sum(1 for b in t.broken_by if b == a.name), -k) for k, a in enumerate(t.attacks)]
    k = -max(counts)[1]
    a = t.attacks[k]
    idx = result.samples.indices
    return a.name, a.params, [idx[i] for i, b in enumerate(t.broken_by) if b == a.name]


def test_a_failing_gate_opens_one_record_per_threat_and_never_a_duplicate(
    reg: Registry, trained: Trained
) -> None:
    res = SuiteResult.load(trained.result)
    assert all(t.robust_accuracy < 0.95 for t in res.threats)  # the strict policy fails both
    g = _gate(reg, trained.result, trained.strict)
    assert not g.passed
    linf, l2 = list_vulnerabilities(reg, notes=True)
    assert (linf.id, l2.id) == ("RVULN-0001", "RVULN-0002")
    assert (linf.threat, linf.catalog_entry, linf.severity, linf.owner) == (
        "linf",
        "digit-evasion",
        "critical",  # the entry's risk 20 is critical
        "ml-team",
    )
    assert (l2.threat, l2.catalog_entry, l2.severity, l2.owner) == (
        "l2",
        "digit-l2",
        "medium",
        "vision",
    )
    assert linf.status == "open" and linf.affected == ["digits@1"] and linf.closed_at is None
    # Evidence: the result's hash and figures, every broken sample of the threat.
    t = res.threat("linf")
    ev = linf.evidence
    assert ev["result_sha256"] == g.result_sha256 and ev["gate_record"] == g.id
    assert ev["robust_accuracy"] == t.robust_accuracy
    assert ev["attack_success_rate"] == t.attack_success_rate
    assert ev["broken_indices"] == [
        res.samples.indices[i] for i, b in enumerate(t.broken_by) if b is not None
    ]
    assert ev["n_broken"] == len(ev["broken_indices"]) > 0
    assert [r["rule"] for r in ev["failed_rules"]] == ["min_robust_accuracy[linf]"]
    # Reproduce: the attack that broke most, its exact parameters, the threat, the seed.
    name, params, indices = _strongest(res, "linf")
    rp = linf.reproduce
    assert (rp["attack"], rp["params"], rp["indices"]) == (name, params, indices)
    assert rp["threat"] == t.threat.model_dump(mode="json") and rp["seed"] == res.seed
    assert rp["result_sha256"] == g.result_sha256 and rp["version"] == "digits@1"
    assert rp["data_fingerprint"] == res.data["fingerprint"]
    assert [n["changes"]["origin"] for n in linf.notes] == ["gate"]
    events = _vuln_events(reg)
    assert [(e.action, e.subject) for e in events] == [
        ("vuln-open", "RVULN-0001"),
        ("vuln-open", "RVULN-0002"),
    ]
    gate_event = next(e for e in reg.audit_events() if e.action == "gate")
    assert gate_event.seq < events[0].seq  # in the gate's own transaction, after it

    # The same failure again: no duplicate, a note on each record.
    _gate(reg, trained.result, trained.strict)
    assert [r.id for r in list_vulnerabilities(reg)] == ["RVULN-0001", "RVULN-0002"]
    assert [n["changes"]["affects"] for n in show_vulnerability(reg, "RVULN-0001").notes[1:]] == [
        []
    ]
    # A new version failing the same way joins the open records as an affected version.
    _register_v2(reg, trained)
    _gate(reg, trained.result2, trained.strict)
    assert [r.id for r in list_vulnerabilities(reg)] == ["RVULN-0001", "RVULN-0002"]
    rec = show_vulnerability(reg, "RVULN-0001")
    assert rec.affected == ["digits@1", "digits@2"]
    assert rec.notes[-1]["changes"]["affects"] == ["digits@2"]
    assert [r.id for r in list_vulnerabilities(reg, version="digits@2")] == [
        "RVULN-0001",
        "RVULN-0002",
    ]
    # Once mitigated, a new failure of that threat is a new record.
    update_vulnerability(reg, "eve", "RVULN-0002", status="triaged")
    update_vulnerability(reg, "eve", "RVULN-0002", status="mitigated", remediation="adv. training")
    _gate(reg, trained.result2, trained.strict)
    ids = [(r.id, r.threat, r.affected) for r in list_vulnerabilities(reg)]
    assert ids == [
        ("RVULN-0001", "linf", ["digits@1", "digits@2"]),
        ("RVULN-0002", "l2", ["digits@1", "digits@2"]),
        ("RVULN-0003", "l2", ["digits@2"]),
    ]
    # A passing gate opens nothing.
    _gate(reg, trained.result2, trained.lenient)
    assert len(list_vulnerabilities(reg)) == 3
    with reg.store.read() as s:
        assert s.query(VulnerabilityNote).count() == len(_vuln_events(reg))
    assert reg.verify_audit(full=True).ok


def test_lifecycle_moves_one_step_at_a_time_and_refusals_name_the_field(
    reg: Registry, trained: Trained
) -> None:
    rec = open_vulnerability(
        reg, "eve", "digits@1", threat="linf", title="FGSM flips digits", severity="high"
    )
    assert rec.id == "RVULN-0001" and rec.status == "open" and rec.severity == "high"
    # Defaults from the catalog and the newest evaluation that ran the threat.
    assert rec.catalog_entry == "digit-evasion" and rec.owner == "ml-team" and rec.replayable
    res = SuiteResult.load(trained.result)
    assert rec.reproduce["attack"] == _strongest(res, "linf")[0]

    def refused(field: str, **kw: Any) -> str:
        actor = kw.pop("actor", "eve")
        with pytest.raises(RegistryError) as info:
            update_vulnerability(reg, actor, "RVULN-0001", **kw)
        assert str(info.value).startswith(f"{field}:"), info.value
        return str(info.value)

    assert "skips triaged" in refused("status", status="mitigated")
    assert "skips triaged, mitigated, verified" in refused("status", status="closed", actor="bob")
    refused("status", status="done")
    refused("severity", severity="urgent")
    refused("update")  # nothing to change
    refused("principal", actor="vic", owner="someone")  # a viewer changes nothing
    assert "not found" in refused("affects", affects=["other@1"])  # unknown version
    reg.register("eve", "other", trained.weights2)
    assert "a version of 'other'" in refused("affects", affects=["other@1"])
    rec = update_vulnerability(reg, "eve", "RVULN-0001", status="triaged", owner="eve")
    assert (rec.status, rec.owner) == ("triaged", "eve")
    assert "remediation" in refused("remediation", status="mitigated")
    rec = update_vulnerability(
        reg, "eve", "RVULN-0001", status="mitigated", remediation="PGD adversarial training"
    )
    assert rec.status == "mitigated" and rec.remediation == "PGD adversarial training"
    assert "goes back" in refused("status", status="triaged")
    assert "approver" in refused("principal", status="verified")  # verified needs an approver
    rec = update_vulnerability(reg, "bob", "RVULN-0001", status="verified", comment="replayed")
    rec = update_vulnerability(reg, "bob", "RVULN-0001", status="closed", severity="medium")
    assert rec.status == "closed" and rec.closed_at is not None and rec.severity == "medium"
    assert rec.updated_at == rec.closed_at
    rec = update_vulnerability(reg, "eve", "RVULN-0001", status="open", comment="it came back")
    assert rec.status == "open" and rec.closed_at is None
    # Every change is a note, in order, and an audit event with the same content.
    changes = [n["changes"] for n in rec.notes]
    assert [c.get("status") for c in changes] == [
        None,
        ["open", "triaged"],
        ["triaged", "mitigated"],
        ["mitigated", "verified"],
        ["verified", "closed"],
        ["closed", "open"],
    ]
    assert changes[3]["comment"] == "replayed" and changes[4]["severity"] == ["high", "medium"]
    assert changes[5]["closed_at"][1] is None
    events = _vuln_events(reg)
    assert [json.loads(e.payload) for e in events] == changes
    assert [e.actor for e in events] == [n["actor"] for n in rec.notes]
    assert reg.verify_audit(full=True).ok

    # Opening: each field is checked.
    def refused_open(field: str, **kw: Any) -> None:
        args = {"threat": "linf", "title": "t", "severity": "low"} | kw
        actor = args.pop("actor", "eve")
        ref = args.pop("ref", "digits@1")
        with pytest.raises(RegistryError) as info:
            open_vulnerability(reg, actor, ref, **args)
        assert str(info.value).startswith(f"{field}:"), info.value

    refused_open("severity", severity="severe")
    refused_open("title", title="  ")
    refused_open("catalog_entry", catalog_entry="no-such-entry")
    refused_open("principal", actor="vic")
    refused_open("version", ref="digits@9")
    refused_open("result", result_sha256="0" * 64)
    # A finding outside the evaluation can be recorded, but has nothing to replay.
    other = open_vulnerability(
        reg, "eve", "digits@1", threat="rotation", title="tilted digits", severity="low"
    )
    assert not other.replayable and other.catalog_entry is None and other.owner == "eve"
    with pytest.raises(RegistryError, match=r"^reproduce:"):
        replay_inputs(reg, other.id)
    # Filters.
    assert [r.id for r in list_vulnerabilities(reg, status="open", severity="low")] == [other.id]
    assert [r.id for r in list_vulnerabilities(reg, severity=["medium", "low"])] == [
        "RVULN-0001",
        other.id,
    ]
    assert list_vulnerabilities(reg, model="nope") == []
    with pytest.raises(RegistryError, match=r"^status:"):
        list_vulnerabilities(reg, status="gone")
    with pytest.raises(RegistryError, match=r"^id:"):
        show_vulnerability(reg, "RVULN-0099")
    with pytest.raises(RegistryError, match=r"^id:"):
        show_vulnerability(reg, "CVE-1")
    check_transition("verified", "open")  # reopening is allowed from anywhere


def test_an_open_critical_vulnerability_blocks_promotion_until_mitigated(
    reg: Registry, trained: Trained
) -> None:
    reg.set_policy(
        "alice", "digits", "production", load_policy(trained.lenient).model_dump(mode="json")
    )
    assert _gate(reg, trained.result, trained.lenient).passed
    reg.approve("bob", "digits@1", "production")
    # A stricter gate (another policy) fails and opens a critical record for linf.
    _gate(reg, trained.result, trained.strict)
    crit = [r for r in list_vulnerabilities(reg) if r.severity == "critical"]
    assert [r.id for r in crit] == ["RVULN-0001"]
    with pytest.raises(RegistryError, match="open critical vulnerabilities: RVULN-0001"):
        reg.move_alias("eve", "digits@1", "production")
    update_vulnerability(reg, "eve", "RVULN-0001", status="triaged")
    with pytest.raises(RegistryError, match="RVULN-0001"):
        reg.move_alias("eve", "digits@1", "production")
    assert reg.aliases("digits") == {}
    update_vulnerability(reg, "eve", "RVULN-0001", status="mitigated", remediation="retrained")
    ev = reg.move_alias("eve", "digits@1", "production")
    assert ev.kind == "promote" and reg.aliases("digits")["production"].version == 1
    update_vulnerability(reg, "bob", "RVULN-0001", status="verified")
    reg.move_alias("eve", "digits@1", "production")  # verified does not block either
    update_vulnerability(reg, "eve", "RVULN-0001", status="open", comment="regressed")
    with pytest.raises(RegistryError, match="RVULN-0001"):
        reg.move_alias("eve", "digits@1", "production")
    assert reg.verify_audit(full=True).ok


def test_replay_reruns_the_recorded_attack_on_the_recorded_samples(
    reg: Registry, trained: Trained, tmp_path: Path
) -> None:
    _gate(reg, trained.result, trained.strict)
    home = str(reg.store.home)
    runner = CliRunner()
    out = runner.invoke(app, ["registry", "vuln", "replay", "RVULN-0001", "--json", "--home", home])
    assert out.exit_code == 0, out.output
    outcome = json.loads(out.output)
    rec = show_vulnerability(reg, "RVULN-0001")
    assert outcome["version"] == "digits@1" and outcome["attack"] == rec.reproduce["attack"]
    assert outcome["n_samples"] == rec.reproduce["expected_broken"] > 0
    assert outcome["broken_indices"] == rec.reproduce["indices"] and outcome["reproduced"]
    # The same through the runner, with the spec given and the weights from the store.
    inputs = replay_inputs(reg, "RVULN-0002")
    assert inputs.weights_path.read_bytes() == trained.weights.read_bytes()
    again = replay_attack(trained.spec, inputs.weights_path, inputs.record.reproduce)
    assert again["reproduced"] and again["broken_indices"] == inputs.record.reproduce["indices"]
    # The check is real: with a budget too small to flip anything nothing breaks.
    weak = json.loads(json.dumps(inputs.record.reproduce))
    weak["threat"]["epsilon"] = 1e-6
    nothing = replay_attack(trained.spec, inputs.weights_path, weak)
    assert nothing["n_broken"] == 0 and not nothing["reproduced"]
    assert nothing["not_broken_indices"] == weak["indices"]
    # Another data set than the recorded one is refused.
    other = json.loads(json.dumps(inputs.record.reproduce)) | {"data_fingerprint": "0" * 64}
    with pytest.raises(Exception, match="fingerprint"):
        replay_attack(trained.spec, inputs.weights_path, other)
    # On another version, with the outcome kept as a note (and an audit event).
    _register_v2(reg, trained)
    kept = runner.invoke(
        app,
        [
            *["registry", "vuln", "replay", "RVULN-0001", "--on", "digits@2", "--record"],
            *["--spec", str(trained.spec2), "--home", home, "--as", "eve"],
        ],
    )
    assert kept.exit_code == 0, kept.output
    assert "RVULN-0001 on digits@2" in kept.output
    note = show_vulnerability(reg, "RVULN-0001").notes[-1]["changes"]["replay"]
    assert note["version"] == "digits@2" and note["n_samples"] == outcome["n_samples"]
    assert _vuln_events(reg)[-1].action == "vuln-replay"
    assert reg.verify_audit(full=True).ok


def test_cli_opens_lists_shows_and_updates(reg: Registry, trained: Trained) -> None:
    home = ["--home", str(reg.store.home)]
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        out = runner.invoke(app, ["registry", "vuln", *args, *home])
        assert out.exit_code == code, out.output
        return out.output

    opened = run(
        "open", "digits@1", "--threat", "l2", "--title", "L2 PGD flips digits",
        "--severity", "critical", "--as", "eve",
    )  # fmt: skip
    assert "RVULN-0001" in opened and "replayable" in opened
    assert "status: open → verified skips triaged, mitigated" in run(
        "update", "RVULN-0001", "--status", "verified", "--as", "bob", code=2
    )
    assert "severity" in run("open", "digits@1", "--threat", "l2", "--title", "x",
                             "--severity", "huge", "--as", "eve", code=2)  # fmt: skip
    run("update", "RVULN-0001", "--status", "triaged", "--owner", "vision", "--as", "eve")
    listed = json.loads(run("list", "--status", "triaged", "--json"))
    assert [(r["id"], r["owner"], r["severity"]) for r in listed] == [
        ("RVULN-0001", "vision", "critical")
    ]
    assert json.loads(run("list", "--status", "open", "--json")) == []
    assert "RVULN-0001" in run("list", "--model", "digits", "--severity", "critical")
    shown = run("show", "RVULN-0001")
    assert "L2 PGD flips digits" in shown and "triaged" in shown and "reproduce" in shown
    data = json.loads(run("show", "RVULN-0001", "--json"))
    assert data["affected"] == ["digits@1"] and len(data["notes"]) == 2
    assert "no vulnerability" in run("show", "RVULN-0042", code=2)
    assert reg.verify_audit(full=True).ok
