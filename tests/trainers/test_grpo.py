"""GRPO's pure pieces against hand computations, closed forms and Monte Carlo."""

import math

import pytest
import torch

from trainers.grpo import (
    clipped_surrogate,
    fill_groups,
    group_advantages,
    informative_groups,
    k3_kl,
    unlikeliness_rewards,
)


def test_group_advantages_normalise_within_each_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, group_size=4)
    g1 = r[:4]
    expect = (g1 - g1.mean()) / (g1.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(a[:4], expect)
    assert torch.equal(a[4:], torch.zeros(4))  # a group with one outcome teaches nothing


def test_dr_grpo_drops_the_std():
    r = torch.tensor([3.0, 1.0, 0.0, 0.0])
    a = group_advantages(r, group_size=2, std_normalize=False)
    assert a.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_skipped_samples_leave_the_group_statistics_and_get_zero():
    r = torch.tensor([1.0, 0.0, 100.0, 0.0])
    valid = torch.tensor([True, True, False, True])
    a = group_advantages(r, group_size=4, valid=valid, std_normalize=False)
    mean = 1.0 / 3.0
    torch.testing.assert_close(a, torch.tensor([1 - mean, -mean, 0.0, -mean]))


def test_group_advantages_rejects_a_partial_group():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)


def test_clipped_surrogate_matches_the_ppo_formula_on_both_sides():
    logp_old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, rho, clipped = clipped_surrogate(logp, logp_old, adv, eps_low=0.2, eps_high=0.28)
    # A > 0 and rho above 1 + eps_high: capped at 1.28; A < 0 and rho below 1 - eps_low: floored at 0.8
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, -0.5, 0.8]))
    assert clipped.tolist() == [True, False, False, True]
    torch.testing.assert_close(rho, torch.tensor([1.5, 1.5, 0.5, 0.5]))


def test_clipped_surrogate_gradient_is_the_score_function_inside_the_clip():
    logp = torch.tensor([-1.0], requires_grad=True)
    loss, _, _ = clipped_surrogate(logp, torch.tensor([-1.0]), torch.tensor([2.0]), 0.2, 0.2)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-2.0)  # d/dlogp of -rho A at rho = 1


def test_k3_is_nonnegative_and_unbiased_for_the_kl():
    # p = N(0, 1), q = N(0.5, 1.2^2): KL(p || q) in closed form, k3 averaged over samples from p
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g, dtype=torch.float64)
    p = torch.distributions.Normal(0.0, 1.0)
    q = torch.distributions.Normal(0.5, 1.2)
    k3 = k3_kl(p.log_prob(x), q.log_prob(x), cap=math.inf)
    closed = math.log(1.2) + (1 + 0.25) / (2 * 1.44) - 0.5
    assert (k3 >= 0).all()
    assert k3.mean().item() == pytest.approx(closed, rel=0.02)
    # the default cap (10) trims q / p's heavy tail here: a small downward bias, the price of bounded steps
    capped = k3_kl(p.log_prob(x), q.log_prob(x)).mean().item()
    assert 0.95 * closed < capped < k3.mean().item()
    assert k3_kl(torch.tensor([-0.3]), torch.tensor([-0.3])).item() == 0.0


@pytest.mark.parametrize(
    "name,kw", [("gumbel", {"tau": 0.5}), ("dirichlet", {"concentration": 10.0, "floor": 0.05})]
)
def test_grpo_with_exact_densities_learns_a_one_step_bandit(name, kw):
    """The whole score-function path on a bandit: sample soft tokens, reward argmax == 0, group advantages,
    clipped loss on the exact log-density. p(token 0) must rise from 1/8."""
    from rl_latent.policy import get_policy

    torch.manual_seed(0)
    policy = get_policy(name, **kw)
    logits = torch.zeros(8, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        params = logits.detach().expand(64, 8)
        x, logp_old = policy.sample(params, generator=g)
        reward = (x.argmax(-1) == 0).float()
        adv = group_advantages(reward, group_size=8)
        for _ in range(2):  # two epochs: the second sees ratios != 1
            loss, _, _ = clipped_surrogate(policy.log_prob(logits.expand(64, 8), x), logp_old, adv, 0.2, 0.28)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
    assert torch.softmax(logits, -1)[0] > 0.6


def test_pass_at_k_rewards_match_enumerating_every_subset():
    import itertools

    from trainers.grpo import pass_at_k_rewards

    r = torch.tensor([0.3, -1.0, 2.0, 0.3, 0.0, 1.5, -0.2])
    for k in (2, 3, 5):
        value, mean, std = pass_at_k_rewards(r, k)
        subsets = list(itertools.combinations(range(7), k))
        best = torch.tensor([float(r[list(s)].max()) for s in subsets])
        torch.testing.assert_close(mean, best.mean())
        torch.testing.assert_close(std, best.std(unbiased=False))
        each = torch.stack([best[[i in s for s in subsets]].mean() for i in range(7)])
        torch.testing.assert_close(value, each)
        torch.testing.assert_close(value.mean(), mean)  # a zero-mean advantage


def test_pass_at_k_advantages_have_the_papers_closed_form_for_01_rewards():
    # Chen et al. 2025: mean = 1 - C(n_neg, k) / C(n, k); a failure scores 1 - C(n_neg-1, k-1) / C(n-1, k-1)
    n, k, c = 8, 4, 2
    r = torch.tensor([1.0] * c + [0.0] * (n - c))
    mean = 1 - math.comb(n - c, k) / math.comb(n, k)
    std = math.sqrt(mean * (1 - mean))
    fail = 1 - math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1)
    expect = torch.tensor([(1 - mean) / std] * c + [(fail - mean) / std] * (n - c))
    torch.testing.assert_close(group_advantages(r, n, k=k, eps=0.0), expect)
    # a group where every k-subset passes (c >= n - k + 1) teaches nothing: no push on problems already solved
    easy = torch.tensor([1.0] * 5 + [0.0] * 3)
    assert torch.equal(group_advantages(easy, n, k=k), torch.zeros(n))
    assert group_advantages(easy, n, k=1).abs().sum() > 0  # where plain GRPO still sharpens
    # k = 1 is plain GRPO
    r = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(group_advantages(r, 4, k=1), group_advantages(r, 4))


def test_pass_at_k_advantages_leave_skipped_samples_out():
    r = torch.tensor([1.0, 0.0, 0.0, 9.0, 0.0, 0.0])
    valid = torch.tensor([True, True, True, False, True, True])
    a = group_advantages(r, 6, valid=valid, k=2)
    assert a[3] == 0.0
    torch.testing.assert_close(a[valid], group_advantages(r[valid], 5, k=2))


def test_positive_weight_scales_only_the_positive_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    plain = group_advantages(r, 4)
    w = group_advantages(r, 4, positive_weight=0.1)
    torch.testing.assert_close(w, torch.where(plain > 0, 0.1 * plain, plain))
    assert (w < 0).sum() == (plain < 0).sum() == 4  # every failure keeps its full push down


def test_unlikeliness_reward_by_hand():
    # group 0: log-probs rank the samples 2, 0, 3, 1 (most likely first); group 1 has no positive reward
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0])
    logp = torch.tensor([-2.0, -9.0, -1.0, -5.0, 0.0, -1.0, -2.0, -3.0])
    out = unlikeliness_rewards(r, logp, group_size=4, beta=0.4)
    # rank: sample 0 -> 1, sample 1 -> 3, sample 2 -> 0; r (1 - 0.4 (4 - rank) / 4)
    torch.testing.assert_close(out[:4], torch.tensor([1 - 0.4 * 3 / 4, 1 - 0.4 / 4, 1 - 0.4, 0.0]))
    assert torch.equal(out[4:], r[4:])  # failures and negative rewards untouched
    assert torch.equal(unlikeliness_rewards(r, logp, 4, 0.0), r)
    with pytest.raises(ValueError, match="groups of 3"):
        unlikeliness_rewards(r, logp, 3, 0.4)


def test_unlikeliness_reward_gives_the_rare_correct_sample_the_larger_advantage():
    # two correct samples, one likely and one rare; plain GRPO gives them the same advantage
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    logp = torch.tensor([-1.0, -8.0, -3.0, -4.0])
    plain = group_advantages(r, 4)
    assert plain[0] == plain[1]
    a = group_advantages(unlikeliness_rewards(r, logp, 4, 0.25), 4)
    assert a[1] > a[0] > 0 > a[2] == a[3]


def test_informative_groups_are_those_whose_valid_rewards_differ():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 0.0])
    valid = torch.ones(12, dtype=torch.bool)
    assert informative_groups(r, 3, valid).tolist() == [False, False, True, True]
    valid[3] = False  # group 1 left with two equal rewards: still uniform
    valid[6] = valid[7] = False  # group 2 left with one valid sample: nothing to compare
    assert informative_groups(r, 3, valid).tolist() == [False, False, False, True]
    # equal rewards give zero advantage, the reason such groups are dropped
    assert group_advantages(r[3:6], 3).abs().max() == 0


def test_fill_groups_takes_informative_groups_first_then_uniform_ones_in_order():
    info = torch.tensor([False, True, False, True, True])
    assert fill_groups(info, 2) == [1, 3]
    assert fill_groups(info, 4) == [1, 3, 4, 0]
    assert fill_groups(torch.tensor([False, False]), 2) == [0, 1]


def test_k3_is_capped_where_the_policy_fell_far_below_the_reference():
    logp = torch.tensor([-30.0, -2.0, -1.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0, -1.0])
    k3 = k3_kl(logp, ref)
    assert k3[0].item() == 10.0  # exp(29) - 29 - 1 without the cap
    assert math.isclose(k3[1].item(), math.exp(1.0) - 2.0, rel_tol=1e-6) and k3[2].item() == 0.0
    k3.sum().backward()
    assert logp.grad[0].item() == 0.0 and logp.grad[1].item() != 0.0  # a capped position sends no gradient
