"""Our GELU is the exact GELU (x Phi(x)), value and gradient, and adds nothing to a saved model."""

import torch
import torch.nn.functional as F

from rl_latent.model.gelu import GELU, gelu
from rl_latent.model.heads import SoftHead
from rl_latent.model.shortcuts import Router


def test_gelu_is_the_exact_gelu_in_value_and_gradient():
    x = torch.linspace(-12, 12, 200_001, requires_grad=True)
    exact = x.detach().double() * 0.5 * (1 + torch.erf(x.detach().double() / 2**0.5))
    y = gelu(x)
    assert (y.double() - exact).abs().max() < 1.5e-6
    torch.testing.assert_close(y, F.gelu(x), atol=2e-6, rtol=0)
    (g,) = torch.autograd.grad(y.sum(), x)
    (ref,) = torch.autograd.grad(F.gelu(x).sum(), x)
    torch.testing.assert_close(g, ref, atol=1e-6, rtol=0)
    x64 = torch.randn(100, dtype=torch.float64)  # other dtypes (and devices) take F.gelu itself
    assert torch.equal(gelu(x64), F.gelu(x64))


def test_the_module_has_no_state_so_saved_models_keep_their_keys():
    assert not list(GELU().parameters()) and not GELU().state_dict()
    keys = lambda prefix, idx: {f"{prefix}.{i}.{p}" for i in idx for p in ("weight", "bias")}  # noqa: E731
    assert set(Router(16, 8).state_dict()) == keys("net", (0, 1, 3))
    assert set(SoftHead(16, residual=True).state_dict()) == keys("res", (0, 2))
