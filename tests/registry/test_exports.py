"""Exports of a registered version: MLflow (a real local sqlite-backed store, read back with
MlflowClient), the model card (figures with Wilson intervals, catalog, vulnerabilities,
lineage, gates), the in-toto statement and its DSSE envelope, and the CLI commands."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustops.config import load_spec
from robustops.evaluation.result import content_hash
from robustops.registry.exports import (
    CARD_SCHEMA,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    AttestationError,
    export_mlflow,
    intoto_statement,
    model_card,
    render_card_markdown,
    sign_statement,
    verify_dsse,
    write_card,
)
from robustops.registry.models import (
    GateRecord,
    Vulnerability,
    VulnerabilityVersion,
)
from robustops.registry.service import Registry, label

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "baselines" / "mnist.json"
SPEC = ROOT / "configs" / "mnist.yaml"
DESCRIPTION = "Digit classifier of the RobustOps demo; research use, not production traffic."

# The training run's sidecar of mnist@1 (what `robustops train` writes beside the weights).
SIDECAR: dict[str, Any] = {
    "recipe": "pgd-at",
    "train": {"epochs": 3, "lr": 0.01},
    "seed": 7,
    "data": {"name": "mnist_subset", "fingerprint": "f" * 64, "split_seed": 0},
    "final": {"val_accuracy": 0.95},
}

# A small, internally consistent randomized-smoothing certification: 10 samples, 7 certified
# correct (radii 0.1 … 0.7), 1 abstention, 2 wrong.
CERTIFICATION: dict[str, Any] = {
    "sigma": 0.25,
    "n0": 10,
    "n": 100,
    "alpha": 0.001,
    "batch_size": 100,
    "seed": 0,
    "num_classes": 10,
    "device": "cpu",
    "n_samples": 10,
    "labels": list(range(10)),
    "predictions": [0, 1, 2, 3, 4, 5, 6, -1, 9, 0],
    "radii": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.0, 0.2, 0.3],
    "correct": [True] * 7 + [False] * 3,
    "abstain_rate": 0.1,
    "clean_accuracy": 0.7,
    "certified_accuracy": {"0.0": 0.7, "0.25": 0.5, "0.5": 0.3},
    "average_certified_radius": 0.28,
    "max_certifiable_radius": 0.5,
    "wall_time_s": 1.0,
    "samples_per_second": 1100.0,
}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_weights(path: Path, value: float) -> Path:
    save_file({"w": torch.full((4,), value), "b": torch.zeros(2)}, str(path))
    return path


def write_result(weights: Path, out: Path, *, certification: dict[str, Any] | None = None) -> Path:
    """baselines/mnist.json about ``weights`` (and with a certification), re-sealed."""
    data = json.loads(BASELINE.read_text())
    data["model"]["weights_sha256"] = sha256_file(weights)
    if certification is not None:
        data["certification"] = certification
    data["content_sha256"] = content_hash(data)
    out.write_text(json.dumps(data, indent=1))
    return out


def add_gate(reg: Registry, ref: str, result: Path, passed: bool, failed: list[str]) -> int:
    """A gate record on ``result`` for ``ref`` (written directly: the test is about exports,
    not about how the gate runs)."""
    rsha = reg.store.artifacts.put_file(result)[0]
    policy = reg.store.artifacts.put_bytes(b'{"rules":[]}')
    report = {
        "passed": passed,
        "rules": [{"rule": r, "status": "fail"} for r in failed]
        + [{"rule": "clean-accuracy", "status": "pass"}],
    }
    with reg.store.write("bob") as tx:
        v = reg.version_in(tx.session, ref)
        g = GateRecord(
            version_id=v.id,
            weights_sha256=v.weights_sha256,
            result_sha256=rsha,
            baseline_sha256=None,
            policy_sha256=policy,
            passed=passed,
            report=report,
            recorded_by="bob",
            recorded_at=tx.at,
        )
        tx.session.add(g)
        tx.session.flush()
        tx.log("gate", label(v), {"gate_record": g.id, "passed": passed})
        return g.id


def add_vulnerability(reg: Registry, ref: str) -> None:
    with reg.store.write("alice") as tx:
        v = reg.version_in(tx.session, ref)
        tx.session.add(
            Vulnerability(
                id="RVULN-0001",
                title="Patch sticker flips digits",
                model_name=v.name,
                catalog_entry="img-patch-sticker",
                threat="patch-6",
                reproduce={},
                evidence={},
                severity="high",
                owner="alice",
                status="triaged",
                remediation="",
                opened_by="alice",
                opened_at=tx.at,
                updated_at=tx.at,
                closed_at=None,
            )
        )
        tx.session.flush()
        tx.session.add(VulnerabilityVersion(vulnerability_id="RVULN-0001", version_id=v.id))
        tx.log("vuln", "RVULN-0001", {"version": label(v)})


def build_registry(home: Path, work: Path) -> Registry:
    """mnist@1 (result r1, failed gate) ← mnist@2 (result r2 with a certification, passed gate,
    production + candidate, a vulnerability) ← mnist@3; and mnist@4, another child of @1."""
    work.mkdir(parents=True, exist_ok=True)
    reg = Registry.open(home)
    reg.add_principal("alice", "alice", "admin")
    reg.add_principal("alice", "bob", "engineer")
    spec_text, catalog = SPEC.read_text(), load_spec(SPEC).catalog
    w1 = write_weights(work / "w1.safetensors", 1.0)
    r1 = write_result(w1, work / "r1.json")
    reg.register(
        "bob", "mnist", w1, spec_text=spec_text, catalog=catalog, results=[r1],
        description=DESCRIPTION, sidecar=SIDECAR,
    )  # fmt: skip
    w2 = write_weights(work / "w2.safetensors", 2.0)
    r2 = write_result(w2, work / "r2.json", certification=CERTIFICATION)
    reg.register(
        "bob", "mnist", w2, spec_text=spec_text, catalog=catalog, parent="mnist@1", results=[r2]
    )
    add_gate(reg, "mnist@1", r1, False, ["robust-accuracy"])
    add_gate(reg, "mnist@2", r2, True, [])
    add_vulnerability(reg, "mnist@2")
    reg.move_alias("alice", "mnist@2", "production", break_glass="exports test")
    reg.move_alias("bob", "mnist@2", "candidate")
    reg.register("bob", "mnist", write_weights(work / "w3.safetensors", 3.0), parent="mnist@2")
    reg.register("bob", "mnist", write_weights(work / "w4.safetensors", 4.0), parent="mnist@1")
    return reg


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    root = tmp_path_factory.mktemp("exports")
    reg = build_registry(root / "reg", root / "work")
    yield reg, root
    reg.close()


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval from its formula (independent of scipy)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# -- model card ----------------------------------------------------------------------------


def test_card_figures_carry_wilson_intervals(built: tuple[Registry, Path]) -> None:
    reg, _ = built
    card = model_card(reg, "mnist:production")
    assert card["schema"] == CARD_SCHEMA
    assert card["model"]["label"] == "mnist@2"
    (ev,) = card["evaluations"]
    clean = ev["clean_accuracy"]
    assert (clean["k"], clean["n"]) == (477, 500)
    assert clean["ci95"] == pytest.approx(wilson(477, 500), abs=1e-9)
    l2 = next(t for t in ev["threats"] if t["name"] == "l2-2.0")
    assert (l2["robust_accuracy"]["k"], l2["robust_accuracy"]["n"]) == (76, 500)
    assert l2["robust_accuracy"]["ci95"] == pytest.approx(wilson(76, 500), abs=1e-9)
    assert l2["attack_success"]["n"] == 477
    # 0 of 500: the interval is [0, 0.0076…], not a degenerate point
    linf = next(t for t in ev["threats"] if t["name"] == "linf-0.3")
    assert linf["robust_accuracy"]["ci95"][0] == pytest.approx(0.0, abs=1e-12)
    assert linf["robust_accuracy"]["ci95"][1] == pytest.approx(wilson(0, 500)[1], abs=1e-9)
    assert ev["calibration"]["ece_clean"] == pytest.approx(0.01927261359186903)
    assert l2["ece_attacked"] == pytest.approx(0.4985422024332779)
    cert = {c["radius"]: c for c in ev["certification"]["certified_accuracy"]}
    assert (cert[0.25]["k"], cert[0.25]["n"]) == (5, 10)
    assert cert[0.25]["ci95"] == pytest.approx(wilson(5, 10), abs=1e-9)

    md = render_card_markdown(card)
    lo, hi = wilson(76, 500)
    assert f"0.152 [{lo:.3f}, {hi:.3f}] (76/500)" in md
    lo, hi = wilson(477, 500)
    assert f"0.954 [{lo:.3f}, {hi:.3f}] (477/500)" in md
    lo, hi = wilson(3, 10)
    assert f"0.300 [{lo:.3f}, {hi:.3f}] (3/10)" in md  # certified at radius 0.5


def test_card_sections(built: tuple[Registry, Path]) -> None:
    reg, _ = built
    card = model_card(reg, "mnist@2")
    # intended use: the description when there is one, else the spec's name
    assert model_card(reg, "mnist@1")["intended_use"]["text"] == DESCRIPTION
    assert "mnist-small-cnn" in card["intended_use"]["text"]
    assert card["data"]["name"] == "mnist_subset"
    assert card["data"]["evaluated_split"] == "test"
    assert card["data"]["split"] == {"split_seed": 0, "test_fraction": 0.2, "n_train": 4000,
                                     "n_test": 1000}  # fmt: skip
    cat = card["threat_catalog"]
    assert cat["sha256"] == "521ed0388d4ce2dc237462d32a9465ececb66e5dfab7fd07538f1e963bef2f2c"
    entries = {e["id"]: e for e in cat["entries"]}
    assert entries["img-evasion-linf"]["risk"] == 16 and entries["img-evasion-linf"]["covered"]
    assert entries["img-patch-sticker"]["likelihood"] == 2
    assert entries["img-evasion-l2"]["robust_accuracy"] == pytest.approx(0.152)
    assert card["vulnerabilities"] == [
        {
            "id": "RVULN-0001",
            "title": "Patch sticker flips digits",
            "severity": "high",
            "status": "triaged",
            "catalog_entry": "img-patch-sticker",
            "threat": "patch-6",
            "owner": "alice",
            "opened_at": card["vulnerabilities"][0]["opened_at"],
            "closed_at": None,
        }
    ]
    assert card["lineage"] == {"parents": ["mnist@1"], "children": ["mnist@3"]}
    assert [g["passed"] for g in card["gates"]] == [True]
    assert model_card(reg, "mnist@1")["gates"][0]["failed_rules"] == ["robust-accuracy"]
    assert card["model"]["aliases"] == ["candidate", "production"]
    md = render_card_markdown(card)
    for text in (
        "# Model card: mnist@2",
        "## Intended use",
        "| img-patch-sticker | A physical sticker",
        "RVULN-0001",
        "parents (nearest first): mnist@1",
        "Certified (randomized smoothing",
        "## Gate records",
    ):
        assert text in md
    # a version without results or catalog still renders
    bare = render_card_markdown(model_card(reg, "mnist@3"))
    assert "No evaluation is attached" in bare and "No threat catalog" in bare


def test_write_card_is_deterministic(built: tuple[Registry, Path], tmp_path: Path) -> None:
    reg, _ = built
    md, js = write_card(reg, "mnist@2", tmp_path / "a")
    md2, js2 = write_card(reg, "mnist@2", tmp_path / "b")
    assert md.read_bytes() == md2.read_bytes() and js.read_bytes() == js2.read_bytes()
    assert json.loads(js.read_text()) == model_card(reg, "mnist@2")


# -- in-toto -------------------------------------------------------------------------------


def test_intoto_statement_binds_the_registry_hashes(built: tuple[Registry, Path]) -> None:
    reg, root = built
    st = intoto_statement(reg, "mnist@2")
    v = reg.get("mnist@2")
    assert st["_type"] == STATEMENT_TYPE and st["predicateType"] == PREDICATE_TYPE
    (subject,) = st["subject"]
    assert subject == {
        "name": "w2.safetensors",
        "digest": {"sha256": sha256_file(root / "work" / "w2.safetensors")},
    }
    assert subject["digest"]["sha256"] == v.weights_sha256
    p = st["predicate"]
    (ev,) = p["evaluations"]
    assert ev["result_sha256"] == sha256_file(root / "work" / "r2.json")
    assert ev["result_sha256"] == reg.evaluations("mnist@2")[0].result_sha256
    assert (
        ev["content_sha256"]
        == json.loads((root / "work" / "r2.json").read_text())["content_sha256"]
    )
    (gate,) = p["gates"]
    assert gate["passed"] and gate["result_sha256"] == ev["result_sha256"]
    assert len(gate["report_sha256"]) == 64
    assert p["spec_sha256"] == v.spec_sha256 == hashlib.sha256(SPEC.read_bytes()).hexdigest()
    assert p["threat_catalog_sha256"] == v.catalog_sha256
    assert p["robustops_version"] == v.robustops_version
    assert p["attested_by"]["audit_key_id"] == reg.store.key.key_id
    json.dumps(st)  # JSON-ready


def test_dsse_envelope_verifies_and_detects_tampering(built: tuple[Registry, Path]) -> None:
    reg, _ = built
    env = sign_statement(reg, "mnist@2")
    public = reg.store.key.public_raw
    assert env["signatures"][0]["keyid"] == reg.store.key.key_id
    assert verify_dsse(env, public) == intoto_statement(reg, "mnist@2")

    forged = json.loads(base64.b64decode(env["payload"]))
    forged["subject"][0]["digest"]["sha256"] = "0" * 64
    tampered = dict(env, payload=base64.b64encode(json.dumps(forged).encode()).decode())
    with pytest.raises(AttestationError, match="no signature verifies"):
        verify_dsse(tampered, public)
    with pytest.raises(AttestationError, match="payload type"):
        verify_dsse(dict(env, payloadType="application/json"), public)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    bad_sig = dict(env, signatures=[{"keyid": "x", "sig": base64.b64encode(sig).decode()}])
    with pytest.raises(AttestationError):
        verify_dsse(bad_sig, public)
    from robustops.registry.audit import AuditKey

    with pytest.raises(AttestationError):
        verify_dsse(env, AuditKey.generate().public_raw)
    with pytest.raises(AttestationError, match="not a DSSE envelope"):
        verify_dsse({"payload": "!!"}, public)


# -- MLflow --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_export(built: tuple[Registry, Path]) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """One local MLflow store (sqlite) with mnist@2 exported as the registered model
    mnist-digits; yields (URI, export result, the store's folder). Created once: MLflow's ~60
    migrations each fsync, which costs ~10 s on a busy disk, so the store lives on tmpfs
    (/dev/shm) when there is one (~2 s), else beside the registry."""
    pytest.importorskip("mlflow")
    reg, root = built
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="robustops-mlflow-", dir=shm if shm.is_dir() else root))
    try:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        yield uri, export_mlflow(reg, "mnist@2", uri, registered_model_name="mnist-digits"), folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.filterwarnings("ignore:.*noload.*")
def test_mlflow_round_trip(
    built: tuple[Registry, Path], mlflow_export: tuple[str, dict[str, Any], Path]
) -> None:
    from mlflow.tracking import MlflowClient

    reg, root = built
    uri, out, folder = mlflow_export
    assert out["created"] and out["model_version"] == "1"
    assert out["aliases"] == ["candidate", "production"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v = reg.get("mnist@2")

    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["robustops.weights_sha256"] == v.weights_sha256
    assert tags["robustops.tensor_sha256"] == v.state_sha256
    assert tags["robustops.spec_sha256"] == v.spec_sha256
    assert tags["robustops.catalog_sha256"] == v.catalog_sha256
    assert tags["robustops.registry_version"] == "mnist@2"
    assert tags["robustops.version"] == v.robustops_version
    assert tags["robustops.gate_passed"] == "true"
    threat_models = json.loads(tags["robustops.threat_models"])
    assert {t["name"] for t in threat_models} == {"linf-0.3", "l2-2.0", "patch-6"}
    assert next(t for t in threat_models if t["name"] == "linf-0.3")["epsilon"] == 0.3
    m = run.data.metrics
    assert m["clean_accuracy"] == pytest.approx(0.954)
    assert m["robust_accuracy/l2-2.0"] == pytest.approx(0.152)
    assert m["attack_success/linf-0.3"] == pytest.approx(1.0)
    assert m["ece_clean"] == pytest.approx(0.01927261359186903)
    assert m["ece_attacked/patch-6"] == pytest.approx(0.5209956352535595)
    assert m["certified_accuracy/r0.25"] == pytest.approx(0.5)
    p = run.data.params
    fingerprint = json.loads(BASELINE.read_text())["data"]["fingerprint"]
    assert p["data.fingerprint"] == fingerprint == tags["robustops.data_fingerprint"]
    assert p["data.name"] == "mnist_subset"
    assert p["eval.seed"] == "0"
    assert p["attack/linf-0.3/pgd/steps"] == "40"

    arts = {f.path for f in client.list_artifacts(out["run_id"])}
    assert {"weights", "spec", "catalog", "results", "card", "attestation"} <= arts
    weights_dir = Path(client.download_artifacts(out["run_id"], "weights", str(root / "dl")))
    assert sha256_file(weights_dir / "w2.safetensors") == v.weights_sha256
    results = [f.path for f in client.list_artifacts(out["run_id"], "results")]
    assert results == [f"results/mnist-small-cnn-{v_result(reg)[:12]}.json"]
    card = client.download_artifacts(out["run_id"], "card/card.json", str(root / "dl"))
    assert json.loads(Path(card).read_text())["model"]["label"] == "mnist@2"

    mv = client.get_model_version("mnist-digits", "1")
    assert mv.run_id == out["run_id"] and str(mv.source).endswith("/weights")
    assert mv.tags["robustops.weights_sha256"] == v.weights_sha256
    assert mv.tags["robustops.registry_version"] == "mnist@2"
    assert str(client.get_model_version_by_alias("mnist-digits", "production").version) == "1"

    # the artifact root sits beside the database, not in the current folder
    assert run.info.artifact_uri.startswith((folder / "mlflow-artifacts").as_uri())


@pytest.mark.filterwarnings("ignore:.*noload.*")
def test_mlflow_reexport_and_next_version(
    built: tuple[Registry, Path], mlflow_export: tuple[str, dict[str, Any], Path]
) -> None:
    from mlflow.tracking import MlflowClient

    reg, _ = built
    uri, out, _ = mlflow_export
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # exporting the same version again does not duplicate it
    again = export_mlflow(reg, "mnist:production", uri, registered_model_name="mnist-digits")
    assert not again["created"] and again["run_id"] == out["run_id"]
    assert again["model_version"] == out["model_version"]
    # another version becomes the next MLflow version, with its own (failed) gate verdict
    other = export_mlflow(reg, "mnist@1", uri, registered_model_name="mnist-digits")
    assert other["created"] and other["model_version"] != out["model_version"]
    mv = client.get_model_version("mnist-digits", other["model_version"])
    assert mv.tags["robustops.gate_passed"] == "false"
    assert mv.tags["robustops.registry_version"] == "mnist@1"
    params = client.get_run(other["run_id"]).data.params  # from the training sidecar
    assert params["recipe.recipe"] == "pgd-at" and params["recipe.seed"] == "7"
    assert params["recipe.train.epochs"] == "3" and params["data.fingerprint"] == "f" * 64
    assert {str(m.version) for m in client.search_model_versions("name='mnist-digits'")} >= {
        out["model_version"],
        other["model_version"],
    }


def v_result(reg: Registry) -> str:
    return reg.evaluations("mnist@2")[0].result_sha256


def test_mlflow_missing_names_the_extra(
    built: tuple[Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from robustops.registry.store import RegistryError

    reg, root = built
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(RegistryError, match=r"robustops\[mlflow\]"):
        export_mlflow(reg, "mnist@2", f"sqlite:///{root / 'none.db'}")


# -- CLI -----------------------------------------------------------------------------------


def test_cli_card_and_attest(built: tuple[Registry, Path], tmp_path: Path) -> None:
    from robustops.cli_registry import registry_app

    reg, _ = built
    home = str(reg.store.home)
    runner = CliRunner()
    res = runner.invoke(registry_app, ["card", "mnist:production", "--out", str(tmp_path / "c"),
                                       "--home", home])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "## Threat catalog" in (tmp_path / "c" / "card.md").read_text()
    assert json.loads((tmp_path / "c" / "card.json").read_text())["model"]["version"] == 2

    env_path = tmp_path / "mnist2.intoto.json"
    res = runner.invoke(registry_app, ["attest", "mnist@2", "--out", str(env_path), "--home", home])
    assert res.exit_code == 0, res.output
    env = json.loads(env_path.read_text())
    assert verify_dsse(env, reg.store.key.public_raw)["subject"][0]["digest"]["sha256"] == (
        reg.get("mnist@2").weights_sha256
    )
    res = runner.invoke(registry_app, ["verify-attestation", str(env_path), "--home", home])
    assert res.exit_code == 0, res.output
    assert "w2.safetensors" in res.output
    forged = dict(env, payload=base64.b64encode(b'{"_type": "x"}').decode())
    env_path.write_text(json.dumps(forged))
    res = runner.invoke(registry_app, ["verify-attestation", str(env_path), "--home", home])
    assert res.exit_code == 2

    plain = tmp_path / "statement.json"
    res = runner.invoke(
        registry_app, ["attest", "mnist@2", "--out", str(plain), "--no-sign", "--home", home]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(plain.read_text())["_type"] == STATEMENT_TYPE

    res = runner.invoke(registry_app, ["card", "mnist@9", "--out", str(tmp_path), "--home", home])
    assert res.exit_code == 2 and "not found" in res.output


@pytest.mark.filterwarnings("ignore:.*noload.*")
def test_cli_export_mlflow(
    built: tuple[Registry, Path], mlflow_export: tuple[str, dict[str, Any], Path]
) -> None:
    from mlflow.tracking import MlflowClient

    from robustops.cli_registry import registry_app

    reg, _ = built
    uri, _, _ = mlflow_export
    res = CliRunner().invoke(
        registry_app,
        ["export-mlflow", "mnist@4", "--tracking-uri", uri, "--home", str(reg.store.home)],
    )
    assert res.exit_code == 0, res.output
    assert "mnist@4 exported to MLflow mnist version 1" in res.output
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("mnist", "1")
    assert mv.tags["robustops.weights_sha256"] == reg.get("mnist@4").weights_sha256
    res = CliRunner().invoke(
        registry_app,
        ["export-mlflow", "mnist@9", "--tracking-uri", uri, "--home", str(reg.store.home)],
    )
    assert res.exit_code == 2
