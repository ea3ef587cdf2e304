"""The attack library: every attack shares one contract and is reachable by name.

The text and tabular attacks (:mod:`robustops.attacks.text`, :mod:`robustops.attacks.tabular`)
live with their modality and join the registry through the ``robustops.attacks`` entry-point
group, as third-party attacks do.
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
from robustops.attacks.fgsm import FGSM
from robustops.attacks.noise import UniformNoise
from robustops.attacks.pgd import PGD
from robustops.attacks.registry import (
    AttackSpec,
    available_attacks,
    build_attack,
    get_attack,
    register_attack,
)
from robustops.attacks.square import Square
from robustops.attacks.tabular import FeatureMasking, TabularAttack, TabularNoise, TabularPGD
from robustops.attacks.text import TextAttack, TextAttackResult

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "AttackSpec",
    "FeatureMasking",
    "ModelFn",
    "Square",
    "TabularAttack",
    "TabularNoise",
    "TabularPGD",
    "TextAttack",
    "TextAttackResult",
    "UniformNoise",
    "available_attacks",
    "build_attack",
    "get_attack",
    "is_adversarial",
    "knowledge_suffices",
    "perturbation_norm",
    "project",
    "random_start",
    "register_attack",
]
