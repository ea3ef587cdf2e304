"""A live guard endpoint (``robustops serve``) as a model the attack library can attack over
HTTP: attacking through the wire, with the query budget an attacker would pay for.

:class:`RemoteClassifier` is an ``nn.Module`` without parameters whose ``forward`` sends its
inputs to ``POST /v1/predict`` and turns the answers into a ``(N, K + 1)`` tensor the attacks
read like logits. What it can honestly offer is what the guard answers, one top label and that
label's calibrated confidence (or an abstention), so it offers two kinds of access:

``output="labels"`` (default; ``knowledge == "decision-based"``)
    One-hot rows: 1 at the answered label, 0 elsewhere. Nothing but the ``argmax`` means
    anything, which is all a decision-based attack (uniform noise, HopSkipJump) reads.

``output="top1"`` (``knowledge == "score-based"``, partial scores)
    Log-probabilities completed from the one probability the guard reveals: ``log p`` at the
    answered label, the remaining mass ``1 - p`` spread evenly over the other ``K - 1`` classes
    (the maximum-entropy completion; no other class's score is known). A score-based attack's
    margin or cross-entropy at the true label is then a monotone function of the label's
    confidence while the label holds, which is the signal a top-1 score attack really has; it
    is not the full probability vector the attack was designed for, and its results are those
    of a weaker attacker. Full scores would need the guard to return them (an opt-in
    ``scores`` flag it does not have today).

**Abstentions.** The guard may answer ``abstain`` instead of a label. That is a third outcome,
column ``K`` (:attr:`RemoteClassifier.abstain_index`): 1 there in ``labels`` mode, ``log 1``
there (and a floor elsewhere) in ``top1`` mode. The library's success test,
``argmax != label``, therefore counts an abstention as an *untargeted* success (the service did
not give the true label; for the defender this is the conservative reading) and never as a
*targeted* one. Count them apart with :attr:`RemoteClassifier.abstentions`, or re-check an
attack's outputs with :meth:`RemoteClassifier.answers`.

**Queries.** :attr:`~RemoteClassifier.queries` counts inputs the model answered (each input of
a 200 response, verification passes included: the attack's own ``AttackResult.queries``
excludes its final re-prediction, so ``queries == result.queries.sum() + N`` for one call);
:attr:`~RemoteClassifier.requests` counts responses to predict requests (one JSON log line each
on the server). With ``query_budget`` a ``forward`` that would take the count past it is
refused (:class:`QueryBudgetExceeded`) before anything is sent.

**Limits.** Batches go out in chunks of at most ``max_batch`` inputs (halved on a 413). A 429
or 503 is retried after its ``Retry-After`` (a rate limit or a throttling detector: the guard
answers both alike), for at most ``max_wait`` seconds in all per chunk; 401, 403 (a blocking
detector), 422 and 5xx raise :class:`RemoteError`. Requests use the standard library's
``http.client`` with one keep-alive connection (re-opened when the server closed it), so the
adapter needs no HTTP package.

Only image models (``modality == "image"``) are supported: table rows travel in raw units and
texts as strings, which the tensor attacks do not produce.
"""

from __future__ import annotations

import http.client
import json
import math
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn

from robustops.errors import RobustOpsError, SpecError, shorten

__all__ = ["QueryBudgetExceeded", "RemoteClassifier", "RemoteError"]

Output = Literal["labels", "top1"]
_FLOOR = math.log(1e-12)  # the log-score of what is known not to be the answer


class RemoteError(RobustOpsError):
    """The endpoint refused a request or failed: ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class QueryBudgetExceeded(RemoteError):
    """A ``forward`` would take the answered inputs past the adapter's ``query_budget``."""


class RemoteClassifier(nn.Module):
    """A guard endpoint as a module returning ``(N, K + 1)`` scores (see the module docstring).

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8080`` (a path prefix is kept).
        api_key: a key of the service (sent as ``Authorization: Bearer``).
        timeout: seconds to wait for one response.
        max_batch: most inputs per request (the guard's ``limits.max_batch`` or less).
        query_budget: most inputs the model may answer over the adapter's life (``None``: no
            limit); see :meth:`reset_counters`.
        output: ``labels`` (decision-based access) or ``top1`` (partial scores).
        max_wait: most seconds spent waiting on 429/503 answers for one chunk of inputs.
        sleep: how to wait (tests pass a fake clock's).

    Attributes:
        info: ``GET /v1/model`` (name, version, modality, input shape, bounds, classes).
        num_classes: ``K``; the output has ``K + 1`` columns, the last for abstentions.
        knowledge: the access this adapter gives, for the threat an attack is built with.
        queries, requests, rate_limited, abstentions, flagged: counters (see the module
            docstring); ``flagged`` counts responses the guard's detector flagged.
    """

    differentiable = False

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_batch: int = 64,
        query_budget: int | None = None,
        output: Output = "labels",
        max_wait: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        if output not in ("labels", "top1"):
            raise SpecError.single("output", f"must be 'labels' or 'top1', got {output!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise SpecError.single("max_batch", f"must be an int >= 1, got {max_batch!r}")
        if query_budget is not None and (isinstance(query_budget, bool) or query_budget < 1):
            raise SpecError.single("query_budget", f"must be an int >= 1, got {query_budget!r}")
        if not timeout > 0 or not max_wait >= 0:
            raise SpecError.single("timeout", "timeout must be > 0 and max_wait >= 0")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError.single("url", f"must be an http(s) URL, got {shorten(url)!r}")
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.timeout, self.max_batch, self.query_budget = float(timeout), max_batch, query_budget
        self.output: Output = output
        self.max_wait, self._sleep = float(max_wait), sleep
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.RLock()
        self.reset_counters()
        self.info: dict[str, Any] = self._get_json("/v1/model")
        if self.info.get("modality") != "image" or not self.info.get("input_shape"):
            raise SpecError.single(
                "url",
                f"the endpoint serves a {self.info.get('modality')!r} model; "
                "RemoteClassifier supports image models only",
            )
        self.num_classes = int(self.info["num_classes"])
        self.input_shape = tuple(int(n) for n in self.info["input_shape"])
        self.bounds = (float(self.info["bounds"][0]), float(self.info["bounds"][1]))

    # --- what the attacks see ---------------------------------------------------------------

    @property
    def knowledge(self) -> Literal["decision-based", "score-based"]:
        """``decision-based`` (``labels``) or ``score-based`` (``top1``, partial scores)."""
        return "decision-based" if self.output == "labels" else "score-based"

    @property
    def abstain_index(self) -> int:
        """The output column of an abstention (``K``)."""
        return self.num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(N, K + 1)`` for inputs ``(N, *input_shape)`` on ``x``'s device, one HTTP
        request per chunk of at most ``max_batch`` inputs."""
        answers = self.answers(x)
        k = self.num_classes
        out = torch.zeros(len(answers), k + 1, dtype=torch.float32)
        for i, (label, confidence) in enumerate(answers):
            column = k if label is None else label
            if self.output == "labels":
                out[i, column] = 1.0
                continue
            out[i] = _FLOOR
            if label is None:
                out[i, k] = 0.0
                continue
            p = min(max(confidence, 1e-12), 1.0)
            rest = math.log(max((1.0 - p) / max(k - 1, 1), 1e-12))
            top = math.log(p)
            out[i, :k] = min(rest, top - 1e-6)
            out[i, label] = top
        return out.to(x.device)

    def answers(self, x: Tensor) -> list[tuple[int | None, float]]:
        """``(label, confidence)`` per input of ``x`` ``(N, *input_shape)``; ``label`` is
        ``None`` for an abstention (each input counts as a query)."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise SpecError.single("inputs", f"must be (N, {self.input_shape}), got {shape}")
        rows = x.detach().to("cpu", torch.float32)
        n = rows.shape[0]
        with self._lock:
            if self.query_budget is not None and self.queries + n > self.query_budget:
                raise QueryBudgetExceeded(
                    f"query budget: {self.queries} of {self.query_budget} inputs answered; "
                    f"{n} more would pass it"
                )
            out: list[tuple[int | None, float]] = []
            start, size = 0, self.max_batch
            while start < n:
                chunk = rows[start : start + size]
                got = self._predict(chunk)
                if got is None:  # 413: the body was too large; halve the chunk
                    if size == 1:
                        raise RemoteError("one input is larger than the body limit", 413)
                    size = max(size // 2, 1)
                    continue
                out += got
                start += len(chunk)
            return out

    def reset_counters(self) -> None:
        """Zero ``queries``, ``requests``, ``rate_limited``, ``abstentions`` and ``flagged``
        (the budget counts from here)."""
        self.queries = self.requests = self.rate_limited = 0
        self.abstentions = self.flagged = 0

    def close(self) -> None:
        """Close the keep-alive connection (a later request opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> RemoteClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extra_repr(self) -> str:
        return f"url={self.url!r}, output={self.output!r}, max_batch={self.max_batch}"

    # --- HTTP -------------------------------------------------------------------------------

    def _predict(self, chunk: Tensor) -> list[tuple[int | None, float]] | None:
        """One chunk's answers (``None`` on 413), retrying 429/503 after ``Retry-After``."""
        body = json.dumps({"inputs": chunk.tolist()}, separators=(",", ":")).encode()
        waited = 0.0
        while True:
            status, headers, data = self._send("POST", "/v1/predict", body)
            self.requests += 1
            if status == 200:
                return self._parse(data, len(chunk))
            if status == 413:
                return None
            if status in (429, 503):
                self.rate_limited += status == 429
                wait = _retry_after(headers.get("retry-after"))
                if waited + wait > self.max_wait:
                    raise RemoteError(
                        f"still refused ({status}) after waiting {waited:.0f} s "
                        f"(max_wait {self.max_wait:g} s)",
                        status,
                    )
                self._sleep(wait)
                waited += wait
                continue
            raise _refusal(status, data)

    def _parse(self, data: bytes, n: int) -> list[tuple[int | None, float]]:
        try:
            payload = json.loads(data)
            preds = payload["predictions"]
            if len(preds) != n:
                raise ValueError(f"{len(preds)} predictions for {n} inputs")
            out: list[tuple[int | None, float]] = []
            for p in preds:
                abstained = p["decision"] == "abstain" or p["label"] is None
                label = None if abstained else int(p["label"])
                if label is not None and not 0 <= label < self.num_classes:
                    raise ValueError(f"label {label} outside the {self.num_classes} classes")
                out.append((label, float(p["confidence"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError(f"unexpected predict response: {shorten(str(exc))}", 200) from None
        self.queries += n
        self.abstentions += sum(label is None for label, _ in out)
        self.flagged += bool(payload.get("flagged"))
        return out

    def _get_json(self, path: str) -> dict[str, Any]:
        status, _, data = self._send("GET", path, None)
        if status != 200:
            raise _refusal(status, data)
        try:
            value = json.loads(data)
        except ValueError:
            raise RemoteError(f"{path}: not JSON", status) from None
        if not isinstance(value, dict):
            raise RemoteError(f"{path}: not a JSON object", status)
        return value

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=self.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
        return self._conn

    def _send(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection; a connection the server closed while idle
        is re-opened once (the request had not been read). Timeouts are not retried."""
        with self._lock:
            for attempt in (0, 1):
                conn = self._connection()
                try:
                    conn.request(method, self._prefix + path, body=body, headers=self._headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (
                    http.client.RemoteDisconnected,
                    http.client.CannotSendRequest,
                    ConnectionResetError,
                    BrokenPipeError,
                ) as exc:
                    self.close()
                    if attempt:
                        raise RemoteError(f"{method} {path}: connection lost ({exc})") from None
                    continue
                except (TimeoutError, OSError, http.client.HTTPException) as exc:
                    self.close()
                    raise RemoteError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
                if resp.will_close:
                    self.close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds; 1 when absent or a date)."""
    try:
        return max(float(value), 0.0) if value is not None else 1.0
    except ValueError:
        return 1.0


def _refusal(status: int, data: bytes) -> RemoteError:
    """The error for a refused request, with the service's ``detail`` (bounded)."""
    what = {401: "the API key was refused", 403: "forbidden (the key may be blocked)"}.get(
        status, f"HTTP {status}"
    )
    try:
        detail = json.loads(data).get("detail")
    except (ValueError, AttributeError):
        detail = data[:200].decode("utf-8", "replace")
    return RemoteError(f"{what}: {shorten(str(detail))}", status)
