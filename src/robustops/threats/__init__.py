"""Threat models (and, later, the threat catalog and risk scoring)."""

from robustops.threats.model import Knowledge, Norm, ThreatModel, validation_error_to_spec_error

__all__ = ["Knowledge", "Norm", "ThreatModel", "validation_error_to_spec_error"]
