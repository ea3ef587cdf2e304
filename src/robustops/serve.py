"""``robustops serve``: the guard in front of a spec's model, or of a registry alias's version.

Builds the :class:`~robustops.serving.model.ServedModel` from a pipeline spec (its weights, or
the weights a registry alias points to, checked against their hash), fits what the guard needs
from the spec's data (the temperature on held-out test samples), and runs uvicorn with
``workers`` processes. Each worker builds its app from the JSON in ``ROBUSTOPS_SERVE`` through
:func:`app_from_env` (uvicorn's ``--factory``), so every worker serves the same thing.

Serving an alias (``NAME:ALIAS``) with ``serve.follow_seconds`` > 0, each worker checks where
the alias points every ``follow_seconds`` and, when it moved, builds the new version's guard the
way it built the first (weights checked against their hash, temperature, abstainer; the
detector's per-key state is carried over) in a thread and swaps it in
(:class:`~robustops.serving.follow.AliasFollower`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from robustops._util import file_sha256
from robustops.config import PipelineSpec, load_spec
from robustops.data import Dataset, TextDataset
from robustops.errors import SpecError
from robustops.registry.service import Registry, label
from robustops.runner import fit_spec_temperature, load_for_evaluation
from robustops.serving.abstention import fit_abstainer
from robustops.serving.app import create_app
from robustops.serving.config import ServeConfig
from robustops.serving.dashboard import DashboardStore
from robustops.serving.detection import (
    FeatureTap,
    GuardDetector,
    RedisDetectorLog,
    SqliteDetectorLog,
    detector_secret,
)
from robustops.serving.follow import AliasFollower, GuardSlot, VersionRef
from robustops.serving.guard import Detector, Guard
from robustops.serving.keys import KeyStore
from robustops.serving.limits import (
    Limiter,
    LimiterUnavailable,
    MemoryLimiter,
    RedisLimiter,
    RefundableLimiter,
    SqliteLimiter,
)
from robustops.serving.metrics import GuardMetrics
from robustops.serving.model import ServedModel, module_logits
from robustops.serving.requestlog import RequestLog
from robustops.tabular.registry import get_schema
from robustops.text.models import TextClassifier

ENV = "ROBUSTOPS_SERVE"


@dataclass(frozen=True)
class ServeTarget:
    """What to serve: a spec file, optionally with a registry version (``NAME:ALIAS`` or
    ``NAME@N``) whose stored weights replace the spec's."""

    spec: str
    ref: str | None = None
    registry: str | None = None


def _from_registry(spec: PipelineSpec, target: ServeTarget) -> tuple[PipelineSpec, str, str]:
    """The spec with the registry version's weights (verified), its label and weights hash."""
    assert target.ref is not None
    reg = Registry.open(target.registry)
    try:
        v = reg.get(target.ref)
        reg.store.artifacts.verify(v.weights_sha256)
        path = reg.store.artifacts.path(v.weights_sha256)
        model = spec.model.model_copy(update={"weights": path, "sha256": v.weights_sha256})
        return spec.model_copy(update={"model": model}), label(v), v.weights_sha256
    finally:
        reg.close()


@dataclass
class Served:
    """What :func:`served_model` builds: the served model, the serve settings, the spec's data
    and, for tensor models, the torch module."""

    model: ServedModel
    config: ServeConfig
    data: Dataset | TextDataset
    module: torch.nn.Module | None


def served_model(target: ServeTarget) -> Served:
    """The model of ``target`` as the guard serves it, with its settings and data."""
    spec = load_spec(target.spec)
    config = spec.serve or ServeConfig()
    version, weights_sha = None, spec.model.sha256
    if target.ref is not None:
        spec, version, weights_sha = _from_registry(spec, target)
    data, model, device, n_eval = load_for_evaluation(spec)
    if weights_sha is None and spec.model.weights is not None:
        weights_sha = file_sha256(spec.model.weights)
    temperature = 1.0
    if spec.evaluation is not None and spec.evaluation.calibration.enabled:
        fit = fit_spec_temperature(spec, model, data, n_eval, spec.seed, device)
        temperature = fit.temperature if fit is not None else 1.0
    common: dict[str, Any] = {
        "name": spec.name,
        "version": version,
        "weights_sha256": weights_sha,
        "num_classes": data.num_classes,
        "temperature": temperature,
        "class_names": getattr(data, "classes", None),
    }
    if isinstance(data, TextDataset):
        assert isinstance(model, TextClassifier)
        return Served(
            ServedModel(modality="text", logits=model.predict_logits, **common), config, data, None
        )
    assert isinstance(model, torch.nn.Module)
    threats = spec.evaluation.threats if spec.evaluation is not None else []
    bounds = threats[0].bounds if threats else (0.0, 1.0)
    if config.schema_name is not None:
        schema = get_schema(config.schema_name)
        served = ServedModel(modality="table", logits=module_logits(model), schema=schema, **common)
    else:
        served = ServedModel(
            modality="image",
            logits=module_logits(model),
            input_shape=tuple(data.x_test.shape[1:]),
            bounds=(float(bounds[0]), float(bounds[1])),
            **common,
        )
    return Served(served, config, data, model)


def guard_for(served: Served, *, detector: Detector | None = None) -> Guard:
    """The guard of a served model: its detector (``detector``, e.g. the one of the guard it
    replaces, keeping its per-key state; else a new one) and, when enabled, its abstainer
    fitted on the data (the conformal threshold on the test split's last held-out samples)."""
    config, data, model = served.config, served.data, served.model
    det = config.detection
    if det.enabled:
        tap = None
        secret = detector_secret(config.state_dir)
        if det.embedding != "off" and served.module is not None and model.modality != "text":
            try:
                tap = FeatureTap(
                    served.module, det.embedding_layer, dim=det.embedding_dim, seed=secret
                )
            except SpecError:
                if det.embedding_layer is not None:  # a named layer that is not there
                    raise
                tap = None  # no nn.Linear to read: fingerprints only
        if isinstance(detector, GuardDetector):
            detector.attach(tap)  # the new model's features; the per-key state goes on
        elif detector is None:
            detector = GuardDetector(det, secret, model.modality, tap=tap, log=detector_log(config))
        if isinstance(detector, GuardDetector) and detector.uses_embeddings:
            assert not isinstance(data, TextDataset)  # text models get no tap
            detector.calibrate(data.x_test[-det.calibration_samples :])
    abstainer = None
    ab = config.abstention
    if ab.enabled:
        if isinstance(data, TextDataset):
            calibration: Any = list(data.texts_test[-ab.calibration_samples :])
            train = None
        else:
            calibration = data.x_test[-ab.calibration_samples :]
            train = (data.x_train[: ab.train_samples], data.y_train[: ab.train_samples])
        abstainer = fit_abstainer(model, ab, calibration, module=served.module, train=train)
    return Guard(model, config, detector=detector, abstainer=abstainer)


def state_path(config: ServeConfig) -> Path:
    """The SQLite state file: ``serve.state.path``, or ``<state_dir>/state.db``."""
    return Path(config.state.path or Path(config.state_dir) / "state.db")


def detector_log(config: ServeConfig) -> SqliteDetectorLog | RedisDetectorLog | None:
    """The detector's shared state (with ``detection.shared``): with the sqlite backend a
    table in ``<state file stem>.detector.db`` next to the rate-limit state, with redis a
    stream in the same Redis; with memory None (one worker keeps its own)."""
    if not config.detection.shared or config.state.backend == "memory":
        return None
    if config.state.backend == "redis":
        assert config.state.redis_url is not None  # StateConfig requires it
        return RedisDetectorLog(config.state.redis_url, keep_rows=config.detection.shared_rows)
    return SqliteDetectorLog(
        state_path(config).with_suffix(".detector.db"), keep_rows=config.detection.shared_rows
    )


def limiter_for(config: ServeConfig, workers: int | None = None) -> Limiter:
    """The rate limiter of the config's state backend (``serve.state.backend``), for a service
    of ``workers`` processes (default ``serve.workers``): buckets in the SQLite state file
    (default), in Redis, or, for a single worker only, in the process."""
    rate, burst = config.limits.rate_per_second, config.limits.burst
    n = workers or config.workers
    backend = config.state.backend
    if backend == "memory":
        if n > 1:
            raise SpecError.single(
                "serve.state.backend",
                f"memory keeps a bucket per worker, so {n} workers would admit {n} times the "
                "limit; use sqlite (the default: a file the workers share) or redis, or 1 worker",
            )
        return MemoryLimiter(rate, burst)
    if backend == "redis":
        assert config.state.redis_url is not None  # StateConfig requires it
        return RedisLimiter(config.state.redis_url, rate, burst)
    return SqliteLimiter(state_path(config), rate, burst)


def auth_limiter_for(config: ServeConfig, workers: int | None = None) -> RefundableLimiter | None:
    """The limit on failed authentications per client address
    (``limits.auth_failures_per_minute``, None when it is null), in the same state backend
    as the rate limit (so the workers share it), under its own bucket names."""
    per_minute = config.limits.auth_failures_per_minute
    if per_minute is None:
        return None
    rate, burst = per_minute / 60.0, config.limits.auth_failure_burst
    backend = config.state.backend
    if backend == "memory":
        limiter_for(config, workers)  # refuses several workers
        return MemoryLimiter(rate, burst)
    if backend == "redis":
        assert config.state.redis_url is not None
        return RedisLimiter(config.state.redis_url, rate, burst)
    return SqliteLimiter(state_path(config), rate, burst)


def prepare_state(config: ServeConfig, workers: int) -> None:
    """Check the shared state before the workers start: refuse the memory backend with several
    workers, make (or replace a damaged) SQLite state file, make sure Redis answers."""
    if config.state.backend == "sqlite":
        SqliteLimiter.prepare(state_path(config))
        if config.detection.enabled and config.detection.shared:
            SqliteDetectorLog.prepare(state_path(config).with_suffix(".detector.db"))
        return
    limiter = limiter_for(config, workers)
    if isinstance(limiter, RedisLimiter):
        try:
            limiter.ping()
        except LimiterUnavailable as exc:
            raise SpecError.single("serve.state.redis_url", f"does not answer: {exc}") from None


class RegistryAlias:
    """Where a registry alias points (:meth:`resolve`), on a registry opened once and reopened
    after an error."""

    def __init__(self, ref: str, registry: str | None) -> None:
        self.ref, self.registry = ref, registry
        self._reg: Registry | None = None

    def resolve(self) -> VersionRef:
        """The version ``ref`` names now (raises when the registry cannot be read)."""
        try:
            if self._reg is None:
                self._reg = Registry.open(self.registry)
            v = self._reg.get(self.ref)
        except BaseException:
            self.close()
            raise
        return VersionRef(label(v), v.weights_sha256)

    def close(self) -> None:
        """Release the registry's connections."""
        if self._reg is not None:
            reg, self._reg = self._reg, None
            reg.close()


def follows(target: ServeTarget, config: ServeConfig) -> bool:
    """Whether the workers follow ``target``'s alias (an alias, ``follow_seconds`` > 0)."""
    return target.ref is not None and ":" in target.ref and config.follow_seconds > 0


def load_version(target: ServeTarget, ref: VersionRef, running: Guard) -> Guard:
    """The guard of registry version ``ref`` built as at start from ``target``'s spec, with
    the running guard's settings and detector (its per-key state goes on)."""
    served = served_model(ServeTarget(spec=target.spec, ref=ref.label, registry=target.registry))
    if served.model.weights_sha256 != ref.weights_sha256:
        raise SpecError.single(
            "version",
            f"{ref.label}'s weights are {served.model.weights_sha256}, not the "
            f"{ref.weights_sha256} the alias named",
        )
    served.config = running.config
    return guard_for(served, detector=running.detector)


def build_app(target: ServeTarget) -> Any:
    """The FastAPI app of one worker for ``target`` (following its alias when asked)."""
    served = served_model(target)
    config = served.config
    guard = guard_for(served)
    keys = KeyStore(Path(config.keys))
    store = DashboardStore(Path(config.state_dir) / "dashboard.db")
    metrics = GuardMetrics(guard.model.describe())
    request_log = RequestLog(config.request_log, on_error=metrics.request_log_errors.inc)
    slot = GuardSlot(guard)
    starting: list[Any] = []
    stopping: list[Any] = []
    if follows(target, config):
        assert target.ref is not None
        alias = RegistryAlias(target.ref, target.registry)
        follower = AliasFollower(
            slot,
            alias.resolve,
            lambda ref: load_version(target, ref, slot.guard),
            interval=config.follow_seconds,
            request_log=request_log,
            metrics=metrics,
        )
        starting.append(follower.start)
        stopping += [follower.stop, alias.close]
    return create_app(
        slot,
        keys,
        limiter_for(config),
        metrics=metrics,
        store=store,
        request_log=request_log,
        auth_limiter=auth_limiter_for(config),
        on_startup=starting,
        on_shutdown=stopping,
    )


def app_from_env() -> Any:
    """uvicorn factory: the app for the target in ``$ROBUSTOPS_SERVE`` (JSON)."""
    raw = os.environ.get(ENV)
    if not raw:
        raise SpecError.single(ENV, "set by robustops serve; run the guard through it")
    return build_app(ServeTarget(**json.loads(raw)))


def run(target: ServeTarget, *, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve ``target`` with uvicorn (blocks until stopped)."""
    import uvicorn

    spec = load_spec(target.spec)
    config = spec.serve or ServeConfig()
    os.environ[ENV] = json.dumps(asdict(target))
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    metrics_dir = Path(config.state_dir) / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    # A fresh folder per run: the workers' counters start at zero and a dead run's files never
    # mix in. Removed when the run ends (unless it was given through the environment).
    fresh = None
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        fresh = tempfile.mkdtemp(dir=metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = fresh
    n_workers = workers or config.workers
    prepare_state(config, n_workers)
    try:
        uvicorn.run(
            "robustops.serve:app_from_env",
            factory=True,
            host=host or config.host,
            port=port if port is not None else config.port,
            workers=n_workers,
            log_level="warning",
            # The client address is the peer's unless serve.limits.trusted_proxies says
            # otherwise (uvicorn would otherwise take X-Forwarded-For from 127.0.0.1).
            proxy_headers=False,
        )
    finally:
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
