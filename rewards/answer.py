"""Answer rewards: correctness and format, parsed exactly as evaluation parses them (rl_latent.metrics)."""

from __future__ import annotations

from rewards.base import Sample, register
from rl_latent.metrics import answers_match, extract_answer

__all__ = ["correct", "format", "is_correct"]


def is_correct(sample: Sample) -> bool:
    """answers_match(extract_answer(answer), target); never correct when the target is unknown ("")."""
    if not sample.target.strip():
        return False
    return answers_match(extract_answer(sample.answer), sample.target)


@register("correct")
def correct(samples: list[Sample]) -> list[float]:
    """r = 1 if the answer's final number (GSM8K-style parsing) equals the target (|diff| <= 1e-6), else 0.

    Samples with an empty target score 0.
    """
    return [1.0 if is_correct(s) else 0.0 for s in samples]


@register("format")
def format(samples: list[Sample]) -> list[float]:  # noqa: A001 - the reward's config name
    """r = 1 if the answer text contains a parseable number (extract_answer is not None), else 0."""
    return [0.0 if extract_answer(s.answer) is None else 1.0 for s in samples]
