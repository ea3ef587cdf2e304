"""The guard's Prometheus metrics: counts equal the requests sent, in one process (TestClient)
and across the workers of a real ``robustops serve --workers 2``, whichever worker answers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from robustops.serving.app import create_app
from robustops.serving.config import ServeConfig
from robustops.serving.keys import KeyStore
from robustops.serving.limits import MemoryLimiter
from robustops.serving.metrics import BUCKETS, quantile, reason_category
from serving.server_helpers import (
    HIGH_LIMITS,
    LiveServer,
    digits_spec,
    inputs,
    multiprocess_pids,
    running,
    send_many,
    start_cli_server,
    stub_guard,
)

ROLES = {"ops": "admin", "alice": "client", "prober-1": "client"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str
) -> float:
    """Sum of the samples called ``name`` whose labels include ``match``."""
    return sum(
        v
        for (n, labels), v in values.items()
        if n == name and all((k, m) in labels for k, m in match.items())
    )


# --- pure pieces -----------------------------------------------------------------------------


def test_quantile_interpolates_within_buckets_like_prometheus() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.005, 90.0), (0.01, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.002)
    assert quantile(0.25, buckets) == pytest.approx(0.0015)
    assert quantile(0.95, buckets) == pytest.approx(0.0075)
    assert quantile(0.99, [(0.001, 10.0), (math.inf, 20.0)]) == pytest.approx(0.001)
    assert quantile(0.5, [(0.001, 0.0), (math.inf, 0.0)]) is None
    assert list(BUCKETS) == sorted(BUCKETS) and BUCKETS[0] <= 0.001 and BUCKETS[-1] >= 1.0


def test_reasons_become_bounded_categories() -> None:
    assert reason_category("out-of-distribution score 12.3 (energy) above threshold 4") == "ood"
    assert reason_category("confidence 0.2100 below minimum 0.5000") == "low-confidence"
    assert reason_category("fingerprint: 4 near-duplicates") == "fingerprint"
    assert reason_category("Embedding cosine 0.99") == "embedding"
    assert reason_category("  12 things") == "other"
    assert len(reason_category("x" * 500)) == 32


# --- one process -----------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    config = ServeConfig.model_validate({"limits": {**HIGH_LIMITS, "max_body_bytes": 4096}})
    keys = KeyStore(tmp_path / "keys.db")
    made = {name: keys.add(name, role) for name, role in ROLES.items()}
    app = create_app(stub_guard(config), keys, MemoryLimiter(1e4, 10_000))
    with TestClient(app) as c:
        yield c, made


def test_counts_equal_the_requests_sent_in_one_process(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, keys = client

    def post(key: str | None, body: Any) -> int:
        headers = {"X-API-Key": keys[key]} if key else {}
        return c.post("/v1/predict", json=body, headers=headers).status_code

    sent = (
        [post("alice", inputs(0.5, 2)) for _ in range(7)]  # 14 inputs answered
        + [post("alice", inputs(0.95)) for _ in range(3)]  # ood abstentions
        + [post("alice", {"inputs": [[0.05] * 8, [0.5] * 8]}) for _ in range(2)]  # 1 low-conf
        + [post("prober-1", inputs(0.5)) for _ in range(4)]  # flagged
        + [post("alice", {"inputs": [[2.0] * 8]}) for _ in range(2)]  # out of bounds: 422
        + [post(None, inputs(0.5)) for _ in range(2)]  # no key: 401
        + [post("alice", {"inputs": [[0.5] * 8] * 400})]  # body over 4096 bytes: 413
    )
    assert sent.count(200) == 16 and sent.count(422) == 2 and sent.count(401) == 2
    assert sent.count(413) == 1
    n = len(sent)

    assert c.get("/metrics", headers={"X-API-Key": keys["alice"]}).status_code == 403
    assert c.get("/metrics").status_code == 401
    resp = c.get("/metrics", headers={"X-API-Key": keys["ops"]})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    v = samples(resp.text)
    req = "robustops_guard_requests_total"
    assert total(v, req) == n
    assert total(v, req, status="200") == 16
    assert total(v, req, status="200", decision="predict", action="ok") == 7
    assert total(v, req, decision="abstain", action="ok") == 5
    assert total(v, req, status="200", decision="predict", action="flag") == 4
    assert total(v, req, status="422", decision="invalid", action="none") == 2
    assert total(v, req, status="401", decision="unauthorized") == 2
    assert total(v, req, status="413", decision="too-large") == 1
    assert total(v, "robustops_guard_request_latency_seconds_count") == n
    assert total(v, "robustops_guard_request_latency_seconds_bucket", le="+Inf") == n
    assert total(v, "robustops_guard_predictions_total", decision="predict") == 14 + 2 + 4
    assert total(v, "robustops_guard_predictions_total", decision="abstain") == 3 + 2
    assert total(v, "robustops_guard_abstentions_total", reason="ood") == 3
    assert total(v, "robustops_guard_abstentions_total", reason="low-confidence") == 2
    assert total(v, "robustops_guard_flags_total", reason="fingerprint") == 4
    assert total(v, "robustops_guard_in_flight") == 0
    assert total(v, "robustops_guard_workers") == 1
    info = [labels for (name, labels), _ in v.items() if name == "robustops_guard_model_info"]
    assert info == [(("name", "tiny"), ("version", "tiny@3"), ("weights_sha256", "ab" * 32))]

    # The dashboard's data reads the same figures; the key table comes from the store.
    data = c.get("/dashboard/data", headers={"X-API-Key": keys["ops"]}).json()
    assert data["requests"]["total"] == n and data["latency_ms"]["since_start"]["count"] == n
    assert data["requests"]["by_status"] == {"200": 16, "401": 2, "413": 1, "422": 2}
    assert data["abstentions"] == {"inputs": 5, "by_reason": {"ood": 3, "low-confidence": 2}}
    assert data["flags"] == {"requests": 4, "by_reason": {"fingerprint": 4}}
    [top] = data["top_flagged_keys"]
    assert top["key"] == "prober-1" and top["flags"] == 4 and top["last_action"] == "flag"
    assert top["reasons"] == {"fingerprint": 4}
    p = data["latency_ms"]["since_start"]
    assert 0 < p["p50"] <= p["p95"] <= p["p99"]
    assert data["model"]["version"] == "tiny@3" and data["workers"] == 1


# --- a real server with two workers ------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("serve")
    yield from running(start_cli_server(root, digits_spec(root), ROLES, workers=2))


def test_metrics_total_the_requests_whichever_worker_served_them(cli_server: LiveServer) -> None:
    gen = torch.Generator().manual_seed(0)
    jobs = [
        ("alice", {"inputs": torch.rand(1, 1, 8, 8, generator=gen).tolist()}) for _ in range(40)
    ]
    sent: list[int] = []
    # Fresh connections from 8 threads spread over both workers; send more until both counted.
    for _ in range(10):
        sent += send_many(cli_server, jobs)
        if len(multiprocess_pids(cli_server)) >= 2:
            break
    assert set(sent) == {200}, sent
    assert len(multiprocess_pids(cli_server)) == 2, "both workers should have served requests"
    n = len(sent)
    for _ in range(6):  # each scrape may be answered by either worker: all agree
        resp = cli_server.get("/metrics", "ops")
        assert resp.status_code == 200
        v = samples(resp.text)
        assert total(v, "robustops_guard_requests_total") == n
        assert total(v, "robustops_guard_requests_total", status="200", decision="predict") == n
        assert total(v, "robustops_guard_request_latency_seconds_count") == n
        assert total(v, "robustops_guard_predictions_total", decision="predict") == n
        assert total(v, "robustops_guard_workers") == 2
        assert total(v, "robustops_guard_in_flight") == 0
        info = [dict(lb) for (name, lb), _ in v.items() if name == "robustops_guard_model_info"]
        assert [i["name"] for i in info] == ["tiny-digits"]
    data = cli_server.get("/dashboard/data", "ops").json()
    assert data["requests"]["total"] == n and data["workers"] == 2
    assert data["latency_ms"]["since_start"]["p99"] is not None
    assert cli_server.get("/dashboard/data", "alice").status_code == 403
    assert cli_server.get("/metrics", "alice").status_code == 403
