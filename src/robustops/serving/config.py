"""The guard's settings (the ``serve`` section of a pipeline spec, or a YAML file of its own).

Every limit is per request unless it says otherwise; sizes are bytes, rates requests per second.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from robustops.schema import StrictModel


class LimitsConfig(StrictModel):
    """Body size, per-key rate, global concurrency and failed authentications per address."""

    max_body_bytes: int = Field(
        default=2_000_000, ge=1_024, description="a larger body is refused with 413"
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="inputs per request")
    rate_per_second: float = Field(
        default=50.0, gt=0, description="each key's token bucket refill rate (requests/s)"
    )
    burst: int = Field(default=100, ge=1, description="each key's bucket size (requests)")
    max_concurrency: int = Field(
        default=64, ge=1, description="requests in the model at once, per worker; more get 503"
    )
    auth_failures_per_minute: float | None = Field(
        default=30.0,
        gt=0,
        description="each client address's token bucket of failed authentications (refill "
        "per minute); an address past it gets 429 before any key derivation; null: no limit",
    )
    auth_failure_burst: int = Field(
        default=30, ge=1, description="failed authentications an address may make at once"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For "
        "names the client (the last address in it that is not itself a trusted proxy); "
        "empty: the peer's address is the client's",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value


class StateConfig(StrictModel):
    """Where state shared by the workers lives (rate buckets, detector decisions)."""

    backend: Literal["sqlite", "redis", "memory"] = Field(
        default="sqlite",
        description="sqlite: a file every worker opens (default); redis: a Redis server; "
        "memory: this process only (a single worker)",
    )
    path: str | None = Field(default=None, description="sqlite: the state file")
    redis_url: str | None = Field(default=None, description="redis: e.g. redis://127.0.0.1:6379/0")

    @model_validator(mode="after")
    def _complete(self) -> StateConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("redis_url is required with backend redis")
        return self


class DetectionConfig(StrictModel):
    """The stateful attack-in-progress detector, per API key
    (:class:`robustops.defenses.detection.QueryDetector`): a query that nearly duplicates
    ``*_at`` or more of the key's recent queries (by fingerprint or embedding) is logged,
    flagged (``flagged: true`` in the answer), throttled (the same 429 as a rate limit) or
    blocked (403); one whose embedding is close to ``cross_key_*_at`` or more recent queries of
    any key likewise. ``null`` disables an action. With the ``sqlite`` state backend the
    workers share the state (:mod:`robustops.serving.detection`)."""

    enabled: bool = True
    log_at: int | None = Field(default=1, ge=1)
    flag_at: int | None = Field(default=5, ge=1)
    throttle_at: int | None = Field(default=12, ge=1)
    block_at: int | None = Field(default=30, ge=1)
    hold_seconds: float = Field(
        default=600.0, ge=0, description="a flagged key stays at least flagged this long"
    )
    quantization_step: float = Field(
        default=0.2, gt=0, description="input units per quantization bin before hashing"
    )
    window: int = Field(
        default=20, ge=1, description="values per hashed window of a flattened input (Blacklight)"
    )
    history: int = Field(default=128, ge=1, description="recent queries held per key")
    max_keys: int = Field(default=4096, ge=1, description="keys held at once (LRU beyond)")
    embedding: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: embedding similarity on the input of the model's first nn.Linear "
        "(torch image and table models), captured during the forward pass; off: fingerprints "
        "only",
    )
    embedding_layer: str | None = Field(
        default=None, description="the submodule whose input is the embedding (default: the "
        "first nn.Linear)"
    )  # fmt: skip
    embedding_dim: int = Field(
        default=256, ge=8, le=4096, description="values of the random projection of the features"
    )
    embedding_threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="cosine at which two embeddings match; null: calibrated at start-up",
    )
    embedding_pair_rate: float = Field(
        default=0.001,
        gt=0.0,
        lt=0.5,
        description="calibration: the share of pairs of distinct held-out inputs that match",
    )
    calibration_samples: int = Field(
        default=500, ge=20, description="held-out test inputs the threshold is calibrated on"
    )
    cross_key_window: int = Field(
        default=256, ge=1, description="recent queries of all keys the cross-key signal scans"
    )
    cross_key_flag_at: int | None = Field(
        default=10, ge=1, description="flag at this many similar recent queries of other keys"
    )
    cross_key_throttle_at: int | None = Field(default=None, ge=1)
    cross_key_block_at: int | None = Field(default=None, ge=1)
    shared: bool = Field(
        default=True,
        description="share the state across workers through the sqlite state backend",
    )
    shared_rows: int = Field(
        default=50_000, ge=1000, description="recent queries the shared state keeps"
    )


class AbstentionConfig(StrictModel):
    """When the guard answers ``abstain`` instead of a label."""

    enabled: bool = True
    score: Literal["msp", "energy", "mahalanobis", "relative-mahalanobis"] = Field(
        default="energy",
        description="the OOD score (mahalanobis scores need a torch model's features)",
    )
    alpha: float = Field(
        default=0.01, gt=0.0, lt=0.5, description="target false-abstain rate on clean inputs"
    )
    min_confidence: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="abstain below this calibrated confidence"
    )
    calibration_samples: int = Field(
        default=300,
        ge=19,
        description="held-out clean samples (the test split's last ones) the threshold is "
        "fitted on; at least ⌈(1 − alpha)/alpha⌉",
    )
    train_samples: int = Field(
        default=2000, ge=10, description="training samples a Mahalanobis score is fitted on"
    )


class BatchingConfig(StrictModel):
    """Requests that arrive while the model is busy run together: one forward pass, one
    abstainer pass and one detector transaction for all of them (each keeps its own answer,
    detector decision and log line)."""

    enabled: bool = Field(
        default=True,
        description="off: every request runs on its own, in the thread pool",
    )
    max_inputs: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="inputs per combined pass at most (a request larger than this runs alone)",
    )
    threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="passes that may run at once, per worker (a slow pass holds up only the "
        "requests it took)",
    )


class ServeConfig(StrictModel):
    """How ``robustops serve`` runs the guard in front of the model."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    keys: str = Field(default="guard/keys.db", description="the API key file (SQLite)")
    state_dir: str = Field(
        default="guard", description="folder for shared state, metrics and fitted detectors"
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    abstention: AbstentionConfig = Field(default_factory=AbstentionConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    log_inputs: bool = Field(
        default=False, description="log raw inputs (off: only their sha256 is logged)"
    )
    request_log: str | None = Field(
        default="guard/requests",
        description="folder of the request log files (one JSON line per request, one file per "
        "worker process: <hostname>-<pid>-<start unix ms>.jsonl); null: stderr only",
    )
    follow_seconds: float = Field(
        default=2.0,
        ge=0.0,
        description="serving a registry alias: seconds between checks of where it points; when "
        "it moves, each worker loads the new version and swaps to it (0: never)",
    )
    max_text_chars: int = Field(default=10_000, ge=1, le=1_000_000)
    schema_name: str | None = Field(
        default=None,
        alias="schema",
        description="tabular models: the feature schema rows are validated against (raw units)",
    )
