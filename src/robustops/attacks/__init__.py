"""The attack library, every modality under one contract (:class:`Attack`), reachable by name.

Tensor attacks for images and scaled rows (FGSM, PGD, APGD, Square, HopSkipJump, uniform
noise), image attacks for the patch, spatial and corruption threats, the schema-aware tabular
attacks (:mod:`robustops.attacks.tabular`) and the text attacks (:mod:`robustops.attacks.text`).
Third-party attacks join the registry through the ``robustops.attacks`` entry-point group.
"""

from robustops.attacks.apgd import APGD, APGDDLR, APGDT
from robustops.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    is_adversarial,
    knowledge_suffices,
    perturbation_norm,
    project,
    random_start,
)
from robustops.attacks.corruptions import (
    Blur,
    Brightness,
    Contrast,
    CorruptionAttack,
    Elastic,
    GaussianNoise,
    Jpeg,
    ShotNoise,
    corrupt,
)
from robustops.attacks.fgsm import FGSM
from robustops.attacks.hopskipjump import HopSkipJump
from robustops.attacks.noise import UniformNoise
from robustops.attacks.patch import AdversarialPatch, Occlusion, patch_side
from robustops.attacks.pgd import PGD
from robustops.attacks.registry import (
    AttackSpec,
    available_attacks,
    build_attack,
    get_attack,
    register_attack,
)
from robustops.attacks.spatial import SpatialGrid, SpatialPGD, spatial_transform
from robustops.attacks.square import Square
from robustops.attacks.tabular import FeatureMasking, TabularAttack, TabularNoise, TabularPGD
from robustops.attacks.text import TextAttack, TextAttackResult

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "FGSM",
    "PGD",
    "AdversarialPatch",
    "Attack",
    "AttackResult",
    "AttackSpec",
    "Blur",
    "Brightness",
    "Contrast",
    "CorruptionAttack",
    "Elastic",
    "FeatureMasking",
    "GaussianNoise",
    "HopSkipJump",
    "Jpeg",
    "ModelFn",
    "Occlusion",
    "ShotNoise",
    "SpatialGrid",
    "SpatialPGD",
    "Square",
    "TabularAttack",
    "TabularNoise",
    "TabularPGD",
    "TextAttack",
    "TextAttackResult",
    "UniformNoise",
    "available_attacks",
    "build_attack",
    "corrupt",
    "get_attack",
    "is_adversarial",
    "knowledge_suffices",
    "patch_side",
    "perturbation_norm",
    "project",
    "random_start",
    "register_attack",
    "spatial_transform",
]
