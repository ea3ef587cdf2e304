"""Dynamic batching: requests that queue while the model is busy run as one pass, each with
its own answer; a bad request fails alone; the batcher restarts after a close."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import torch

from robustops.serving.batching import Batcher
from robustops.serving.config import ServeConfig
from robustops.serving.guard import Guard, Outcome, Request
from robustops.serving.model import ServedModel, module_logits


class _SlowModel:
    """A linear model that takes ``delay`` seconds per call and records its batch sizes;
    raises on an input whose first value is exactly ``poison``."""

    def __init__(self, delay: float = 0.02, poison: float = -1.0) -> None:
        torch.manual_seed(0)
        self.run = module_logits(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)))
        self.delay, self.poison = delay, poison
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.sizes.append(int(x.shape[0]))
        time.sleep(self.delay)
        if bool((x.reshape(x.shape[0], -1)[:, 0] == self.poison).any()):
            raise RuntimeError("poisoned input")
        return self.run(x)


def _guard(model: _SlowModel) -> Guard:
    served = ServedModel(
        name="slow", modality="image", logits=model, num_classes=4, input_shape=(1, 4, 4)
    )
    cfg = ServeConfig.model_validate(
        {"detection": {"enabled": False}, "abstention": {"enabled": False}}
    )
    return Guard(served, cfg)


def _request(guard: Guard, i: int, n: int = 1, first: float | None = None) -> Request:
    gen = torch.Generator().manual_seed(i)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    if first is not None:
        x[0, 0, 0, 0] = first
    return Request(f"key-{i % 3}", guard.parse({"inputs": x.tolist()}))


async def _submit_all(batcher: Batcher, guard: Guard, requests: list[Request]) -> list[Any]:
    futures = [batcher.submit(guard, r) for r in requests]
    return await asyncio.gather(*futures, return_exceptions=True)


def test_queued_requests_share_passes_and_keep_their_own_answers() -> None:
    model = _SlowModel()
    guard = _guard(model)
    requests = [_request(guard, i, n=1 + i % 3) for i in range(30)]
    batcher = Batcher(max_inputs=16, threads=1)
    try:
        got: list[Outcome] = asyncio.run(_submit_all(batcher, guard, requests))
    finally:
        batcher.close()
    assert batcher.requests == 30 and batcher.passes < 30  # they queued behind the first
    assert max(model.sizes) <= 16 and sum(model.sizes) == sum(r.batch.n for r in requests)
    for request, outcome in zip(requests, got, strict=True):
        alone = guard.handle(request.key, request.batch)
        assert [p.label for p in outcome.predictions] == [p.label for p in alone.predictions]
        assert [p.sha256 for p in outcome.predictions] == [p.sha256 for p in alone.predictions]
        for a, b in zip(outcome.predictions, alone.predictions, strict=True):
            assert a.confidence == pytest.approx(b.confidence, abs=1e-5)


def test_a_request_larger_than_a_pass_runs_alone() -> None:
    model = _SlowModel()
    guard = _guard(model)
    requests = [_request(guard, 0, n=3), _request(guard, 1, n=20), _request(guard, 2, n=3)]
    batcher = Batcher(max_inputs=8, threads=1)
    try:
        got = asyncio.run(_submit_all(batcher, guard, requests))
    finally:
        batcher.close()
    assert [len(o.predictions) for o in got] == [3, 20, 3]
    assert 20 in model.sizes  # alone, not split and not refused


def test_a_failing_request_fails_alone() -> None:
    model = _SlowModel(poison=0.125)
    guard = _guard(model)
    requests = [_request(guard, i, first=0.125 if i == 4 else None) for i in range(12)]
    batcher = Batcher(max_inputs=64, threads=1)
    try:
        got = asyncio.run(_submit_all(batcher, guard, requests))
    finally:
        batcher.close()
    assert isinstance(got[4], RuntimeError) and "poisoned" in str(got[4])
    assert all(isinstance(o, Outcome) for i, o in enumerate(got) if i != 4)


def test_the_batcher_restarts_after_close_and_two_threads_overlap() -> None:
    model = _SlowModel(delay=0.2)
    guard = _guard(model)
    batcher = Batcher(max_inputs=1, threads=2)  # one request per pass: two run at once
    started = time.perf_counter()
    first = asyncio.run(_submit_all(batcher, guard, [_request(guard, 0), _request(guard, 1)]))
    assert time.perf_counter() - started < 0.38  # 2 x 0.2 s in parallel, not in a row
    batcher.close()
    second = asyncio.run(_submit_all(batcher, guard, [_request(guard, 2)]))
    batcher.close()
    assert all(isinstance(o, Outcome) for o in first + second)
    with pytest.raises(ValueError, match="max_inputs"):
        Batcher(max_inputs=0)
