"""The guard as a FastAPI application.

Request path of ``POST /v1/predict``: body-size cap (413) → failed authentications from the
client's address (429 with ``Retry-After``, before any key derivation; every route that needs a
key) → API key (401; ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``) → the key's rate
limit (429 with ``Retry-After``) → the worker's concurrency cap (503) → validation (422 naming
the field) → the :class:`Guard` (detect, predict, abstain; with the requests queued meanwhile
in one pass, :mod:`robustops.serving.batching`) → one JSON log line. The route is reached
through :class:`_DirectPredict`, not FastAPI's router (the OpenAPI schema still describes it). ``GET
/healthz`` (the process is up), ``/readyz`` (the model answers), ``/v1/model`` (identity and
input contract; any key) and the OpenAPI schema at ``/openapi.json``.

Every ``POST /v1/predict`` writes one JSON line (``event: predict``, fields in docs/guard.md)
to stderr and, when a :class:`~robustops.serving.requestlog.RequestLog` is given, to this
worker's request log file. A ``canary`` key (the monitoring loop's probes) is answered even
when the detector would throttle or block it (its line records the action the detector
chose), so that canary traffic measures the model, not the limits; rate limits still apply.
The served guard sits in a :class:`~robustops.serving.follow.GuardSlot`: a request takes it
once when it starts, so a swap (alias following) never splits one request over two models. ``GET /metrics`` (Prometheus text, every worker's counts
merged) and ``GET /dashboard/data`` need an ``admin`` key (the counters would otherwise tell a
client whether its queries were flagged); the page ``GET /dashboard`` is open and asks for the
key (:mod:`robustops.serving.dashboard`).
"""

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any

try:
    import orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None  # type: ignore[assignment]
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from robustops.serving.batching import Batcher
from robustops.serving.dashboard import PAGE, PAGE_HEADERS, DashboardStore, dashboard_data
from robustops.serving.follow import GuardSlot
from robustops.serving.guard import Guard, Outcome, batch_stats, input_digest
from robustops.serving.guard import Request as GuardRequest
from robustops.serving.keys import KeyInfo, KeyStore
from robustops.serving.limits import (
    AUTH_PREFIX,
    ClientAddresses,
    Limiter,
    LimiterUnavailable,
    RefundableLimiter,
)
from robustops.serving.metrics import (
    PREDICT_PATH,
    FlagBuffer,
    GuardMetrics,
    ObserveMiddleware,
    note_outcome,
    note_refusal,
)
from robustops.serving.requestlog import RequestLog, dumps
from robustops.serving.validation import Batch, InvalidRequest, request_schema

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


Handler = Callable[[Request], Awaitable[Response]]


class _DirectPredict:
    """ASGI middleware, the innermost of the guard's: ``POST /v1/predict`` goes straight to
    the guard's handler (inside the body cap and the metrics, like every route), without
    FastAPI's router, dependency solving and exception middleware, which cost about as much
    CPU as the guard's own checks. An ``HTTPException`` becomes the answer FastAPI would give
    (``{"detail": ...}`` with its headers); anything else reaches the server-error middleware
    (500). The route stays declared, so the OpenAPI schema describes it and other methods get
    405 from the router."""

    def __init__(self, app: ASGIApp, handler: list[Handler]) -> None:
        self.app, self.handler = app, handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") != PREDICT_PATH
            or not self.handler
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await self.handler[0](request)
        except HTTPException as exc:
            response = _JSON({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        await response(scope, receive, send)


class _JSON(JSONResponse):
    """A JSON answer rendered by orjson when installed (the same document as the standard
    library's compact form for the guard's answers, whose floats are finite)."""

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            try:
                return orjson.dumps(content)
            except TypeError:  # an integer past 64 bits: the standard library's answer
                pass
        return super().render(content)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a repeated key is refused (parsers disagree
    on which copy wins, so a proxy and the guard could read different bodies)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice in one JSON object")
    return out


def parse_json(raw: bytes) -> Any:
    """The JSON document ``raw``, every object's keys all different (:func:`_unique_keys`).

    With orjson installed (the ``serve`` extra), a body it parses into an object whose keys
    account for every ``"`` of the document is taken from it: every key or string costs at
    least two, so no other string (nor a repeated key, which orjson would silently drop) is
    there. That is an image body, about five times faster than the standard library. Anything
    else (strings, nested objects, or what orjson refuses: NaN, a byte order mark, deep
    nesting, …) is parsed again by :func:`json.loads`, which decides, so the answers are those
    of the standard parser. One difference: orjson reads an integer past 64 bits as a float
    (the standard parser as an integer, which validation refuses as not a 64-bit number); a
    float that large is refused by the input bounds instead (tests/serving/test_fast_paths.py)."""
    if orjson is not None:
        try:
            fast = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(fast, dict) and raw.count(b'"') == 2 * len(fast):
                return fast
    return json.loads(raw, object_pairs_hook=_unique_keys)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    resp = JSONResponse({"detail": f"body larger than {limit} bytes"}, status_code=413)
    await resp(scope, receive, send)


def create_app(
    guard: Guard | GuardSlot,
    keys: KeyStore,
    limiter: Limiter,
    *,
    metrics: GuardMetrics | None = None,
    store: DashboardStore | None = None,
    request_log: RequestLog | None = None,
    auth_limiter: RefundableLimiter | None = None,
    on_startup: Sequence[Callable[[], None]] = (),
    on_shutdown: Sequence[Callable[[], None]] = (),
) -> FastAPI:
    """The FastAPI application of one worker (see the module docstring). ``guard`` is the
    guard, or the slot holding it (which an :class:`~robustops.serving.follow.AliasFollower`
    swaps). ``metrics`` default to this worker's (multiprocess when prometheus-client is in that
    mode); ``store`` (the dashboard's flagged keys and readings) to one in memory;
    ``request_log`` to none (stderr only; ``robustops serve`` gives the file of
    ``serve.request_log``). ``auth_limiter`` (none: no limit) holds each client address's
    bucket of failed authentications (``limits.auth_failures_per_minute``; the address from
    ``limits.trusted_proxies``' X-Forwarded-For or the peer): an attempt that needs a key
    derivation takes a token first, a valid key gives it back, and an address whose bucket is
    empty gets 429 with ``Retry-After`` before any derivation. ``on_startup`` and
    ``on_shutdown`` run when the worker's lifespan starts and ends (e.g. an alias follower's thread)."""
    slot = guard if isinstance(guard, GuardSlot) else GuardSlot(guard)
    first = slot.guard
    cfg = first.config
    files = request_log if request_log is not None else RequestLog(None)
    _json_lines_to_stderr()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for hook in on_startup:
            hook()
        try:
            yield
        finally:
            for hook in on_shutdown:
                await run_in_threadpool(hook)
            if batcher is not None:
                await run_in_threadpool(batcher.close)
            await run_in_threadpool(flags.flush)
            files.close()

    app = FastAPI(
        lifespan=lifespan,
        title="RobustOps guard",
        version="1",
        description="A hardened prediction service in front of a classifier.",
    )
    direct: list[Handler] = []  # the predict handler, once defined below
    app.add_middleware(_DirectPredict, handler=direct)
    app.add_middleware(_BodyLimit, limit=cfg.limits.max_body_bytes)
    slots = asyncio.Semaphore(cfg.limits.max_concurrency)
    metrics = metrics if metrics is not None else GuardMetrics(slot.current[1])
    batcher = (
        Batcher(
            cfg.batching.max_inputs,
            threads=cfg.batching.threads,
            on_pass=metrics.pass_requests.observe,
        )
        if cfg.batching.enabled
        else None
    )
    if files.on_error is None:
        files.on_error = metrics.request_log_errors.inc
    store = store if store is not None else DashboardStore()
    flags = FlagBuffer(store)
    app.add_middleware(ObserveMiddleware, metrics=metrics, sink=flags)
    # The input contract is the first model's: a version an alias moves to is another
    # version of the same model (same spec, same input shape).
    body_schema = request_schema(
        first.model, max_batch=cfg.limits.max_batch, max_text_chars=cfg.max_text_chars
    )

    def write(record: dict[str, Any]) -> None:
        line = dumps(record)
        log.info(line)
        files.write(line)

    addresses = ClientAddresses(cfg.limits.trusted_proxies)
    quiet = _Quieter()

    def refuse_address(request: Request, address: str, retry: float) -> None:
        """Count and log (at most every 10 s per address) a request refused for too many
        failed authentications from ``address``; raise its 429."""
        metrics.auth_failures.labels("limited").inc()
        note_refusal(request, "auth-limited")
        seconds = max(1, math.ceil(retry))
        suppressed = quiet.due(address)
        if suppressed is not None:
            files.event(
                {
                    "event": "auth-limited",
                    "ts": time.time(),
                    "client": address,
                    "path": request.url.path,
                    "retry_after": seconds,
                    "refused_since_last_line": suppressed,
                },
                error=True,
            )
        raise HTTPException(429, "too many failed authentications", {"Retry-After": str(seconds)})

    async def client(request: Request) -> KeyInfo:
        # The headers are read here rather than declared as FastAPI Header() parameters
        # (documented through _AUTH_PARAMETERS): no per-request parameter validation.
        headers = request.headers
        presented = headers.get("x-api-key")
        authorization = headers.get("authorization")
        if authorization and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        # A key this worker verified recently is answered here; anything else (one scrypt
        # derivation, a database read) goes to the thread pool, off the event loop.
        info = keys.cached(presented)
        if info is not None:
            return info
        if keys.remembered(presented):  # verified here before: a re-check, no derivation
            info = await run_in_threadpool(keys.verify, presented)
        else:
            # Every attempt that may cost a derivation takes a token from its address's
            # bucket first (so concurrent attempts cannot overrun it); a valid key gives
            # it back.
            address = addresses.of(request.scope) if auth_limiter is not None else ""
            if auth_limiter is not None:
                try:
                    ok, retry = auth_limiter.acquire(AUTH_PREFIX + address)
                except LimiterUnavailable:  # fail closed, as the rate limit does
                    raise HTTPException(503, "busy", {"Retry-After": "1"}) from None
                if not ok:
                    refuse_address(request, address, retry)
            info = await run_in_threadpool(keys.verify, presented)
            if info is not None and auth_limiter is not None:
                with contextlib.suppress(LimiterUnavailable):
                    auth_limiter.refund(AUTH_PREFIX + address)
        if info is None:
            metrics.auth_failures.labels("unauthorized").inc()
            raise HTTPException(401, "a valid API key is required", {"WWW-Authenticate": "Bearer"})
        return info

    async def admin(key: Annotated[KeyInfo, Depends(client)]) -> KeyInfo:
        if key.role != "admin":
            raise HTTPException(403, "an admin key is required")
        return key

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, Any]:
        described = slot.current[1]
        return {"status": "ready", "model": described["version"] or described["name"]}

    @app.get(
        "/v1/model",
        responses={401: {"description": "no valid API key"}, 429: _AUTH_LIMITED},
        openapi_extra={"parameters": _AUTH_PARAMETERS},
    )
    def model_info(key: Annotated[KeyInfo, Depends(client)]) -> dict[str, Any]:
        return slot.current[1]

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={
            401: {"description": "no valid API key"},
            403: {"description": "forbidden"},
            413: {"description": "body too large"},
            422: {"description": "invalid body; `detail` names each field"},
            429: {
                "description": "rate limit exceeded, or too many failed authentications from "
                "this address; see Retry-After"
            },
            503: {"description": "busy; see Retry-After"},
        },
        openapi_extra={
            "parameters": _AUTH_PARAMETERS,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            },
        },
    )
    async def predict(request: Request) -> JSONResponse:
        # The key is checked by a direct call rather than a FastAPI dependency: the same
        # check and refusals, without the dependency machinery on the hot path.
        key = await client(request)
        ts = time.time()
        started = time.perf_counter()
        rid = uuid.uuid4().hex
        guard, described = slot.current  # this request's model, whatever a swap does meanwhile

        def refuse(status: int, decision: str, batch: Batch | None = None) -> None:
            write(_record(ts, rid, key, guard, started, status, decision, batch=batch))

        try:
            admitted, retry = limiter.acquire(key.name)
        except LimiterUnavailable:  # fail closed: no shared state, no admission
            refuse(503, "limiter-unavailable")
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})
        if not admitted:
            refuse(429, "rate-limited")
            return JSONResponse(
                {"detail": "rate limit exceeded"},
                status_code=429,
                headers={"Retry-After": str(max(1, int(retry + 0.999)))},
            )
        try:
            body = parse_json(await request.body())
        except (ValueError, RecursionError):  # bad JSON or UTF-8, an integer over 4300 digits,
            # nesting deeper than the interpreter's recursion limit, a key given twice
            refuse(422, "invalid")
            return JSONResponse(
                {"detail": [{"loc": ["body"], "msg": "not valid JSON"}]}, status_code=422
            )
        try:
            batch = guard.parse(body)
        except InvalidRequest as exc:
            refuse(422, "invalid")
            return JSONResponse({"detail": exc.errors}, status_code=422)
        if slots.locked():
            refuse(503, "busy", batch)
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})
        # The slot is held until the model is done, even if this handler is cancelled first
        # (a client hanging up can cancel it): the work runs as its own task that gives the
        # slot back when it ends, and the handler only waits for it (shielded).
        await slots.acquire()  # a free slot: returns at once
        work: asyncio.Future[Outcome]
        if batcher is not None:  # with the requests that queue meanwhile (one pass)
            work = batcher.submit(guard, GuardRequest(key.name, batch, key.role))
        else:
            work = asyncio.ensure_future(
                run_in_threadpool(guard.handle, key.name, batch, role=key.role)
            )
        work.add_done_callback(lambda task: _release(slots, task))
        outcome: Outcome = await asyncio.shield(work)
        note_outcome(request, key.name, outcome)
        status, payload = _respond(outcome, rid, described, enforce=key.role != "canary")
        decision = (
            "abstain" if any(p.decision == "abstain" for p in outcome.predictions) else ("predict")
        )
        predictions = [_logged(p) for p in outcome.predictions]
        record = _record(ts, rid, key, guard, started, status, decision)
        record.update(
            action=outcome.action,
            flags=outcome.flags,
            input_sha256=outcome.input_sha256,
            model=outcome.model,
            weights_sha256=outcome.weights_sha256,
            n=batch.n,
            predictions=predictions,
            stats={k: _finite(v) for k, v in outcome.stats.items()},
        )
        if cfg.log_inputs:
            record["input"] = _inputs_as_list(body, batch, guard)
        write(record)
        return _JSON(payload, status_code=status)

    direct.append(predict)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            401: {"description": "no valid API key"},
            403: {"description": "not an admin key"},
            429: _AUTH_LIMITED,
        },
        openapi_extra={"parameters": _AUTH_PARAMETERS},
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
            429: _AUTH_LIMITED,
        },
        openapi_extra={"parameters": _AUTH_PARAMETERS},
    )
    def dashboard_json(key: Annotated[KeyInfo, Depends(admin)]) -> JSONResponse:
        """The dashboard's figures, merged over the workers (an admin key)."""
        flags.flush()  # this worker's flagged requests not yet written (the others' within 0.25 s)
        headers = {k: v for k, v in PAGE_HEADERS.items() if k != "Content-Security-Policy"}
        return JSONResponse(dashboard_data(metrics, store), headers=headers)

    return app


_AUTH_PARAMETERS = [
    {
        "name": "authorization",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Bearer API_KEY (or give the key in X-API-Key)",
    },
    {
        "name": "x-api-key",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "the API key",
    },
]
_AUTH_LIMITED = {"description": "too many failed authentications from this address"}


class _Quieter:
    """When to write a log line about an address: at most every ``seconds`` per address,
    with the count of the ones left out since (a flood gets a line, not a line a request)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._last: dict[str, tuple[float, int]] = {}

    def due(self, address: str) -> int | None:
        """How many were left out since the last line of ``address`` when a line is due now,
        else None."""
        now = time.monotonic()
        last = self._last.get(address)
        if last is not None and now - last[0] < self.seconds:
            self._last[address] = (last[0], last[1] + 1)
            return None
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[address] = (now, 0)
        return last[1] if last is not None else 0


def _release(slots: asyncio.Semaphore, task: asyncio.Future[Any]) -> None:
    """Give a concurrency slot back when the model work of a request ends (its result or
    error is then collected, so an abandoned request does not log a never-retrieved error)."""
    slots.release()
    if not task.cancelled():
        task.exception()


def _respond(
    outcome: Outcome, rid: str, described: dict[str, Any], *, enforce: bool = True
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body for an outcome: a throttled key gets the same 429 as a rate
    limit, a blocked one a plain 403; flagged and logged requests get their normal answer.
    Without ``enforce`` (a canary key) throttle and block are not applied: the answer is
    given, ``flagged`` when the detector chose flag, throttle or block."""
    if enforce and outcome.action == "throttle":
        return 429, {"detail": "rate limit exceeded"}
    if enforce and outcome.action == "block":
        return 403, {"detail": "forbidden"}
    flagged = outcome.action == "flag" or (not enforce and outcome.action in ("throttle", "block"))
    return 200, {
        "request_id": rid,
        "model": {k: described[k] for k in ("name", "version", "weights_sha256")},
        "predictions": [p.to_json() for p in outcome.predictions],
        "flagged": flagged,
    }


def _finite(x: float | None, digits: int = 6) -> float | None:
    """``x`` rounded, or None when it is None, NaN or infinite (JSON has no such numbers)."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)


def _logged(p: Any) -> dict[str, Any]:
    """A prediction as the request log records it (see docs/guard.md)."""
    return {
        "label": p.top,
        "confidence": _finite(p.confidence),
        "score": _finite(p.score),
        "abstain": p.decision == "abstain",
        "sha256": p.sha256,
    }


def _inputs_as_list(body: Any, batch: Batch, guard: Guard) -> Any:
    """The request's inputs as received, as a list of ``batch.n`` inputs (one image sent
    without its batch axis is wrapped in a list)."""
    field = {"image": "inputs", "text": "texts", "table": "rows"}[guard.model.modality]
    value = body[field]
    if guard.model.modality == "image" and batch.n == 1 and guard.model.input_shape is not None:
        depth, node = 0, value
        while isinstance(node, list) and node:
            depth, node = depth + 1, node[0]
        if depth == len(guard.model.input_shape):
            return [value]
    return value


def _record(
    ts: float,
    rid: str,
    key: KeyInfo,
    guard: Guard,
    started: float,
    status: int,
    decision: str,
    *,
    batch: Batch | None = None,
) -> dict[str, Any]:
    """The request log line of a request (see docs/guard.md); the caller adds what the model
    produced. ``batch``: the validated inputs when the body was parsed."""
    record: dict[str, Any] = {
        "event": "predict",
        "ts": ts,
        "request_id": rid,
        "key": key.name,
        "role": key.role,
        "status": status,
        "decision": decision,
        "action": "ok",
        "flags": [],
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "input_sha256": "",
        "model": guard.label,
        "weights_sha256": guard.model.weights_sha256 or "",
        "n": 0,
    }
    if batch is not None:
        record["n"] = batch.n
        record["input_sha256"] = input_digest(batch)
        record["stats"] = {k: _finite(v) for k, v in batch_stats(batch).items()}
    return record
