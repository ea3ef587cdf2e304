"""``robustops lifecycle``: the whole loop on one machine, in minutes, as a timeline.

train → evaluate → gate → register → approve → promote → serve (the guard follows the
``production`` alias) → benign traffic and the monitor calibrating on it → an attacker probes
the endpoint (Square over HTTP): the guard flags and throttles it and the monitor's alert fires
(to a webhook) → a weak model is promoted by break-glass → the canary attacks the live endpoint,
McNemar against the accepted result finds the drop, a vulnerability is opened and production
rolls back → the flagged inputs are harvested and reviewed (a scripted reviewer: each input's
nearest clean test image gives its label) → retrain with them → evaluate → gate → promote.

Every step runs the real command (``robustops …`` in a subprocess) or the real server; the
timeline (``timeline.json``) and a page (``lifecycle.html``) are written to the output folder.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import yaml

from robustops.data import load_dataset
from robustops.errors import RobustOpsError

ADMIN, ENGINEER, APPROVER, MONITOR = "lc-admin", "lc-engineer", "lc-approver", "robustops-monitor"


class LifecycleError(RobustOpsError):
    """A lifecycle step did not do what it must (the message names the step)."""


@dataclass
class Event:
    """One timeline entry: seconds since the start, the step, what happened, its evidence."""

    t: float
    step: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


class Timeline:
    """The events of a run, printed as they happen and written as JSON and HTML."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.t0 = time.monotonic()
        self.events: list[Event] = []
        self._echo = echo
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.t0

    def mark(self, step: str, detail: str, **data: Any) -> Event:
        """Record (and print) one event."""
        with self._lock:
            ev = Event(round(self.now(), 2), step, detail, data)
            self.events.append(ev)
        self._echo(f"{ev.t:8.1f} s  {step:<12} {detail}")
        return ev

    def to_json(self) -> list[dict[str, Any]]:
        """JSON-ready events."""
        return [{"t": e.t, "step": e.step, "detail": e.detail, "data": e.data} for e in self.events]


# --- processes and servers ------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    """Runs ``robustops …`` commands in the output folder with the registry in its env."""

    def __init__(self, folder: Path, logs: Path) -> None:
        self.folder, self.logs = folder, logs
        self.env = {**os.environ, "ROBUSTOPS_REGISTRY": str(folder / "registry")}
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self._n = 0
        self.returncode = 0
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "robustops", *args]

    def run(self, *args: str, check: bool = True) -> str:
        """Run one command to completion; its output is kept in ``logs/``; returns stdout."""
        self._n += 1
        log = self.logs / f"{self._n:02d}-{args[0]}-{args[1] if len(args) > 1 else ''}.log"
        done = subprocess.run(
            self._argv(args), cwd=self.folder, env=self.env, capture_output=True, text=True
        )
        log.write_text(f"$ robustops {' '.join(args)}\n{done.stdout}\n{done.stderr}")
        self.returncode = done.returncode
        if check and done.returncode != 0:
            raise LifecycleError(
                f"`robustops {' '.join(args)}` exited {done.returncode}; see {log}\n"
                f"{done.stderr[-2000:]}"
            )
        return done.stdout

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running command (a server); its output goes to ``logs/NAME.log``."""
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = self.started[name] = subprocess.Popen(
            self._argv(args),
            cwd=self.folder,
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return proc

    def check_alive(self) -> None:
        """:class:`LifecycleError` naming a started server that has exited, with its log's end."""
        for name, proc in self.started.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
                raise LifecycleError(
                    f"{name} exited {proc.returncode}; see logs/{name}.log\n{tail}"
                )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGINT the process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class WebhookReceiver:
    """A local HTTP endpoint collecting the monitor's alert POSTs (what a team's chat or
    paging bridge would be)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    receiver.alerts.append(json.loads(body))
                    receiver.arrived.set()
                    self.send_response(204)
                except ValueError:
                    self.send_response(400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_json(url: str, key: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """GET (``body`` None) or POST JSON with an API key; ``(status, parsed body or None)``."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError):  # not listening (yet), reset, timed out
        return 0, None


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, every: float = 0.2, cli: Cli | None = None
) -> Any:
    """Poll ``check`` until it returns something truthy; :class:`LifecycleError` on timeout, or
    at once when one of ``cli``'s servers has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cli is not None:
            cli.check_alive()
        got = check()
        if got:
            return got
        time.sleep(every)
    raise LifecycleError(f"timed out after {timeout:.0f} s waiting for {what}")


class BenignTraffic:
    """Clients sending clean test images (1–4 per request) at about ``rate`` requests/s."""

    def __init__(self, url: str, key: str, images: torch.Tensor, rate: float, seed: int) -> None:
        self.url, self.key, self.images, self.rate = url, key, images, rate
        self.gen = torch.Generator().manual_seed(seed)
        # Each client input once per pass over a seeded order: a real client does not re-send
        # one image within its last hundred queries (that is what the detector looks for).
        self.order = torch.randperm(len(images), generator=self.gen)
        self.sent_inputs = 0
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        period = 1.0 / self.rate
        while not self._stop.is_set():
            started = time.monotonic()
            n = int(torch.randint(1, 5, (1,), generator=self.gen))
            idx = self.order[(self.sent_inputs + torch.arange(n)) % len(self.order)]
            self.sent_inputs += n
            status, _ = http_json(
                f"{self.url}/v1/predict", self.key, {"inputs": self.images[idx].tolist()}
            )
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def __enter__(self) -> BenignTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop ``proc`` when the block ends, however it ends."""
    try:
        yield proc
    finally:
        stop(proc)


# --- the page -------------------------------------------------------------------------------

_STEP_COLOURS = {
    "build": "#4c78a8",
    "serve": "#54a24b",
    "attack": "#e45756",
    "alert": "#f58518",
    "promote": "#b279a2",
    "canary": "#e45756",
    "rollback": "#f58518",
    "review": "#72b7b2",
    "retrain": "#4c78a8",
}


def render_page(title: str, timeline: Timeline, summary: dict[str, Any]) -> str:
    """A self-contained HTML page of the timeline and the run's key figures."""
    rows = []
    for e in timeline.events:
        colour = _STEP_COLOURS.get(e.step, "#888")
        data = html.escape(json.dumps(e.data, indent=1, default=str)) if e.data else ""
        details = f"<details><summary>evidence</summary><pre>{data}</pre></details>" if data else ""
        rows.append(
            f"<tr><td class=t>{e.t:.1f} s</td>"
            f"<td><span class=step style='background:{colour}'>{html.escape(e.step)}</span></td>"
            f"<td>{html.escape(e.detail)}{details}</td></tr>"
        )

    def shown(v: Any) -> str:
        if isinstance(v, dict):
            return "; ".join(f"{k}: {x}" for k, x in v.items())
        if isinstance(v, list):
            return ", ".join(str(x) for x in v)
        return str(v)

    facts = "".join(
        f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td>{html.escape(shown(v))}</td></tr>"
        for k, v in summary.items()
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}}
table{{border-collapse:collapse;width:100%;margin-bottom:2em}}
td,th{{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}}
td.t{{font-variant-numeric:tabular-nums;white-space:nowrap;color:#555}}
.step{{color:#fff;border-radius:3px;padding:0 .4em;font-size:12px}}
pre{{font-size:12px;background:#f6f6f6;padding:.5em;overflow-x:auto}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Key figures</h2><table>{facts}</table>
<h2>Timeline</h2><table>{"".join(rows)}</table>
</body></html>
"""


# --- the run --------------------------------------------------------------------------------


def prepare(spec_path: Path, out: Path) -> dict[str, Any]:
    """A fresh output folder with the spec copied in; returns the spec as a dict."""
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    spec = yaml.safe_load(spec_path.read_text())
    (out / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return dict(spec)


def weak_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec of the weak model someone promotes by break-glass: one short epoch."""
    weak: dict[str, Any] = json.loads(json.dumps(spec))
    weak["train"] = {**weak["train"], "epochs": 1, "lr": 0.0001, "out": "weights/weak.safetensors"}
    weak["model"]["weights"] = "weights/weak.safetensors"
    return weak


def test_images(spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's embedded test split (images, labels)."""
    data = spec.get("data") or {}
    ds = load_dataset(
        str(data.get("name", "mnist_subset")),
        float(data.get("test_fraction", 0.2)),
        int(data.get("split_seed", 0)),
    )
    return ds.x_test, ds.y_test


@dataclass
class Keys:
    """The API keys the run makes (plaintext, shown once by ``robustops keys add``)."""

    admin: str
    benign: str
    attacker: str
    canary: str


def _make_keys(cli: Cli, keys_file: str) -> Keys:
    def add(name: str, role: str) -> str:
        return cli.run("keys", "add", name, "--keys", keys_file, "--role", role).strip()

    return Keys(
        admin=add("lc-admin", "admin"),
        benign=add("benign-app", "client"),
        attacker=add("attacker", "client"),
        canary=add("canary", "canary"),
    )


def _served_version(url: str, key: str) -> str | None:
    status, body = http_json(f"{url}/v1/model", key, timeout=3.0)
    return str(body.get("version")) if status == 200 and isinstance(body, dict) else None


def _build(
    cli: Cli, tl: Timeline, spec: str, model: str, result: str, *, baseline: str | None
) -> tuple[str, bool]:
    """train → evaluate → gate (all registered); the new version's label and whether the gate
    passed (without a baseline it must: a failure raises)."""
    t = time.monotonic()
    cli.run("train", "--spec", spec, "--register", "--as", ENGINEER)
    cli.run("evaluate", "--spec", spec, "--out", result, "--register", "--as", ENGINEER)
    gate = ["gate", "--result", result, "--policy", spec, "--register", "--as", ENGINEER]
    if baseline is not None:
        gate += ["--baseline", baseline]
    verdict = cli.run(*gate, check=baseline is None)
    passed = cli.returncode == 0
    summary = json.loads((cli.folder / result).read_text())
    clean = f"{summary['clean_accuracy']:.1%}"
    robust = ", ".join(f"{t['name']} {t['robust_accuracy']:.1%}" for t in summary["threats"])
    version = cli.run("registry", "show", f"{model}@latest").split()[0]
    failed = [line.strip() for line in verdict.splitlines() if line.startswith("  ")]
    tl.mark(
        "build",
        f"{version}: trained, evaluated (clean {clean}; robust: {robust}), gate "
        f"{'passed' if passed else 'FAILED'} ({time.monotonic() - t:.0f} s)",
        result=result,
        **({} if passed else {"gate_failures": failed}),
    )
    return version, passed


def run_lifecycle(
    spec_path: Path, out: Path, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the whole loop into ``out`` (emptied first); returns the summary it also writes."""
    out = out.resolve()  # the commands run inside it: every path handed to them is absolute
    spec = prepare(spec_path, out)
    tl = Timeline(echo)
    cli = Cli(out, out / "logs")
    model = str((spec.get("registry") or {}).get("model") or spec["name"])
    serve_cfg, monitor_cfg = spec.get("serve") or {}, spec.get("monitor") or {}
    keys_file = str(serve_cfg.get("keys", "guard/keys.db"))
    summary: dict[str, Any] = {"spec": str(spec_path), "model": model}
    x_test, y_test = test_images(spec)
    attacker_images = slice(600, 608)  # the attacker's own digits; the clients send the rest
    benign_images = torch.cat([x_test[: attacker_images.start], x_test[attacker_images.stop :]])

    # 1. Build, gate, approve and promote the first model.
    cli.run("registry", "init", "--admin", ADMIN)
    for name, role in ((ENGINEER, "engineer"), (APPROVER, "approver"), (MONITOR, "engineer")):
        cli.run("registry", "principal", "add", name, "--role", role, "--as", ADMIN)
    cli.run("registry", "policy", model, "production", "spec.yaml", "--as", ADMIN)
    good, _ = _build(cli, tl, "spec.yaml", model, "results/v1.json", baseline=None)
    cli.run("registry", "approve", f"{model}@latest", "--as", APPROVER, "--comment", "gate passed")
    cli.run("registry", "promote", f"{model}@latest", "production", "--as", ENGINEER)
    tl.mark("promote", f"{good} approved (four eyes) and promoted to production")
    # The weak model someone will push by break-glass later, trained now to keep the run short.
    (out / "weak.yaml").write_text(yaml.safe_dump(weak_variant(spec), sort_keys=False))
    cli.run("train", "--spec", "weak.yaml", "--register", "--as", ENGINEER)
    weak = cli.run("registry", "show", f"{model}@latest").split()[0]
    tl.mark("build", f"{weak}: a one-epoch model registered (not gated)")
    cli.run("canary", "init", "--spec", "spec.yaml", "--as", ENGINEER)
    tl.mark("canary", "canary set picked from the accepted result and registered")

    # 2. Serve, with a webhook for the monitor's alerts.
    keys = _make_keys(cli, keys_file)
    canary_records = str((monitor_cfg.get("canary") or {}).get("records", "guard/canary"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with WebhookReceiver() as hook:
        spec["monitor"] = {**monitor_cfg, "webhooks": [{"url": hook.url}]}
        (out / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        guard = cli.start(
            "guard",
            "serve",
            "--spec",
            "spec.yaml",
            "--version",
            f"{model}:production",
            "--registry",
            "registry",
            "--port",
            str(port),
        )
        with running(guard):
            wait_for("the guard to answer /readyz", lambda: _served_version(url, keys.admin), 120)
            tl.mark("serve", f"guard up at {url}, serving {_served_version(url, keys.admin)}")
            monitor = cli.start("monitor", "monitor", "run", "--spec", "spec.yaml")
            canary = cli.start(
                "canary",
                "canary",
                "run",
                "--spec",
                "spec.yaml",
                "--url",
                url,
                env={
                    str(
                        monitor_cfg.get("canary", {}).get("key_env", "ROBUSTOPS_CANARY_KEY")
                    ): keys.canary
                },
            )
            with (
                running(monitor),
                running(canary),
                BenignTraffic(url, keys.benign, benign_images, 25.0, 0) as traffic,
            ):
                calib = int((monitor_cfg.get("calibration") or {}).get("requests", 200))
                wait_for(
                    "benign traffic for the calibration window",
                    lambda: traffic.sent >= calib + 50,
                    300,
                    cli=cli,
                )
                tl.mark(
                    "serve", f"{traffic.sent} benign requests: the monitor calibrated on {calib}"
                )
                summary["attack"] = _attack(
                    url, keys.attacker, x_test[attacker_images], y_test[attacker_images], tl
                )
                alert = wait_for("the monitor's alert", lambda: hook.alerts[:1], 60, 0.2, cli)[0]
                tl.mark(
                    "alert",
                    f"alert {alert.get('rule')} fired: {alert.get('summary', '')}",
                    alert=alert,
                )
                summary["first_alert"] = alert.get("rule")

                # 3. A weak model by break-glass; the canary must catch it and roll back.
                cli.run(
                    "registry",
                    "promote",
                    weak,
                    "production",
                    "--break-glass",
                    "hotfix pushed without the gate",
                    "--as",
                    ADMIN,
                )
                t_bad = time.monotonic()
                tl.mark("promote", f"{weak} promoted to production by break-glass")
                wait_for(
                    "the guard to serve the weak model",
                    lambda: _served_version(url, keys.admin) == weak,
                    30,
                    cli=cli,
                )
                tl.mark(
                    "serve",
                    f"guard now serving {weak} ({time.monotonic() - t_bad:.1f} s after the promotion)",
                )
                wait_for(
                    "the rollback", lambda: _served_version(url, keys.admin) == good, 120, 0.25, cli
                )
                rolled = time.monotonic() - t_bad
                finding = _canary_finding(out / canary_records)
                if finding is not None:
                    tl.mark("canary", finding.pop("detail"), **finding)
                tl.mark(
                    "rollback",
                    f"production back on {good}, {rolled:.1f} s after the bad promotion",
                    **_rollback_evidence(out / "registry", model),
                )
                summary["bad_promotion_to_rollback_s"] = round(rolled, 1)
                summary["benign_requests"] = traffic.sent
                summary["benign_statuses"] = dict(traffic.statuses)
            summary["alerts"] = [f"{a.get('rule')} ({a.get('model')})" for a in hook.alerts]
            for a in hook.alerts[1:]:
                tl.mark(
                    "alert", f"alert {a.get('rule')} on {a.get('model')}: {a.get('summary', '')}"
                )

            # 4. Review what the guard flagged, retrain with it, gate and promote.
            cli.run("review", "harvest", "--spec", "spec.yaml")
            queue = out / str((monitor_cfg.get("harvest") or {}).get("queue", "guard/review.db"))
            labelled = _scripted_review(queue, x_test, y_test)
            tl.mark("review", f"{labelled} harvested inputs labelled by the scripted reviewer")
            cli.run(
                "review",
                "dataset",
                "--spec",
                "spec.yaml",
                "--out",
                "reviewed",
                "--registry",
                "registry",
                "--as",
                ENGINEER,
            )
            manifest = json.loads((out / "reviewed" / "manifest.json").read_text())
            retrain = json.loads(json.dumps(spec))
            retrain["data"]["extra_train"] = [
                {"path": manifest["path"], "sha256": manifest["sha256"]}
            ]
            retrain["model"]["weights"] = retrain["train"]["out"] = "weights/retrained.safetensors"
            (out / "retrain.yaml").write_text(yaml.safe_dump(retrain, sort_keys=False))
            newer, passed = _build(
                cli, tl, "retrain.yaml", model, "results/v3.json", baseline="results/v1.json"
            )
            summary["retrained"] = {
                "version": newer,
                "gate_passed": passed,
                "reviewed": manifest.get("n"),
            }
            if passed:
                cli.run(
                    "registry", "approve", f"{model}@latest", "--as", APPROVER,
                    "--comment", "retrained on reviewed inputs",
                )  # fmt: skip
                cli.run("registry", "promote", f"{model}@latest", "production", "--as", ENGINEER)
                wait_for(
                    "the guard to serve the retrained model",
                    lambda: _served_version(url, keys.admin) == newer,
                    60,
                )
                tl.mark(
                    "retrain",
                    f"{newer} (with {manifest.get('n')} reviewed inputs) gated, approved and now "
                    "serving",
                )
            else:  # the gate is the gate: a retrained model that regressed is not promoted
                tl.mark(
                    "retrain",
                    f"{newer} (with {manifest.get('n')} reviewed inputs) failed the gate against "
                    f"{good}'s result; production stays on {_served_version(url, keys.admin)}",
                )
    cli.run("registry", "audit", "verify")
    tl.mark("build", "registry audit chain verified")
    summary["seconds"] = round(tl.now(), 1)
    (out / "timeline.json").write_text(
        json.dumps({"summary": summary, "events": tl.to_json()}, indent=1)
    )
    (out / "lifecycle.html").write_text(render_page(f"RobustOps lifecycle: {model}", tl, summary))
    return summary


def _attack(url: str, key: str, x: torch.Tensor, y: torch.Tensor, tl: Timeline) -> dict[str, Any]:
    """Square (L∞ 0.1, score-based on the top-1 confidence) against the live endpoint with an
    ordinary client key, until the guard blocks it."""
    from robustops.attacks import Square
    from robustops.models.remote import RemoteClassifier, RemoteError
    from robustops.threats import ThreatModel

    remote = RemoteClassifier(url, key, output="top1", max_wait=5.0)
    threat = ThreatModel(name="linf", norm="linf", epsilon=0.1, knowledge="score-based")
    attack = Square(threat, queries=300, seed=0)
    outcome = "finished"
    try:
        attack(remote, x, y)
    except RemoteError as exc:
        outcome = f"stopped: {exc}"
    facts = {
        "queries": remote.queries,
        "requests": remote.requests,
        "flagged": remote.flagged,
        "rate_limited": remote.rate_limited,
        "outcome": outcome,
    }
    tl.mark(
        "attack",
        f"Square over HTTP: {remote.requests} requests, {remote.flagged} flagged, "
        f"{remote.rate_limited} throttled; {outcome}",
        **facts,
    )
    remote.close()
    return facts


def _canary_finding(folder: Path) -> dict[str, Any] | None:
    """The first canary run record that rolled production back, in words and figures."""
    for path in sorted(folder.glob("canary-*.json")):
        rec = json.loads(path.read_text())
        if not (rec.get("rollback") or {}).get("rolled_back"):
            continue
        tests = rec.get("tests") or {}
        parts = [
            f"{name} {t['baseline_correct']}→{t['canary_correct']}/{t['n']} "
            f"(McNemar p={t['p_value']:.2g})"
            for name, t in tests.items()
        ]
        served = (rec.get("served") or {}).get("version")
        return {
            "detail": f"canary run on {served}: {', '.join(parts)}; "
            f"{rec.get('vulnerability')} opened, rollback requested",
            "record": path.name,
            "tests": tests,
            "queries": rec.get("queries"),
        }
    return None


def _rollback_evidence(home: Path, model: str) -> dict[str, Any]:
    """Who rolled production back and why (the alias event), and the vulnerability the canary
    opened, read from the registry."""
    from robustops.registry.service import Registry
    from robustops.registry.vulnerabilities import list_vulnerabilities

    reg = Registry.open(home)
    try:
        ev = reg.history(model, "production", limit=1)[0]
        vulns = list_vulnerabilities(reg, model=model)
        return {
            "alias_event": {"kind": ev.kind, "actor": ev.actor, "reason": ev.reason, "at": ev.at},
            "vulnerabilities": [
                {"id": v.id, "title": v.title, "severity": v.severity, "affected": v.affected}
                for v in vulns
            ],
        }
    finally:
        reg.close()


def _scripted_review(queue: Path, x_test: torch.Tensor, y_test: torch.Tensor) -> int:
    """Label every pending queued input with the class of its nearest clean test image (L∞):
    the attacker's inputs are small perturbations of test images, which a human reviewer would
    read as that digit. Recorded as reviewer ``scripted-reviewer``."""
    from robustops.monitoring.harvest import ReviewQueue

    q = ReviewQueue(queue)
    flat = x_test.flatten(1)
    items = q.items(status="pending")
    for item in items:
        x = torch.tensor(item.input, dtype=torch.float32).flatten()
        nearest = int((flat - x).abs().amax(dim=1).argmin())
        q.label(item.id, int(y_test[nearest]), reviewer="scripted-reviewer", source="lifecycle")
    return len(items)
