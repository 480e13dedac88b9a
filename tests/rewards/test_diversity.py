"""The batch-exploration reward: a penalty on answers a group repeats, by hand."""

import torch

from rewards import load_reward
from rewards.base import Sample
from rewards.diversity import batch_exploration
from rl_latent.compute import SampleCompute
from trainers.grpo import group_advantages

_C = SampleCompute(positions=3, latent_steps=1, layer_evals=3, flops=0.0, wall_s=0)


def _s(answer: str, question: str = "q", group: int | None = None) -> Sample:
    meta = {} if group is None else {"group": group}
    return Sample(question=question, answer=answer, target="4", latent_steps=1, compute=_C, metadata=meta)


def test_registered_by_name():
    assert load_reward("batch_exploration") is batch_exploration


def test_penalty_is_the_share_of_the_others_that_agree():
    # 5 samples: "5" three times, "4" once, no number once -> -(2/4), -(0/4), -(0/4)
    got = batch_exploration([_s("5"), _s("The answer is 5"), _s("5"), _s("4"), _s("none")])
    assert got == [-0.5, -0.5, -0.5, 0.0, 0.0]


def test_an_agreeing_group_scores_minus_one_everywhere_and_a_single_sample_zero():
    assert batch_exploration([_s("7"), _s("7"), _s("7")]) == [-1.0, -1.0, -1.0]
    assert batch_exploration([_s("7")]) == [0.0]


def test_unparseable_answers_are_one_outcome():
    assert batch_exploration([_s("foo"), _s("bar"), _s("3")]) == [-0.5, -0.5, 0.0]


def test_groups_come_from_the_trainer_metadata_else_the_question():
    # the same answer in two groups is not a repeat; the question only groups when metadata has no group
    by_meta = [_s("1", "a", 0), _s("1", "a", 1), _s("1", "a", 1), _s("2", "a", 0)]
    assert batch_exploration(by_meta) == [0.0, -1.0, -1.0, 0.0]
    by_question = [_s("1", "a"), _s("1", "b"), _s("1", "a"), _s("2", "b")]
    assert batch_exploration(by_question) == [-1.0, 0.0, -1.0, 0.0]


def test_a_rare_wrong_answer_gets_the_larger_advantage_in_an_all_wrong_group():
    # the collapse it is for: 7 samples repeat the near miss 5, one tries 3, none is right (target 4);
    # under `correct` alone every advantage is 0, with the penalty the odd one out is preferred
    r = torch.tensor(batch_exploration([_s("5")] * 7 + [_s("3")]))
    adv = group_advantages(r, group_size=8)
    assert adv[-1] > 0 and (adv[:-1] < 0).all()
