"""PPO's GAE and value loss against a plain per-sample loop."""

import pytest
import torch

from trainers.ppo import gae, value_loss


def _gae_loop(rewards, values, gamma, lam):
    adv, last, next_v = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t], next_v = last, values[t]
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_matches_the_recursion_and_skips_masked_times(gamma, lam):
    torch.manual_seed(0)
    values = torch.randn(3, 6)
    mask = torch.tensor(
        [[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
    )  # row 0 has a hole (a decision without a choice), row 2 is one time long
    rewards = torch.zeros(3, 6)
    rewards[0, 4], rewards[1, 5], rewards[2, 0] = 1.0, -0.5, 2.0
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for b in range(3):
        ts = mask[b].nonzero()[:, 0].tolist()
        expect = _gae_loop(rewards[b, ts].tolist(), values[b, ts].tolist(), gamma, lam)
        torch.testing.assert_close(adv[b, ts], torch.tensor(expect))
        torch.testing.assert_close(ret[b, ts], adv[b, ts] + values[b, ts])
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_with_lambda_one_and_no_discount_is_reward_minus_value():
    values = torch.tensor([[0.2, 0.4, 0.7]])
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), values, torch.ones(1, 3, dtype=torch.bool), 1.0, 1.0)
    torch.testing.assert_close(adv, 1.0 - values)
    torch.testing.assert_close(ret, torch.ones(1, 3))


def test_value_loss_is_clipped_pessimistically():
    v_old, ret = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    v = torch.tensor([0.9, 0.1])
    out = value_loss(v, v_old, ret, clip=0.2)
    # 0.9 moved past the clip: the clipped value 0.2 is further from the return, and the max keeps it
    torch.testing.assert_close(out, torch.tensor([0.5 * 0.8**2, 0.5 * 0.9**2]))
    torch.testing.assert_close(value_loss(v, v_old, ret, clip=0.0), 0.5 * (v - ret) ** 2)
