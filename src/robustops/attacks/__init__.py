"""The attack library: every attack shares one contract and is reachable by name."""

import importlib

from robustops.attacks.apgd import APGD, APGDDLR, APGDT
from robustops.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    is_adversarial,
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
    "GaussianNoise",
    "Jpeg",
    "ModelFn",
    "Occlusion",
    "ShotNoise",
    "SpatialGrid",
    "SpatialPGD",
    "Square",
    "UniformNoise",
    "available_attacks",
    "build_attack",
    "corrupt",
    "get_attack",
    "is_adversarial",
    "patch_side",
    "perturbation_norm",
    "project",
    "random_start",
    "register_attack",
    "spatial_transform",
]

# The schema-aware tabular attacks (tabular-pgd, tabular-noise, feature-masking) live in
# robustops.tabular and register on import; imported last, by name, to keep the cycle harmless.
importlib.import_module("robustops.tabular.attacks")
