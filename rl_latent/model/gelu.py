"""Exact GELU as ``x Phi(x)`` (Hendrycks & Gimpel, 2016), the activation of our heads, routers and adapters.

``F.gelu`` computes the same function, but ATen hands an fp32 CPU tensor to oneDNN's eltwise primitive, whose
setup costs ~8 us a call at these sizes against ~1 us for a native elementwise kernel (set
``torch.backends.mkldnn.enabled = False`` to see it); a System-1.5 decode makes ~26 such calls a problem.
``x * ndtr(x)`` is two native kernels. Elsewhere (CUDA, other dtypes) ``F.gelu`` is one kernel and stays.
The two agree within ~1e-6 (both within 1.2e-6 of an fp64 GELU on [-12, 12]), their gradients within 3e-7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gelu(x: Tensor) -> Tensor:
    """``x Phi(x)``, ``Phi`` the standard normal CDF."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return x * torch.special.ndtr(x)
    return F.gelu(x)


class GELU(nn.Module):
    """:func:`gelu` as a module (no parameters: a drop-in for ``nn.GELU`` in saved models)."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x)
