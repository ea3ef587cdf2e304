"""The request-log reader and the signals: offsets, partial lines, new files, skipped events,
canary traffic, and each signal's value on a record."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from robustops.monitoring.config import AlertRule
from robustops.monitoring.logtail import read_new
from robustops.monitoring.signals import SIGNALS, get_signal, is_monitored

from .monitor_helpers import predict_record, write_log


def test_reads_incrementally_waits_for_partial_lines_and_finds_new_files(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    rng = random.Random(0)
    a = write_log(folder, [predict_record(i, rng) for i in range(3)], "w-1-1.jsonl")
    first = read_new(folder, {})
    assert [r.record["request_id"] for r in first.records] == ["00000000", "00000001", "00000002"]
    assert first.offsets == {"w-1-1.jsonl": a.stat().st_size}

    # a partial last line waits for its newline; a second worker's file appears
    line = json.dumps(predict_record(3, rng))
    with open(a, "a") as fh:
        fh.write(line[:20])
    write_log(folder, [predict_record(4, rng)], "w-2-1.jsonl")
    second = read_new(folder, first.offsets)
    assert [r.record["request_id"] for r in second.records] == ["00000004"]
    assert second.offsets["w-1-1.jsonl"] == first.offsets["w-1-1.jsonl"]
    with open(a, "a") as fh:
        fh.write(line[20:] + "\n")
    third = read_new(folder, second.offsets)
    assert [r.record["request_id"] for r in third.records] == ["00000003"]
    assert third.offsets["w-1-1.jsonl"] == a.stat().st_size
    assert read_new(folder, third.offsets).records == []


def test_keeps_predict_and_model_swap_skips_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    rng = random.Random(0)
    lines = [
        json.dumps({"event": "startup", "ts": 1.0}),
        json.dumps({"event": "model-swap", "ts": 2.0, "model": "m:v2"}),
        "not json",
        "[1, 2]",
        "",
        json.dumps(predict_record(0, rng)),
    ]
    (folder / "w.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "notes.txt").write_text("ignored\n")
    out = read_new(folder, {})
    assert [r.record["event"] for r in out.records] == ["model-swap", "predict"]
    assert (out.skipped, out.malformed) == (1, 2)
    assert read_new(tmp_path / "missing", {}).records == []


def test_records_of_several_files_are_merged_by_time(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    rng = random.Random(0)
    write_log(folder, [predict_record(i, rng) for i in (0, 2, 4)], "b.jsonl")
    write_log(folder, [predict_record(i, rng) for i in (1, 3)], "a.jsonl")
    assert [r.record["request_id"][-1] for r in read_new(folder, {}).records] == list("01234")


def test_a_file_that_shrank_is_read_again(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    rng = random.Random(0)
    path = write_log(folder, [predict_record(i, rng) for i in range(3)])
    offsets = read_new(folder, {}).offsets
    path.write_text(json.dumps(predict_record(9, rng)) + "\n")
    assert [r.record["request_id"] for r in read_new(folder, offsets).records] == ["00000009"]


def test_signals_on_a_record() -> None:
    rec = predict_record(0, random.Random(0), n=4)
    preds = rec["predictions"]
    rec["predictions"][0]["abstain"], rec["predictions"][1]["abstain"] = True, False
    rec["predictions"][2]["abstain"] = rec["predictions"][3]["abstain"] = False
    for p, label in zip(preds, (3, 3, 1, 7), strict=True):
        p["label"] = label
    assert get_signal("abstention").extract(rec) == 0.25
    assert get_signal("class_share:3").extract(rec) == 0.5
    assert get_signal("class_share:9").extract(rec) == 0.0
    assert get_signal("anomaly_score").extract(rec) == pytest.approx(
        sum(p["score"] for p in preds) / 4
    )
    assert get_signal("input_mean").extract(rec) == rec["stats"]["mean"]
    assert get_signal("text_chars").extract(rec) is None
    assert get_signal("flag").extract(rec) == 0.0
    assert get_signal("flag").extract({**rec, "action": "throttle"}) == 1.0
    assert get_signal("flag").extract({**rec, "action": "log"}) == 0.0
    assert get_signal("rejected").extract({**rec, "status": 429}) == 1.0
    assert get_signal("rejected").extract({**rec, "status": 503}) == 0.0
    refused = {k: v for k, v in rec.items() if k not in ("predictions", "stats")}
    assert get_signal("confidence").extract(refused) is None
    assert get_signal("text_chars").extract({**rec, "stats": {"chars": 12.5}}) == 12.5
    assert SIGNALS["flag_rate_per_key"].per_key
    assert is_monitored(rec)
    assert not is_monitored({**rec, "role": "canary"})
    assert not is_monitored({"event": "model-swap"})


def test_a_rule_with_an_unknown_signal_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="unknown signal 'entropy'"):
        AlertRule(name="r", signal="entropy")
    with pytest.raises(KeyError):
        get_signal("class_share:x")


def test_a_capped_read_says_there_is_more(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    rng = random.Random(0)
    path = write_log(folder, [predict_record(i, rng) for i in range(10)])
    first = read_new(folder, {}, max_bytes=path.stat().st_size // 2)
    assert first.more and 0 < len(first.records) < 10
    rest = read_new(folder, first.offsets)
    assert not rest.more and len(first.records) + len(rest.records) == 10
