"""Attack-in-progress detection: Square campaigns are flagged within a few queries, benign clients
re-sending natural near-duplicates are not, and the detector's state stays bounded, deterministic
and safe under threads."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustops import SpecError, ThreatModel
from robustops.attacks import Square
from robustops.data import Dataset
from robustops.defenses import (
    ACTIONS,
    DetectionPolicy,
    DetectorConfig,
    Fingerprinter,
    QueryDecision,
    QueryDetector,
)
from robustops.models import SmallCNN, small_cnn
from robustops.training import StandardConfig, train_standard

FLAG = ACTIONS.index("flag")


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread() -> Iterator[None]:
    """Many tiny forward passes: one intra-op thread is faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_cnn(mnist: Dataset) -> SmallCNN:
    """A quarter-width CNN trained two epochs (~4 s, 90% test accuracy): something to attack,
    and a feature map to embed queries with."""
    torch.manual_seed(0)
    net = small_cnn(width=8, hidden=32, seed=0)
    train_standard(net, mnist.x_train, mnist.y_train, StandardConfig(epochs=2, lr=3e-3, seed=0))
    return net.eval()


Embed = Callable[[Tensor], np.ndarray]


@pytest.fixture(scope="module")
def embed(tiny_cnn: SmallCNN) -> Embed:
    """Inputs ``(n, 1, 28, 28)`` (or one ``(1, 28, 28)``) → their last convolutional feature
    maps, flattened ``(n, 784)``: what the service would pass as ``embedding=``."""

    def f(x: Tensor) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = tiny_cnn.features(x.reshape(-1, 1, 28, 28)).flatten(1).numpy()
        return out

    return f


def _feed(det: QueryDetector, key: str, queries: list[Tensor], embed: Embed) -> list[QueryDecision]:
    """Send ``queries`` in order as ``key``, one second apart, with their embeddings."""
    embs = embed(torch.stack(queries))
    return [det.observe(key, q, embedding=embs[t], now=float(t)) for t, q in enumerate(queries)]


class Recording(nn.Module):
    """Forwards to ``model`` and keeps every row the attack sent (what a remote service sees)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows.extend(x.detach().clone())
        out: Tensor = self.model(x)
        return out


def _campaign(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float) -> list[Tensor]:
    rec = Recording(model)
    threat = ThreatModel(name="t", norm=norm, epsilon=eps, knowledge="score-based")  # type: ignore[arg-type]
    Square(threat, queries=60, early_stop=False, seed=0)(rec, x, y)
    return rec.rows


def _first_flag(decisions: list[QueryDecision]) -> int | None:
    return next((i + 1 for i, d in enumerate(decisions) if d.severity >= FLAG), None)


def _shift(x: Tensor, dx: int, dy: int) -> Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _near_duplicates(x: Tensor, rng: np.random.Generator) -> list[Tensor]:
    """Natural variants of ``x`` ``(1, 28, 28)``: shifts, noise, brightness, contrast, re-scan."""
    noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    rescan = F.conv2d(x[None], k[None, None], padding=1)[0] + 0.02 * noise
    variants = [
        _shift(x, 1, 0),
        _shift(x, -2, 1),
        x + 0.03 * noise,
        x + 0.05 * noise,
        x + 0.1,
        (x - 0.5) * 0.9 + 0.5,
        rescan,
    ]
    return [v.clamp(0, 1) for v in variants]


# 1. attacks are flagged ---------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps", "within"), [("linf", 0.3, 20), ("l2", 2.0, 10)])
def test_square_campaign_is_flagged_within_few_queries(
    tiny_cnn: SmallCNN,
    embed: Embed,
    mnist: Dataset,
    norm: str,
    eps: float,
    within: int,
) -> None:
    det = QueryDetector(secret=0, embedding_dim=784)
    firsts = []
    for i in range(3):
        rows = _campaign(tiny_cnn, mnist.x_test[i : i + 1], mnist.y_test[i : i + 1], norm, eps)
        decisions = _feed(det, f"attacker-{i}", rows, embed)
        firsts.append(_first_flag(decisions))
        # the campaign goes on: the cluster grows and the key ends blocked
        assert decisions[-1].action == "block"
        assert decisions[-1].matches >= 30
    assert all(f is not None and f <= within for f in firsts), firsts


def test_fingerprints_alone_flag_a_campaign(tiny_cnn: SmallCNN, mnist: Dataset) -> None:
    """Blacklight's signal by itself (no embedding) catches Square L∞, a little later."""
    det = QueryDetector(secret=0)
    rows = _campaign(tiny_cnn, mnist.x_test[:1], mnist.y_test[:1], "linf", 0.3)
    decisions = [det.observe("a", r, now=float(j)) for j, r in enumerate(rows)]
    first = _first_flag(decisions)
    assert first is not None and first <= 40
    assert decisions[-1].embedding_matches == 0 and decisions[-1].fingerprint_matches >= 10


# 2. benign clients are not ------------------------------------------------------------------


def test_benign_near_duplicates_from_many_clients_are_not_flagged(
    embed: Embed, mnist: Dataset
) -> None:
    det = QueryDetector(secret=0, embedding_dim=784)
    rng = np.random.default_rng(0)
    worst = 0
    for c in range(60):
        queries: list[Tensor] = []
        for i in rng.choice(len(mnist.x_test), size=int(rng.integers(3, 9)), replace=False):
            x = mnist.x_test[int(i)]
            dups = _near_duplicates(x, rng)
            picks = rng.choice(len(dups), size=int(rng.integers(0, 4)), replace=False)
            queries += [x, *(dups[int(p)] for p in picks)]
        decisions = _feed(det, f"client-{c}", queries, embed)
        assert all(d.severity < FLAG for d in decisions), (c, [d.matches for d in decisions])
        worst = max(worst, *(d.matches for d in decisions))
    # a near-duplicate matches its digit and its siblings (at most 3), rarely one more
    assert worst <= 4


def test_each_kind_of_near_duplicate_matches_its_original(embed: Embed, mnist: Dataset) -> None:
    """The two signals cover each other: shifts keep the fingerprint (windows run over the
    flattened image), brightness, contrast and blur keep the embedding."""
    det = QueryDetector(secret=0, embed=embed)  # the embedding function, called per query
    rng = np.random.default_rng(1)
    for i in range(10):
        x = mnist.x_test[i]
        det.observe(f"k{i}", x, now=0.0)
        for j, dup in enumerate(_near_duplicates(x, rng)):
            d = det.observe(f"k{i}", dup, now=1.0 + j)
            assert d.matches >= 1, (i, j, d)
            det.forget(f"k{i}")  # compare each variant with the original alone
            det.observe(f"k{i}", x, now=0.0)


def test_different_digits_do_not_match(embed: Embed, mnist: Dataset) -> None:
    det = QueryDetector(DetectorConfig(history=256), secret=0, embedding_dim=784)
    decisions = _feed(det, "k", list(mnist.x_test[:200]), embed)
    assert all(d.severity < FLAG for d in decisions)
    # a few stray pairs among the 19 900, mostly by the embedding (two similar digits)
    assert sum(d.fingerprint_matches for d in decisions) <= 3
    assert sum(d.matches for d in decisions) <= 20


# 3. policy ----------------------------------------------------------------------------------


def test_policy_levels_and_validation() -> None:
    pol = DetectionPolicy(log_at=1, flag_at=3, throttle_at=5, block_at=8)
    assert [ACTIONS[pol.level(m)] for m in (0, 1, 2, 3, 4, 5, 7, 8, 100)] == [
        "allow", "log", "log", "flag", "flag", "throttle", "throttle", "block", "block",
    ]  # fmt: skip
    assert ACTIONS[DetectionPolicy(throttle_at=None, block_at=None).level(99)] == "flag"
    with pytest.raises(SpecError, match="flag_at"):
        DetectionPolicy(log_at=4, flag_at=2)
    with pytest.raises(SpecError, match="block_at"):
        DetectionPolicy(block_at=0)
    with pytest.raises(SpecError, match="hold_seconds"):
        DetectionPolicy(hold_seconds=-1)


def test_escalation_is_held_then_released(mnist: Dataset) -> None:
    pol = DetectionPolicy(flag_at=2, throttle_at=3, block_at=4, hold_seconds=10.0)
    det = QueryDetector(DetectorConfig(policy=pol), secret=0)
    x = mnist.x_test[0]
    actions = [det.observe("k", x, now=float(t)).action for t in range(5)]
    assert actions == ["allow", "log", "flag", "throttle", "block"]
    other = det.observe("k", mnist.x_test[1], now=5.0)
    assert other.action == "block" and other.matches == 0 and other.reasons == ("held",)
    later = det.observe("k", mnist.x_test[2], now=14.5)  # 10 s after the last escalating query
    assert later.action == "allow" and later.reasons == ()


def test_decision_record_is_immutable(mnist: Dataset) -> None:
    d = QueryDetector(secret=0).observe("k", mnist.x_test[0], now=0.0)
    assert d == QueryDecision("k", "allow", (), 0, 0, 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.action = "block"  # type: ignore[misc]


# 4. bounded memory ------------------------------------------------------------------------


def test_lru_eviction_caps_the_keys(mnist: Dataset) -> None:
    det = QueryDetector(DetectorConfig(max_keys=3), secret=0)
    x = mnist.x_test[0]
    for k in ("a", "b", "c"):
        det.observe(k, x, now=0.0)
    det.observe("a", x, now=1.0)  # "a" is now the most recent: "b" goes first
    det.observe("d", x, now=2.0)
    assert det.keys() == ["c", "a", "d"] and det.evicted == 1 and "b" not in det
    # an evicted key starts afresh
    assert det.observe("b", x, now=3.0).held == 1
    assert len(det) == 3 and det.forget("b") and not det.forget("b")


def test_history_and_age_bound_each_key(mnist: Dataset) -> None:
    cfg = DetectorConfig(history=16, max_age=50.0, max_keys=4)
    det = QueryDetector(cfg, secret=0, embedding_dim=8)
    x = mnist.x_test[0]
    e = np.ones(8, dtype=np.float32)
    held = [det.observe("k", x, embedding=e, now=float(t)).held for t in range(40)]
    assert held[:16] == list(range(1, 17)) and set(held[16:]) == {16}
    assert det.observe("k", x, embedding=e, now=39.0).matches == 16
    # held: t = 25..39 and 39 again; at t = 80 only those after 80 - 50 = 30 count
    assert det.observe("k", x, embedding=e, now=80.0).matches == 10
    for k in range(10):
        for t in range(40):
            det.observe(f"k{k}", mnist.x_test[t], embedding=e, now=float(t))
    assert len(det) == 4
    assert 0 < det.memory_bytes() <= det.memory_bound()
    assert det.memory_bound() == 4 * 16 * (2 * 2048 // 8 + 4 + 8 + 4 * 8)


# 5. determinism and keys of the hash -------------------------------------------------------


def test_decisions_are_deterministic_given_the_secret(embed: Embed, mnist: Dataset) -> None:
    rng = np.random.default_rng(0)
    stream = [
        (f"k{rng.integers(3)}", mnist.x_test[int(rng.integers(20))] + 0.01 * t) for t in range(60)
    ]

    embs = embed(torch.stack([x for _, x in stream]))

    def run(secret: int) -> list[QueryDecision]:
        det = QueryDetector(DetectorConfig(history=16), secret=secret, embedding_dim=784)
        return [
            det.observe(k, x, embedding=embs[t], now=float(t)) for t, (k, x) in enumerate(stream)
        ]

    assert run(7) == run(7)
    a, b = Fingerprinter(DetectorConfig(), 7), Fingerprinter(DetectorConfig(), 8)
    x = mnist.x_test[0]
    assert np.array_equal(a.tensor(x), a.tensor(x.clone()))
    assert np.intersect1d(a.tensor(x), b.tensor(x)).size == 0  # another key, other hashes
    assert Fingerprinter(DetectorConfig(), b"k" * 16).tensor(x).size == 50


def test_fingerprint_shape_and_sketch_count(mnist: Dataset) -> None:
    det = QueryDetector(secret=0)
    fp = det.fingerprinter
    x = mnist.x_test[0]
    h = fp.tensor(x)
    assert h.dtype == np.uint64 and h.shape == (50,) and bool(np.all(np.diff(h) > 0))
    assert fp.tensor(torch.zeros(3)).shape == (1,)  # shorter than a window: one window
    # the sketch's popcount never undercounts the shared hashes, and overcounts little
    for j in range(1, 30):
        g = fp.tensor(mnist.x_test[j])
        exact = np.intersect1d(h, g).size
        sketched = int(np.bitwise_count(det._sketch(h) & det._sketch(g)).sum())
        assert exact <= sketched <= exact + 6
    with pytest.raises(SpecError, match="NaN"):
        fp.tensor(torch.full((4,), float("nan")))


def test_batched_fingerprints_equal_one_at_a_time(mnist: Dataset) -> None:
    fp = QueryDetector(secret=3).fingerprinter
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([mnist.x_test[:6], torch.rand(4, 1, 28, 28, generator=gen)])
    x[6] = 0.0  # one window hash: a fingerprint of length 1
    x[7, 0, :10] = 0.5  # few distinct windows
    x[8] = x[9]  # identical rows
    x[9, 0, 0, 0] = 1.0
    for rows in (x, x[:1], x.reshape(10, -1)[:, :7], x.reshape(10, -1)[:, :21]):
        together = fp.tensors(rows)
        alone = [fp.tensor(r) for r in rows]
        assert len(together) == len(alone)
        for a, b in zip(together, alone, strict=True):
            assert a.dtype == b.dtype == np.uint64 and np.array_equal(a, b)
    with pytest.raises(SpecError, match="NaN"):
        fp.tensors(torch.full((2, 4), float("nan")))
    det = QueryDetector(secret=3)
    e = np.random.default_rng(1).random((10, 8))
    det2 = QueryDetector(secret=3, embedding_dim=8)
    many = det2.prepare_tensors(x.numpy(), list(e))
    for i, q in enumerate(many):
        one = det2.prepare(x[i].numpy(), embedding=e[i])
        assert np.array_equal(q.sketch, one.sketch) and q.length == one.length
        np.testing.assert_array_equal(q.emb, one.emb)
    assert [q.emb for q in det.prepare_tensors(x.numpy())] == [None] * 10


# 6. text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["char", "word"])
def test_text_near_duplicates_match_and_others_do_not(unit: str) -> None:
    pol = DetectionPolicy(flag_at=3, throttle_at=None, block_at=None)
    det = QueryDetector(DetectorConfig(text_unit=unit, text_window=5 if unit == "char" else 2,
                                       policy=pol), secret=0)  # fmt: skip
    base = (
        "Congratulations! You have been selected to receive a free cruise to the Bahamas. "
        "Call now to claim your prize before the offer expires at midnight tonight."
    )
    edits = [
        base.replace("free", "complimentary"),
        base.replace("Call now", "Ring us now"),
        base.replace("midnight", "noon"),
        base.upper(),  # case folding: the same text
    ]
    others = [
        "Are we still meeting for lunch tomorrow at the usual place near the office?",
        "Your parcel could not be delivered; reschedule the delivery on our website.",
        "Happy birthday! Hope you have a wonderful day with the family.",
    ]
    assert det.observe_text("spam", base, now=0.0).matches == 0
    ds = [det.observe_text("spam", t, now=1.0 + i) for i, t in enumerate(edits)]
    assert [d.matches for d in ds] == [1, 2, 3, 4] and ds[-1].action == "flag"
    ok = [det.observe_text("ham", t, now=float(i)) for i, t in enumerate(others)]
    assert all(d.matches == 0 for d in ok)
    assert det.observe_text("ham", "", now=9.0).matches == 0
    # an empty text has no fingerprint, but still counts and matches by its embedding
    emb_det = QueryDetector(secret=0, embedding_dim=2)
    e = np.array([1.0, 0.0])
    assert emb_det.observe_text("k", "", embedding=e, now=0.0).matches == 0
    d = emb_det.observe_text("k", "", embedding=e, now=1.0)
    assert (d.matches, d.fingerprint_matches, d.embedding_matches, d.held) == (1, 0, 1, 2)


# 7. validation and threads ----------------------------------------------------------------


def test_invalid_inputs_and_settings_are_refused(mnist: Dataset) -> None:
    x = mnist.x_test[0]
    with pytest.raises(SpecError, match="embedding"):
        QueryDetector(secret=0).observe("k", x, embedding=np.ones(4))
    with pytest.raises(SpecError, match="required"):
        QueryDetector(secret=0, embedding_dim=4).observe("k", x)
    det = QueryDetector(secret=0, embedding_dim=4)
    with pytest.raises(SpecError, match="4"):
        det.observe("k", x, embedding=np.ones(5))
    with pytest.raises(SpecError, match="NaN"):
        det.observe("k", x, embedding=np.array([1.0, np.nan, 0, 0]))
    with pytest.raises(SpecError, match="key"):
        det.observe(3, x, embedding=np.ones(4))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="match_threshold"):
        DetectorConfig(match_threshold=60)
    with pytest.raises(SpecError, match="sketch_bits"):
        DetectorConfig(sketch_bits=1000)
    with pytest.raises(SpecError, match="embedding_threshold"):
        DetectorConfig(embedding_threshold=0.0)
    with pytest.raises(SpecError, match="secret"):
        QueryDetector(secret=1.5)  # type: ignore[arg-type]


def test_concurrent_clients_smoke(mnist: Dataset) -> None:
    """Eight threads on four shared keys: no error and no lost or torn update (each key's
    queries see held counts 1, 2, ..., n exactly once); then key churn above the cap."""
    det = QueryDetector(DetectorConfig(history=256), secret=0, embedding_dim=16)
    emb = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    errors: list[BaseException] = []
    seen: list[QueryDecision] = []

    def client(n: int, detector: QueryDetector, keys: int) -> None:
        try:
            for t in range(50):
                key = f"k{(n + t) % keys}"
                d = detector.observe(key, mnist.x_test[t % 7], embedding=emb[t], now=float(t))
                seen.append(d)  # list.append is atomic
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def run(detector: QueryDetector, keys: int) -> None:
        threads = [threading.Thread(target=client, args=(n, detector, keys)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run(det, 4)
    assert not errors and len(seen) == 400
    for k in range(4):
        held = sorted(d.held for d in seen if d.key == f"k{k}")
        assert held == list(range(1, 101))
    churn = QueryDetector(DetectorConfig(max_keys=5, history=8), secret=0, embedding_dim=16)
    run(churn, 12)
    assert not errors and len(churn) == 5 and churn.evicted >= 7
