"""Hardening recipes: one trainer with pluggable objectives (standard, PGD-AT, TRADES, fast
FGSM, Gaussian noise), AWP, an epsilon curriculum and threat mixes, LR schedules, early stopping
on robust accuracy, a catastrophic-overfitting guard, resumable safetensors checkpoints and
``torchrun`` scale-out; and the text trainer (:mod:`robustops.training.text`: a char n-gram
classifier trained with a recipe, with adversarial data augmentation)."""

from robustops.training.checkpoint import (
    CHECKPOINT_FORMAT,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from robustops.training.distributed import DistContext, env_rank, init_distributed
from robustops.training.hf import fit_hf
from robustops.training.recipe import (
    AugmentSpec,
    AWPSpec,
    CurriculumSpec,
    EarlyStoppingSpec,
    GuardSpec,
    ObjectiveSpec,
    OptimizerSpec,
    PerturbationSpec,
    Recipe,
    ScheduleSpec,
    ValidationSpec,
)
from robustops.training.schedules import adaptive_update, curriculum_factor, learning_rate
from robustops.training.standard import EpochStats, StandardConfig, accuracy, train_standard
from robustops.training.text import (
    AugmentedText,
    AugmentRound,
    TextEpochMetrics,
    TextTrainResult,
    fit_text,
    text_recipe_errors,
    train_text_classifier,
)
from robustops.training.trainer import (
    BatchEvent,
    EpochMetrics,
    FitHooks,
    FitOptions,
    TrainResult,
    fit,
    split_holdout,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "AWPSpec",
    "AugmentRound",
    "AugmentSpec",
    "AugmentedText",
    "BatchEvent",
    "CurriculumSpec",
    "DistContext",
    "EarlyStoppingSpec",
    "EpochMetrics",
    "EpochStats",
    "FitHooks",
    "FitOptions",
    "GuardSpec",
    "ObjectiveSpec",
    "OptimizerSpec",
    "PerturbationSpec",
    "Recipe",
    "ScheduleSpec",
    "StandardConfig",
    "TextEpochMetrics",
    "TextTrainResult",
    "TrainResult",
    "ValidationSpec",
    "accuracy",
    "adaptive_update",
    "curriculum_factor",
    "env_rank",
    "fit",
    "fit_hf",
    "fit_text",
    "init_distributed",
    "latest_checkpoint",
    "learning_rate",
    "read_checkpoint",
    "split_holdout",
    "text_recipe_errors",
    "train_standard",
    "train_text_classifier",
    "write_checkpoint",
]
