"""The guard as a FastAPI application.

Request path of ``POST /v1/predict``: body-size cap (413) → API key (401; ``Authorization:
Bearer KEY`` or ``X-API-Key: KEY``) → the key's rate limit (429 with ``Retry-After``) → the
worker's concurrency cap (503) → validation (422 naming the field) → the :class:`Guard`
(detect, predict, abstain) → one JSON log line. ``GET /healthz`` (the process is up),
``/readyz`` (the model answers), ``/v1/model`` (identity and input contract; any key) and the
OpenAPI schema at ``/openapi.json``. ``GET /metrics`` (Prometheus text, every worker's counts
merged) and ``GET /dashboard/data`` need an ``admin`` key (the counters would otherwise tell a
client whether its queries were flagged); the page ``GET /dashboard`` is open and asks for the
key (:mod:`robustops.serving.dashboard`).
"""

import asyncio
import json
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from robustops.serving.dashboard import PAGE, PAGE_HEADERS, DashboardStore, dashboard_data
from robustops.serving.guard import Guard, Outcome
from robustops.serving.keys import KeyInfo, KeyStore
from robustops.serving.limits import Limiter, LimiterUnavailable
from robustops.serving.metrics import GuardMetrics, ObserveMiddleware, note_outcome
from robustops.serving.validation import InvalidRequest, request_schema

log = logging.getLogger("robustops.guard")


def _json_lines_to_stderr() -> None:
    """Send the request log (already JSON, one object per line) to stderr at INFO, once."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class PredictionOut(BaseModel):
    """One input's answer."""

    decision: str = Field(description="predict or abstain")
    label: int | None
    class_name: str | None
    confidence: float = Field(description="temperature-scaled top-class probability")
    reasons: list[str]


class PredictResponse(BaseModel):
    """The answer to a request."""

    request_id: str
    model: dict[str, Any]
    predictions: list[PredictionOut]
    flagged: bool = Field(description="the attack-in-progress detector flagged this key")


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 before it is read whole (by its
    Content-Length, or while it streams)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or {}).get(b"content-length")
        if length is not None and not length.isdigit():
            bad = JSONResponse({"detail": "Content-Length is not a number"}, status_code=400)
            await bad(scope, receive, send)
            return
        if length is not None and int(length) > self.limit:
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(scope, receive, send, self.limit)


class _TooLarge(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a repeated key is refused (parsers disagree
    on which copy wins, so a proxy and the guard could read different bodies)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice in one JSON object")
    return out


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    resp = JSONResponse({"detail": f"body larger than {limit} bytes"}, status_code=413)
    await resp(scope, receive, send)


def create_app(
    guard: Guard,
    keys: KeyStore,
    limiter: Limiter,
    *,
    metrics: GuardMetrics | None = None,
    store: DashboardStore | None = None,
) -> FastAPI:
    """The FastAPI application of one worker (see the module docstring). ``metrics`` default
    to this worker's (multiprocess when prometheus-client is in that mode); ``store`` (the
    dashboard's flagged keys and readings) to one in memory."""
    cfg = guard.config
    _json_lines_to_stderr()
    app = FastAPI(
        title="RobustOps guard",
        version="1",
        description="A hardened prediction service in front of a classifier.",
    )
    app.add_middleware(_BodyLimit, limit=cfg.limits.max_body_bytes)
    slots = asyncio.Semaphore(cfg.limits.max_concurrency)
    described = guard.model.describe()
    metrics = metrics if metrics is not None else GuardMetrics(described)
    store = store if store is not None else DashboardStore()
    app.add_middleware(ObserveMiddleware, metrics=metrics, sink=store)
    body_schema = request_schema(
        guard.model, max_batch=cfg.limits.max_batch, max_text_chars=cfg.max_text_chars
    )

    async def client(
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> KeyInfo:
        presented = x_api_key
        if authorization and authorization.lower().startswith("bearer "):
            presented = authorization[7:].strip()
        # A key this worker verified recently is answered here; anything else (one scrypt
        # derivation, a database read) goes to the thread pool, off the event loop.
        info = keys.cached(presented)
        if info is None:
            info = await run_in_threadpool(keys.verify, presented)
        if info is None:
            raise HTTPException(401, "a valid API key is required", {"WWW-Authenticate": "Bearer"})
        return info

    def admin(key: Annotated[KeyInfo, Depends(client)]) -> KeyInfo:
        if key.role != "admin":
            raise HTTPException(403, "an admin key is required")
        return key

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, Any]:
        return {"status": "ready", "model": described["version"] or described["name"]}

    @app.get("/v1/model", responses={401: {"description": "no valid API key"}})
    def model_info(key: Annotated[KeyInfo, Depends(client)]) -> dict[str, Any]:
        return described

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={
            401: {"description": "no valid API key"},
            403: {"description": "forbidden"},
            413: {"description": "body too large"},
            422: {"description": "invalid body; `detail` names each field"},
            429: {"description": "rate limit exceeded; see Retry-After"},
            503: {"description": "busy; see Retry-After"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        },
    )
    async def predict(request: Request, key: Annotated[KeyInfo, Depends(client)]) -> JSONResponse:
        started = time.perf_counter()
        rid = uuid.uuid4().hex
        try:
            admitted, retry = limiter.acquire(key.name)
        except LimiterUnavailable:  # fail closed: no shared state, no admission
            _log(rid, key, started, 503, "limiter-unavailable", [], "")
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})
        if not admitted:
            _log(rid, key, started, 429, "rate-limited", [], "")
            return JSONResponse(
                {"detail": "rate limit exceeded"},
                status_code=429,
                headers={"Retry-After": str(max(1, int(retry + 0.999)))},
            )
        try:
            body = json.loads(await request.body(), object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError):  # bad JSON or UTF-8, an integer over 4300 digits,
            # nesting deeper than the interpreter's recursion limit, a key given twice
            _log(rid, key, started, 422, "invalid", [], "")
            return JSONResponse(
                {"detail": [{"loc": ["body"], "msg": "not valid JSON"}]}, status_code=422
            )
        try:
            batch = guard.parse(body)
        except InvalidRequest as exc:
            _log(rid, key, started, 422, "invalid", [], "")
            return JSONResponse({"detail": exc.errors}, status_code=422)
        if slots.locked():
            _log(rid, key, started, 503, "busy", [], "")
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})
        # The slot is held until the model is done, even if this handler is cancelled first
        # (a client hanging up can cancel it): the work runs as its own task that gives the
        # slot back when it ends, and the handler only waits for it (shielded).
        await slots.acquire()  # a free slot: returns at once
        work = asyncio.ensure_future(run_in_threadpool(guard.handle, key.name, batch))
        work.add_done_callback(lambda task: _release(slots, task))
        outcome: Outcome = await asyncio.shield(work)
        note_outcome(request, key.name, outcome)
        status, payload = _respond(outcome, rid, described)
        decision = (
            "abstain" if any(p.decision == "abstain" for p in outcome.predictions) else ("predict")
        )
        _log(
            rid,
            key,
            started,
            status,
            decision,
            outcome.flags,
            outcome.input_sha256,
            action=outcome.action,
            raw=body if cfg.log_inputs else None,
        )
        return JSONResponse(payload, status_code=status)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            401: {"description": "no valid API key"},
            403: {"description": "not an admin key"},
        },
    )
    def prometheus_metrics(key: Annotated[KeyInfo, Depends(admin)]) -> Response:
        """Prometheus text exposition of the service's metrics (an admin key)."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard_page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    @app.get(
        "/dashboard/data",
        responses={
            401: {"description": "no valid API key"},
            403: {"description": "not an admin key"},
        },
    )
    def dashboard_json(key: Annotated[KeyInfo, Depends(admin)]) -> JSONResponse:
        """The dashboard's figures, merged over the workers (an admin key)."""
        headers = {k: v for k, v in PAGE_HEADERS.items() if k != "Content-Security-Policy"}
        return JSONResponse(dashboard_data(metrics, store), headers=headers)

    return app


def _release(slots: asyncio.Semaphore, task: asyncio.Future[Any]) -> None:
    """Give a concurrency slot back when the model work of a request ends (its result or
    error is then collected, so an abandoned request does not log a never-retrieved error)."""
    slots.release()
    if not task.cancelled():
        task.exception()


def _respond(outcome: Outcome, rid: str, described: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body for an outcome: a throttled key gets the same 429 as a rate
    limit, a blocked one a plain 403; flagged and logged requests get their normal answer."""
    if outcome.action == "throttle":
        return 429, {"detail": "rate limit exceeded"}
    if outcome.action == "block":
        return 403, {"detail": "forbidden"}
    return 200, {
        "request_id": rid,
        "model": {k: described[k] for k in ("name", "version", "weights_sha256")},
        "predictions": [p.to_json() for p in outcome.predictions],
        "flagged": outcome.action == "flag",
    }


def _log(
    rid: str,
    key: KeyInfo,
    started: float,
    status: int,
    decision: str,
    flags: list[str],
    digest: str,
    *,
    action: str = "ok",
    raw: Any = None,
) -> None:
    """One structured JSON line per request (the raw input only when configured)."""
    record: dict[str, Any] = {
        "event": "predict",
        "request_id": rid,
        "key": key.name,
        "status": status,
        "decision": decision,
        "action": action,
        "flags": flags,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "input_sha256": digest,
    }
    if raw is not None:
        record["input"] = raw
    log.info(json.dumps(record, separators=(",", ":")))
