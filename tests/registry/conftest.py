"""What the registry tests share: a populated registry, synthetic weights / results / gate
verdicts, a dump of every table, the store-wide consistency check, worker processes that hammer
one registry (started from a fork server that has imported RobustOps once, so that a new worker
costs milliseconds instead of a two-second ``import torch``), and a throw-away PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import multiprocessing
import multiprocessing.forkserver
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imported here so that the workers' fork server has them loaded (Registry.open migrates).
import alembic.command
import alembic.runtime.migration
import alembic.script  # noqa: F401
import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import save_file

from real_components import missing_component
from robustops.evaluation import SamplesRecord, SuiteResult
from robustops.gate import evaluate_gate, load_policy
from robustops.registry.lineage import lineage
from robustops.registry.models import (
    Alias,
    AliasEvent,
    AliasPolicy,
    Approval,
    AuditEventRow,
    Base,
    ChainHead,
    DatasetVersion,
    Evaluation,
    GateRecord,
    ModelVersion,
)
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError

ADMIN, ENG, ENG2, APPR, VIEW = "root", "eng", "eng2", "appr", "view"
MODEL = "m"
POLICY_TEXT = "min_clean_accuracy: 0.5\n"
"""A gate policy a result passes with 4/4 clean-correct samples and fails with 1/4."""


# -- synthetic inputs ------------------------------------------------------------------------------


def write_weights(path: Path, seed: int, numel: int = 4096) -> Path:
    """A safetensors file of two seeded random tensors (different seeds: different bytes)."""
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"fc.weight": torch.randn(numel, generator=g), "fc.bias": torch.zeros(4)}, str(path))
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_result(path: Path, weights_sha256: str, *, passing: bool = True) -> Path:
    """A saved, self-consistent result about ``weights_sha256``: 4 samples, all clean-correct
    when ``passing`` (clean accuracy 1.0), else one (0.25, under :data:`POLICY_TEXT`'s 0.5)."""
    clean = [True] * 4 if passing else [True, False, False, False]
    SuiteResult(
        name=f"eval-{weights_sha256[:8]}",
        created_at="2026-01-02T03:04:05+00:00",
        seed=0,
        device="cpu",
        n_samples=4,
        clean_accuracy=sum(clean) / 4,
        threats=[],
        data={"name": "synthetic", "fingerprint": "d" * 64, "split_seed": 0},
        model={"weights_sha256": weights_sha256},
        environment={},
        samples=SamplesRecord(indices=[0, 1, 2, 3], labels=[0, 1, 2, 3], clean_correct=clean),
        wall_time_s=1.0,
    ).save(path)
    return path


def gate_report(result: Path, policy: Path) -> dict[str, Any]:
    """The real gate's verdict on ``result`` under ``policy`` as the JSON ``record_gate`` takes."""
    report = evaluate_gate(SuiteResult.load(result), None, load_policy(policy))
    return report.model_dump(mode="json")


def rules(policy: Path) -> dict[str, Any]:
    """The effective rules of a policy file, as ``Registry.set_policy`` takes them."""
    return load_policy(policy).model_dump(mode="json")


def record_gate(reg: Registry, result: Path, policy: Path, actor: str = ENG) -> GateRecord:
    return reg.record_gate(actor, gate_report(result, policy), result=result)


@dataclass
class Populated:
    """A registry with its principals and the production policy of model ``m`` in force."""

    reg: Registry
    home: Path
    files: Path  # where the inputs (weights, results, policies) are written
    policy: Path

    def ready(
        self,
        seed: int,
        *,
        passing: bool = True,
        approve: bool = True,
        gate: bool = True,
        actor: str = ENG,
        **register: Any,
    ) -> ModelVersion:
        """Register seeded weights as the next version of ``m`` (by ``actor``), record a gate
        verdict (passing or not) and an approval by ``appr``, as asked."""
        w = write_weights(self.files / f"w{seed}.safetensors", seed)
        v = self.reg.register(actor, MODEL, w, **register)
        if gate:
            r = write_result(
                self.files / f"r{seed}-{passing}.json", v.weights_sha256, passing=passing
            )
            record_gate(self.reg, r, self.policy)
        if approve:
            self.reg.approve(APPR, f"{MODEL}@{v.version}", "production")
        return v


def populate(home: Path, files: Path, url: str | None = None) -> Populated:
    """Open a new registry (``home``, optionally on ``url``) with an admin ``root``, engineers
    ``eng`` and ``eng2``, approver ``appr``, viewer ``view``, and the production policy of ``m``."""
    reg = Registry.open(home, url)
    reg.add_principal(ADMIN, ADMIN, "admin")
    for name, role in ((ENG, "engineer"), (ENG2, "engineer"), (APPR, "approver"), (VIEW, "viewer")):
        reg.add_principal(ADMIN, name, role)
    files.mkdir(parents=True, exist_ok=True)
    policy = files / "policy.yaml"
    policy.write_text(POLICY_TEXT)
    reg.set_policy(ADMIN, MODEL, "production", rules(policy))
    return Populated(reg, home, files, policy)


# -- dumps and consistency -------------------------------------------------------------------------


def dump(reg: Registry) -> dict[str, Any]:
    """Every row of every table (in primary-key order) and the artifact files: equal dumps
    before and after a request mean it changed nothing."""
    out: dict[str, Any] = {}
    with reg.store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    out["artifacts"] = sorted(reg.store.artifacts.stored())
    out["partial"] = [p.name for p in reg.store.artifacts.partial_files()]
    return out


_HASHED: dict[tuple[str, int, int, int], str] = {}


def _hash_cached(path: Path) -> str:
    """sha256 of a (read-only, never rewritten) artifact, cached by path, inode, size, mtime."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHED[key]


def check_consistent(reg: Registry) -> dict[str, int]:
    """Assert that the database and the artifact folder agree and the audit chain holds:

    * every artifact a row names exists and hashes to its name (no orphan row); every file
      under ``artifacts/sha256`` hashes to its name (no half file; partial copies may only be
      ``tmp/put.*.part`` files, which are never read);
    * every state row has its audit event and no event lacks its row (register, evaluation,
      gate, approval, alias move), the chain head row is the last event, the chain verifies
      with every signature;
    * each alias row is its newest alias event, and every move of an alias starts where the
      previous one ended (no lost update), in time order.

    Returns counts of what it saw."""
    store = reg.store.artifacts
    with reg.store.read() as s:
        referenced: set[str] = set()
        for col in (
            ModelVersion.weights_sha256,
            ModelVersion.spec_sha256,
            ModelVersion.catalog_sha256,
            Evaluation.result_sha256,
            GateRecord.result_sha256,
            GateRecord.baseline_sha256,
            GateRecord.policy_sha256,
            AliasPolicy.policy_sha256,
            DatasetVersion.content_sha256,
        ):
            referenced.update(x for x in s.scalars(sa.select(col)) if x is not None)
        for sha in sorted(referenced):
            assert store.has(sha), f"a row names artifact {sha}, which is missing"
        for sha in store.stored():
            assert _hash_cached(store.path(sha)) == sha, f"artifact {sha} is not whole"
        tmp_like = [
            p
            for p in (store.root / "sha256").rglob("*")
            if p.is_file() and (p.name.startswith("put.") or p.name.endswith(".part"))
        ]
        assert tmp_like == [], tmp_like

        actions = Counter(s.scalars(sa.select(AuditEventRow.action)))

        def count(model: type[Base]) -> int:
            return s.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()

        n_moves = count(AliasEvent)
        pairs = {
            "register": count(ModelVersion),
            "evaluation": count(Evaluation),
            "gate": count(GateRecord),
            "approve": count(Approval),
            "dataset": count(DatasetVersion),
        }
        for action, rows in pairs.items():
            assert actions[action] == rows, f"{rows} {action} rows but {actions[action]} events"
        assert actions["alias"] + actions["break-glass"] == n_moves
        last = s.scalars(sa.select(AuditEventRow).order_by(AuditEventRow.seq.desc())).first()
        head = s.get(ChainHead, 1)
        assert head is not None and last is not None
        assert (head.seq, head.hash, head.signature) == (last.seq, last.hash, last.signature)
        assert sum(actions.values()) == last.seq

        events = s.scalars(sa.select(AliasEvent).order_by(AliasEvent.id)).all()
        by_alias: dict[tuple[str, str], list[AliasEvent]] = {}
        for e in events:
            by_alias.setdefault((e.model_name, e.alias), []).append(e)
        for key, evs in by_alias.items():
            held = None
            for e in evs:
                assert e.previous_version_id == held, f"{key}: event {e.id} lost an update"
                held = e.version_id
            assert [e.at for e in evs] == sorted(e.at for e in evs), key
            assert [e.audit_seq for e in evs] == sorted(e.audit_seq for e in evs), key
            row = s.get(Alias, key)
            assert row is not None and (row.event_id, row.version_id) == (evs[-1].id, held), key
        assert count(Alias) == len(by_alias)
        ats = list(s.scalars(sa.select(AuditEventRow.at).order_by(AuditEventRow.seq)))
        assert ats == sorted(ats), "audit events are not in time order"
    verdict = reg.verify_audit(full=True)
    assert verdict.ok, verdict
    return {"events": last.seq, "moves": n_moves, "versions": pairs["register"]}


# -- worker processes ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mp_ctx() -> Any:
    """A multiprocessing context whose workers fork from a server that imported this module
    (torch, SQLAlchemy, RobustOps) once; each worker is still its own process with its own
    database connections, opened after the fork."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    # Python 3.11's fork server does not take the parent's sys.path for its preloading (a
    # failed preload is silently skipped and every worker pays the imports): give it the
    # folder this module is imported from, while it starts.
    tests_dir = str(Path(__file__).resolve().parents[1])
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, old) if p)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return ctx


def concurrent_worker(
    home: str,
    url: str | None,
    worker: int,
    n_ops: int,
    n_ready: int,
    go: Any,
    out: Any,
) -> None:
    """Run ``n_ops`` seeded random requests on model ``m`` once ``go`` is set; put
    ``(worker, successes, refusals, unexpected errors)`` on ``out``. Requests: promote a
    ready version (1..``n_ready``) to production, register a new version, move ``staging``
    (unprotected) to the latest, roll production back, and promote the latest version (not
    gated or approved: refused unless it is one of the ready ones)."""
    ok: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    errors: list[str] = []
    try:
        reg = Registry.open(home, url)
        rng = random.Random(1000 + worker)
        files = Path(home).parent / f"worker{worker}"
        go.wait(60)
        for i in range(n_ops):
            op = rng.choice(["promote", "promote", "register", "stage", "rollback", "refused"])
            try:
                if op == "promote":
                    reg.move_alias(ENG, f"{MODEL}@{rng.randint(1, n_ready)}", "production")
                elif op == "register":
                    w = write_weights(files / f"w{i}.safetensors", 10_000 * (worker + 1) + i)
                    reg.register(ENG, MODEL, w)
                elif op == "stage":
                    reg.move_alias(ENG, f"{MODEL}@latest", "staging")
                elif op == "rollback":
                    reg.rollback(ENG, MODEL, "production")
                else:
                    reg.move_alias(ENG2, f"{MODEL}@latest", "production")
                ok[op] += 1
            except RegistryError:
                refused[op] += 1
        reg.close()
    except Exception:
        errors.append(traceback.format_exc())
    out.put((worker, dict(ok), dict(refused), errors))


def run_concurrently(
    ctx: Any, pop: Populated, url: str | None, n_procs: int, n_ops: int, n_ready: int
) -> tuple[Counter[str], Counter[str]]:
    """Start ``n_procs`` :func:`concurrent_worker` processes on one registry, release them at
    once, and return the summed successes and refusals (asserting no unexpected error)."""
    go = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=concurrent_worker,
            args=(str(pop.home), url, w, n_ops, n_ready, go, out),
        )
        for w in range(n_procs)
    ]
    for p in procs:
        p.start()
    time.sleep(0.2)
    go.set()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ok: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for _, o, r, errors in results:
        assert errors == [], errors[0]
        ok.update(o)
        refused.update(r)
    return ok, refused


def concurrent_promotions(ctx: Any, pop: Populated, url: str | None, n_procs: int) -> None:
    """The reliability check of concurrent writers (SQLite or PostgreSQL): ``n_procs``
    processes promote, register, stage and roll back at once; exactly one alias state wins
    (the alias row is the newest event, every move starts where the previous ended), no event
    is lost (events = setup + successes) and the chain verifies."""
    reg = pop.reg
    n_ready = 3
    for seed in range(1, n_ready + 1):
        pop.ready(seed)
    pop.ready(n_ready + 1, gate=False, approve=False)  # m@latest is never gated from here on
    reg.move_alias(ENG, f"{MODEL}@1", "production")
    before = check_consistent(reg)
    snap = dump(reg)
    ok, refused = run_concurrently(ctx, pop, url, n_procs, n_ops=12, n_ready=n_ready)
    after = check_consistent(reg)
    assert sum(ok.values()) + sum(refused.values()) == 12 * n_procs
    assert refused["promote"] == refused["stage"] == refused["register"] == 0, refused
    assert ok["refused"] == 0  # the latest version is never gated: always refused
    assert after["versions"] == before["versions"] + ok["register"]
    moves = ok["promote"] + ok["stage"] + ok["rollback"]
    assert after["moves"] == before["moves"] + moves
    assert after["events"] == before["events"] + ok["register"] + moves
    # The rows written before the workers ran are untouched.
    now = dump(reg)
    for table in ("principals", "alias_policies", "approvals", "gate_records", "evaluations"):
        assert now[table] == snap[table], table
    assert now["audit_events"][: len(snap["audit_events"])] == snap["audit_events"]


def _finish_latest(reg: Registry, folder: Path, policy: Path) -> None:
    """Take ``m@latest`` the rest of the way to production (gate, approval, promotion), as a
    retrying operator would after a crash: every worker first finishes what the killed one
    left, so the registry progresses however short the time between kills."""
    v = reg.get(f"{MODEL}@latest")
    info = lineage(reg, f"{MODEL}@{v.version}")
    if not any(g["passed"] and g["policy_sha256"] == file_sha256(policy) for g in info["gates"]):
        result = write_result(folder / f"r-{v.weights_sha256[:16]}.json", v.weights_sha256)
        reg.record_gate(ENG, gate_report(result, policy), result=result)
    if not any(a["alias"] == "production" for a in info["approvals"]):
        reg.approve(APPR, f"{MODEL}@{v.version}")
    if "production" not in info["aliases"]:
        reg.move_alias(ENG, f"{MODEL}@{v.version}", "production")


def kill_worker(home: str, files: str, seed: int, ready: Any) -> None:
    """Finish the latest version's way to production, then loop: register (with a result and
    a spec) → gate → approve → promote, with a rollback every third round, until killed. Each
    round writes fresh 256 KiB weights, so kills land in the middle of artifact copies as well
    as in database transactions."""
    try:
        reg = Registry.open(home)
        folder = Path(files)
        policy = folder / "policy.yaml"
        ready.set()
        _finish_latest(reg, folder, policy)
        for i in range(10**6):
            w = write_weights(
                folder / f"k{seed}-{i}.safetensors", 1_000_000 + seed * 1000 + i, numel=65536
            )
            sha = hashlib.sha256(w.read_bytes()).hexdigest()
            result = write_result(folder / f"r-{sha[:16]}.json", sha)
            v = reg.register(ENG, MODEL, w, results=[result], spec_text=f"spec {seed} {i}\n")
            w.unlink()
            reg.record_gate(ENG, gate_report(result, policy), result=result)
            reg.approve(APPR, f"{MODEL}@{v.version}")
            reg.move_alias(ENG, f"{MODEL}@{v.version}", "production")
            if i % 3 == 2:
                reg.rollback(ENG, MODEL, "production")
    except Exception:
        traceback.print_exc()
        raise


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    """The folder of the newest PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    """A running throw-away PostgreSQL server on 127.0.0.1."""

    port: int
    user: str
    base: Path
    _n: int = 0

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        self._n += 1
        name = f"registry_{self._n}"
        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """Start a PostgreSQL server of its own (``initdb`` in a temporary folder, ``pg_ctl start``
    on a free loopback port, its socket in that folder, trust authentication, fsync off) and
    stop it afterwards. PostgreSQL refuses to run as root: as root the server runs as the
    ``postgres`` user (``nobody`` when there is none) in a folder of its own under the system
    temporary folder (pytest's temporary folders are private to root)."""
    bindir = _pg_bindir()
    if bindir is None:
        missing = (
            "PostgreSQL server binaries not found (no initdb on PATH nor in "
            "/usr/lib/postgresql/*/bin): install Debian's postgresql package to run these tests"
        )
        missing_component(missing)
    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                owner = pwd.getpwnam(name)
                break
        assert owner is not None, "running as root, and no postgres or nobody user to run as"
        runuser = shutil.which("runuser")
        prefix = (
            [runuser, "-u", owner.pw_name, "--"]
            if runuser
            else ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups"]
        )
        base = Path(tempfile.mkdtemp(prefix="robustops-pg-"))
        os.chown(base, owner.pw_uid, owner.pw_gid)
    else:
        base = tmp_path_factory.mktemp("pg")
    data, sock, log = base / "data", base / "sock", base / "server.log"

    def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *map(str, cmd)],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    user = "robustops"
    run("mkdir", "-m", "0700", sock)
    run(bindir / "initdb", "-D", data, "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync")
    port = 0
    for _attempt in range(3):
        port = _free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        started = run(
            bindir / "pg_ctl",
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "start",
            check=False,
        )
        if started.returncode == 0:
            break
    else:
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log.read_text()}")
    try:
        yield PgServer(port=port, user=user, base=base)
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)
