"""Built-in rewards: answer correctness, format and compute cost, on hand-built samples."""

import math

import pytest

from rewards import RewardSpec, load_reward, score
from rewards.answer import correct, format
from rewards.base import Sample
from rewards.compute import compute, relative_compute
from rl_latent.compute import SampleCompute


def _s(answer: str = "", target: str = "", steps: int = 0, layer_evals: int = 0, flops: float = 0.0, q="q"):
    c = SampleCompute(positions=steps + 3, latent_steps=steps, layer_evals=layer_evals, flops=flops, wall_s=0)
    return Sample(question=q, answer=answer, target=target, latent_steps=steps, compute=c, metadata={})


def test_builtins_are_registered():
    assert load_reward("correct") is correct
    assert load_reward("format") is format
    assert load_reward("compute") is compute
    assert load_reward("relative_compute") is relative_compute


def test_correct_right_wrong_negative_and_formatted():
    samples = [
        _s("The answer is 42", "42"),
        _s("The answer is 41", "42"),
        _s("The answer is : - 3", "-3"),
        _s("The answer is 3", "-3"),  # sign matters
        _s("so #### 1 , 000", "1,000"),  # word-level spacing and thousands separators
        _s("$2.50 in total", "2.5"),
        _s("no number", "7"),
    ]
    assert correct(samples) == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_correct_is_zero_for_an_unknown_target():
    # even an answer that would "match" the empty target as a string scores 0
    assert correct([_s("", ""), _s("The answer is 5", ""), _s("5", "  ")]) == [0.0, 0.0, 0.0]


def test_format_needs_a_parseable_number():
    samples = [_s("The answer is 12"), _s("I do not know"), _s(""), _s("#### - 4"), _s("answer is ten")]
    assert format(samples) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_compute_each_unit():
    samples = [_s(steps=3, layer_evals=36, flops=2e6), _s(steps=0, layer_evals=0, flops=0.0)]
    assert compute(samples) == [-3.0, 0.0]
    assert compute(samples, unit="layer_evals") == [-36.0, 0.0]
    assert compute(samples, unit="layer_evals", scale=12) == [-3.0, 0.0]
    assert compute(samples, unit="flops", scale=1e6) == [-2.0, 0.0]


def test_compute_budget_penalises_only_the_overrun():
    samples = [_s(steps=2), _s(steps=4), _s(steps=7)]
    assert compute(samples, budget=4) == [0.0, 0.0, -0.75]  # scale defaults to the budget: 3 / 4
    assert compute(samples, budget=4, scale=1) == [0.0, 0.0, -3.0]
    assert compute(samples, budget=0) == [-2.0, -4.0, -7.0]  # budget 0: scale falls back to 1
    flops = [_s(flops=3e9), _s(flops=1e9)]
    assert compute(flops, unit="flops", budget=2e9) == [-0.5, 0.0]


def test_compute_only_correct_never_pays_for_a_quick_wrong_answer():
    samples = [_s("The answer is 5", "5", steps=6), _s("The answer is 4", "5", steps=6), _s("x", "", steps=1)]
    assert compute(samples, only_correct=True) == [-6.0, 0.0, 0.0]
    assert compute(samples, only_correct=False) == [-6.0, -6.0, -1.0]
    assert compute(samples, only_correct=True, budget=2) == [-2.0, 0.0, 0.0]


def test_relative_compute_ranks_correct_samples_within_their_group():
    right, wrong = ("The answer is 1", "1"), ("The answer is 2", "1")
    a = [_s(*right, steps=2), _s(*right, steps=4), _s(*wrong, steps=1)]  # prompt a: correct costs 2 and 4
    b = [_s(*right, steps=6, q="b"), _s(*right, steps=6, q="b")]  # prompt b: all correct at equal cost
    c = [_s(*wrong, steps=1, q="c")]  # prompt c: nothing correct
    r = relative_compute(a + b + c)
    z1 = 1 / (1 + math.exp(-1))  # costs 2 and 4: mean 3, std 1, so z = -1 and +1
    assert r == pytest.approx([-(1 - z1), -z1, 0.0, -0.5, -0.5, 0.0])
    # prompt b's 6 steps are not charged more than prompt a's 4: only the rank within a group counts
    assert r[3] > r[1]
    # with weight < 1 every correct sample still scores above every wrong one
    total = [x + 0.9 * y for x, y in zip(correct(a + b + c), r)]
    assert min(total[i] for i in (0, 1, 3, 4)) > max(total[i] for i in (2, 5))
    with pytest.raises(ValueError, match="unknown unit"):
        relative_compute(a, unit="tokens")


def test_compute_rejects_bad_arguments():
    samples = [_s(steps=1)]
    with pytest.raises(ValueError, match="unknown unit 'tokens'.*latent_steps"):
        compute(samples, unit="tokens")
    with pytest.raises(ValueError, match="'flops' needs a scale"):
        compute(samples, unit="flops")
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got 0"):
        compute(samples, scale=0)
    with pytest.raises(ValueError, match="budget must be a finite number >= 0, got -1"):
        compute(samples, budget=-1)


def test_builtins_combined_through_score():
    samples = [_s("The answer is 5", "5", steps=6), _s("The answer is 4", "5", steps=2), _s("none", "5")]
    specs = [
        RewardSpec.from_config("correct"),
        RewardSpec.from_config({"name": "format", "weight": 0.5}),
        RewardSpec.from_config({"name": "compute", "weight": 0.25, "kwargs": {"budget": 2, "scale": 1}}),
    ]
    out = score(samples, specs)
    assert out.components["correct"].tolist() == [1.0, 0.0, 0.0]
    assert out.components["format"].tolist() == [1.0, 1.0, 0.0]
    assert out.components["compute"].tolist() == [-4.0, 0.0, 0.0]
    assert out.total.tolist() == [1.0 + 0.5 - 1.0, 0.5, 0.0]
    assert out.valid.all() and out.errors == []
