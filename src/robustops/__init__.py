"""RobustOps: adversarial robustness as a routine part of shipping a model."""

from robustops.errors import DataIntegrityError, RobustOpsError, SpecError, UnsafeArtifactError
from robustops.threats import ThreatModel

__version__ = "0.1.0"

__all__ = [
    "DataIntegrityError",
    "RobustOpsError",
    "SpecError",
    "ThreatModel",
    "UnsafeArtifactError",
    "__version__",
]
