"""Latent-step policies: the distributions a thought head samples its next latent from.

A ``soft`` thought is a weight vector ``y`` on the simplex over a top-k support ``S`` of the vocabulary
(``z = sum_i y_i E[S_i]``); a ``hidden`` thought is a vector ``z`` in R^d. RL needs, for each policy, a
sample and its exact log-density, recomputable later from new logits gathered at the stored ids (PPO/GRPO
ratios). Everything here is a pure function of tensors and runs in fp32 (fp64 is kept for gradchecks).

Common interface (``LatentPolicy``):

- ``sample(params, generator=None, noise=None) -> (action, log_prob)``; the action is ``x = log y`` for the
  simplex policies (so no weight underflows to an unrecoverable 0) and ``z`` for the Gaussian;
- ``noise(params, generator)``: the random draws one ``sample`` consumes, where they have a fixed shape (the
  Gumbel uniforms, the Gaussian eps), else None (the Dirichlet's rejection sampler). A batch whose rows each
  own a generator draws them row by row and transforms them in one batched ``sample(params, noise=...)``;
- ``log_prob(params, action)``: exact log-density, differentiable w.r.t. ``params``;
- ``entropy(params)``: closed form where one exists, else a documented proxy;
- ``deterministic``: True when the action is a function of the params (log_prob is then 0).

For the simplex policies ``params`` are the raw logits at the support (``sub_logits``, shape [..., k]);
for the Gaussian it is the mean ``mu`` (shape [..., d]).

Density conventions: the Gumbel-softmax (Concrete) log-density is reported in log-ratio coordinates
``v_i = x_i - x_n`` (i < n), the Dirichlet one in the simplex coordinates ``y_1..y_{n-1}``. The two
differ from each other only by ``sum_i x_i`` (the Jacobian ``prod_i y_i`` of ``v -> y``), a term that
depends on the sample only, so ratios between two parameter settings of one policy are the same either way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "DirichletSoft",
    "GaussianHidden",
    "GumbelSoftmax",
    "LatentPolicy",
    "VanillaSoft",
    "POLICIES",
    "get_policy",
    "support",
]


def _compute_dtype(t: Tensor) -> Tensor:
    """Half/bfloat16 -> fp32 (sampling at tau = 0.1 is unsafe below fp32); fp32/fp64 are kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def support(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k support ``S`` of ``logits [..., V]``: returns ``(ids [..., k], logits at S [..., k])`` in fp32.

    Sorted by decreasing logit, so ``ids[..., 0]`` is the greedy token.
    """
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"support size k={k} must be in [1, vocab size {logits.shape[-1]}]")
    sub, ids = torch.topk(_compute_dtype(logits), k, dim=-1)
    return ids, sub


def _uniform(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) strictly inside (0, 1), so ``log u`` and ``log(-log u)`` are finite."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    fi = torch.finfo(like.dtype)
    return u.clamp_(min=fi.tiny, max=1.0 - fi.eps)


class LatentPolicy:
    """Base class: see the module docstring for the interface."""

    name: str = "base"
    deterministic: bool = False
    fixed_noise: bool = False  # True where ``noise`` returns the draws (a fixed-shape tensor)

    def sample(
        self, params: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def noise(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """The draws ``sample(params, generator)`` makes, as one tensor; None where their number varies."""
        return None

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def weights(action: Tensor) -> Tensor:
        """Simplex weights ``y = exp(x)`` of a log-space action (simplex policies only)."""
        return action.exp()


class VanillaSoft(LatentPolicy):
    """Deterministic soft thinking: ``y = softmax(a / T)``; used in distillation and greedy eval."""

    name = "vanilla"
    deterministic = True

    def __init__(self, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"VanillaSoft temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def sample(
        self, params: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x = torch.log_softmax(_compute_dtype(params) / self.temperature, dim=-1)
        return x, torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        """A point mass: log-probability 0 by convention (it contributes nothing to a policy gradient)."""
        return torch.zeros(action.shape[:-1], dtype=_compute_dtype(params).dtype, device=params.device)

    def entropy(self, params: Tensor) -> Tensor:
        return torch.zeros(params.shape[:-1], dtype=_compute_dtype(params).dtype, device=params.device)


class GumbelSoftmax(LatentPolicy):
    """Gumbel-softmax / Concrete(p, tau) over the support, ``p = softmax(logits / temperature)``.

    Sample (Maddison et al. 2017, "The Concrete Distribution", ICLR; Jang et al. 2017):
    ``x = log y = log_softmax((a + g) / tau)``, ``g_i ~ Gumbel(0, 1)`` i.i.d., ``a = log p``. ``x`` comes
    from log_softmax, never ``log(softmax(.))``: at tau = 0.1 an fp32 weight underflows to 0 in ~2% of
    samples and its log would be -inf.

    ``argmax_is_exact_sample``: ``argmax_i y_i = argmax_i (a_i + g_i)`` (tau > 0 keeps the order), which
    is an exact Categorical(p) sample (Gumbel-max trick), so "stop thinking" may be decided as
    ``argmax y == <eot>`` with no extra log-prob term.

    Density: the ExpConcrete log-density (Maddison et al. 2017, appendix C), with n = k:

        log q(x) = lgamma(n) + (n-1) log tau + sum_i (a_i - tau x_i) - n logsumexp_i(a_i - tau x_i)

    This is the exact density of the n-1 log-ratio coordinates ``v_i = x_i - x_n``: it equals the
    Concrete density of ``y_1..y_{n-1}`` (which has ``a_i - (tau+1) x_i`` in the sum) times the Jacobian
    ``|dy/dv| = prod_{i=1}^n y_i``. It is invariant to ``a -> a + c``, so raw logits work as ``a`` when
    temperature is 1. For n = 1 it is 0 (a point mass). Logits must be finite (no masked -inf entries).
    """

    name = "gumbel"
    argmax_is_exact_sample = True
    fixed_noise = True

    def __init__(self, tau: float = 1.0, temperature: float = 1.0) -> None:
        if tau <= 0 or temperature <= 0:
            raise ValueError(f"GumbelSoftmax needs tau > 0 and temperature > 0, got {tau}, {temperature}")
        self.tau = tau
        self.temperature = temperature

    def _log_p(self, params: Tensor) -> Tensor:
        return torch.log_softmax(_compute_dtype(params) / self.temperature, dim=-1)

    def noise(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The uniforms behind the Gumbel noise ``g = -log(-log u)``."""
        p = _compute_dtype(params)
        return _uniform(p.shape, p, generator)

    def sample(
        self, params: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        a = self._log_p(params.detach())
        u = self.noise(params, generator) if noise is None else noise
        g = -torch.log(-torch.log(u))
        x = torch.log_softmax((a + g) / self.tau, dim=-1)
        return x, self.log_prob(params.detach(), x)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        a = self._log_p(params)
        n = a.shape[-1]
        t = a - self.tau * action.to(a.dtype)
        const = math.lgamma(n) + (n - 1) * math.log(self.tau)
        return const + t.sum(-1) - n * torch.logsumexp(t, dim=-1)

    def entropy(self, params: Tensor) -> Tensor:
        """No closed form exists for the Concrete entropy; returns the categorical entropy of p as a proxy.

        ``H(p) = -sum_i p_i log p_i`` is the entropy of ``argmax y`` (an exact Categorical(p) sample).
        """
        a = self._log_p(params)
        return -(a.exp() * a).sum(-1)


def _log_gamma_sample(alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """``log G`` with ``G ~ Gamma(alpha, 1)``, finite even when G underflows fp32 (tiny alpha).

    Marsaglia & Tsang (2000, ACM TOMS 26(3)) rejection sampler for ``G' ~ Gamma(alpha + 1)`` (shape >= 1)
    and the boost ``G = G' U^(1/alpha)`` (ibid., section 6): ``log G = log G' + log(U) / alpha``.
    Written here because ``torch._standard_gamma`` takes no generator. Acceptance is > 95% per round.
    """
    d = alpha + 1.0 - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    log_g = torch.empty_like(alpha)
    todo = torch.ones_like(alpha, dtype=torch.bool)
    while bool(todo.any()):
        z = torch.randn(alpha.shape, dtype=alpha.dtype, device=alpha.device, generator=generator)
        u = _uniform(alpha.shape, alpha, generator)
        v = (1.0 + c * z) ** 3
        ok = todo & (v > 0)
        log_v = torch.log(v.clamp(min=torch.finfo(alpha.dtype).tiny))
        ok = ok & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
        log_g = torch.where(ok, torch.log(d) + log_v, log_g)
        todo = todo & ~ok
    return log_g + torch.log(_uniform(alpha.shape, alpha, generator)) / alpha


class DirichletSoft(LatentPolicy):
    """``y ~ Dirichlet(gamma * p + alpha_0)``, ``p = softmax(logits / temperature)``; action ``x = log y``.

    ``alpha_0`` (``floor``, default 0) keeps every concentration away from 0: with ``alpha_i -> 0`` a sample's
    ``x_i ~ log(U) / alpha_i`` runs to -1e14 and so does the density, which no fp32 ratio survives. The
    sampler passes ``latent.dirichlet_floor`` (0.05).

    Sampled as normalised Gamma variates in log space, ``x_i = log G_i - logsumexp_j log G_j``
    (``G_i ~ Gamma(gamma p_i)``), so no weight is lost to fp32 underflow. Log-density over the n-1 free
    coordinates ``y_1..y_{n-1}`` (the convention of ``torch.distributions.Dirichlet.log_prob``), in closed
    form on ``x`` so a zero ``exp(x)`` needs no clamping:

        log q(y) = lgamma(sum_i alpha_i) - sum_i lgamma(alpha_i) + sum_i (alpha_i - 1) x_i,  alpha = gamma p

    Not shift invariant in ``x`` as a density, but invariant to ``logits -> logits + c`` (through p).
    Entropy is the closed-form Dirichlet entropy (of ``y``).
    """

    name = "dirichlet"

    def __init__(self, concentration: float = 1.0, temperature: float = 1.0, floor: float = 0.0) -> None:
        if concentration <= 0 or temperature <= 0 or floor < 0:
            raise ValueError(
                f"DirichletSoft needs concentration, temperature > 0 and floor >= 0, got {concentration}, "
                f"{temperature}, {floor}"
            )
        self.concentration = concentration
        self.temperature = temperature
        self.floor = floor

    def _alpha(self, params: Tensor) -> Tensor:
        return (
            self.concentration * torch.softmax(_compute_dtype(params) / self.temperature, dim=-1) + self.floor
        )

    def sample(
        self, params: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if noise is not None:
            raise ValueError(
                "DirichletSoft draws a varying number of numbers (rejection sampling): no noise="
            )
        # alpha >= tiny: a p_i that underflows to 0 would make the Gamma shape 0 (degenerate).
        alpha = self._alpha(params.detach()).clamp(min=torch.finfo(_compute_dtype(params).dtype).tiny)
        log_g = _log_gamma_sample(alpha, generator)
        x = log_g - torch.logsumexp(log_g, dim=-1, keepdim=True)
        return x, self.log_prob(params.detach(), x)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        alpha = self._alpha(params)
        x = action.to(alpha.dtype)
        return torch.lgamma(alpha.sum(-1)) - torch.lgamma(alpha).sum(-1) + ((alpha - 1.0) * x).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        return torch.distributions.Dirichlet(self._alpha(params)).entropy()


class GaussianHidden(LatentPolicy):
    """``z ~ N(mu, std^2 I)`` over a hidden vector ``mu [..., d]`` (the CODI projection output).

    ``log q(z) = -sum_i (z_i - mu_i)^2 / (2 std^2) - d log std - d/2 log(2 pi)``;
    ``H = d/2 log(2 pi e std^2)``.
    """

    name = "gaussian"
    fixed_noise = True

    def __init__(self, std: float = 0.1) -> None:
        if std <= 0:
            raise ValueError(f"GaussianHidden std must be > 0, got {std}")
        self.std = std

    def noise(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The standard normal ``eps`` of ``z = mu + std eps``."""
        mu = _compute_dtype(params)
        return torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)

    def sample(
        self, params: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        mu = _compute_dtype(params.detach())
        eps = self.noise(mu, generator) if noise is None else noise
        z = mu + self.std * eps
        return z, self.log_prob(mu, z)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        mu = _compute_dtype(params)
        d = mu.shape[-1]
        r = (action.to(mu.dtype) - mu) / self.std
        return -0.5 * (r * r).sum(-1) - d * (math.log(self.std) + 0.5 * math.log(2 * math.pi))

    def entropy(self, params: Tensor) -> Tensor:
        d = params.shape[-1]
        h = 0.5 * d * math.log(2 * math.pi * math.e * self.std**2)
        return torch.full(params.shape[:-1], h, dtype=_compute_dtype(params).dtype, device=params.device)

    @staticmethod
    def weights(action: Tensor) -> Tensor:
        raise TypeError("GaussianHidden acts on hidden vectors: it has no simplex weights")


POLICIES: dict[str, type[LatentPolicy]] = {
    "vanilla": VanillaSoft,
    "gumbel": GumbelSoftmax,
    "dirichlet": DirichletSoft,
    "gaussian": GaussianHidden,
}


def get_policy(name: str, **kwargs: float) -> LatentPolicy:
    """Build a policy by name, e.g. ``get_policy("gumbel", tau=0.5)``."""
    if name not in POLICIES:
        raise ValueError(f"unknown latent policy {name!r}; valid names: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)
