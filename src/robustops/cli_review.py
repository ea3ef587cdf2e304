"""``robustops review``: harvest what the guard flagged, abstained on or found unusual into a
review queue, label it (one by one in the terminal, by script, or through Label Studio), and
write the labels as a versioned data set a training spec can add (``data.extra_train``).

Every command takes ``--spec`` (the queue is ``monitor.harvest.queue``, the log folder
``monitor.request_log``, the class names and input shape come from the spec's data);
``--queue`` overrides the queue file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from robustops.console import console, err_console, fail
from robustops.errors import RobustOpsError

if TYPE_CHECKING:
    from robustops.config import PipelineSpec
    from robustops.monitoring.harvest import QueueItem, ReviewQueue

review_app = typer.Typer(
    no_args_is_help=True,
    help="Human review of harvested inputs: queue, labels, Label Studio, reviewed data sets.",
)

SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML)")]
QueueOpt = Annotated[
    Path | None,
    typer.Option("--queue", help="the review queue (SQLite; default monitor.harvest.queue)"),
]
ReviewerOpt = Annotated[
    str | None,
    typer.Option(
        "--reviewer",
        help="who labels (default $ROBUSTOPS_REVIEWER, $ROBUSTOPS_PRINCIPAL or the OS user)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass(frozen=True)
class _Ctx:
    spec: PipelineSpec
    queue: ReviewQueue
    log_folder: Path


def _ctx(spec: Path, queue: Path | None) -> _Ctx:
    from robustops.config import load_spec
    from robustops.monitoring.config import MonitorConfig
    from robustops.monitoring.harvest import ReviewQueue

    s = load_spec(spec)
    mon = s.monitor or MonitorConfig()
    return _Ctx(s, ReviewQueue(queue or Path(mon.harvest.queue)), Path(mon.request_log))


@dataclass(frozen=True)
class _DataInfo:
    classes: list[str]
    modality: str
    input_shape: list[int] | None


def _data_info(ctx: _Ctx) -> _DataInfo:
    """Class names, modality and input shape of the spec's data (cached in the queue's meta
    under the data's fingerprint-free identity: its name and source)."""
    key = json.dumps(ctx.spec.data.model_dump(mode="json", exclude={"extra_train"}), sort_keys=True)
    cached = ctx.queue.get_meta("data")
    if isinstance(cached, dict) and cached.get("key") == key:
        return _DataInfo(cached["classes"], cached["modality"], cached["input_shape"])
    from robustops.data import Dataset
    from robustops.runner import load_spec_dataset

    data = load_spec_dataset(ctx.spec)
    if isinstance(data, Dataset):
        classes = list(data.classes) if data.classes else [str(k) for k in range(data.num_classes)]
        info = _DataInfo(classes, "tensor", list(data.input_shape))
    else:
        info = _DataInfo(list(data.classes), "text", None)
    ctx.queue.set_meta("data", {"key": key, **info.__dict__})
    return info


def _reviewer(flag: str | None) -> str:
    import getpass

    return (
        flag
        or os.environ.get("ROBUSTOPS_REVIEWER")
        or os.environ.get("ROBUSTOPS_PRINCIPAL")
        or getpass.getuser()
    )


def _when(t: float | None) -> str:
    if t is None:
        return "—"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _class(k: int | None, classes: list[str]) -> str:
    if k is None:
        return "—"
    name = classes[k] if 0 <= k < len(classes) else "?"
    return str(k) if name == str(k) else f"{k} {name}"


@review_app.command("harvest")
def harvest_cmd(
    spec: SpecOpt,
    queue: QueueOpt = None,
    log: Annotated[
        Path | None, typer.Option("--log", help="request log folder (default monitor.request_log)")
    ] = None,
    ood_threshold: Annotated[
        float | None,
        typer.Option(
            "--ood-threshold",
            help="queue inputs whose anomaly score is above this (default "
            "monitor.harvest.ood_threshold; none: only flagged and abstained)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read the guard's request log (from where the last harvest stopped) into the queue."""
    from robustops.monitoring.harvest import harvest

    try:
        ctx = _ctx(spec, queue)
        cfg = (ctx.spec.monitor.harvest if ctx.spec.monitor else None) or _default_harvest()
        folder = log or ctx.log_folder
        stats = harvest(
            folder,
            ctx.queue,
            flagged=cfg.flagged,
            abstained=cfg.abstained,
            ood_threshold=ood_threshold
            if ood_threshold is not None
            else (cfg.ood_threshold if cfg.out_of_distribution else None),
            max_request_ids=cfg.max_request_ids,
        )
        counts = ctx.queue.counts()
    except RobustOpsError as exc:
        fail(exc)
    if as_json:
        print(json.dumps({"stats": stats.to_json(), "queue": counts}))
        return
    console.print(
        f"harvested {folder}: {stats.lines} lines in {stats.files} files, {stats.records} "
        f"predict records ({stats.canary} canary, {stats.without_inputs} without inputs); "
        f"[green]{stats.new} new[/], {stats.seen_again} seen again; {stats.bad} bad lines, "
        f"{stats.partial} partial last lines left",
        highlight=False,
    )
    for b in stats.bad_examples:
        err_console.print(f"  [yellow]bad line[/]: {escape(b)}", highlight=False)
    console.print(
        f"queue {ctx.queue.path}: {counts['pending']} pending, {counts['labelled']} labelled, "
        f"{counts['skipped']} skipped",
        highlight=False,
    )
    if stats.records and stats.without_inputs == stats.records:
        err_console.print(
            "[yellow]note[/]: no record carries inputs; set serve.log_inputs: true to harvest"
        )


def _default_harvest() -> Any:
    from robustops.monitoring.config import HarvestConfig

    return HarvestConfig()


@review_app.command("list")
def list_cmd(
    spec: SpecOpt,
    queue: QueueOpt = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, labelled or skipped")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    as_json: JsonOpt = False,
    inputs: Annotated[
        bool, typer.Option("--inputs/--no-inputs", help="with --json: include each input")
    ] = True,
) -> None:
    """The queue's items, most seen first (--json: every field, the input and the label
    history included)."""
    try:
        if status not in (None, "pending", "labelled", "skipped"):
            from robustops.monitoring.harvest import ReviewError

            raise ReviewError(f"--status: pending, labelled or skipped, got {status!r}")
        ctx = _ctx(spec, queue)
        items = ctx.queue.items(status=status, limit=limit)  # type: ignore[arg-type]
        info = _data_info(ctx)
    except RobustOpsError as exc:
        fail(exc)
    if as_json:
        print(json.dumps([it.to_json(with_input=inputs) for it in items], ensure_ascii=False))
        return
    t = Table(title=f"review queue {ctx.queue.path}")
    for col in ("id", "status", "label", "model said", "conf", "reasons", "seen", "last seen"):
        t.add_column(col)
    for it in items:
        t.add_row(
            str(it.id),
            it.status,
            _class(it.label, info.classes),
            _class(it.predicted, info.classes),
            "—" if it.confidence is None else f"{it.confidence:.2f}",
            ", ".join(it.reasons),
            str(it.count),
            _when(it.last_seen),
        )
    console.print(t)


def _render(it: QueueItem, classes: list[str]) -> None:
    from robustops.monitoring.review import image_preview, visible_text

    console.rule(f"item {it.id}  ·  {it.sha256[:12]}…")
    console.print(
        f"model [bold]{escape(it.model)}[/] said [bold]{escape(_class(it.predicted, classes))}[/]"
        + (f" (confidence {it.confidence:.2f})" if it.confidence is not None else "")
        + (f", anomaly score {it.score:.3g}" if it.score is not None else ""),
        highlight=False,
    )
    console.print(
        f"why: {', '.join(it.reasons)}"
        + (f" (detectors: {escape(', '.join(it.flags))})" if it.flags else "")
        + f"; seen {it.count}× from {escape(', '.join(it.keys))}, {_when(it.first_seen)} – "
        f"{_when(it.last_seen)}",
        highlight=False,
    )
    if it.modality == "tensor":
        try:
            console.print(image_preview(it.input, item=it.id), highlight=False, markup=False)
        except RobustOpsError:
            console.print(f"input: {escape(json.dumps(it.input)[:400])}", highlight=False)
    else:
        console.print("text:", highlight=False)
        console.print(f"  {escape(visible_text(str(it.input)))}", highlight=False, soft_wrap=True)
    for h in it.history:
        what = _class(h.label, classes) if h.action == "label" else "skipped"
        console.print(
            f"  [dim]{_when(h.at)} {escape(h.reviewer)} ({h.source}): {escape(what)}[/]",
            highlight=False,
        )


@review_app.command("show")
def show_cmd(
    item: Annotated[int, typer.Argument(help="queue item id")],
    spec: SpecOpt,
    queue: QueueOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One item: the input (an image preview, or the text with hidden characters shown), what
    the model said, why it was harvested, and its label history."""
    try:
        ctx = _ctx(spec, queue)
        it = ctx.queue.get(item)
        classes = _data_info(ctx).classes
    except RobustOpsError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(it.to_json(), ensure_ascii=False))
        return
    _render(it, classes)


@review_app.command("next")
def next_cmd(
    spec: SpecOpt,
    queue: QueueOpt = None,
    reviewer: ReviewerOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="stop after N items")] = None,
) -> None:
    """Review pending items one by one: answer a class index or name, `s` to skip, `q` to
    stop. Every answer is recorded with the reviewer and the time."""
    from robustops.monitoring.harvest import ReviewError
    from robustops.monitoring.review import parse_label

    try:
        ctx = _ctx(spec, queue)
        info = _data_info(ctx)
        who = _reviewer(reviewer)
        items = ctx.queue.items(status="pending", limit=limit)
    except RobustOpsError as exc:
        fail(exc)
    if not items:
        console.print("nothing pending in the queue")
        return
    console.print(
        f"{len(items)} item(s) to review as [bold]{escape(who)}[/]; classes: "
        + ", ".join(_class(k, info.classes) for k in range(len(info.classes))),
        highlight=False,
    )
    done = skipped = 0
    for it in items:
        _render(it, info.classes)
        while True:
            answer = typer.prompt("label (index or name), s skip, q quit").strip()
            if answer.lower() == "q":
                console.print(f"stopped: {done} labelled, {skipped} skipped")
                return
            try:
                if answer.lower() == "s":
                    ctx.queue.skip(it.id, reviewer=who)
                    skipped += 1
                else:
                    k = parse_label(answer, info.classes, item=it.id)
                    ctx.queue.label(it.id, k, reviewer=who, num_classes=len(info.classes))
                    done += 1
                break
            except ReviewError as exc:
                err_console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
    console.print(f"done: {done} labelled, {skipped} skipped")


@review_app.command("label")
def label_cmd(
    item: Annotated[int, typer.Argument(help="queue item id")],
    label: Annotated[str, typer.Argument(help="class index or class name")],
    spec: SpecOpt,
    queue: QueueOpt = None,
    reviewer: ReviewerOpt = None,
    note: Annotated[str, typer.Option("--note")] = "",
) -> None:
    """Label one item (for scripts); a relabel adds to the history, nothing is lost."""
    from robustops.monitoring.review import parse_label

    try:
        ctx = _ctx(spec, queue)
        info = _data_info(ctx)
        ctx.queue.get(item)
        k = parse_label(label, info.classes, item=item)
        ev = ctx.queue.label(
            item, k, reviewer=_reviewer(reviewer), num_classes=len(info.classes), note=note
        )
    except RobustOpsError as exc:
        fail(exc)
    console.print(
        f"item {item}: {escape(_class(k, info.classes))} by {escape(ev.reviewer)}", highlight=False
    )


@review_app.command("skip")
def skip_cmd(
    item: Annotated[int, typer.Argument(help="queue item id")],
    spec: SpecOpt,
    queue: QueueOpt = None,
    reviewer: ReviewerOpt = None,
    note: Annotated[str, typer.Option("--note")] = "",
) -> None:
    """Skip one item (it stays out of the reviewed data set until labelled)."""
    try:
        ctx = _ctx(spec, queue)
        ev = ctx.queue.skip(item, reviewer=_reviewer(reviewer), note=note)
    except RobustOpsError as exc:
        fail(exc)
    console.print(f"item {item}: skipped by {escape(ev.reviewer)}", highlight=False)


@review_app.command("export-labelstudio")
def export_labelstudio(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option("--out", help="the tasks JSON to import into Label Studio")],
    queue: QueueOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="also write the labelling config (XML) here"),
    ] = None,
    status: Annotated[str, typer.Option("--status", help="pending, skipped or all")] = "pending",
) -> None:
    """Write queue items as Label Studio tasks (images as PNG data URIs, texts as text) and
    print the labelling interface to paste into the project's settings."""
    from robustops.io import atomic_write_text
    from robustops.monitoring.harvest import ReviewError
    from robustops.monitoring.labelstudio import export_tasks

    try:
        if status not in ("pending", "skipped", "all"):
            raise ReviewError(f"--status: pending, skipped or all, got {status!r}")
        ctx = _ctx(spec, queue)
        info = _data_info(ctx)
        items = ctx.queue.items(status=None if status == "all" else status)  # type: ignore[arg-type]
        items = [it for it in items if it.modality == info.modality]
        tasks, xml = export_tasks(items, info.classes)
        atomic_write_text(out, json.dumps(tasks, ensure_ascii=False, indent=1))
        if config is not None:
            atomic_write_text(config, xml)
    except RobustOpsError as exc:
        fail(exc)
    console.print(f"{len(tasks)} task(s) written to {out}", highlight=False)
    if config is None:
        console.print("labelling config:", highlight=False)
        console.print(xml, markup=False, highlight=False)
    else:
        console.print(f"labelling config written to {config}", highlight=False)


@review_app.command("import-labelstudio")
def import_labelstudio(
    spec: SpecOpt,
    annotations: Annotated[Path, typer.Argument(help="Label Studio's JSON export")],
    queue: QueueOpt = None,
    reviewer: Annotated[
        str | None,
        typer.Option("--reviewer", help="reviewer for annotations without an annotator"),
    ] = None,
) -> None:
    """Record the annotations of a Label Studio JSON export (tasks map back by the input's
    sha256); the file is validated whole before anything is recorded."""
    from robustops.monitoring.labelstudio import import_annotations

    try:
        ctx = _ctx(spec, queue)
        info = _data_info(ctx)
        stats = import_annotations(ctx.queue, annotations, info.classes, reviewer=reviewer)
    except RobustOpsError as exc:
        fail(exc)
    console.print(
        f"{stats.tasks} task(s): {stats.recorded} label(s) recorded, {stats.already} already "
        f"recorded, {stats.skipped} cancelled or empty",
        highlight=False,
    )
    if stats.disagreements:
        console.print(
            f"[yellow]annotators disagree[/] on item(s) {stats.disagreements}; the newest "
            "annotation is the label (see `robustops review show ID`)",
            highlight=False,
        )


@review_app.command("dataset")
def dataset_cmd(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option("--out", help="folder of the reviewed data set")],
    queue: QueueOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="data set name (default SPEC-NAME-reviewed)")
    ] = None,
    registry: Annotated[
        Path | None, typer.Option("--registry", help="also register it in this registry folder")
    ] = None,
    actor: Annotated[
        str | None,
        typer.Option("--as", help="acting principal (default $ROBUSTOPS_PRINCIPAL or the OS user)"),
    ] = None,
) -> None:
    """Write the labelled items as a versioned data set (reviewed.npz or reviewed.jsonl, with a
    manifest.json holding its sha256) and print the `data.extra_train` entry that adds it to a
    training spec."""
    from robustops.monitoring.review import write_reviewed_dataset

    try:
        ctx = _ctx(spec, queue)
        info = _data_info(ctx)
        manifest = write_reviewed_dataset(
            ctx.queue,
            out,
            name=name or f"{ctx.spec.name}-reviewed",
            classes=info.classes,
            modality=info.modality,
            input_shape=info.input_shape,
            log_folder=str(ctx.log_folder),
            spec_name=ctx.spec.name,
        )
        registered = _register(registry, actor, manifest, out) if registry is not None else None
    except RobustOpsError as exc:
        fail(exc)
    counts = ", ".join(
        f"{c}: {n}" for c, n in zip(info.classes, manifest["class_counts"], strict=True) if n
    )
    console.print(
        f"reviewed data set {escape(manifest['name'])} {manifest['version']}: {manifest['n']} "
        f"sample(s) ({escape(counts)}) by {escape(', '.join(manifest['reviewers']))}",
        highlight=False,
    )
    console.print(f"  {out / manifest['file']}  sha256 {manifest['sha256']}", highlight=False)
    console.print("add to a training spec:", highlight=False)
    console.print(
        f"  data:\n    extra_train:\n      - path: {out / manifest['file']}\n"
        f"        sha256: {manifest['sha256']}",
        markup=False,
        highlight=False,
    )
    if registered is not None:
        console.print(registered, highlight=False)


def _register(home: Path, actor: str | None, manifest: dict[str, Any], out: Path) -> str:
    """Register the data set when the registry knows data sets (``register_dataset``)."""
    from robustops.registry.service import Registry, resolve_actor

    reg = Registry.open(home)
    try:
        fn = getattr(reg, "register_dataset", None)
        if fn is None:
            return (
                "[yellow]not registered[/]: this registry cannot hold data sets yet "
                "(no Registry.register_dataset); the manifest records everything to register later"
            )
        who = resolve_actor(actor)
        row = fn(
            who,
            manifest["name"],
            "reviewed",
            out / manifest["file"],
            meta=manifest,
            n_samples=manifest["n"],
        )
        ref = f"{getattr(row, 'name', manifest['name'])}@{getattr(row, 'version', '?')}"
        return f"registered as data set {ref} in {home} by {who}"
    finally:
        reg.close()
