"""The compute-cost reward: a penalty on latent steps, layer evaluations or FLOPs (rl_latent.compute)."""

from __future__ import annotations

import math

from rewards.answer import is_correct
from rewards.base import Sample, groups, register

__all__ = ["compute", "relative_compute", "UNITS"]

UNITS = ("latent_steps", "layer_evals", "flops")


def _cost(s: Sample, unit: str) -> float:
    if unit == "latent_steps":
        return float(s.latent_steps)
    return float(getattr(s.compute, unit))


@register("compute")
def compute(
    samples: list[Sample],
    unit: str = "latent_steps",
    budget: float | None = None,
    scale: float | None = None,
    only_correct: bool = False,
) -> list[float]:
    """Penalty on the compute c a sample spent: ``sample.latent_steps``, ``compute.layer_evals`` or
    ``compute.flops`` (``unit``).

    Without a budget: r = -c / scale. With a budget b: r = -max(0, c - b) / scale, so only compute beyond
    the budget is penalised. ``scale`` defaults to the budget when one is given (> 0), so r is the overrun
    as a fraction of the budget; else to 1 (``flops`` then needs an explicit scale or budget: raw FLOPs,
    ~1e9 per sample, would swamp every other reward).

    ``only_correct=True`` penalises only correct samples (wrong ones get 0). Otherwise a wrong answer is
    cheaper the sooner it comes, so the policy is paid for giving up early on hard questions; with it, the
    penalty only ranks correct answers by cost. Keep ``weight * max penalty`` below the ``correct`` reward's
    weight so that a correct answer always beats a wrong one.
    """
    if unit not in UNITS:
        raise ValueError(f"compute reward: unknown unit {unit!r}; expected one of {UNITS}")
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"compute reward: budget must be a finite number >= 0, got {budget!r}")
    if scale is None:
        if budget:
            scale = budget
        elif unit == "flops":
            raise ValueError("compute reward: unit 'flops' needs a scale (or a budget > 0), e.g. scale=1e9")
        else:
            scale = 1.0
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"compute reward: scale must be a finite number > 0, got {scale!r}")
    out = []
    for s in samples:
        c = _cost(s, unit)
        over = c if budget is None else max(0.0, c - budget)
        penalise = not only_correct or is_correct(s)
        out.append(-over / scale if penalise and over else 0.0)
    return out


@register("relative_compute")
def relative_compute(samples: list[Sample], unit: str = "latent_steps") -> list[float]:
    """Length penalty normalised within each prompt's group (Arora & Zanette 2025, "Training Language Models
    to Reason Efficiently", arXiv 2502.04463, eq. 4), on the compute c of ``unit``:

        r_i = -sigmoid((c_i - mean_C(g)) / std_C(g))   if sample i is correct, else 0

    with C(g) the correct samples of i's group (``rewards.base.groups``). The penalty lies in (-1, 0), so
    with weight alpha < 1 next to ``correct`` a correct answer always beats a wrong one, whatever it cost;
    it ranks only the correct answers of one prompt, so a hard prompt's long chains are not charged more
    than an easy prompt's short ones. A group whose correct samples all cost the same (std 0) gets -0.5
    on each: no ranking among them.
    """
    if unit not in UNITS:
        raise ValueError(f"relative_compute reward: unknown unit {unit!r}; expected one of {UNITS}")
    out = [0.0] * len(samples)
    for members in groups(samples):
        right = [i for i in members if is_correct(samples[i])]
        if not right:
            continue
        costs = [_cost(samples[i], unit) for i in right]
        mean = sum(costs) / len(costs)
        std = math.sqrt(sum((c - mean) ** 2 for c in costs) / len(costs))
        for i, c in zip(right, costs):
            z = (c - mean) / std if std > 0 else 0.0
            out[i] = -1.0 / (1.0 + math.exp(-z))
    return out
