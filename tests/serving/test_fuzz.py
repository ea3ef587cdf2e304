"""Fuzzing the guard: schemathesis against its own OpenAPI schema (in process and on a real
uvicorn server), and hand-written hostile bodies. Whatever arrives, the answer is a 2xx or a
4xx, never a 5xx, and the service stays healthy.

The default run sends about 1 250 generated requests in process and 150 to a real server;
``-m slow`` sends more than 10 000 in process and 1 000 to a real server. Requests are counted
where they arrive (an ASGI middleware, or the server's JSON request log).

The cases come from schemathesis's strategies (``APIOperation.as_strategy``, positive and
negative) driven by hypothesis directly, and every case is checked with
``case.call_and_validate()`` (all of schemathesis's checks unless a test narrows them).
Schemathesis's coverage phase is not run: on the predict body (fixed-length nested arrays) it
enumerates for minutes before its first request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from robustops.serving.config import ServeConfig
from robustops.serving.model import ServedModel
from robustops.tabular import FeatureSchema

from .fuzz_helpers import (
    InProcessGuard,
    in_process_guard,
    live_guard,
    tiny_served_model,
    train_tiny,
)

FUZZ_CONFIG = {"phases": {"coverage": {"enabled": False}}}
# Batches of at most 4 keep generated bodies small (hypothesis draws every number); the batch
# limit itself is fuzzed like any other bound of the schema.
SMALL_BATCH = ServeConfig.model_validate({"limits": {"max_batch": 4}})


def _quiet() -> None:
    """The request log at WARNING: thousands of JSON lines would only slow the run."""
    logging.getLogger("robustops.guard").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGuard]:
    g = in_process_guard(tmp_path_factory.mktemp("fuzz"), config=SMALL_BATCH)
    _quiet()
    yield g
    logging.getLogger("robustops.guard").setLevel(logging.INFO)


def _schema(app: Any = None, url: str | None = None) -> Any:
    """The guard's OpenAPI schema as schemathesis loads it (ASGI app, or a server's URL)."""
    config = schemathesis.Config.from_dict(FUZZ_CONFIG)
    if url is not None:
        return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


def fuzz(
    schema: Any,
    *,
    examples: int,
    key: str | None,
    path: str | None = None,
    derandomize: bool = True,
    **call: Any,
) -> int:
    """Send ``examples`` generated cases for the operations of ``schema`` (those at ``path``
    when given), each checked by ``case.call_and_validate(**call)``; returns how many were sent.

    With ``key`` every case presents it as a bearer token (the generated auth headers are
    replaced, so bodies reach validation); the predict body is then generated positive and
    negative. Without, the generated headers are sent as they are, positive and negative."""
    subset = schema.include(path=path) if path is not None else schema
    headers = {"authorization": f"Bearer {key}", "x-api-key": ""} if key else None
    modes = [GenerationMode.POSITIVE]
    if key is None or path == "/v1/predict":
        modes.append(GenerationMode.NEGATIVE)
    strategy = st.one_of([subset.as_strategy(mode, headers=headers) for mode in modes])
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    @given(strategy)
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(**call)

    run()
    return sent


def test_fuzz_predict(guard: InProcessGuard) -> None:
    """Generated predict bodies, positive and negative, with a valid key, under every
    schemathesis check: no 5xx, status codes and responses as documented, schema-valid bodies
    accepted, schema-violating ones refused."""
    started = time.perf_counter()
    sent = fuzz(_schema(guard.app), examples=1_000, key=guard.key, path="/v1/predict")
    print(f"predict fuzz: {sent} requests in {time.perf_counter() - started:.1f} s")


def test_fuzz_every_operation(guard: InProcessGuard) -> None:
    """Every operation with generated ``Authorization`` / ``X-API-Key`` headers (never a valid
    key: 401 where one is needed), then with the valid key."""
    schema = _schema(guard.app)
    started = time.perf_counter()
    sent = fuzz(schema, examples=150, key=None)
    sent += fuzz(schema, examples=100, key=guard.key)
    print(f"every-operation fuzz: {sent} requests in {time.perf_counter() - started:.1f} s")


def test_fuzz_counts_and_health(guard: InProcessGuard) -> None:
    """After the fuzz tests above (same module-scoped app): at least 1 000 requests arrived,
    none got a 5xx, and the service still answers."""
    client = TestClient(guard.app)
    assert client.get("/healthz").status_code == 200
    ok = client.post(
        "/v1/predict", json={"inputs": [[[0.5] * 8] * 8]}, headers={"X-API-Key": guard.key}
    )
    assert ok.status_code == 200
    counts = guard.app.statuses
    print(
        f"in-process fuzz: {guard.app.requests} requests arrived, statuses {sorted(counts.items())}"
    )
    assert guard.app.requests >= 1_000
    assert not [s for s in counts if s >= 500]


@pytest.mark.slow
def test_fuzz_10k(tmp_path: Path) -> None:
    """More than 10 000 generated requests in process (random seed, every check); then no
    answer was a 5xx and the service is healthy."""
    g = in_process_guard(tmp_path, config=SMALL_BATCH)
    _quiet()
    schema = _schema(g.app)
    started = time.perf_counter()
    sent = fuzz(schema, examples=9_600, key=g.key, path="/v1/predict", derandomize=False)
    sent += fuzz(schema, examples=300, key=None, derandomize=False)
    sent += fuzz(schema, examples=300, key=g.key, derandomize=False)
    elapsed = time.perf_counter() - started
    assert TestClient(g.app).get("/healthz").status_code == 200
    counts = g.app.statuses
    print(f"10k fuzz: {sent} sent, {g.app.requests} arrived in {elapsed:.0f} s; {counts}")
    assert g.app.requests >= 10_000
    assert not [s for s in counts if s >= 500]


@pytest.mark.parametrize(
    "examples", [150, pytest.param(1_000, marks=pytest.mark.slow)], ids=["150", "1000"]
)
def test_fuzz_real_server(tmp_path: Path, examples: int) -> None:
    """A real ``robustops serve`` (uvicorn, a digits MLP trained through the CLI) fuzzed over
    HTTP: generated predict requests (no 5xx; one JSON log line each), then hostile bodies
    over the socket, then it still answers."""
    spec = train_tiny(tmp_path)
    with live_guard(tmp_path, spec) as live:
        started = time.perf_counter()
        sent = fuzz(
            _schema(url=live.url),
            examples=examples,
            key=live.key,
            path="/v1/predict",
            checks=[not_a_server_error],
            timeout=30,
        )
        elapsed = time.perf_counter() - started
        headers = {"X-API-Key": live.key, "Content-Type": "application/json"}
        with httpx.Client(base_url=live.url, timeout=60) as client:
            for name in ("deeply nested array", "integer of 5000 digits", "10 MB of spaces"):
                r = client.post("/v1/predict", content=HOSTILE[name], headers=headers)
                assert 400 <= r.status_code < 500, (name, r.status_code)
            assert client.get("/readyz").status_code == 200
        assert live.healthy()
        records = [r for r in live.log_records() if r.get("event") == "predict"]
        print(f"live fuzz: {sent} requests in {elapsed:.1f} s; {len(records)} predict log lines")
        assert len(records) >= sent >= examples // 2
        assert not [r for r in records if r["status"] >= 500]


# --- hand-written hostile bodies ------------------------------------------------------------

IMAGE = [[[0.5] * 8] * 8]
ROW8 = ",".join(["0"] * 8)
ZEROS = "[[" + ",".join([f"[{ROW8}]"] * 8) + "]]"


def _image_with(first: str) -> str:
    """One (1, 8, 8) input as JSON text whose first value is the literal ``first``."""
    rows = [f"[{first}," + ",".join(["0"] * 7) + "]"] + [f"[{ROW8}]"] * 7
    return '{"inputs": [[' + ",".join(rows) + "]]}"


HOSTILE: dict[str, str | bytes] = {
    "deeply nested array": "[" * 100_000 + "]" * 100_000,
    "deeply nested inputs": '{"inputs": ' + "[" * 5_000 + "]" * 5_000 + "}",
    "nested past numpy's 64 dimensions": '{"inputs": ' + "[" * 900 + "0" + "]" * 900 + "}",
    "deeply nested objects": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "integer of 5000 digits": '{"inputs": [' + "9" * 5_000 + "]}",
    "integer past 1e308": _image_with("1" + "0" * 400),
    "integer past 64 bits": _image_with(str(2**64)),
    "NaN literal": _image_with("NaN"),
    "Infinity literal": _image_with("Infinity"),
    "-Infinity literal": _image_with("-Infinity"),
    "1e999": _image_with("1e999"),
    "string for a number": _image_with('"0.5"'),
    "boolean for a number": _image_with("true"),
    "null for a number": _image_with("null"),
    "object for a number": _image_with("{}"),
    "array for a number": _image_with("[0]"),
    "out of bounds": _image_with("1.0000001"),
    "negative zero and tiny": _image_with("-1e-320"),
    "ragged": json.dumps({"inputs": [[[0.5] * 8] * 7 + [[0.5] * 9]]}),
    "wrong shape": json.dumps({"inputs": [[[0.5] * 9] * 9]}),
    "scalar inputs": '{"inputs": 0.5}',
    "null inputs": '{"inputs": null}',
    "empty batch": '{"inputs": []}',
    "string inputs": '{"inputs": "AAAA"}',
    "texts for an image model": '{"texts": ["a"]}',
    "lone surrogate in texts": '{"texts": ["\\ud800"]}',
    "lone surrogate as a field name": '{"\\udfff": 1, "inputs": ' + ZEROS + "}",
    "long field name": json.dumps({"x" * 100_000: 1}),
    "two fields": json.dumps({"inputs": IMAGE, "rows": []}),
    "array body": "[1, 2, 3]",
    "string body": '"inputs"',
    "number body": "1e999",
    "null body": "null",
    "empty body": "",
    "whitespace body": " \n\t ",
    "truncated JSON": '{"inputs": [[[0.5',
    "invalid UTF-8": b'{"inputs": "\xff\xfe"}',
    "UTF-16 with BOM": '{"inputs": 1}'.encode("utf-16"),
    "NUL bytes": b'{"inputs": [0\x00]}',
    "batch past the limit": json.dumps({"inputs": [IMAGE] * 5}),
    "many small inputs (10 MB)": json.dumps({"inputs": [IMAGE] * 40_000}),
    "10 MB of spaces": " " * 10_000_000,
}


@pytest.fixture(scope="module")
def hostile_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    g = in_process_guard(tmp_path_factory.mktemp("hostile"), config=SMALL_BATCH)
    _quiet()
    with TestClient(g.app, raise_server_exceptions=False) as client:
        yield client, g.key


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_body_is_refused(name: str, hostile_client: tuple[TestClient, str]) -> None:
    client, key = hostile_client
    body = HOSTILE[name]
    r = client.post(
        "/v1/predict",
        content=body,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code == 422:
        detail = r.json()["detail"]
        assert detail and all(d["loc"][0] == "body" for d in detail)
    assert len(r.content) < 2_000  # nothing long is echoed back
    assert client.get("/healthz").status_code == 200


def test_streamed_body_past_the_cap_is_413(hostile_client: tuple[TestClient, str]) -> None:
    """A chunked body (no Content-Length) is cut off at the cap while it streams."""
    client, key = hostile_client

    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(20_000):  # 3 MB, past the 2 MB cap
            yield b"[[" + b",".join([b"[0,0,0,0,0,0,0,0]"] * 8) + b"]],"
        yield b"]}"

    r = client.post("/v1/predict", content=chunks(), headers={"X-API-Key": key})
    assert r.status_code == 413


def test_repeated_keys_and_a_bad_content_length_are_refused(
    hostile_client: tuple[TestClient, str],
) -> None:
    """A key given twice is 422 (parsers disagree on which copy wins: a proxy and the guard
    could read different bodies); a Content-Length that is not a number is 400, not 413."""
    client, key = hostile_client
    image = "[" + ",".join(["[" + ",".join(["0.5"] * 8) + "]"] * 8) + "]"
    twice = '{"inputs": [' + image + '], "inputs": [' + image + "]}"
    r = client.post("/v1/predict", content=twice, headers={"X-API-Key": key})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
    once = '{"inputs": [' + image + "]}"
    assert client.post("/v1/predict", content=once, headers={"X-API-Key": key}).status_code == 200
    r = client.post(
        "/v1/predict", content=once, headers={"X-API-Key": key, "Content-Length": "12abc"}
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": ""},
        {"X-API-Key": "rok_00000000_" + "A" * 43},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer " + "x" * 8_000},
        {"X-API-Key": "é" * 100},
    ],
    ids=["none", "empty", "unknown well-formed", "bare bearer", "basic", "8k bearer", "latin-1"],
)
def test_bad_keys_are_401(headers: dict[str, str], hostile_client: tuple[TestClient, str]) -> None:
    client, _ = hostile_client
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    r = client.post("/v1/predict", json={"inputs": IMAGE}, headers=encoded)  # type: ignore[arg-type]
    assert r.status_code == 401


def _text_model() -> ServedModel:
    """A two-class text model (logits from the text's length)."""

    def logits(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(len(t) % 7), 1.0] for t in texts])

    return tiny_served_model(
        modality="text", logits=logits, num_classes=2, input_shape=None, class_names=["ham", "spam"]
    )


def _table_model() -> ServedModel:
    """A two-class model on rows of an (age: integer, immutable; income) schema."""
    schema = FeatureSchema.model_validate(
        {
            "name": "fuzz-table",
            "features": [
                {"name": "age", "kind": "integer", "range": [18, 100], "immutable": True},
                {"name": "income", "range": [0, 1e6]},
            ],
        }
    )
    return tiny_served_model(
        modality="table",
        logits=lambda x: torch.stack([x[:, 0], x[:, 1]], dim=1),
        num_classes=2,
        input_shape=None,
        schema=schema,
        class_names=None,
    )


TEXT_BODIES: dict[str, str | bytes] = {
    "lone high surrogate": '{"texts": ["ab\\ud800cd"]}',
    "lone low surrogate": '{"texts": ["\\udc00"]}',
    "surrogate pair (valid)": '{"texts": ["\\ud83d\\ude00"]}',
    "NUL and controls": '{"texts": ["a\\u0000b\\u001bc\\u202e"]}',
    "too long": json.dumps({"texts": ["a" * 10_001]}),
    "number for a text": '{"texts": [1]}',
    "null text": '{"texts": [null]}',
    "nested list": '{"texts": [["a"]]}',
    "empty list": '{"texts": []}',
    "too many": json.dumps({"texts": ["a"] * 5}),
    "string not list": '{"texts": "a"}',
    "inputs for a text model": json.dumps({"inputs": IMAGE}),
}

TABLE_BODIES: dict[str, str | bytes] = {
    "integer past 1e308": '{"rows": [{"age": 30, "income": 1' + "0" * 400 + "}]}",
    "NaN": '{"rows": [{"age": 30, "income": NaN}]}',
    "Infinity": '{"rows": [{"age": 30, "income": Infinity}]}',
    "boolean": '{"rows": [{"age": true, "income": 1}]}',
    "string": '{"rows": [{"age": "30", "income": 1}]}',
    "missing feature": '{"rows": [{"age": 30}]}',
    "unknown feature (surrogate)": '{"rows": [{"age": 30, "income": 1, "\\ud800": 1}]}',
    "unknown feature (long)": json.dumps({"rows": [{"age": 30, "income": 1, "z" * 50_000: 1}]}),
    "out of range": '{"rows": [{"age": 300, "income": 1}]}',
    "off the integer grid": '{"rows": [{"age": 30.5, "income": 1}]}',
    "row not an object": '{"rows": [[30, 1]]}',
    "rows an object": '{"rows": {"age": 30, "income": 1}}',
    "empty rows": '{"rows": []}',
}


@pytest.mark.parametrize(
    ("modality", "name"),
    [("text", n) for n in TEXT_BODIES] + [("table", n) for n in TABLE_BODIES],
)
def test_hostile_text_and_table_bodies(
    modality: str, name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = _text_model() if modality == "text" else _table_model()
    g = in_process_guard(tmp_path_factory.mktemp(modality), model=model, config=SMALL_BATCH)
    _quiet()
    body = (TEXT_BODIES if modality == "text" else TABLE_BODIES)[name]
    with TestClient(g.app, raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/predict",
            content=body,
            headers={"X-API-Key": g.key, "Content-Type": "application/json"},
        )
        if name == "surrogate pair (valid)" or name == "NUL and controls":
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 422, (r.status_code, r.text[:300])
            assert len(r.content) < 2_000
        assert client.get("/healthz").status_code == 200


def test_openapi_request_body_is_the_models_contract(guard: InProcessGuard) -> None:
    """The predict body schema names the one field of the served modality, the input shape and
    bounds, and the batch limit (what lets schemathesis generate valid bodies at all)."""
    spec = TestClient(guard.app).get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert schema["required"] == ["inputs"] and schema["additionalProperties"] is False
    many, one = schema["properties"]["inputs"]["anyOf"]
    assert many["maxItems"] == 4 and one["minItems"] == one["maxItems"] == 1
    leaf = one["items"]["items"]["items"]
    assert leaf == {"type": "number", "minimum": 0.0, "maximum": 1.0}
