"""Label Studio round trip for the review queue.

:func:`export_tasks` writes the pending (or chosen) queue items as Label Studio tasks (a JSON
list to import into a project): image items as ``data.image`` — a ``data:image/png;base64,…`` URI
of the input drawn with Pillow (grey, or RGB for 3 channels; small images scaled up by an
integer factor to at least 112 pixels, nearest neighbour) — text items as ``data.text``; each
task's ``data`` also carries ``item_id`` and ``sha256`` (how answers map back), the served
``model``, its ``predicted`` class name and ``reasons``; the model's guess rides along as a
pre-annotation (``predictions``). :func:`labeling_config` is the matching labelling interface
(one ``Choices`` control named ``label`` over the class names).

:func:`import_annotations` reads Label Studio's JSON export (a list of tasks each with
``annotations``), validates it (an error names ``tasks[i]`` and the field) and records every
completed, not cancelled annotation as a label event (``source`` ``labelstudio``; reviewer the
annotator's e-mail, or ``labelstudio:<user id>``, or the given fallback; time the annotation's
``updated_at``/``created_at``). A task maps back by its ``data.sha256`` (``data.item_id`` must
agree when both are there). Annotations already imported (same item, reviewer, label and time)
are not recorded twice.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from robustops.monitoring.harvest import QueueItem, ReviewError, ReviewQueue
from robustops.monitoring.review import _unit, image_array

__all__ = ["ImportStats", "export_tasks", "image_data_uri", "import_annotations", "labeling_config"]

FROM_NAME = "label"
"""The ``Choices`` control's name in :func:`labeling_config`."""


def image_data_uri(x: Any, *, item: int | str = "?", min_side: int = 112) -> str:
    """A tensor input as a ``data:image/png;base64,…`` URI (Pillow PNG; values scaled to
    0–255; scaled up by an integer factor, nearest neighbour, until the short side reaches
    ``min_side`` pixels)."""
    from PIL import Image

    a = _unit(image_array(x, item=item))
    img = Image.fromarray(np.rint(a * 255).astype(np.uint8), mode="RGB" if a.ndim == 3 else "L")
    factor = max(1, -(-min_side // min(img.size)))
    if factor > 1:
        img = img.resize((img.size[0] * factor, img.size[1] * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def labeling_config(classes: Sequence[str], modality: str) -> str:
    """The Label Studio labelling interface (XML) for the tasks of :func:`export_tasks`."""
    obj = (
        '  <Image name="image" value="$image" zoom="true"/>'
        if modality == "tensor"
        else '  <Text name="text" value="$text"/>'
    )
    to = "image" if modality == "tensor" else "text"
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f"{obj}\n"
        '  <Header value="Reasons: $reasons; the model said $predicted"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{to}" choice="single" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _task(it: QueueItem, classes: Sequence[str]) -> dict[str, Any]:
    to = "image" if it.modality == "tensor" else "text"
    data: dict[str, Any] = {
        "item_id": it.id,
        "sha256": it.sha256,
        "model": it.model,
        "predicted": classes[it.predicted]
        if it.predicted is not None and 0 <= it.predicted < len(classes)
        else "",
        "reasons": ", ".join(it.reasons),
        "count": it.count,
    }
    if it.modality == "tensor":
        data["image"] = image_data_uri(it.input, item=it.id)
    else:
        data["text"] = it.input
    task: dict[str, Any] = {"data": data}
    if data["predicted"]:
        task["predictions"] = [
            {
                "model_version": it.model,
                "score": it.confidence if it.confidence is not None else 0.0,
                "result": [
                    {
                        "from_name": FROM_NAME,
                        "to_name": to,
                        "type": "choices",
                        "value": {"choices": [data["predicted"]]},
                    }
                ],
            }
        ]
    return task


def export_tasks(
    items: Sequence[QueueItem], classes: Sequence[str]
) -> tuple[list[dict[str, Any]], str]:
    """Label Studio tasks for ``items`` (all of one modality) and the labelling config."""
    modalities = {it.modality for it in items}
    if len(modalities) > 1:
        raise ReviewError(
            "the items mix text and tensor inputs; export them separately (--modality)"
        )
    modality = modalities.pop() if modalities else "tensor"
    return [_task(it, classes) for it in items], labeling_config(classes, modality)


@dataclass
class ImportStats:
    """What :func:`import_annotations` did: tasks read, label events recorded, annotations
    already recorded, cancelled or empty ones skipped, and items whose annotators disagree."""

    tasks: int = 0
    recorded: int = 0
    already: int = 0
    skipped: int = 0
    disagreements: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dict(self.__dict__)


def _when(ann: dict[str, Any], where: str) -> float:
    raw = ann.get("updated_at") or ann.get("created_at")
    if raw is None:
        return dt.datetime.now(dt.UTC).timestamp()
    if not isinstance(raw, str):
        raise ReviewError(f"{where}.updated_at: not a date string")
    try:
        t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ReviewError(f"{where}.updated_at: {raw!r} is not an ISO date") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _reviewer(ann: dict[str, Any], fallback: str | None, where: str) -> str:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        email = who.get("email")
        if isinstance(email, str) and email.strip():
            return email.strip()
        who = who.get("id")
    if isinstance(who, int) and not isinstance(who, bool):
        return f"labelstudio:{who}"
    if isinstance(who, str) and who.strip():
        return who.strip()
    if fallback:
        return fallback
    raise ReviewError(f"{where}.completed_by: no annotator; give --reviewer")


def _choice(ann: dict[str, Any], where: str) -> str | None:
    result = ann.get("result")
    if not isinstance(result, list):
        raise ReviewError(f"{where}.result: must be a list")
    picked: list[str] = []
    for j, r in enumerate(result):
        w = f"{where}.result[{j}]"
        if not isinstance(r, dict):
            raise ReviewError(f"{w}: must be an object")
        if r.get("from_name") != FROM_NAME or r.get("type") != "choices":
            continue
        value = r.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ReviewError(f"{w}.value.choices: must be a list of class names")
        if len(choices) != 1:
            raise ReviewError(f"{w}.value.choices: pick exactly one class, got {choices}")
        picked.append(choices[0])
    if len(set(picked)) > 1:
        raise ReviewError(f"{where}.result: several different choices {picked}")
    return picked[0] if picked else None


def import_annotations(
    queue: ReviewQueue,
    path: str | Path,
    classes: Sequence[str],
    *,
    reviewer: str | None = None,
) -> ImportStats:
    """Record the annotations of Label Studio's JSON export ``path`` in ``queue`` (see the
    module docstring). The whole file is validated before anything is recorded."""
    p = Path(path)
    try:
        tasks = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{p}: not a readable JSON file ({exc})") from None
    if not isinstance(tasks, list):
        raise ReviewError(f"{p}: Label Studio's JSON export is a list of tasks")
    plan: list[tuple[int, int, str, float, str]] = []  # item, label, reviewer, at, task
    for i, task in enumerate(tasks):
        where = f"{p.name}: tasks[{i}]"
        if not isinstance(task, dict):
            raise ReviewError(f"{where}: must be an object")
        if "id" in task:
            where += f" (task {task['id']})"
        data = task.get("data")
        if not isinstance(data, dict):
            raise ReviewError(f"{where}.data: missing (export with the task data)")
        sha = data.get("sha256")
        if not isinstance(sha, str) or not sha:
            raise ReviewError(f"{where}.data.sha256: missing; was the task exported by robustops?")
        item = queue.by_sha256(sha)
        if item is None:
            raise ReviewError(f"{where}.data.sha256: no queue item holds input {sha[:12]}…")
        if "item_id" in data and data["item_id"] != item.id:
            raise ReviewError(
                f"{where}.data.item_id: {data['item_id']!r}, but the input {sha[:12]}… is item "
                f"{item.id} in {queue.path}"
            )
        anns = task.get("annotations", [])
        if not isinstance(anns, list):
            raise ReviewError(f"{where}.annotations: must be a list")
        for j, ann in enumerate(anns):
            w = f"{where}.annotations[{j}]"
            if not isinstance(ann, dict):
                raise ReviewError(f"{w}: must be an object")
            if ann.get("was_cancelled") is True:
                plan.append((item.id, -1, "", 0.0, w))
                continue
            choice = _choice(ann, w)
            if choice is None:
                plan.append((item.id, -1, "", 0.0, w))
                continue
            if choice not in classes:
                raise ReviewError(f"{w}.result: {choice!r} is not a class {list(classes)}")
            plan.append(
                (
                    item.id,
                    list(classes).index(choice),
                    _reviewer(ann, reviewer, w),
                    _when(ann, w),
                    w,
                )
            )
    stats = ImportStats(tasks=len(tasks))
    per_item: dict[int, set[int]] = {}
    for item_id, label, who, at, w in plan:
        if label < 0:
            stats.skipped += 1
            continue
        per_item.setdefault(item_id, set()).add(label)
        done = queue.get(item_id).history
        if any(
            h.action == "label" and h.label == label and h.reviewer == who and abs(h.at - at) < 1e-3
            for h in done
        ):
            stats.already += 1
            continue
        queue.label(
            item_id,
            label,
            reviewer=who,
            num_classes=len(classes),
            source="labelstudio",
            at=at,
            note=w,
        )
        stats.recorded += 1
    stats.disagreements = sorted(i for i, labels in per_item.items() if len(labels) > 1)
    return stats
