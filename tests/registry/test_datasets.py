"""Registered data sets: versioned, content-addressed, audited, with their lineage; the same
bytes again are the same version; bad input is refused with the field named and nothing
changed; ``robustops registry dataset list/show``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustops.cli import app
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError

from .conftest import ADMIN, ENG, VIEW, check_consistent, dump


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry.open(tmp_path / "reg")
    r.add_principal(ADMIN, ADMIN, "admin")
    r.add_principal(ADMIN, ENG, "engineer")
    r.add_principal(ADMIN, VIEW, "viewer")
    yield r  # type: ignore[misc]
    r.close()


def _json(path: Path, n: int, tag: str = "") -> Path:
    path.write_text(
        json.dumps({"samples": [{"text": f"{tag}{i}", "label": i % 2} for i in range(n)]})
    )
    return path


def test_versions_lineage_and_audit(reg: Registry, tmp_path: Path) -> None:
    a = _json(tmp_path / "a.json", 5)
    v1 = reg.register_dataset(ENG, "sms-reviewed", "reviewed", a, meta={"reviewer": "kim"})
    assert (v1.ref, v1.kind, v1.format, v1.n_samples) == ("sms-reviewed@1", "reviewed", "json", 5)
    assert v1.lineage == {"reviewer": "kim"} and v1.created_by == ENG
    again = reg.register_dataset(ENG, "sms-reviewed", "reviewed", a, meta={"other": 1})
    assert again.id == v1.id  # the same bytes: the same version, nothing written
    b = tmp_path / "b.jsonl"
    b.write_text('{"x": 1}\n{"x": 2}\n\n{"x": 3}\n')
    v2 = reg.register_dataset(ENG, "sms-reviewed", "reviewed", b, meta={"request_ids": ["r1"]})
    assert (v2.version, v2.format, v2.n_samples) == (2, "jsonl", 3)
    t = tmp_path / "c.safetensors"
    save_file({"inputs": torch.zeros(7, 1, 8, 8), "labels": torch.zeros(7)}, str(t))
    c = reg.register_dataset(ENG, "digits-canary", "canary", t)
    assert (c.format, c.n_samples) == ("safetensors", 7)
    z = tmp_path / "d.npz"
    np.savez(z, x=np.zeros((6, 2)), y=np.zeros(6))
    assert reg.register_dataset(ENG, "npz-set", "reviewed", z).n_samples == 6

    assert reg.dataset("sms-reviewed").version == 2
    assert reg.dataset("sms-reviewed@latest").version == 2
    assert reg.dataset("sms-reviewed@1").content_sha256 == v1.content_sha256
    assert [d.ref for d in reg.datasets()] == [
        "digits-canary@1",
        "npz-set@1",
        "sms-reviewed@1",
        "sms-reviewed@2",
    ]
    assert [d.ref for d in reg.datasets(kind="canary")] == ["digits-canary@1"]
    assert reg.dataset_path(v1).read_bytes() == a.read_bytes()
    events = [e for e in reg.audit_events() if e.action == "dataset"]
    subjects = [e.subject for e in events]
    assert subjects == ["sms-reviewed@1", "sms-reviewed@2", "digits-canary@1", "npz-set@1"]
    assert json.loads(events[1].payload)["lineage"] == {"request_ids": ["r1"]}
    assert check_consistent(reg)["events"] == len(list(reg.audit_events()))


def test_refusals_name_the_field_and_change_nothing(reg: Registry, tmp_path: Path) -> None:
    a = _json(tmp_path / "a.json", 3)
    before = dump(reg)
    cases = [
        (dict(actor=VIEW), "principal: 'view' is viewer"),
        (dict(actor="nobody"), "is not known"),
        (dict(name="bad name"), "dataset: 'bad name' is not a valid name"),
        (dict(kind="Canary!"), "kind:"),
        (dict(path=tmp_path / "missing.json"), "path:"),
        (dict(fmt="pickle"), "format: 'pickle'"),
        (dict(meta={"x": object()}), "meta: not JSON"),
        (dict(n_samples=-1), "n_samples:"),
    ]
    for change, message in cases:
        args = dict(actor=ENG, name="ds", kind="canary", path=a) | change
        actor, name, kind, path = (args.pop(k) for k in ("actor", "name", "kind", "path"))
        with pytest.raises(RegistryError, match=message):
            reg.register_dataset(actor, name, kind, path, **args)  # type: ignore[arg-type]
    csv = tmp_path / "a.csv"
    csv.write_text("x,y\n1,2\n")
    with pytest.raises(RegistryError, match="n_samples: cannot count"):
        reg.register_dataset(ENG, "ds", "canary", csv)
    assert dump(reg) == before
    with pytest.raises(RegistryError, match="no data set called 'ds'"):
        reg.dataset("ds")
    reg.register_dataset(ENG, "ds", "canary", csv, n_samples=1)
    with pytest.raises(RegistryError, match=r"ds@4 not found \(known versions: \[1\]\)"):
        reg.dataset("ds@4")


def test_a_tampered_file_is_refused(reg: Registry, tmp_path: Path) -> None:
    d = reg.register_dataset(ENG, "ds", "canary", _json(tmp_path / "a.json", 2))
    path = reg.store.artifacts.path(d.content_sha256)
    os.chmod(path, 0o644)
    path.write_text("{}")
    with pytest.raises(RegistryError, match="does not match its sha256"):
        reg.dataset_path(d)


def test_cli_list_and_show(reg: Registry, tmp_path: Path) -> None:
    reg.register_dataset(ENG, "ds", "canary", _json(tmp_path / "a.json", 4), meta={"seed": 0})
    home = str(reg.store.home)
    listed = CliRunner().invoke(app, ["registry", "dataset", "list", "--home", home, "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["ref"] == "ds@1" and row["n_samples"] == 4 and row["lineage"] == {"seed": 0}
    table = CliRunner().invoke(app, ["registry", "dataset", "list", "--home", home])
    assert "ds@1" in table.output and "canary" in table.output
    shown = CliRunner().invoke(app, ["registry", "dataset", "show", "ds", "--home", home])
    assert shown.exit_code == 0 and "sha256" in shown.output and '"seed": 0' in shown.output
    missing = CliRunner().invoke(app, ["registry", "dataset", "show", "nope", "--home", home])
    assert missing.exit_code == 2 and "no data set called" in missing.output


def test_a_long_lineage_is_audited_by_its_hash(reg: Registry, tmp_path: Path) -> None:
    import hashlib

    from robustops.registry.audit import canonical_json

    ids = [f"{i:032x}" for i in range(500)]
    d = reg.register_dataset(
        ENG, "ds", "reviewed", _json(tmp_path / "a.json", 2), meta={"ids": ids}
    )
    assert d.lineage == {"ids": ids}
    payload = json.loads(reg.recent_events(1)[0].payload)
    assert "lineage" not in payload
    assert (
        payload["lineage_sha256"] == hashlib.sha256(canonical_json(d.lineage).encode()).hexdigest()
    )
