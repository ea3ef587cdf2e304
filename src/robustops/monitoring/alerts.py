"""Alerts and where they go.

An alert is a JSON object (schema ``robustops.alert/1``) with the evidence an on-call engineer
needs: the rule, signal and detector, the window of requests the detector saw since its last
reset (first/last request time and id), the statistic and its threshold, the calibration it was
measured against, a few example request ids, the model version, the API key for per-key
rules, the severity and whether it may roll production back.

Its ``id`` is stable: a hash of the rule, the key and the request that fired it. A monitor
restarted after a crash that re-reads that request makes the same id, and the outbox ignores
it. Delivery is at least once: a sink that must see each alert once dedupes by ``id`` (the
webhook also sends it as the ``Idempotency-Key`` header).

Sinks: :class:`WebhookDelivery` (a JSON POST; 2xx is delivered, anything else is retried with
exponential backoff) and :class:`FileDelivery` (appends one JSON line to a file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from robustops.monitoring.config import WebhookSink

__all__ = [
    "ALERT_SCHEMA",
    "DeliveryError",
    "FileDelivery",
    "Sink",
    "WebhookDelivery",
    "alert_id",
    "backoff_seconds",
]

log = logging.getLogger(__name__)

ALERT_SCHEMA = "robustops.alert/1"


def alert_id(rule: str, key: str | None, file: str, end: int, request_id: str) -> str:
    """The stable id of the alert ``rule`` raised (for ``key``) on the request ``request_id``
    that ends at byte ``end`` of log ``file``: 32 hex characters."""
    text = json.dumps([rule, key or "", file, end, request_id])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def backoff_seconds(attempts: int, cap: float) -> float:
    """Wait before retry number ``attempts`` (1-based): 1, 2, 4, … seconds, at most ``cap``."""
    return float(min(cap, 2.0 ** max(attempts - 1, 0)))


class DeliveryError(Exception):
    """A sink did not accept an alert (the message says why); the alert stays owed."""


class Sink(Protocol):
    """Where alerts are delivered."""

    @property
    def name(self) -> str:
        """Stable across runs: the outbox keys deliveries on it."""

    def deliver(self, alert: dict[str, Any]) -> None:
        """Deliver one alert or raise :class:`DeliveryError`."""


@dataclass
class WebhookDelivery:
    """A JSON POST of the alert to ``config.url``. Headers: ``Content-Type: application/json``,
    ``Idempotency-Key: <alert id>``, and ``Authorization`` with the value of the environment
    variable ``config.header`` names (when set). Only a 2xx answer delivers."""

    config: WebhookSink

    @property
    def name(self) -> str:
        """``webhook:<url>``."""
        return f"webhook:{self.config.url}"

    def deliver(self, alert: dict[str, Any]) -> None:
        """POST ``alert``; :class:`DeliveryError` on a non-2xx answer or a network error."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(alert["id"])}
        if self.config.header:
            value = os.environ.get(self.config.header)
            if value is None:
                raise DeliveryError(f"environment variable {self.config.header} is not set")
            headers["Authorization"] = value
        try:
            r = httpx.post(
                self.config.url,
                content=json.dumps(alert).encode(),
                headers=headers,
                timeout=self.config.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= r.status_code < 300:
            raise DeliveryError(f"HTTP {r.status_code}: {r.text[:200]}")


@dataclass
class FileDelivery:
    """Appends each alert as one JSON line to ``path`` (fsynced)."""

    path: Path

    @property
    def name(self) -> str:
        """``file:<path>``."""
        return f"file:{self.path}"

    def deliver(self, alert: dict[str, Any]) -> None:
        """Append ``alert``; :class:`DeliveryError` when the file cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(alert, separators=(",", ":")) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise DeliveryError(f"{self.path}: {exc.strerror or exc}") from None
