"""Harvesting the guard's request log into the review queue, labelling, Label Studio round trip
and the reviewed data set (real SQLite files and real JSON-lines logs in tmp folders)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from robustops.cli import app
from robustops.monitoring.harvest import ReviewError, ReviewQueue, harvest
from robustops.monitoring.labelstudio import export_tasks, import_annotations
from robustops.monitoring.review import (
    image_preview,
    parse_label,
    visible_text,
    write_reviewed_dataset,
)

CLASSES = [str(k) for k in range(10)]


def digit(seed: int) -> list[list[list[float]]]:
    """A (1, 8, 8) input in [0, 1] as the guard receives it (nested lists)."""
    rng = np.random.default_rng(seed)
    return np.round(rng.random((1, 8, 8)), 4).tolist()


def sha(x: Any) -> str:
    if isinstance(x, str):
        return hashlib.sha256(x.encode()).hexdigest()
    return hashlib.sha256(np.asarray(x, dtype=np.float32).tobytes()).hexdigest()


def record(
    rid: str,
    inputs: list[Any],
    *,
    action: str = "ok",
    abstain: list[bool] | None = None,
    scores: list[float | None] | None = None,
    labels: list[int] | None = None,
    role: str = "client",
    key: str = "alice",
    ts: float = 1_700_000_000.0,
    log_inputs: bool = True,
    flags: list[str] | None = None,
) -> dict[str, Any]:
    """A ``predict`` line in the contract's format."""
    n = len(inputs)
    abstain = abstain or [False] * n
    scores = scores or [0.1] * n
    labels = labels or [3] * n
    rec: dict[str, Any] = {
        "event": "predict",
        "ts": ts,
        "request_id": rid,
        "key": key,
        "role": role,
        "status": 200,
        "decision": "abstain" if any(abstain) else "predict",
        "action": action,
        "flags": flags if flags is not None else (["burst"] if action != "ok" else []),
        "latency_ms": 3.2,
        "input_sha256": hashlib.sha256(rid.encode()).hexdigest(),
        "model": "tiny-digits:v1",
        "weights_sha256": "ab" * 32,
        "n": n,
        "predictions": [
            {
                "label": labels[i],
                "confidence": 0.55,
                "score": scores[i],
                "abstain": abstain[i],
                "sha256": sha(inputs[i]),
            }
            for i in range(n)
        ],
        "stats": {"mean": 0.5, "std": 0.2, "min": 0.0, "max": 1.0},
    }
    if log_inputs:
        rec["input"] = inputs
    return rec


def write_lines(path: Path, recs: list[dict[str, Any]], partial: str = "") -> None:
    with path.open("a", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")
        fh.write(partial)


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, ReviewQueue, list[Any]]:
    """Two worker files: a duplicate input across two requests and both files, a partial last
    line, canary traffic, a record without inputs, a health event and a benign request."""
    log = tmp_path / "requests"
    log.mkdir()
    xs = [digit(i) for i in range(5)]
    a = log / "host-100-1700000000000.jsonl"
    b = log / "host-101-1700000000500.jsonl"
    write_lines(
        a,
        [
            {"event": "start", "ts": 1.0},
            record("r1", [xs[0], xs[1]], action="flag", key="mallory", ts=10.0),
            record("r2", [xs[2]], abstain=[True], ts=11.0),
            record("r3", [xs[3]], ts=12.0),  # benign: not queued
            record("r4", [xs[4]], action="block", role="canary", ts=13.0),  # canary: left out
            record("r5", [xs[3]], action="throttle", log_inputs=False, ts=14.0),  # no input
        ],
        partial=json.dumps(record("r6", [xs[4]], action="flag", ts=15.0))[:40],
    )
    write_lines(b, [record("r7", [xs[0]], abstain=[True], key="bob", ts=20.0)])
    return log, ReviewQueue(tmp_path / "review.db"), xs


def test_harvest_queues_flagged_abstained_and_dedups(
    logged: tuple[Path, ReviewQueue, list[Any]],
) -> None:
    log, q, xs = logged
    stats = harvest(log, q)
    assert (stats.new, stats.seen_again, stats.partial) == (3, 1, 1)
    assert (stats.canary, stats.without_inputs, stats.bad) == (1, 1, 0)
    items = {it.sha256: it for it in q.items()}
    assert set(items) == {sha(xs[0]), sha(xs[1]), sha(xs[2])}
    dup = items[sha(xs[0])]
    assert dup.count == 2
    assert dup.request_ids == ["r1", "r7"]
    assert dup.keys == ["mallory", "bob"]
    assert dup.reasons == ["abstain", "flag"]
    assert dup.flags == ["burst"]
    assert (dup.first_seen, dup.last_seen) == (10.0, 20.0)
    assert dup.input == xs[0] and dup.modality == "tensor"
    assert (dup.model, dup.predicted, dup.confidence) == ("tiny-digits:v1", 3, 0.55)
    assert items[sha(xs[2])].reasons == ["abstain"] and items[sha(xs[2])].count == 1


def test_reharvest_is_incremental_and_finishes_partial_lines(
    logged: tuple[Path, ReviewQueue, list[Any]],
) -> None:
    log, q, xs = logged
    harvest(log, q)
    again = harvest(log, q)
    assert (again.lines, again.new, again.seen_again) == (0, 0, 0)
    assert {it.count for it in q.items()} == {2, 1}
    # the worker finishes its partial line and writes one more; a new worker file appears
    a = log / "host-100-1700000000000.jsonl"
    full = json.dumps(record("r6", [xs[4]], action="flag", ts=15.0))
    with a.open("a") as fh:
        fh.write(full[40:] + "\n" + "{not json\n")
    write_lines(log / "host-102-1700000001000.jsonl", [record("r8", [xs[2]], action="flag")])
    third = harvest(log, q)
    assert (third.lines, third.new, third.seen_again, third.bad, third.partial) == (3, 1, 1, 1, 0)
    assert "line 8" in third.bad_examples[0]
    assert q.by_sha256(sha(xs[4])) is not None
    assert q.by_sha256(sha(xs[2])).reasons == ["abstain", "flag"]  # type: ignore[union-attr]


def test_ood_threshold_and_switches(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    xs = [digit(10), digit(11)]
    write_lines(log / "w.jsonl", [record("r1", xs, scores=[5.0, 0.5], action="flag")])
    q = ReviewQueue(tmp_path / "q.db")
    harvest(log, q, flagged=False, ood_threshold=2.0)
    (only,) = q.items()
    assert only.sha256 == sha(xs[0]) and only.reasons == ["ood"] and only.score == 5.0


def test_text_items_and_request_id_cap(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    text = "fr\u0435e prize\u200b now"
    recs = [record(f"r{i}", [text], action="flag", ts=float(i)) for i in range(30)]
    write_lines(log / "w.jsonl", recs)
    q = ReviewQueue(tmp_path / "q.db")
    harvest(log, q, max_request_ids=5)
    (it,) = q.items()
    assert it.modality == "text" and it.input == text and it.count == 30
    assert it.request_ids == [f"r{i}" for i in range(5)]
    shown = visible_text(text)
    assert "\u0435⟨U+0435 CYRILLIC SMALL LETTER IE⟩" in shown
    assert "⟨U+200B ZERO WIDTH SPACE⟩" in shown and "\u200b" not in shown


def test_shrunk_log_file_is_an_error(logged: tuple[Path, ReviewQueue, list[Any]]) -> None:
    log, q, _ = logged
    harvest(log, q)
    f = log / "host-101-1700000000500.jsonl"
    f.write_text("")
    with pytest.raises(ReviewError, match="shorter"):
        harvest(log, q)


def test_labels_keep_history(logged: tuple[Path, ReviewQueue, list[Any]]) -> None:
    log, q, _ = logged
    harvest(log, q)
    first = q.items()[0]
    q.label(first.id, 3, reviewer="ann", at=100.0)
    q.label(first.id, 8, reviewer="ben", at=200.0)
    q.skip(q.items()[1].id, reviewer="ann")
    it = q.get(first.id)
    assert it.label == 8 and it.status == "labelled"
    assert [(h.label, h.reviewer, h.at) for h in it.history] == [
        (3, "ann", 100.0),
        (8, "ben", 200.0),
    ]
    assert q.counts() == {"pending": 1, "labelled": 1, "skipped": 1, "total": 3}
    with pytest.raises(ReviewError, match="outside the classes"):
        q.label(first.id, 10, reviewer="ann", num_classes=10)
    with pytest.raises(ReviewError, match="reviewer"):
        q.label(first.id, 1, reviewer=" ")
    with pytest.raises(ReviewError, match="item 999"):
        q.label(999, 1, reviewer="ann")
    assert parse_label("seven", ["zero", "seven"]) == 1
    assert parse_label("1", ["zero", "seven"]) == 1
    with pytest.raises(ReviewError, match="neither"):
        parse_label("eight", ["zero", "seven"])


def test_image_preview_of_digit_and_mnist() -> None:
    x = np.zeros((1, 8, 8))
    x[0, 2, 3] = 1.0
    pic = image_preview(x.tolist()).splitlines()
    assert len(pic) == 10 and len(pic[1]) == 18
    assert pic[3][1 + 2 * 3 : 1 + 2 * 3 + 2] == "██" and pic[1].strip("│ ") == ""
    mnist = np.zeros((1, 28, 28))
    assert len(image_preview(mnist.tolist()).splitlines()) == 30
    with pytest.raises(ReviewError, match="not a square"):
        image_preview([0.1, 0.2, 0.3])


def test_labelstudio_round_trip(
    logged: tuple[Path, ReviewQueue, list[Any]], tmp_path: Path
) -> None:
    log, q, _xs = logged
    harvest(log, q)
    items = q.items(status="pending")
    tasks, xml = export_tasks(items, CLASSES)
    assert '<Choices name="label" toName="image"' in xml and '<Choice value="9"/>' in xml
    png = base64.b64decode(tasks[0]["data"]["image"].split(",", 1)[1])
    img = Image.open(io.BytesIO(png))
    assert img.size == (112, 112) and img.mode == "L"
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["3"]}
    # what Label Studio exports after annotation: our task data plus annotations
    exported = []
    for i, t in enumerate(tasks):
        exported.append(
            {
                "id": 100 + i,
                "data": t["data"],
                "annotations": [
                    {
                        "id": 1,
                        "completed_by": {"id": 7, "email": "rev@example.org"},
                        "was_cancelled": i == 2,
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [str(i + 1)]},
                            }
                        ],
                        "created_at": "2026-12-07T03:00:00.000000Z",
                        "updated_at": "2026-12-07T03:01:00.000000Z",
                    }
                ],
            }
        )
    f = tmp_path / "ls_export.json"
    f.write_text(json.dumps(exported))
    stats = import_annotations(q, f, CLASSES)
    assert (stats.tasks, stats.recorded, stats.skipped) == (3, 2, 1)
    again = import_annotations(q, f, CLASSES)
    assert (again.recorded, again.already) == (0, 2)
    got = {it.id: it for it in q.items()}
    for i, t in enumerate(tasks[:2]):
        it = got[t["data"]["item_id"]]
        assert it.label == i + 1
        assert it.current is not None and it.current.reviewer == "rev@example.org"
        assert it.current.source == "labelstudio"
    assert got[tasks[2]["data"]["item_id"]].status == "pending"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[0]["data"].pop("sha256"), r"tasks\[0\] \(task 100\)\.data\.sha256"),
        (lambda t: t[0]["data"].update(item_id=999), r"tasks\[0\].*\.data\.item_id"),
        (
            lambda t: t[0]["annotations"][0]["result"][0]["value"].update(choices=["x"]),
            r"tasks\[0\].*annotations\[0\]\.result: 'x' is not a class",
        ),
        (
            lambda t: t[1]["annotations"][0]["result"][0]["value"].update(choices=["1", "2"]),
            r"tasks\[1\].*annotations\[0\]\.result\[0\]\.value\.choices: pick exactly one",
        ),
        (lambda t: t[1].update(annotations={}), r"tasks\[1\].*\.annotations: must be a list"),
    ],
)
def test_labelstudio_import_names_the_bad_field(
    logged: tuple[Path, ReviewQueue, list[Any]], tmp_path: Path, mutate: Any, message: str
) -> None:
    log, q, _ = logged
    harvest(log, q)
    tasks, _ = export_tasks(q.items(), CLASSES)
    exported = [
        {
            "id": 100 + i,
            "data": t["data"],
            "annotations": [
                {
                    "completed_by": 3,
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": ["1"]},
                        }
                    ],
                }
            ],
        }
        for i, t in enumerate(tasks)
    ]
    mutate(exported)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(exported))
    with pytest.raises(ReviewError, match=message):
        import_annotations(q, f, CLASSES)
    assert q.counts()["labelled"] == 0  # validated whole before recording anything


def test_reviewed_dataset_is_fingerprinted_and_deterministic(
    logged: tuple[Path, ReviewQueue, list[Any]], tmp_path: Path
) -> None:
    log, q, _xs = logged
    harvest(log, q)
    ids = [it.id for it in q.items()]
    q.label(ids[0], 7, reviewer="ann")
    q.label(ids[1], 2, reviewer="ben")
    q.skip(ids[2], reviewer="ann")
    out = tmp_path / "ds1"
    m = write_reviewed_dataset(
        q,
        out,
        name="tiny-reviewed",
        classes=CLASSES,
        modality="tensor",
        input_shape=[1, 8, 8],
        log_folder=str(log),
    )
    data = out / "reviewed.npz"
    assert m["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m["n"] == 2 and m["class_counts"][7] == 1 and m["class_counts"][2] == 1
    assert m["reviewers"] == ["ann", "ben"] and m["log_folder"] == str(log)
    assert sorted(m["item_ids"]) == sorted(ids[:2])
    assert set(m["request_ids"]) >= {"r1", "r7"}
    assert json.loads((out / "manifest.json").read_text())["sha256"] == m["sha256"]
    with np.load(data, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    assert x.shape == (2, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    by_id = dict(zip(m["item_ids"], y.tolist(), strict=True))
    assert by_id[ids[0]] == 7 and by_id[ids[1]] == 2
    m2 = write_reviewed_dataset(
        q,
        tmp_path / "ds2",
        name="tiny-reviewed",
        classes=CLASSES,
        modality="tensor",
        input_shape=[1, 8, 8],
    )
    assert m2["sha256"] == m["sha256"]  # same labels, same bytes
    q.label(ids[0], 1, reviewer="ben")
    with pytest.raises(ReviewError, match="already holds another"):
        write_reviewed_dataset(
            q, out, name="x", classes=CLASSES, modality="tensor", input_shape=[1, 8, 8]
        )
    with pytest.raises(ReviewError, match="needs 10"):
        write_reviewed_dataset(
            q, tmp_path / "ds3", name="x", classes=CLASSES, modality="tensor", input_shape=[10]
        )


def test_cli_review_flow(logged: tuple[Path, ReviewQueue, list[Any]], tmp_path: Path) -> None:
    """harvest → next (interactive, label and skip) → label → list → dataset, via the CLI."""
    import yaml

    from spec_helpers import digits_mlp, write_spec

    log, q, _ = logged
    spec = write_spec(
        tmp_path,
        digits_mlp(monitor={"request_log": str(log), "harvest": {"queue": str(q.path)}}),
    )
    r = CliRunner()
    res = r.invoke(app, ["review", "harvest", "--spec", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["stats"]["new"] == 3
    res = r.invoke(
        app, ["review", "next", "--spec", str(spec), "--reviewer", "ann"], input="11\n4\ns\nq\n"
    )
    assert res.exit_code == 0, res.output
    assert "outside the classes" in res.output  # 11 refused, asked again
    assert "└────────────────┘" in res.output  # the 8×8 preview
    assert "stopped: 1 labelled, 1 skipped" in res.output
    third = next(it for it in q.items() if it.status == "pending")
    res = r.invoke(
        app, ["review", "label", str(third.id), "9", "--spec", str(spec), "--reviewer", "bo"]
    )
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["review", "list", "--spec", str(spec), "--json"])
    listed = json.loads(res.output)
    assert sorted(i["status"] for i in listed) == ["labelled", "labelled", "skipped"]
    assert {sha(i["input"]) for i in listed} == {i["sha256"] for i in listed}
    res = r.invoke(app, ["review", "show", str(third.id), "--spec", str(spec)])
    assert res.exit_code == 0 and "bo (cli): 9" in res.output
    res = r.invoke(app, ["review", "label", "999", "1", "--spec", str(spec)])
    assert res.exit_code == 2 and "item 999" in res.output
    out = tmp_path / "reviewed"
    from robustops.registry.service import Registry

    reg = Registry.open(tmp_path / "reg")
    reg.add_principal("root", "root", "admin")
    reg.close()
    res = r.invoke(
        app,
        [
            "review",
            "dataset",
            "--spec",
            str(spec),
            "--out",
            str(out),
            "--registry",
            str(tmp_path / "reg"),
            "--as",
            "root",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["n"] == 2 and m["reviewers"] == ["ann", "bo"]
    assert m["path"] == str((out / "reviewed.npz").resolve()) == m["extra_train"]["path"]
    assert m["sha256"] in res.output
    assert "extra_train" in res.output
    # registered (once the registry holds data sets), or skipped with a message
    registered = "registered as data set tiny-digits-reviewed@1" in res.output
    assert registered or "not registered" in res.output
    if registered:
        reg = Registry.open(tmp_path / "reg")
        try:
            ds = reg.dataset("tiny-digits-reviewed@1")  # type: ignore[attr-defined]
        finally:
            reg.close()
        assert ds.content_sha256 == m["sha256"] and ds.kind == "reviewed"
        assert ds.lineage["reviewers"] == ["ann", "bo"]
    assert yaml.safe_load(spec.read_text())["monitor"]["request_log"] == str(log)


def test_reviewed_dataset_trains_and_reads_as_arrays_source(
    logged: tuple[Path, ReviewQueue, list[Any]], tmp_path: Path
) -> None:
    """harvest → label → dataset → `data.extra_train` in a training spec (1 epoch digits MLP):
    the reviewed samples are appended and their sha256 is in the sidecar; the same file is a
    valid `arrays` source."""
    from robustops.config import load_spec
    from robustops.data import load_digits, load_source
    from robustops.data.sources import ArraysSource
    from robustops.runner import train_spec
    from spec_helpers import digits_mlp, write_spec

    log, q, _ = logged
    write_lines(log / "host-103-1.jsonl", [record("r9", [digit(20)], action="flag")])
    harvest(log, q)
    ids = [it.id for it in q.items()]
    for i, k in zip(ids, (0, 0, 1, 1), strict=True):
        q.label(i, k, reviewer="ann")
    m = write_reviewed_dataset(
        q, tmp_path / "rev", name="r", classes=CLASSES, modality="tensor", input_shape=[1, 8, 8]
    )
    src = load_source(
        ArraysSource(kind="arrays", path=tmp_path / "rev" / "reviewed.npz"),
        name="r",
        test_fraction=0.5,
    )
    assert src.x_train.shape[0] + src.x_test.shape[0] == 4
    train = {"epochs": 1, "batch_size": 256, "lr": 0.005, "out": "w/mlp.safetensors"}
    spec = write_spec(
        tmp_path,
        digits_mlp(data={"name": "digits", "extra_train": [m["extra_train"]]}, train=train),
    )
    side = train_spec(load_spec(spec))
    assert side["data"]["n_train"] == load_digits().x_train.shape[0] + 4
    assert side["data"]["extra_train"][0]["sha256"] == m["sha256"]
    assert side["data"]["extra_train"][0]["class_counts"][:3] == [2, 2, 0]


def test_concurrent_harvesters_do_not_double_count(
    logged: tuple[Path, ReviewQueue, list[Any]],
) -> None:
    """A harvester that read the offsets before another one committed the same lines (here: a
    queue whose offsets look stale) leaves those lines to it."""
    log, q, xs = logged
    harvest(log, q)

    class Stale(ReviewQueue):
        def offsets(self) -> dict[str, int]:
            return {}

    late = harvest(log, Stale(q.path))
    assert (late.raced, late.new, late.seen_again) == (2, 0, 0)
    assert q.by_sha256(sha(xs[0])).count == 2  # type: ignore[union-attr]


def test_blocked_before_the_model_ran_is_queued(tmp_path: Path) -> None:
    """A blocked request has no predictions: its inputs are queued with the hash computed as
    the guard does, and the model's answer is filled in when the input is seen answered."""
    log = tmp_path / "log"
    log.mkdir()
    x, text = digit(30), "free prize"
    blocked = record("r1", [x, text], action="block", ts=1.0)
    del blocked["predictions"]
    refused = record("r0", [digit(31)], ts=0.5)  # rate-limited, not flagged: model did not run
    del refused["predictions"]
    refused["decision"], refused["status"] = "rate-limited", 429
    later = record("r2", [x], abstain=[True], labels=[5], ts=2.0)
    write_lines(log / "w.jsonl", [refused, blocked, later])
    q = ReviewQueue(tmp_path / "q.db")
    stats = harvest(log, q)
    assert (stats.new, stats.seen_again, stats.bad) == (2, 1, 0)
    img, txt = q.by_sha256(sha(x)), q.by_sha256(sha(text))
    assert img is not None and txt is not None and txt.modality == "text"
    assert (img.count, img.reasons, img.predicted, img.confidence) == (
        2,
        ["abstain", "flag"],
        5,
        0.55,
    )
    assert txt.predicted is None and txt.reasons == ["flag"]


def test_text_reviewed_dataset_feeds_extra_train(tmp_path: Path) -> None:
    import torch

    from robustops.data.extra import ExtraTrainData, add_extra_train
    from robustops.data.sms_spam import TextDataset

    log = tmp_path / "log"
    log.mkdir()
    texts = ["fr\u0435e prize\u200b now", "see you at 5"]
    write_lines(log / "w.jsonl", [record("r1", texts, action="flag")])
    q = ReviewQueue(tmp_path / "q.db")
    harvest(log, q)
    first, second = sorted(q.items(), key=lambda it: it.id)
    q.label(first.id, 1, reviewer="ann")
    q.label(second.id, 0, reviewer="ann")
    m = write_reviewed_dataset(
        q, tmp_path / "ds", name="t", classes=["ham", "spam"], modality="text"
    )
    lines = [
        json.loads(line) for line in (tmp_path / "ds" / "reviewed.jsonl").read_text().splitlines()
    ]
    assert lines == [{"text": texts[0], "label": "spam"}, {"text": texts[1], "label": "ham"}]
    base = TextDataset(
        name="t",
        texts_train=["a", "b"],
        y_train=torch.tensor([0, 1]),
        texts_test=["c"],
        y_test=torch.tensor([0]),
        classes=("ham", "spam"),
        fingerprint="f" * 64,
        split_seed=0,
        test_fraction=0.2,
    )
    out = add_extra_train(base, [ExtraTrainData(**m["extra_train"])])
    assert out.texts_train[2:] == texts and out.y_train.tolist() == [0, 1, 1, 0]
    with pytest.raises(ReviewError, match="no labelled tensor items"):
        write_reviewed_dataset(
            q,
            tmp_path / "ds2",
            name="t",
            classes=["ham", "spam"],
            modality="tensor",
            input_shape=[4],
        )
