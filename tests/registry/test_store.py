"""The registry core through the library and the command line: principals and roles, register
with lineage, aliases, gated promotion, break-glass, history, alias-at-time, rollback, the
migrations against the models, and bad input refused with exit code 2 and nothing changed."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustops._util import state_dict_sha256
from robustops.cli import app
from robustops.config import load_spec
from robustops.registry.lineage import lineage
from robustops.registry.models import Base
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError

from .conftest import (
    ADMIN,
    APPR,
    ENG,
    ENG2,
    MODEL,
    VIEW,
    Populated,
    check_consistent,
    dump,
    file_sha256,
    gate_report,
    populate,
    record_gate,
    rules,
    write_result,
    write_weights,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "configs" / "mnist.yaml"


@pytest.fixture
def pop(tmp_path: Path) -> Populated:
    p = populate(tmp_path / "home", tmp_path / "files")
    yield p
    p.reg.close()


def refused(pop: Populated, match: str, call: Any, *args: Any, **kwargs: Any) -> None:
    """``call`` raises a :class:`RegistryError` matching ``match`` and changes nothing."""
    before = dump(pop.reg)
    with pytest.raises(RegistryError, match=match):
        call(*args, **kwargs)
    assert dump(pop.reg) == before


def audit_actions(reg: Registry) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.action, e.subject, json.loads(e.payload)) for e in reg.audit_events()]


# -- schema ----------------------------------------------------------------------------------------


def test_migrations_equal_the_models(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "home")
    try:
        with reg.store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        reg.close()
    # The check can fail: a column the migrations do not create is reported.
    extra = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(extra)
    extra.tables["principals"].append_column(sa.Column("email", sa.String(64)))
    reg = Registry.open(tmp_path / "home")
    try:
        with reg.store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), extra)
        assert [d[0] for d in diff] == ["add_column"]
    finally:
        reg.close()


# -- principals and roles --------------------------------------------------------------------------


def test_roles_are_enforced(pop: Populated) -> None:
    reg = pop.reg
    w = write_weights(pop.files / "w.safetensors", 1)
    refused(pop, "'view' is viewer; this needs engineer", reg.register, VIEW, MODEL, w)
    refused(pop, "'nobody' is not known", reg.register, "nobody", MODEL, w)
    refused(pop, "needs admin", reg.add_principal, ENG, "mallory", "admin")
    refused(pop, "needs admin", reg.add_principal, APPR, ENG, "approver")
    refused(pop, "not one of", reg.add_principal, ADMIN, "x", "superuser")
    pop.ready(1, approve=False)
    refused(pop, "'eng2' is engineer; this needs approver", reg.approve, ENG2, "m@1")
    refused(pop, "'view' is viewer", reg.approve, VIEW, "m@1")
    other_policy = pop.files / "other-policy.yaml"
    other_policy.write_text("min_clean_accuracy: 0.9\n")
    refused(pop, "needs admin", reg.set_policy, APPR, MODEL, "staging", other_policy)
    result = write_result(pop.files / "by-viewer.json", reg.get("m@1").weights_sha256)
    report = gate_report(result, pop.policy)
    refused(pop, "'view' is viewer", reg.record_gate, VIEW, report, result=result)
    refused(pop, "'view' is viewer", reg.attach_evaluation, VIEW, "m@1", result)
    refused(pop, "needs admin", reg.move_alias, APPR, "m@1", "production", break_glass="urgent")
    refused(pop, "'view' is viewer", reg.move_alias, VIEW, "m@1", "staging")
    # Four eyes: whoever registered a version cannot approve it, even an approver or an admin.
    by_approver = pop.ready(2, approve=False, actor=APPR)
    refused(pop, "four eyes", reg.approve, APPR, "m@2")
    pop.ready(3, approve=False, actor=ADMIN)
    refused(pop, "four eyes", reg.approve, ADMIN, "m@3")
    reg.approve(ADMIN, "m@2")
    reg.approve(APPR, "m@1")
    assert by_approver.registered_by == APPR
    assert [p.name for p in reg.principals()] == sorted([ADMIN, ENG, ENG2, APPR, VIEW])
    check_consistent(reg)


def test_first_principal_must_be_admin(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "home")
    try:
        with pytest.raises(RegistryError, match="first principal"):
            reg.add_principal("alice", "alice", "engineer")
        reg.add_principal("alice", "alice", "admin")
        reg.add_principal("alice", "bob", "viewer")
        reg.add_principal("alice", "bob", "approver")  # a role change is logged
        roles = [(a, p["role"], p["previous_role"]) for a, s, p in audit_actions(reg)[1:]]
        assert roles == [
            ("principal", "admin", None),
            ("principal", "viewer", None),
            ("principal", "approver", "viewer"),
        ]
    finally:
        reg.close()


# -- register and lineage --------------------------------------------------------------------------


def test_register_records_the_lineage(pop: Populated) -> None:
    reg = pop.reg
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    weights = pop.files / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    sidecar = {
        "data": {"name": "mnist_subset", "fingerprint": "a" * 64, "split_seed": 0},
        "recipe": "pgd-at",
        "train": {"epochs": 2},
        "seed": 7,
        "state_sha256": state_dict_sha256(net),
        "history": [{"epoch": 1, "loss": 0.5}],
        "final": {"clean_accuracy": 0.9},
        "environment": {"torch": "x"},
    }
    spec_text = SPEC.read_text()
    catalog = load_spec(SPEC).catalog
    assert catalog is not None
    parent = pop.ready(1)
    result = write_result(pop.files / "judged.json", file_sha256(weights))
    v = reg.register(
        ENG,
        MODEL,
        weights,
        expected_sha256=file_sha256(weights),
        sidecar=sidecar,
        spec_text=spec_text,
        catalog=catalog,
        parent="m@1",
        results=[result],
        description="fine-tuned",
    )
    assert (v.name, v.version, v.parent_id) == (MODEL, 2, parent.id)
    assert v.state_sha256 == state_dict_sha256(net)
    assert v.weights_size == weights.stat().st_size
    assert v.data_fingerprint == "a" * 64 and v.data["split_seed"] == 0
    assert v.recipe["recipe"] == "pgd-at" and v.recipe["seed"] == 7
    assert v.metrics["last_epoch"] == {"epoch": 1, "loss": 0.5}
    art = reg.store.artifacts
    assert art.read_bytes(v.weights_sha256) == weights.read_bytes()
    assert art.read_bytes(v.spec_sha256 or "").decode() == spec_text
    assert art.read_bytes(v.catalog_sha256 or "").decode() == catalog.canonical_json()
    info = lineage(reg, "m@2")
    assert info["parents"] == ["m@1"] and lineage(reg, "m@1")["children"] == ["m@2"]
    assert [e["result_sha256"] for e in info["evaluations"]] == [file_sha256(result)]
    assert info["evaluations"][0]["summary"]["clean_accuracy"] == 1.0
    register_event = [p for a, s, p in audit_actions(reg) if a == "register" and s == "m@2"]
    assert register_event[0]["parent"] == "m@1"
    assert register_event[0]["state_sha256"] == v.state_sha256
    # A sidecar whose tensor hash is not these tensors' is refused, and so is a result about
    # other weights or a parent that does not exist.
    bad = {**sidecar, "state_sha256": "0" * 64}
    refused(pop, "state_sha256", reg.register, ENG, MODEL, weights, sidecar=bad)
    other = write_result(pop.files / "other.json", "e" * 64)
    refused(pop, "judged weights", reg.register, ENG, MODEL, weights, results=[other])
    refused(pop, "not found", reg.register, ENG, MODEL, weights, parent="m@9")
    check_consistent(reg)


# -- aliases and promotion -------------------------------------------------------------------------


def test_unprotected_alias_moves_freely_and_is_logged(pop: Populated) -> None:
    reg = pop.reg
    pop.ready(1, gate=False, approve=False)
    pop.ready(2, gate=False, approve=False)
    reg.move_alias(ENG, "m@1", "staging")
    reg.move_alias(ENG2, "m@2", "staging")
    assert reg.get("m:staging").version == 2
    assert {a: v.version for a, v in reg.aliases(MODEL).items()} == {"staging": 2}
    kinds = [
        (e.kind, e.actor, reg.version_label(e.previous_version_id))
        for e in reg.history(MODEL, "staging")
    ]
    assert kinds == [("set", ENG2, "m@1"), ("set", ENG, None)]
    # Once a policy is set for it, the alias is protected too.
    reg.set_policy(ADMIN, MODEL, "staging", rules(pop.policy))
    refused(pop, "no gate record", reg.move_alias, ENG, "m@1", "staging")
    check_consistent(reg)


def test_promotion_needs_policy_gate_pass_approval_and_intact_weights(pop: Populated) -> None:
    reg = pop.reg
    # No policy in force for this model's production alias.
    w = write_weights(pop.files / "o.safetensors", 99)
    reg.register(ENG, "other", w)
    refused(pop, "no gate policy is in force", reg.move_alias, ENG, "other@1", "production")
    # No gate record at all, then a failed one, then passed but no approval.
    v = pop.ready(1, gate=False, approve=False)
    refused(pop, "has no gate record under the policy", reg.move_alias, ENG, "m@1", "production")
    record_gate(
        reg, write_result(pop.files / "fail.json", v.weights_sha256, passing=False), pop.policy
    )
    refused(pop, r"newest gate record .* failed", reg.move_alias, ENG, "m@1", "production")
    record_gate(reg, write_result(pop.files / "pass.json", v.weights_sha256), pop.policy)
    refused(pop, "has no approval for production", reg.move_alias, ENG, "m@1", "production")
    # An approval for another alias does not count.
    reg.approve(APPR, "m@1", "staging")
    refused(pop, "has no approval for production", reg.move_alias, ENG, "m@1", "production")
    # A gate record under another policy does not count either.
    looser = pop.files / "looser.yaml"
    looser.write_text("min_clean_accuracy: 0.1\n")
    reg.set_policy(ADMIN, MODEL, "production", rules(looser))
    reg.approve(APPR, "m@1", "production")
    refused(pop, "no gate record under the policy", reg.move_alias, ENG, "m@1", "production")
    reg.set_policy(ADMIN, MODEL, "production", rules(pop.policy))
    # Everything in place: promoted.
    ev = reg.move_alias(ENG, "m@1", "production")
    assert (ev.kind, ev.version_id, ev.gate_record_id is not None, ev.approval_id is not None) == (
        "promote",
        v.id,
        True,
        True,
    )
    # The stored weights altered after registration: refused.
    v2 = pop.ready(2)
    path = reg.store.artifacts.path(v2.weights_sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    refused(pop, "does not match its sha256", reg.move_alias, ENG, "m@2", "production")
    path.unlink()
    refused(pop, "is missing", reg.move_alias, ENG, "m@2", "production")
    assert reg.get("m:production").version == 1


def test_break_glass_is_admin_only_needs_a_reason_and_is_logged(pop: Populated) -> None:
    reg = pop.reg
    pop.ready(1, gate=False, approve=False)
    refused(pop, "needs admin", reg.move_alias, ENG, "m@1", "production", break_glass="fire")
    refused(
        pop, "a reason is required", reg.move_alias, ADMIN, "m@1", "production", break_glass=" "
    )
    ev = reg.move_alias(ADMIN, "m@1", "production", break_glass="incident 42: revert now")
    assert (ev.kind, ev.reason, ev.gate_record_id, ev.approval_id) == (
        "break-glass",
        "incident 42: revert now",
        None,
        None,
    )
    action, subject, payload = audit_actions(reg)[-1]
    assert (action, subject) == ("break-glass", "m:production")
    assert payload["reason"] == "incident 42: revert now" and payload["kind"] == "break-glass"
    assert reg.history(MODEL, "production")[0].kind == "break-glass"
    check_consistent(reg)


# -- history, alias at a time, rollback ------------------------------------------------------------


def _shift(at: str, microseconds: int) -> str:
    t = datetime.fromisoformat(at[:-1]) + timedelta(microseconds=microseconds)
    return t.isoformat(timespec="microseconds") + "Z"


def test_history_and_alias_at_time(pop: Populated) -> None:
    reg = pop.reg
    for seed in (1, 2, 3):
        pop.ready(seed)
    assert reg.history(MODEL, "production") == []
    assert reg.alias_at(MODEL, "production", "2030-01-01T00:00:00Z") is None
    moves = [reg.move_alias(ENG, f"m@{n}", "production") for n in (1, 2, 1, 3)]
    hist = reg.history(MODEL, "production")
    assert [e.id for e in hist] == [m.id for m in reversed(moves)]
    assert [reg.version_label(e.version_id) for e in hist] == ["m@3", "m@1", "m@2", "m@1"]
    assert [reg.version_label(e.previous_version_id) for e in hist] == ["m@1", "m@2", "m@1", None]
    assert [e.id for e in reg.history(MODEL, "production", limit=2)] == [moves[3].id, moves[2].id]

    def at(t: str) -> int | None:
        v = reg.alias_at(MODEL, "production", t)
        return v.version if v else None

    first = moves[0].at
    assert at(_shift(first, -1)) is None  # before the first move
    assert at("2000-01-01T00:00:00Z") is None
    assert at(first) == 1  # at the very instant of a move, the move has happened
    for move, expected in zip(moves, (1, 2, 1, 3), strict=True):
        assert at(move.at) == expected
    for a, b, expected in zip(moves, moves[1:], (1, 2, 1), strict=False):
        if a.at < b.at:  # strictly between two moves: the earlier one holds
            assert at(_shift(b.at, -1)) == expected
    assert at(_shift(moves[-1].at, 10**6)) == 3
    assert at("2999-12-31T23:59:59+02:00") == 3  # time zones are understood
    with pytest.raises(RegistryError, match="not an ISO-8601 time"):
        reg.alias_at(MODEL, "production", "last tuesday")


def test_rollback_moves_back_and_rechecks_the_gate(pop: Populated) -> None:
    reg = pop.reg
    refused(pop, "points to no version", reg.rollback, ENG, MODEL, "production")
    v1, _ = pop.ready(1), pop.ready(2)
    reg.move_alias(ENG, "m@1", "production")
    refused(pop, "has held no other version", reg.rollback, ENG, MODEL, "production")
    reg.move_alias(ENG, "m@2", "production")
    refused(pop, "'view' is viewer", reg.rollback, VIEW, MODEL, "production")
    # The newest gate record of m@1 under the policy now fails: the rollback is refused.
    record_gate(
        reg,
        write_result(pop.files / "regressed.json", v1.weights_sha256, passing=False),
        pop.policy,
    )
    refused(pop, r"m@1 under the policy in force .* failed", reg.rollback, ENG, MODEL, "production")
    assert reg.get("m:production").version == 2
    # A newer passing record stands again: rolled back, logged as a rollback.
    record_gate(reg, write_result(pop.files / "fixed.json", v1.weights_sha256), pop.policy)
    ev = reg.rollback(ENG, MODEL, "production")
    assert (
        ev.kind,
        reg.version_label(ev.version_id),
        reg.version_label(ev.previous_version_id),
    ) == (
        "rollback",
        "m@1",
        "m@2",
    )
    assert reg.get("m:production").version == 1
    assert audit_actions(reg)[-1][2]["kind"] == "rollback"
    check_consistent(reg)


# -- the command line ------------------------------------------------------------------------------


def cli(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_flow(tmp_path: Path) -> None:
    home, files = tmp_path / "home", tmp_path / "files"
    files.mkdir()
    h = ["--home", home]

    def ok(*args: str | Path) -> str:
        r = cli(*args)
        assert r.exit_code == 0, r.output
        return r.output

    out = ok("registry", "init", "--admin", ADMIN, *h)
    assert "audit key id" in out
    key_id = out.split("(pin it): ")[1].split()[0]
    for name, role in ((ENG, "engineer"), (APPR, "approver")):
        ok("registry", "principal", "add", name, "--role", role, *h, "--as", ADMIN)
    assert "engineer" in ok("registry", "principal", "list", *h)
    weights = write_weights(files / "model.safetensors", 1)
    (files / "model.safetensors.json").write_text(
        json.dumps({"data": {"name": "d", "fingerprint": "b" * 64}, "recipe": "standard"})
    )
    sha = file_sha256(weights)
    ok("registry", "register", MODEL, weights, "--spec", SPEC, "--sha256", sha, *h, "--as", ENG)
    weights2 = write_weights(files / "model2.safetensors", 2)
    ok("registry", "register", MODEL, weights2, "--parent", "m@1", *h, "--as", ENG)
    info = json.loads(ok("registry", "show", "m@2", "--json", *h))
    assert info["parents"] == ["m@1"] and info["version"]["weights_sha256"] == file_sha256(weights2)
    v1 = json.loads(ok("registry", "show", "m@1", "--json", *h))["version"]
    assert v1["data_fingerprint"] == "b" * 64 and v1["spec_sha256"] is not None
    policy = files / "policy.yaml"
    policy.write_text("min_clean_accuracy: 0.5\n")
    ok("registry", "policy", MODEL, "production", policy, *h, "--as", ADMIN)
    result = write_result(files / "r.json", sha)
    out = ok(
        "gate",
        "--result",
        result,
        "--policy",
        policy,
        "--register",
        "--registry",
        home,
        "--as",
        ENG,
    )
    assert "gate record #1 registered for m@1" in out
    ok("registry", "approve", "m@1", *h, "--as", APPR)
    out = ok("registry", "promote", "m@1", "production", *h, "--as", ENG)
    assert "m:production → m@1 (promote; was unset)" in out
    ok("registry", "promote", "m@2", "production", "--break-glass", "hotfix", *h, "--as", ADMIN)
    out = ok("registry", "rollback", MODEL, "production", *h, "--as", ENG)
    assert "rolled back to m@1 (from m@2)" in out
    out = ok("registry", "history", MODEL, "production", *h)
    assert out.index("rollback") < out.index("break-glass") < out.index("promote")
    assert ok("registry", "history", MODEL, "production", "--at", "2999-01-01", *h).strip() == "m@1"
    assert "pointed to no version" in ok(
        "registry", "history", MODEL, "production", "--at", "2000-01-01", *h
    )
    out = ok("registry", "list", *h)
    assert "m@1" in out and "production" in out
    out = ok("registry", "audit", "verify", "--full", "--pin", key_id, *h)
    assert "audit log intact" in out
    ok("registry", "audit", "show", "--tail", "3", *h)
    reg = Registry.open(home)
    try:
        check_consistent(reg)
    finally:
        reg.close()


@pytest.fixture
def cli_reg(pop: Populated) -> Populated:
    """m@1 ready and in production; m@2 registered only; m@3 registered by the approver,
    gated, not approved."""
    pop.ready(1)
    pop.reg.move_alias(ENG, "m@1", "production")
    pop.ready(2, gate=False, approve=False)
    pop.ready(3, approve=False, actor=APPR)
    return pop


BAD_INPUT = {
    "unknown version": (["registry", "show", "m@99"], "m@99 not found (known versions: [1, 2, 3])"),
    "unknown model": (["registry", "show", "nosuch@1"], "no model called 'nosuch'"),
    "bad reference": (
        ["registry", "show", "m-latest"],
        "must be NAME@N, NAME@latest or NAME:ALIAS",
    ),
    "alias to a missing version": (
        ["registry", "promote", "m@7", "staging", "--as", ENG],
        "m@7 not found",
    ),
    "alias that points nowhere": (
        ["registry", "promote", "m:staging", "production", "--as", ENG],
        "points to no version",
    ),
    "promotion without a gate record": (
        ["registry", "promote", "m@2", "production", "--as", ENG],
        "m@2 has no gate record under the policy",
    ),
    "promotion without approval": (
        ["registry", "promote", "m@3", "production", "--as", ENG],
        "m@3 has no approval for production",
    ),
    "approval by the registrant": (["registry", "approve", "m@3", "--as", APPR], "four eyes"),
    "approval by an engineer": (["registry", "approve", "m@3", "--as", ENG], "needs approver"),
    "break-glass by a non-admin": (
        ["registry", "promote", "m@3", "production", "--break-glass", "x", "--as", ENG],
        "needs admin",
    ),
    "rollback of an unset alias": (
        ["registry", "rollback", MODEL, "staging", "--as", ENG],
        "points to no version",
    ),
    "rollback with no earlier version": (
        ["registry", "rollback", MODEL, "production", "--as", ENG],
        "has held no other version",
    ),
    "bad time": (
        ["registry", "history", MODEL, "production", "--at", "yesterday"],
        "not an ISO-8601 time",
    ),
    "bad alias": (["registry", "promote", "m@1", "Prod!", "--as", ENG], "not a valid alias"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_cli_bad_input_exits_2_and_changes_nothing(cli_reg: Populated, case: str) -> None:
    args, message = BAD_INPUT[case]
    before = dump(cli_reg.reg)
    r = cli(*args, "--home", cli_reg.home)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert dump(cli_reg.reg) == before


def test_cli_weights_hash_mismatch_and_altered_artifact(cli_reg: Populated) -> None:
    pop = cli_reg
    h = ["--home", pop.home]
    w = write_weights(pop.files / "new.safetensors", 50)
    before = dump(pop.reg)
    r = cli("registry", "register", MODEL, w, "--sha256", "0" * 64, *h, "--as", ENG)
    assert r.exit_code == 2 and "not the expected" in " ".join(r.output.split()), r.output
    assert dump(pop.reg) == before  # no row, no artifact, no partial file left
    # m@3's stored weights altered after registration: its promotion is refused.
    pop.reg.approve(ADMIN, "m@3")
    stored = pop.reg.store.artifacts.path(pop.reg.get("m@3").weights_sha256)
    os.chmod(stored, 0o644)
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    before = dump(pop.reg)
    r = cli("registry", "promote", "m@3", "production", *h, "--as", ENG)
    assert r.exit_code == 2 and "does not match its sha256 (altered)" in " ".join(r.output.split())
    assert dump(pop.reg) == before
    assert pop.reg.get("m:production").version == 1
    # Registering the same weights file again restores a whole copy of the artifact.
    r = cli("registry", "register", MODEL, pop.files / "w3.safetensors", *h, "--as", ENG)
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == pop.reg.get("m@3").weights_sha256
    r = cli("registry", "promote", "m@3", "production", *h, "--as", ENG)
    assert r.exit_code == 0, r.output
    check_consistent(pop.reg)


def test_a_clock_that_steps_back_does_not_reorder_history(
    pop: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts writing to one database with clocks 5 s apart (or NTP stepping a clock back):
    the later move must still be the newest in history and at every later time."""
    from robustops.registry import store

    reg = pop.reg
    pop.ready(1)
    pop.ready(2)
    first = reg.move_alias(ENG, "m@1", "production")
    monkeypatch.setattr(store, "utc_now", lambda: _shift(first.at, -5_000_000))
    second = reg.move_alias(ENG, "m@2", "production")
    monkeypatch.undo()
    assert second.at >= first.at
    assert [e.id for e in reg.history(MODEL, "production")] == [second.id, first.id]
    assert reg.alias_at(MODEL, "production", second.at).version == 2  # type: ignore[union-attr]
    assert reg.get("m:production").version == 2
    check_consistent(reg)
