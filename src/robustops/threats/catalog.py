"""The threat catalog: who may attack which part of the pipeline, how, and how much it matters.

Each entry names the pipeline component and input channel it targets, the perturbation family
and budget, the attacker's knowledge, a likelihood and an impact on a 1–5 scale, and an owner.
Its risk is ``likelihood × impact`` (1–25). Entries list the evaluation threats that exercise
them (``exercised_by``); an entry no evaluation threat exercises is *uncovered*, which the
catalog reports rather than hides. The catalog is versioned by the sha256 of its canonical
JSON, recorded in every result evaluated under it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ConfigDict, Field, computed_field, model_validator

from robustops.schema import StrictModel
from robustops.threats.model import Knowledge

__all__ = ["CatalogEntry", "Channel", "RiskLevel", "RiskRow", "ThreatCatalog", "risk_level"]

Channel = Literal["image", "text", "tabular", "audio", "signal", "other"]
RiskLevel = Literal["low", "medium", "high", "critical"]


def risk_level(risk: int) -> RiskLevel:
    """``likelihood × impact`` banded as in common 5×5 risk matrices: 1–4 low, 5–9 medium,
    10–16 high, 20–25 critical."""
    if risk >= 20:
        return "critical"
    if risk >= 10:
        return "high"
    if risk >= 5:
        return "medium"
    return "low"


class CatalogEntry(StrictModel):
    """One threat scenario of the catalog."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$", description="stable slug, e.g. 'img-evasion-linf'"
    )
    title: str = Field(min_length=1)
    component: str = Field(
        min_length=1,
        description="pipeline component targeted, e.g. 'model', 'preprocessing', 'feature store'",
    )
    channel: Channel = Field(description="input channel the attacker controls")
    perturbation: str = Field(
        min_length=1, description="perturbation family, e.g. 'linf', 'l2', 'patch', 'homoglyph'"
    )
    budget: str = Field(default="", description="the budget in words, e.g. 'ε = 0.3 in [0, 1]'")
    knowledge: Knowledge = "white-box"
    likelihood: int = Field(ge=1, le=5, description="1 (rare) … 5 (expected)")
    impact: int = Field(ge=1, le=5, description="1 (negligible) … 5 (severe)")
    owner: str = Field(min_length=1, description="who answers for this risk")
    description: str = ""
    exercised_by: list[str] = Field(
        default_factory=list, description="names of the evaluation threats that exercise it"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def risk(self) -> int:
        """``likelihood × impact``, 1–25."""
        return self.likelihood * self.impact

    @computed_field  # type: ignore[prop-decorator]
    @property
    def level(self) -> RiskLevel:
        """The risk band (see :func:`risk_level`)."""
        return risk_level(self.risk)

    def register_fields(self) -> dict[str, Any]:
        """What every risk-register row repeats of its entry: id, title, component, channel,
        owner, likelihood, impact, risk and level."""
        return self.model_dump(
            include={"id", "title", "component", "channel", "owner", "likelihood", "impact"}
        ) | {"risk": self.risk, "level": self.level}


class RiskRow(StrictModel):
    """One line of the risk register: a catalog entry and what the evaluation says of it."""

    id: str
    title: str
    component: str
    channel: Channel
    owner: str
    likelihood: int
    impact: int
    risk: int
    level: RiskLevel
    covered: bool = Field(description="some evaluation threat exercises it")
    robust_accuracy: float | None = Field(
        default=None,
        description="worst robust accuracy over the threats exercising it (when a result is given)",
    )
    attack_success_rate: float | None = Field(
        default=None,
        description="highest attack success rate (share of the attacked samples broken) over "
        "the threats exercising it (when a result is given)",
    )
    threats: list[str]


class ThreatCatalog(StrictModel):
    """The versioned list of threat scenarios."""

    entries: list[CatalogEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> ThreatCatalog:
        ids = [e.id for e in self.entries]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"catalog entry ids must be unique; repeated: {dup}")
        return self

    def canonical_json(self) -> str:
        """The entries as canonical JSON (sorted keys, compact, derived risk fields left out):
        the bytes :meth:`content_hash` hashes, and :meth:`from_canonical_json` reads back."""
        return json.dumps(
            [e.model_dump(mode="json", exclude={"risk", "level"}) for e in self.entries],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_canonical_json(cls, text: str) -> ThreatCatalog:
        """The catalog whose :meth:`canonical_json` is ``text``."""
        return cls.model_validate({"entries": json.loads(text)})

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the entries (sorted keys): the catalog's version."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def ranked(self) -> list[CatalogEntry]:
        """Entries by decreasing risk, then impact, then id."""
        return sorted(self.entries, key=lambda e: (-e.risk, -e.impact, e.id))

    def uncovered(self, threat_names: Sequence[str]) -> list[CatalogEntry]:
        """Ranked entries that none of ``threat_names`` exercises."""
        known = set(threat_names)
        return [e for e in self.ranked() if not known.intersection(e.exercised_by)]

    def risk_register(
        self,
        threat_names: Sequence[str],
        robust_accuracy: Mapping[str, float] | None = None,
        attack_success_rate: Mapping[str, float] | None = None,
    ) -> list[RiskRow]:
        """The risk register, ranked: each entry with its coverage by ``threat_names`` and, given
        a result's ``robust_accuracy`` and ``attack_success_rate`` (threat name → figure), the
        worst of each over the threats exercising it."""
        known = set(threat_names)
        rows = []
        for e in self.ranked():
            threats = [t for t in e.exercised_by if t in known]
            accs = [robust_accuracy[t] for t in threats if robust_accuracy and t in robust_accuracy]
            rates = [
                attack_success_rate[t]
                for t in threats
                if attack_success_rate and t in attack_success_rate
            ]
            rows.append(
                RiskRow(
                    **e.register_fields(),
                    covered=bool(threats),
                    robust_accuracy=min(accs) if accs else None,
                    attack_success_rate=max(rates) if rates else None,
                    threats=threats,
                )
            )
        return rows
