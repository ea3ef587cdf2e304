"""The guard over the wire: ``robustops serve`` with 2 workers on a free port (the session's
SQLite-state server of conftest), its endpoints, authentication, body cap and validation."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from robustops.data import load_digits

from .conftest import GuardServer

_names = itertools.count()


@pytest.fixture
def key(sqlite_guard: GuardServer) -> str:
    """A fresh API key (its own rate bucket) for one test."""
    return sqlite_guard.add_key(f"server-test-{next(_names)}")


@pytest.fixture
def api(sqlite_guard: GuardServer, key: str) -> Iterator[httpx.Client]:
    """A client of the server sending ``key``."""
    with httpx.Client(base_url=sqlite_guard.url, headers={"X-API-Key": key}, timeout=60) as c:
        yield c


def _image(value: float = 0.5) -> list[list[list[float]]]:
    """One input of the digits model, shape (1, 8, 8), all ``value``."""
    return [[[value] * 8 for _ in range(8)]]


# --- endpoints -------------------------------------------------------------------------------


def test_health_and_readiness_need_no_key(sqlite_guard: GuardServer) -> None:
    assert httpx.get(f"{sqlite_guard.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{sqlite_guard.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": "tiny-digits"}


def test_model_endpoint_describes_the_input_contract(
    sqlite_guard: GuardServer, api: httpx.Client
) -> None:
    assert httpx.get(f"{sqlite_guard.url}/v1/model").status_code == 401
    info = api.get("/v1/model").json()
    assert info["name"] == "tiny-digits" and info["modality"] == "image"
    assert info["input_shape"] == [1, 8, 8] and info["bounds"] == [0.0, 1.0]
    assert info["num_classes"] == 10 and info["temperature"] == 1.0


def test_openapi_schema_and_docs_are_served(sqlite_guard: GuardServer) -> None:
    schema = httpx.get(f"{sqlite_guard.url}/openapi.json").json()
    predict = schema["paths"]["/v1/predict"]["post"]
    assert {"200", "401", "413", "422", "429", "503"} <= set(predict["responses"])
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    # The served model's contract: an image model takes `inputs` only, of its shape.
    assert set(body["properties"]) == {"inputs"} and body["required"] == ["inputs"]
    assert {"/healthz", "/readyz", "/v1/model"} <= set(schema["paths"])
    assert httpx.get(f"{sqlite_guard.url}/docs").status_code == 200


def test_predict_answers_labels_with_calibrated_confidences(api: httpx.Client) -> None:
    data = load_digits()
    x, y = data.x_test[:16], data.y_test[:16]
    r = api.post("/v1/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"request_id", "model", "predictions", "flagged"}
    assert len(out["request_id"]) == 32 and out["flagged"] is False
    assert out["model"]["name"] == "tiny-digits" and set(out["model"]) == {
        "name",
        "version",
        "weights_sha256",
    }
    preds = out["predictions"]
    assert len(preds) == 16
    for p in preds:
        assert set(p) == {"decision", "label", "class_name", "confidence", "reasons"}
        assert p["decision"] == "predict" and p["reasons"] == []
        assert p["label"] in range(10) and 0.1 <= p["confidence"] <= 1.0
    accuracy = sum(p["label"] == int(t) for p, t in zip(preds, y, strict=True)) / 16
    assert accuracy >= 0.5  # the trained MLP answers, not a stub
    one = api.post("/v1/predict", json={"inputs": x[0].tolist()})  # a single input, unbatched
    assert one.status_code == 200 and len(one.json()["predictions"]) == 1


# --- authentication --------------------------------------------------------------------------


def test_predict_needs_a_valid_key(sqlite_guard: GuardServer, key: str) -> None:
    url = f"{sqlite_guard.url}/v1/predict"
    body = {"inputs": _image()}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    forged = "rok_" + key.split("_")[1] + "_" + "A" * 43  # a real key id, a wrong secret
    for wrong in (forged, "rok_00000000_" + "B" * 43, "not-a-key", key + "x"):
        r = httpx.post(url, json=body, headers={"X-API-Key": wrong})
        assert r.status_code == 401, wrong
        assert r.json() == {"detail": "a valid API key is required"}
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).is_success
    assert httpx.post(url, json=body, headers={"X-API-Key": key}).is_success


def test_a_revoked_key_is_refused_by_every_worker_within_the_cache_time(
    sqlite_guard: GuardServer,
) -> None:
    key = sqlite_guard.add_key("to-revoke")
    url = f"{sqlite_guard.url}/v1/model"
    for _ in range(6):  # fresh connections: both workers verify (and cache) the key
        assert httpx.get(url, headers={"X-API-Key": key}).status_code == 200
    sqlite_guard.revoke("to-revoke")
    revoked_at = time.monotonic()
    time.sleep(5.0 + 0.3)  # KeyStore's cache_seconds
    statuses = {httpx.get(url, headers={"X-API-Key": key}).status_code for _ in range(8)}
    assert statuses == {401}, f"{time.monotonic() - revoked_at:.1f} s after revocation"


# --- body size -------------------------------------------------------------------------------

LIMIT = 65_536  # the session server's max_body_bytes


def test_a_body_over_the_cap_gets_413_by_its_length(sqlite_guard: GuardServer, key: str) -> None:
    big = b'{"inputs": [' + b"0.5, " * (LIMIT // 5) + b"0.5]}"
    assert len(big) > LIMIT
    url = f"{sqlite_guard.url}/v1/predict"
    for headers in ({}, {"X-API-Key": key}):  # refused before the key is even checked
        r = httpx.post(url, content=big, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json() == {"detail": f"body larger than {LIMIT} bytes"}


def test_a_chunked_body_over_the_cap_gets_413_while_it_streams(api: httpx.Client) -> None:
    sent = [0]

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"inputs": ['
        while sent[0] < total:
            sent[0] += 8192
            yield b"0.5, " * 1638 + b"0.5,"
        yield b"0.5]}"

    r = api.post("/v1/predict", content=chunks(4 * LIMIT))
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413
    # a chunked body under the cap goes through
    small = json.dumps({"inputs": _image()}).encode()
    ok = api.post("/v1/predict", content=iter([small[:10], small[10:]]))
    assert ok.status_code == 200, ok.text


# --- validation ------------------------------------------------------------------------------

CASES: dict[str, tuple[Any, list[Any], str]] = {
    # name: (body, the error's loc, a word of its message)
    "wrong shape": ({"inputs": [[0.5] * 63]}, ["body", "inputs"], "shape"),
    "wrong shape in a batch": ({"inputs": [[[0.5] * 8] * 7]}, ["body", "inputs"], "shape"),
    "not numbers": ({"inputs": [["a"] * 8] * 8}, ["body", "inputs"], "numbers"),
    "NaN": ("nan", ["body", "inputs", 1], "finite"),
    "infinity": ("inf", ["body", "inputs", 0], "finite"),
    "above the bounds": ({"inputs": [_image(0.5), _image(1.5)]}, ["body", "inputs", 1], "[0.0, 1.0]"),
    "below the bounds": ({"inputs": _image(-0.01)}, ["body", "inputs", 0], "[0.0, 1.0]"),
    "a text field for an image model": ({"texts": ["hello"]}, ["body", "texts"], "unexpected"),
    "no field": ({}, ["body", "inputs"], "required"),
    "too many inputs": ({"inputs": [_image()] * 17}, ["body", "inputs"], "batch of 17"),
    "not JSON": ("{", ["body"], "JSON"),
    "not an object": ([1, 2], ["body"], "object"),
}  # fmt: skip


def _raw(body: Any) -> bytes:
    """The request body: JSON, or for "nan"/"inf" two images whose second (NaN) or first
    (1e999, which JSON parsers read as infinity) holds one non-finite value. JSON has no NaN,
    but Python's json module (and many clients) send it."""
    if body in ("nan", "inf"):
        pair = json.dumps({"inputs": [_image(), _image()]})
        if body == "nan":
            head, tail = pair.rsplit("0.5", 1)
            return f"{head}NaN{tail}".encode()
        return pair.replace("0.5", "1e999", 1).encode()
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


@pytest.mark.parametrize("case", list(CASES))
def test_an_invalid_body_gets_422_naming_the_field(api: httpx.Client, case: str) -> None:
    body, loc, word = CASES[case]
    raw = _raw(body)
    r = api.post("/v1/predict", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc and word in error["msg"], error
