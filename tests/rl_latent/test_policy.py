"""Exactness and numerical-safety checks for the latent-step policies (rl_latent/policy.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rl_latent.policy import (
    DirichletSoft,
    GaussianHidden,
    GumbelSoftmax,
    VanillaSoft,
    get_policy,
    support,
)

D64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_support_is_topk_in_fp32():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]], dtype=torch.bfloat16)
    ids, sub = support(logits, 3)
    assert ids.tolist() == [[1, 3, 4]]
    assert sub.dtype == torch.float32
    assert torch.equal(sub, logits.float().gather(-1, ids))
    with pytest.raises(ValueError, match="k=6"):
        support(logits, 6)


def test_registry_builds_and_rejects_unknown_names():
    assert isinstance(get_policy("gumbel", tau=0.5), GumbelSoftmax)
    assert get_policy("gumbel", tau=0.5).tau == 0.5
    assert isinstance(get_policy("vanilla"), VanillaSoft)
    assert isinstance(get_policy("dirichlet", concentration=3.0), DirichletSoft)
    assert isinstance(get_policy("gaussian", std=0.2), GaussianHidden)
    with pytest.raises(ValueError, match="dirichlet.*gaussian.*gumbel.*vanilla"):
        get_policy("concrete")


def test_vanilla_is_deterministic_softmax():
    logits = torch.tensor([[1.0, 0.0, -2.0]])
    pol = VanillaSoft(temperature=0.5)
    x, lp = pol.sample(logits)
    torch.testing.assert_close(x.exp(), torch.softmax(logits / 0.5, -1))
    assert lp.shape == (1,) and float(lp) == 0.0 and float(pol.log_prob(logits, x)) == 0.0


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
def test_concrete_k2_matches_logistic_closed_form(tau):
    # n = 2: u = x1 - x2 = logit(y1) = (a1 - a2 + L) / tau with L = g1 - g2 ~ Logistic(0, 1), so
    # p(u) = tau f(tau u - l), f(L) = e^-L / (1 + e^-L)^2, l = a1 - a2; and p(y1) = p(u) / (y1 y2).
    logits = torch.tensor([0.7, -0.4], dtype=D64)
    pol = GumbelSoftmax(tau=tau)
    x, lp_sample = pol.sample(logits.expand(1000, 2), generator=_gen(1))
    u = x[:, 0] - x[:, 1]
    big_l = tau * u - (logits[0] - logits[1])
    expected = math.log(tau) - big_l - 2 * F.softplus(-big_l)
    torch.testing.assert_close(pol.log_prob(logits, x), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lp_sample, expected, rtol=1e-9, atol=1e-9)
    # The Concrete density of y1 (Maddison et al. 2017, eq. in section 3.2) for n = 2.
    y = x.exp()
    alpha = torch.softmax(logits, -1)
    concrete_y = (
        math.log(tau)
        + alpha.log().sum()
        - (tau + 1) * x.sum(-1)
        - 2 * torch.log(alpha[0] * y[:, 0] ** -tau + alpha[1] * y[:, 1] ** -tau)
    )
    ok = (y > 1e-100).all(-1)  # y ** -tau overflows fp64 for extreme samples at small tau
    torch.testing.assert_close((expected - x.sum(-1))[ok], concrete_y[ok], rtol=1e-8, atol=1e-8)


def _trapz_1d(f: torch.Tensor, h: float) -> float:
    return float(h * (f.sum() - 0.5 * (f[0] + f[-1])))


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
def test_concrete_k2_integrates_to_one_in_log_ratio_coordinates(tau):
    pol = GumbelSoftmax(tau=tau)
    logits = torch.tensor([1.3, -0.2], dtype=D64)
    half = 40.0 / tau  # logistic tails: e^-(tau |u|) ~ e^-40 beyond the grid
    u = torch.linspace(-half, half, 400_001, dtype=D64)
    x = torch.stack([-F.softplus(-u), -F.softplus(u)], -1)  # log sigmoid(u), log sigmoid(-u)
    assert _trapz_1d(pol.log_prob(logits, x).exp(), 2 * half / 400_000) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_concrete_k2_integrates_to_one_over_y1(tau):
    # The density of y1 is exp(log_prob - sum x) (Jacobian prod y); bounded on [0, 1] for tau >= 1.
    pol = GumbelSoftmax(tau=tau)
    logits = torch.tensor([0.5, -1.0], dtype=D64)
    y1 = torch.linspace(0, 1, 200_001, dtype=D64)[1:-1]
    x = torch.stack([y1.log(), torch.log1p(-y1)], -1)
    dens = (pol.log_prob(logits, x) - x.sum(-1)).exp()
    assert _trapz_1d(dens, 1 / 200_000) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_concrete_k3_integrates_to_one_in_log_ratio_coordinates(tau):
    pol = GumbelSoftmax(tau=tau)
    logits = torch.tensor([0.3, -0.7, 1.1], dtype=D64)
    half, m = 36.0 / tau, 1201
    g = torch.linspace(-half, half, m, dtype=D64)
    v1, v2 = torch.meshgrid(g, g, indexing="ij")
    v = torch.stack([v1, v2, torch.zeros_like(v1)], -1)
    x = v - torch.logsumexp(v, -1, keepdim=True)
    h = 2 * half / (m - 1)
    assert float(pol.log_prob(logits, x).exp().sum() * h * h) == pytest.approx(1.0, abs=1e-2)


def test_concrete_k3_integrates_to_one_over_the_simplex():
    pol = GumbelSoftmax(tau=2.0)
    logits = torch.tensor([0.3, -0.7, 1.1], dtype=D64)
    m = 1000
    c = (torch.arange(m, dtype=D64) + 0.5) / m
    y1, y2 = torch.meshgrid(c, c, indexing="ij")
    inside = y1 + y2 < 1
    y = torch.stack([y1[inside], y2[inside], 1 - y1[inside] - y2[inside]], -1)
    dens = (pol.log_prob(logits, y.log()) - y.log().sum(-1)).exp()
    assert float(dens.sum() / m**2) == pytest.approx(1.0, abs=1e-2)


def test_gumbel_argmax_is_a_categorical_sample():
    logits = torch.tensor([1.0, 0.2, -0.5, 0.9, -2.0, 0.0])
    pol = GumbelSoftmax(tau=0.3, temperature=0.8)
    n = 200_000
    x, _ = pol.sample(logits.expand(n, -1), generator=_gen(2))
    freq = torch.bincount(x.argmax(-1), minlength=6).double() / n
    p = torch.softmax(logits.double() / 0.8, -1)
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4 * sigma).all(), (freq, p)


@pytest.mark.parametrize("pol", [GumbelSoftmax(tau=0.3), DirichletSoft(concentration=4.0)])
def test_log_prob_is_invariant_to_logit_shift(pol):
    logits = torch.randn(16, 8, generator=_gen(3), dtype=D64)
    x, _ = pol.sample(logits, generator=_gen(4))
    torch.testing.assert_close(pol.log_prob(logits + 7.5, x), pol.log_prob(logits, x), rtol=0, atol=1e-10)


def test_gumbel_k1_is_a_point_mass():
    pol = GumbelSoftmax(tau=0.1)
    x, lp = pol.sample(torch.tensor([[3.0], [-1.0]]), generator=_gen(5))
    assert torch.equal(x, torch.zeros(2, 1)) and torch.equal(lp, torch.zeros(2))


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0, 2.0])
def test_gumbel_samples_and_log_probs_are_finite(tau):
    # 1e6 samples per tau, spread over k in {1, 2, 8, 64}, fp32, with wide logit spreads.
    pol = GumbelSoftmax(tau=tau)
    gen = _gen(6)
    for k, n in [(1, 250_000), (2, 250_000), (8, 250_000), (64, 250_000)]:
        for batch in range(0, n, 125_000):
            logits = torch.randn(125_000, k, generator=gen) * (1 + 9 * (batch > 0))
            x, lp = pol.sample(logits, generator=gen)
            assert x.dtype == torch.float32 and torch.isfinite(x).all() and (x <= 0).all()
            assert torch.isfinite(lp).all() and torch.isfinite(pol.log_prob(logits, x)).all()
            if k > 1:  # weights that underflow to 0 still have finite log-weights
                assert torch.allclose(torch.logsumexp(x, -1), torch.zeros(()), atol=1e-5)


def test_log_prob_gradients_match_finite_differences():
    gen = _gen(7)
    logits = torch.randn(3, 4, dtype=D64, generator=gen, requires_grad=True)
    for pol in [GumbelSoftmax(tau=0.5, temperature=1.3), DirichletSoft(concentration=2.0)]:
        x, _ = pol.sample(logits, generator=gen)
        assert torch.autograd.gradcheck(lambda lg, p=pol, a=x: p.log_prob(lg, a), (logits,))
    mu = torch.randn(3, 5, dtype=D64, generator=gen, requires_grad=True)
    z, _ = GaussianHidden(std=0.3).sample(mu, generator=gen)
    assert torch.autograd.gradcheck(lambda m: GaussianHidden(std=0.3).log_prob(m, z), (mu,))


@pytest.mark.parametrize("gamma", [0.5, 5.0, 50.0])
def test_dirichlet_log_prob_matches_torch(gamma):
    logits = torch.randn(64, 6, generator=_gen(8), dtype=D64)
    pol = DirichletSoft(concentration=gamma)
    x, lp = pol.sample(logits, generator=_gen(9))
    ref = torch.distributions.Dirichlet(gamma * torch.softmax(logits, -1))
    ok = (x > -600).all(-1)  # torch needs exp(x) > 0 in fp64
    assert ok.sum() > 32
    torch.testing.assert_close(lp[ok], ref.log_prob(x.exp())[ok], rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(pol.entropy(logits), ref.entropy())


@pytest.mark.parametrize("gamma", [0.3, 5.0])
def test_dirichlet_samples_have_the_right_moments(gamma):
    # E[y] = p, Var[y_i] = p_i (1 - p_i) / (gamma + 1); checks the log-space Gamma sampler (incl. alpha < 1).
    logits = torch.tensor([0.5, -1.0, 0.0, 2.0])
    pol = DirichletSoft(concentration=gamma)
    n = 100_000
    x, lp = pol.sample(logits.expand(n, -1), generator=_gen(10))
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    y = x.double().exp()
    p = torch.softmax(logits.double(), -1)
    var = p * (1 - p) / (gamma + 1)
    assert ((y.mean(0) - p).abs() <= 4 * (var / n).sqrt()).all()
    torch.testing.assert_close(y.var(0), var, rtol=0.05, atol=0)


def test_gaussian_matches_torch_normal():
    mu = torch.randn(8, 16, generator=_gen(11))
    pol = GaussianHidden(std=0.25)
    z, lp = pol.sample(mu, generator=_gen(12))
    ref = torch.distributions.Normal(mu, 0.25)
    torch.testing.assert_close(lp, ref.log_prob(z).sum(-1))
    torch.testing.assert_close(pol.log_prob(mu, z), ref.log_prob(z).sum(-1))
    torch.testing.assert_close(pol.entropy(mu), ref.entropy().sum(-1))
    assert float((z - mu).std()) == pytest.approx(0.25, rel=0.05)


def test_gumbel_entropy_proxy_is_categorical_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    ref = torch.distributions.Categorical(logits=logits / 0.7).entropy()
    torch.testing.assert_close(GumbelSoftmax(tau=0.1, temperature=0.7).entropy(logits), ref)


def test_dirichlet_floor_is_added_to_every_concentration_and_bounds_the_samples():
    logits = torch.tensor([[8.0, 0.0, -8.0, -12.0]], dtype=D64).expand(256, -1)
    pol = DirichletSoft(concentration=2.0, floor=0.05)
    x, lp = pol.sample(logits, generator=_gen(11))
    ref = torch.distributions.Dirichlet(2.0 * torch.softmax(logits, -1) + 0.05)
    torch.testing.assert_close(lp, ref.log_prob(x.exp()), rtol=1e-9, atol=1e-8)
    # without the floor, alpha ~ 1e-9 puts log-weights near -1e9; with it they stay within fp32's reach
    assert x.min() > -1e4
    assert DirichletSoft(concentration=2.0).sample(logits, generator=_gen(11))[0].min() < -1e5
