"""The ``monitor`` section of a pipeline spec: what ``robustops monitor``, ``robustops canary``
and ``robustops review`` watch, alert on, attack and harvest.

Paths are relative to the working directory; times are seconds, rates are per hour unless a
field says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from robustops.schema import StrictModel


class AlertRule(StrictModel):
    """One alert rule: a monitored signal, the detector watching it, and what firing does."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    signal: str = Field(
        description="the monitored statistic (see robustops.monitoring.signals.SIGNALS)"
    )
    detector: Literal["cusum", "page-hinkley", "adwin", "kswin", "batch-test"] = "cusum"
    direction: Literal["up", "down", "both"] = "up"
    severity: Literal["info", "warning", "critical"] = "warning"
    rollback: bool = Field(
        default=False,
        description="firing within `rollback.after_promotion_seconds` of a promotion rolls "
        "production back",
    )
    cooldown_requests: int = Field(
        default=1000,
        ge=0,
        description="after an alert, firings of the same rule (and key) within this many of its "
        "requests are counted, not alerted (one alert per incident, not one per delay)",
    )

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        from robustops.monitoring.signals import get_signal

        try:
            get_signal(value)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        return value


class CalibrationWindow(StrictModel):
    """Where a detector's thresholds come from: the first requests it sees (non-canary)."""

    requests: int = Field(
        default=2000,
        ge=100,
        description="stable values per rule (at least 100; kswin 200)",
    )
    false_alarms_per_10k: float = Field(
        default=1.0, gt=0.0, description="target false alarms per 10 000 stable requests"
    )


class WebhookSink(StrictModel):
    """A JSON POST per alert, retried until it is delivered (the outbox keeps it)."""

    url: str
    timeout_seconds: float = Field(default=5.0, gt=0)
    header: str | None = Field(
        default=None, description="name of an environment variable holding an Authorization value"
    )
    max_backoff_seconds: float = Field(
        default=300.0, gt=0, description="longest wait between two delivery attempts"
    )


class CanaryConfig(StrictModel):
    """Scheduled canary attacks on the live endpoint with a fixed, registered canary set."""

    samples: int = Field(default=100, ge=10, description="canary set size (test-split samples)")
    every_seconds: float = Field(default=3600.0, gt=0, description="one run per this period")
    queries_per_hour: int = Field(default=20_000, ge=1, description="budget of model queries")
    max_traffic_share: float = Field(
        default=0.05, gt=0.0, le=1.0, description="canary requests ÷ all requests, at most"
    )
    key_env: str = Field(
        default="ROBUSTOPS_CANARY_KEY", description="environment variable with the canary API key"
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="McNemar significance level")
    dataset: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="registry data set name of the canary set (default `<spec name>-canary`)",
    )
    seed: int = Field(default=0, ge=0, description="draws the canary samples and the attacks")
    attack: Literal["square", "hopskipjump"] = Field(
        default="square",
        description="query attack for linf/l2 threats over HTTP: square (top-1 scores) or "
        "hopskipjump (labels only)",
    )
    queries_per_sample: int = Field(
        default=80,
        ge=1,
        description="query budget per sample and threat (the threat's own query_budget when "
        "smaller); a run costs at most samples × (1 + threats × (queries_per_sample + 1)): "
        "100 samples, 2 threats, 80 → 16 300, inside the default 20 000 per hour",
    )
    max_batch: int = Field(default=64, ge=1, description="inputs per HTTP request")
    records: str = Field(
        default="guard/canary", description="folder of the canary run records (JSON)"
    )


class RollbackConfig(StrictModel):
    """Which findings roll a registry alias back by themselves."""

    model: str | None = Field(default=None, description="registry model name (default the spec's)")
    alias: str = "production"
    actor: str = Field(default="robustops-monitor", description="registry principal (engineer)")
    on_canary: bool = True
    after_promotion_seconds: float = Field(
        default=900.0,
        ge=0,
        description="alert rules marked `rollback` act only this soon after a promotion",
    )


class HarvestConfig(StrictModel):
    """Which logged requests go to the review queue (needs ``serve.log_inputs: true``)."""

    flagged: bool = Field(
        default=True, description="requests the guard flagged, throttled or blocked"
    )
    abstained: bool = Field(default=True, description="inputs the model abstained on")
    out_of_distribution: bool = Field(
        default=True, description="inputs whose anomaly score is above `ood_threshold`"
    )
    ood_threshold: float | None = Field(
        default=None,
        description="anomaly score above which an input is out of distribution (the "
        "abstainer's own score; none: only its abstentions count)",
    )
    max_request_ids: int = Field(
        default=20, ge=1, le=10_000, description="request ids (and keys) kept per queued input"
    )
    queue: str = Field(default="guard/review.db", description="the review queue (SQLite)")


class MonitorConfig(StrictModel):
    """How the live service is watched (the spec's ``monitor`` section)."""

    request_log: str = Field(
        default="guard/requests", description="the guard's request log folder (JSON lines)"
    )
    state: str = Field(default="guard/monitor.db", description="the monitor's state (SQLite)")
    poll_seconds: float = Field(default=1.0, gt=0)
    calibration: CalibrationWindow = Field(default_factory=CalibrationWindow)
    rules: list[AlertRule] = Field(default_factory=list)
    webhooks: list[WebhookSink] = Field(default_factory=list)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)
    harvest: HarvestConfig = Field(default_factory=HarvestConfig)
