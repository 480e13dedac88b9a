"""Outcome diversity: a penalty on answers that a group repeats, against GRPO's collapse onto one answer."""

from __future__ import annotations

from collections import Counter

from rewards.base import Sample, groups, register
from rl_latent.metrics import extract_answer

__all__ = ["batch_exploration"]


@register("batch_exploration")
def batch_exploration(samples: list[Sample]) -> list[float]:
    """Batch exploration (Song, Kempe & Munos 2025, "Outcome-based Exploration for LLM Reasoning", arXiv
    2509.06941, sec. 4): a sample loses the share of the other samples of its group that reached its answer,

        r_i = - |{j in g(i), j != i : a_j = a_i}| / (|g(i)| - 1)

    with a the parsed final answer (extract_answer; no parseable answer is one outcome of its own) and g(i)
    the samples of the same prompt in this batch: ``metadata["group"]`` when the trainer sets it, else the
    question text. A group of one scores 0. Every sample of a group that agrees scores -1, so the penalty
    only moves advantages where the answers differ: a rare answer, right or wrong, gains on the common one.
    That is what lets a group with no correct sample still push its policy off a repeated wrong answer
    (GRPO gives it zero advantage), the collapse that RL on solved problems transfers to unsolved ones.
    Weight it against ``correct`` in ``rl.rewards`` (e.g. 0.5: a correct answer all 8 samples share
    still scores 0.5 above a unique wrong one).
    """
    out = [0.0] * len(samples)
    for members in groups(samples):
        if len(members) < 2:
            continue
        answers = [extract_answer(samples[i].answer) for i in members]
        counts = Counter(answers)
        for i, a in zip(members, answers):
            out[i] = -(counts[a] - 1) / (len(members) - 1)
    return out
