"""Rewards: the interface, registry and loading (base.py), answer correctness and format (answer.py),
compute cost (compute.py) and outcome diversity (diversity.py). See DESIGN.md, "Rewards"."""

from rewards import answer, compute, diversity  # noqa: F401 - fills the registry
from rewards.base import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    RewardError,
    RewardSpec,
    Sample,
    Scored,
    load_reward,
    register,
    samples_of,
    score,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "RewardError",
    "RewardSpec",
    "Sample",
    "Scored",
    "load_reward",
    "register",
    "samples_of",
    "score",
]
