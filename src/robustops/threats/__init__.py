"""Threat models, and the threat catalog with its risk register."""

from robustops.threats.catalog import CatalogEntry, RiskRow, ThreatCatalog, risk_level
from robustops.threats.model import (
    CORRUPTION_SEVERITIES,
    Knowledge,
    Norm,
    ThreatModel,
    validation_error_to_spec_error,
)

__all__ = [
    "CORRUPTION_SEVERITIES",
    "CatalogEntry",
    "Knowledge",
    "Norm",
    "RiskRow",
    "ThreatCatalog",
    "ThreatModel",
    "risk_level",
    "validation_error_to_spec_error",
]
