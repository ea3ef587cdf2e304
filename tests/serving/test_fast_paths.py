"""The guard's per-request fast paths give the same answers as the slow ones: request bodies
parsed by orjson when that is safe (:func:`robustops.serving.app.parse_json`), and flagged
requests handed to the dashboard's store in batches (:class:`FlagBuffer`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from robustops.serving.app import _unique_keys, parse_json
from robustops.serving.metrics import FlagBuffer


def _stdlib(raw: bytes) -> Any:
    return json.loads(raw, object_pairs_hook=_unique_keys)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [[0.5, 1, -2e-3, 1E2], [0, 0.1, 0.30000000000000004, 5e-324]]}',
        b'{"inputs": [1.7976931348623157e308, -0.0, 123456789012345678]}',
        b'{"texts": ["a \\"quoted\\" word", "\\u00e9\\ud83d\\ude00"]}',
        b'{"rows": [{"age": 3, "income": 2.5}, {"age": 4, "income": 1}]}',
        b'{"inputs": [NaN, Infinity, -Infinity]}',  # not JSON; the stdlib reads it
        b'{"inputs": [1e400, 1.0e-400, -0]}',  # orjson refuses the overflow; the stdlib: inf
        b'{"texts": ["\\ud800"]}',  # a lone surrogate
        b"\xef\xbb\xbf" + b'{"inputs": [1]}',  # a byte order mark
        '{"inputs": [1]}'.encode("utf-16"),
        b"[1, 2]",
        b'"inputs"',
        b"{}",
    ],
)
def test_parse_json_answers_as_the_standard_library(raw: bytes) -> None:
    got = parse_json(raw)
    want = _stdlib(raw)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert type(got) is type(want)


def test_an_integer_past_64_bits_is_refused_either_way(tmp_path: Any) -> None:
    """The one difference: orjson reads an integer past 64 bits as a float, the standard
    library as an integer. Validation refuses both (the first by the input bounds, the second
    as not a 64-bit number), so neither reaches the model."""
    from robustops.serving.config import ServeConfig
    from robustops.serving.validation import InvalidRequest
    from serving.server_helpers import stub_guard

    raw = b'{"inputs": [' + b"123456789012345678901234567890, " * 7 + b"1]}"
    assert parse_json(raw)["inputs"][0] == pytest.approx(1.2345678901234568e29)
    guard = stub_guard(ServeConfig.model_validate({"state_dir": str(tmp_path)}))
    for body in (parse_json(raw), _stdlib(raw)):
        with pytest.raises(InvalidRequest):
            guard.parse(body)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [1], "inputs": [2]}',  # orjson would keep the last one
        b'{"inputs": [1], "in\\u0070uts": [2]}',  # the same key, escaped
        b'{"rows": [{"a": 1, "a": 2}]}',  # nested
        b'{"inputs": [{"x": 1, "x": 2}]}',
    ],
)
def test_parse_json_refuses_a_repeated_key_like_the_standard_library(raw: bytes) -> None:
    with pytest.raises(ValueError, match="appears twice"):
        _stdlib(raw)
    with pytest.raises(ValueError, match="appears twice"):
        parse_json(raw)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"inputs": [1,]}', b"\xff\xfe\x00", b'{"inputs": [1]} x', b"[" * 100_000]
)
def test_parse_json_refuses_what_the_standard_library_refuses(raw: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        _stdlib(raw)
    with pytest.raises((ValueError, RecursionError)):
        parse_json(raw)


class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, list[str]]] = []

    def record_flag(self, key: str, action: str, reasons: list[str]) -> None:
        self.got.append((key, action, reasons))


def test_flag_buffer_writes_in_order_after_its_delay_or_when_flushed() -> None:
    sink = _Sink()
    buffer = FlagBuffer(sink, delay=0.05)

    async def traffic() -> None:
        for i in range(5):
            buffer.record_flag(f"k{i % 2}", "flag", ["fingerprint"])
        assert sink.got == []  # nothing written on the event loop
        await asyncio.sleep(0.3)
        assert [k for k, _, _ in sink.got] == ["k0", "k1", "k0", "k1", "k0"]
        buffer.record_flag("k9", "block", ["fingerprint"])
        buffer.flush()  # e.g. before the dashboard's data are read
        assert sink.got[-1] == ("k9", "block", ["fingerprint"])
        await asyncio.sleep(0.2)  # the flush scheduled for k9 finds nothing left

    asyncio.run(traffic())
    assert len(sink.got) == 6
    buffer.record_flag("k5", "flag", [])  # no event loop: written at once
    assert sink.got[-1] == ("k5", "flag", [])


def test_the_direct_predict_route_answers_as_fastapi_does(tmp_path: Any) -> None:
    """``POST /v1/predict`` skips FastAPI's router; its refusals keep FastAPI's shape and
    headers, other methods still get the router's 405, and the schema still describes it."""
    from fastapi.testclient import TestClient

    from robustops.serving.app import create_app
    from robustops.serving.config import ServeConfig
    from robustops.serving.keys import KeyStore
    from robustops.serving.limits import MemoryLimiter
    from serving.server_helpers import inputs, stub_guard

    config = ServeConfig.model_validate({"state_dir": str(tmp_path)})
    keys = KeyStore(tmp_path / "keys.db")
    key = keys.add("client")
    app = create_app(stub_guard(config), keys, MemoryLimiter(1.0, 1))
    with TestClient(app) as c:
        missing = c.post("/v1/predict", json=inputs(0.5))
        assert missing.status_code == 401
        assert missing.json() == {"detail": "a valid API key is required"}
        assert missing.headers["www-authenticate"] == "Bearer"
        ok = c.post("/v1/predict", json=inputs(0.5), headers={"X-API-Key": key})
        assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
        assert set(ok.json()) == {"request_id", "model", "predictions", "flagged"}
        limited = c.post("/v1/predict", json=inputs(0.5), headers={"X-API-Key": key})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert c.get("/v1/predict", headers={"X-API-Key": key}).status_code == 405
        assert "post" in c.get("/openapi.json").json()["paths"]["/v1/predict"]
