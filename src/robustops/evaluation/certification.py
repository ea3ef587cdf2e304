"""The record of a randomized-smoothing certification, as a result stores it, and the
certified-accuracy curve computed from it.

The certification procedure (Cohen et al.'s CERTIFY on a data set) lives in
:mod:`robustops.defenses.smoothing`; this module only holds what it returns, so the result
schema and the figures can read a certification without depending on the defense.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from robustops.schema import StrictModel

__all__ = ["ABSTAIN", "CertificationResult", "certified_accuracy_curve", "radius_key"]

ABSTAIN = -1
"""The prediction of a smoothed classifier that abstains (no significant top class)."""


def radius_key(r: float) -> str:
    """The key of radius ``r`` in :attr:`CertificationResult.certified_accuracy`: ``'0.5'``."""
    return str(float(r))


class CertificationResult(StrictModel):
    """CERTIFY run on a data set: the settings, the per-sample outcome and the summary figures.

    A sample is certified correct at radius ``r`` when its prediction equals its label and its
    certified radius is ``>= r`` (Cohen et al.'s certified accuracy).
    """

    sigma: float = Field(description="standard deviation of the Gaussian noise (input units)")
    n0: int = Field(description="selection samples per input (to guess the top class)")
    n: int = Field(description="estimation samples per input (to bound its probability)")
    alpha: float = Field(description="failure probability of each certificate")
    batch_size: int = Field(description="noisy samples per forward pass")
    seed: int = Field(description="seed of the noise generator")
    num_classes: int = Field(description="number of classes of the base classifier")
    device: str = Field(description="device the base classifier ran on")
    n_samples: int = Field(description="inputs certified")
    labels: list[int] = Field(description="per sample: the true label")
    predictions: list[int] = Field(
        description="per sample: the certified class, or -1 where the smoothed classifier abstains"
    )
    radii: list[float] = Field(
        description="per sample: certified L2 radius in input units (0 where abstaining)"
    )
    correct: list[bool] = Field(
        description="per sample: certified (not abstaining) and the prediction equals the label"
    )
    abstain_rate: float = Field(description="share of samples where the classifier abstained")
    clean_accuracy: float = Field(
        description="share of samples predicted correctly (radius >= 0), i.e. certified "
        "accuracy at radius 0"
    )
    certified_accuracy: dict[str, float] = Field(
        description="certified accuracy (share correct with radius >= r) keyed by the radius r "
        "as str(float(r)), e.g. '0.5'"
    )
    average_certified_radius: float = Field(
        description="mean over all samples of the radius if correct, else 0 (input units)"
    )
    max_certifiable_radius: float = Field(
        description="largest radius n and alpha allow: sigma * Phi^-1(alpha ** (1 / n))"
    )
    wall_time_s: float = Field(description="wall time of the certification (seconds)")
    samples_per_second: float = Field(
        description="noisy forward samples (n_samples * (n0 + n)) per second of wall time"
    )

    def certified_accuracy_at(self, r: float) -> float:
        """Share of samples certified correct at radius ``r`` (radius ``>= r``), in [0, 1]."""
        if not self.n_samples:
            return 0.0
        hits = sum(1 for ok, rad in zip(self.correct, self.radii, strict=True) if ok and rad >= r)
        return hits / self.n_samples

    def inconsistencies(self) -> list[str]:
        """The summary figures that disagree with the per-sample record, as ``"field: why"``
        (empty when none): a certification edited after the run is refused by its result."""
        n = self.n_samples
        if {len(self.labels), len(self.predictions), len(self.radii), len(self.correct)} != {n}:
            return [f"labels, predictions, radii and correct must have n_samples = {n} entries"]
        out = []
        expected = [
            p != ABSTAIN and p == y for p, y in zip(self.predictions, self.labels, strict=True)
        ]
        if expected != self.correct:
            out.append("correct: does not match predictions == labels (abstentions excluded)")
        share = (lambda k: k / n) if n else (lambda k: 0.0)
        acr = sum(r for ok, r in zip(self.correct, self.radii, strict=True) if ok)
        figures = [
            ("abstain_rate", self.abstain_rate, share(self.predictions.count(ABSTAIN))),
            ("clean_accuracy", self.clean_accuracy, share(sum(self.correct))),
            ("average_certified_radius", self.average_certified_radius, share(acr)),
            *(
                (f"certified_accuracy.{r}", v, self.certified_accuracy_at(float(r)))
                for r, v in self.certified_accuracy.items()
            ),
        ]
        out += [
            f"{name}: {stored!r} disagrees with the per-sample record ({value!r})"
            for name, stored, value in figures
            if abs(stored - value) > 1e-9 * max(1.0, abs(value))
        ]
        return out


def certified_accuracy_curve(
    result: CertificationResult, radii: Sequence[float] | None = None
) -> list[tuple[float, float]]:
    """``[(r, certified accuracy at r), ...]`` for increasing ``r``.

    ``radii=None``: the exact step function, one point at 0 and at every distinct radius of a
    correctly certified sample (the accuracy holds from just after the previous point up to
    and including each point, and is 0 beyond the last).
    """
    if radii is None:
        grid = sorted({0.0, *(r for ok, r in zip(result.correct, result.radii, strict=True) if ok)})
    else:
        grid = sorted(float(r) for r in radii)
    return [(r, result.certified_accuracy_at(r)) for r in grid]
