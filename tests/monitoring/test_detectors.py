"""Streaming change detectors: exact state round trips, calibrated false-alarm rates, detection
delay, the batch test's effect-size floor, and input validation."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from robustops.errors import SpecError
from robustops.monitoring import detectors as dt
from robustops.monitoring.detectors import (
    BatchTest,
    Cusum,
    Detection,
    always_fire,
    calibrate,
    from_state_dict,
    river_default,
)

pytest.importorskip("river")


def _gauss(seed: int, n: int, mean: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, n)


def _detectors() -> list[tuple[str, Any]]:
    cal = _gauss(1, 1000)
    labels = np.random.default_rng(2).integers(0, 5, 1000).astype(float)
    fast = {"false_alarms_per_10k": 10.0, "seed": 3}
    return [
        ("cusum", calibrate("cusum", cal, direction="both", simulate=100_000, **fast)),
        ("page-hinkley", calibrate("page-hinkley", cal, simulate=100_000, **fast)),
        ("adwin", calibrate("adwin", cal, direction="both", simulate=20_000, **fast)),
        ("kswin", calibrate("kswin", cal, direction="both", simulate=20_000, **fast)),
        ("batch", calibrate("batch-test", cal, window=100, simulate=10_000, **fast)),
        (
            "batch-categorical",
            calibrate("batch-test", labels, window=100, simulate=10_000, categorical=True, **fast),
        ),
        ("river-adwin-default", river_default("adwin")),
        ("river-kswin-default", river_default("kswin", seed=4)),
        ("river-ph-default", river_default("page-hinkley")),
        ("always-fire", always_fire()),
    ]


def _stream(name: str) -> np.ndarray:
    if name == "batch-categorical":
        rng = np.random.default_rng(5)
        return np.concatenate(
            [rng.integers(0, 5, 900), rng.choice(5, 600, p=[0.6, 0.1, 0.1, 0.1, 0.1])]
        ).astype(float)
    return np.concatenate([_gauss(5, 900), _gauss(6, 600, 1.5)])


def _feed(det: Any, values: np.ndarray) -> list[dict[str, Any]]:
    return [d.as_dict() for x in values if (d := det.update(float(x))) is not None]


@pytest.mark.parametrize("name,det", _detectors(), ids=lambda v: v if isinstance(v, str) else "")
def test_state_round_trip_continues_bit_identically(name: str, det: Any) -> None:
    stream = _stream(name)
    _feed(det, stream[:700])  # mid-stream: some detectors mid-run, windows partly full
    state = json.loads(json.dumps(det.state_dict(), allow_nan=False))  # strict JSON
    restored = from_state_dict(state)
    again = type(det).__new__(type(det))  # and into an existing detector of the same parameters
    again.__dict__.update(from_state_dict(state).__dict__)
    again.reset()
    again.load_state_dict(state)
    rest = stream[700:]
    expected = _feed(det, rest)
    assert _feed(restored, rest) == expected
    assert _feed(again, rest) == expected
    assert expected, f"{name}: the change after the restore was never detected"
    assert det.state_dict() == restored.state_dict() == again.state_dict()


def test_cusum_false_alarm_rate_on_a_long_stable_stream_meets_the_target() -> None:
    det = calibrate("cusum", _gauss(10, 2000), direction="both", seed=0)
    assert isinstance(det, Cusum)
    stream = _gauss(11, 300_000)
    alarms = sum(det.update(float(x)) is not None for x in stream)
    rate = alarms / stream.size * 1e4
    # target 1 per 10 000 (Poisson noise over 300 000 values: ± 0.2); a textbook h = 4 or 5
    # would raise dozens per 10 000 here
    assert rate <= 1.5, rate
    record = det.calibration
    assert record["target_false_alarms_per_10k"] == 1.0
    assert record["estimated_false_alarms_per_10k"] <= 1.0
    assert len(record["heldout_false_alarms_per_10k"]) == 2


def test_cusum_detects_a_two_sigma_shift_quickly() -> None:
    det = calibrate("cusum", _gauss(20, 2000), direction="up", seed=0)
    rng = np.random.default_rng(21)
    delays = []
    for _ in range(60):
        det.reset()
        for x in rng.normal(0.0, 1.0, 100):
            det.update(float(x))
        for i, x in enumerate(rng.normal(2.0, 1.0, 100)):
            hit = det.update(float(x))
            if hit is not None:
                assert hit.direction == "up" and hit.mean_after > hit.mean_before + 0.5
                delays.append(i + 1)
                break
    # Siegmund: ARL1 ≈ (h + 1.166) / (2 - k) ≈ 5.6 requests with k = 0.5, h ≈ 7.2
    assert len(delays) >= 59  # at most one episode lost to a false alarm before the shift
    assert float(np.median(delays)) <= 8
    assert max(delays) <= 25


def test_batch_test_ignores_a_trivial_effect_on_a_huge_sample() -> None:
    n = 50_000
    ref, shifted = _gauss(30, n), _gauss(31, n, 0.05)  # a 0.05 sigma shift
    det = BatchTest(ref, window=n, stride=n, alpha=1e-3, min_effect=0.1)
    effect, p, _ = det.test(shifted)
    assert p < 1e-6 and effect < 0.05  # a p-value-only test would fire
    assert _feed(det, shifted) == []
    p_only = BatchTest(ref, window=n, stride=n, alpha=1e-3, min_effect=0.0)
    assert len(_feed(p_only, shifted)) == 1
    big = BatchTest(ref, window=200, stride=200, alpha=1e-3, min_effect=0.1)
    (hit,) = _feed(big, _gauss(32, 200, 1.0))
    assert hit["effect_size"] >= 0.1 and hit["p_value"] <= 1e-3 and hit["direction"] == "up"


def test_categorical_batch_test_needs_effect_and_p_value() -> None:
    rng = np.random.default_rng(40)
    ref = rng.integers(0, 10, 100_000).astype(float)
    tiny = rng.choice(10, 100_000, p=[0.11] + [0.89 / 9] * 9).astype(float)
    det = BatchTest(ref, window=100_000, stride=100_000, alpha=1e-3, categorical=True)
    w, p, _ = det.test(tiny)
    assert p < 1e-6 and w < 0.1
    assert _feed(det, tiny) == []
    det = BatchTest(ref, window=300, stride=300, alpha=1e-3, categorical=True)
    (hit,) = _feed(det, rng.choice(10, 300, p=[0.5] + [0.5 / 9] * 9).astype(float))
    assert hit["detail"]["category"] == 0 and hit["direction"] == "change"
    assert hit["mean_after"] > 0.4 > 0.11 > hit["mean_before"]


def test_page_hinkley_simulation_matches_river() -> None:
    from river import drift

    z = _gauss(50, 3000)
    ph = drift.PageHinkley(delta=0.5, threshold=math.inf, min_instances=30, mode="both")
    path = []
    for x in z:
        ph.update(float(x))
        inc = ph._sum_increase - ph._min_increase
        dec = ph._max_decrease - ph._sum_decrease
        path.append(max(inc, dec) if ph._x_mean.n >= 30 else -math.inf)
    ours = dt._ph_scores(z[None, :], 0.5, 1 - 0.0001, 30, "both")[0]
    np.testing.assert_allclose(ours[29:], np.array(path)[29:], rtol=1e-9, atol=1e-9)
    assert np.all(np.isneginf(ours[:29]))


def test_ks_distance_matches_scipy_with_ties() -> None:
    from scipy import stats

    rng = np.random.default_rng(60)
    a = rng.integers(0, 6, (200, 30)).astype(float)
    b = rng.integers(0, 7, (200, 30)).astype(float)
    ours = dt._ks_d(a, b)
    ref = [stats.ks_2samp(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_detection_evidence_is_json_ready() -> None:
    det = Cusum(center=0.0, scale=1.0, k=0.5, h=3.0, direction="down")
    hits = [h for x in [0.0] * 5 + [-3.0] * 5 if (h := det.update(x)) is not None]
    assert isinstance(hits[0], Detection)
    d = hits[0].as_dict()
    json.dumps(d, allow_nan=False)
    assert d["direction"] == "down" and d["index"] == 6 and d["mean_after"] == -3.0
    assert d["statistic"] > d["threshold"] == 3.0 and d["n_after"] == 2


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: calibrate("cusum", [0.0, 1.0, math.nan] + [0.5] * 200), "values[2]"),
        (lambda: calibrate("cusum", [math.inf] + [0.5] * 200), "values[0]"),
        (lambda: calibrate("cusum", _gauss(0, 99)), "values"),
        (lambda: calibrate("kswin", _gauss(0, 150)), "values"),
        (lambda: calibrate("batch-test", _gauss(0, 300), window=200), "values"),
        (lambda: calibrate("cusum", [1.0] * 500), "values"),
        (lambda: calibrate("cusum", [[1.0, 2.0]] * 200), "values"),
        (lambda: calibrate("ewma", _gauss(0, 500)), "kind"),
        (lambda: calibrate("cusum", _gauss(0, 500), direction="sideways"), "direction"),  # type: ignore[arg-type]
        (
            lambda: calibrate("cusum", _gauss(0, 500), false_alarms_per_10k=0.0),
            "false_alarms_per_10k",
        ),
        (lambda: calibrate("cusum", _gauss(0, 500), shift=-1.0), "shift"),
        (lambda: calibrate("cusum", _gauss(0, 500), simulate=10), "simulate"),
        (lambda: calibrate("batch-test", _gauss(0, 500), window="200"), "window"),
        (lambda: Cusum(0.0, 1.0, 0.5, 5.0).update(math.nan), "value"),
        (lambda: Cusum(0.0, 1.0, 0.5, 5.0).update(math.inf), "value"),
        (lambda: Cusum(0.0, 0.0, 0.5, 5.0), "scale"),
        (lambda: BatchTest(_gauss(0, 100), categorical=True), "reference"),
        (lambda: BatchTest(_gauss(0, 100), alpha=0.0), "alpha"),
        (lambda: from_state_dict({"version": 1, "kind": "nope", "params": {}}), "kind"),
    ],
)
def test_input_validation_names_the_field(call: Any, field: str) -> None:
    with pytest.raises(SpecError) as info:
        call()
    assert info.value.errors[0][0] == field, info.value.errors


def test_state_from_another_detector_is_refused() -> None:
    det = Cusum(0.0, 1.0, 0.5, 5.0)
    state = det.state_dict()
    with pytest.raises(SpecError, match="params"):
        Cusum(0.0, 1.0, 0.5, 6.0).load_state_dict(state)
    with pytest.raises(SpecError, match="kind"):
        always_fire().load_state_dict(state)
    bad = json.loads(json.dumps(state))
    bad["state"]["s_up"] = "nan"
    with pytest.raises(SpecError, match=r"state\.s_up"):
        det.load_state_dict(bad)


def test_a_drift_inside_the_calibration_window_is_reported() -> None:
    drifting = np.concatenate([_gauss(70, 1000), _gauss(71, 1000, 0.6)])
    record = calibrate("cusum", drifting, simulate=200_000).calibration
    assert record["warnings"] and "halves disagree" in record["warnings"][0]
    steady = calibrate("cusum", _gauss(72, 2000), simulate=200_000).calibration
    assert steady["warnings"] == []
