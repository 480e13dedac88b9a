"""Thought heads: how the last hidden state ``h_t`` becomes the next latent input ``z_{t+1}``.

- ``HiddenHead`` (CODI, Shen et al. 2025): ``z = P(h)``, ``P = Linear, GELU, Linear, LayerNorm``.
- ``SoftHead`` (soft thinking): ``p = softmax(lm_head(h) / T)`` over the top-k support ``S``;
  ``z = sum_i y_i E[S_i]`` with ``y`` the policy's weights (``y = p`` when
  deterministic), optionally then ``P``.

Both also decide when thinking stops: the LM head's distribution at a latent position says ``<eot>``
(greedy: it is the argmax; soft head: the argmax of the sampled ``y`` is ``<eot>``, an exact categorical
sample under Gumbel-softmax). A head is stored in ``LatentReasoner.heads["thought"]`` and round-trips through
checkpoints via ``to_config``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rl_latent.model.gelu import GELU

HEAD_NAME = "thought"


class Projection(nn.Module):
    """CODI's projection ``P(h) = LayerNorm(W2 GELU(W1 h + b1) + b2)``."""

    def __init__(self, d_model: int, d_hidden: int | None = None) -> None:
        super().__init__()
        d_hidden = d_hidden or d_model
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.act = GELU()
        self.fc2 = nn.Linear(d_hidden, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(self.fc2(self.act(self.fc1(h))))


class HiddenHead(nn.Module):
    """``z = P(h)``: a deterministic continuous thought (CODI). RL samples ``z ~ N(P(h), s^2 I)``."""

    kind = "hidden"

    def __init__(self, d_model: int, d_hidden: int | None = None) -> None:
        super().__init__()
        self.d_model, self.d_hidden = d_model, d_hidden
        self.proj = Projection(d_model, d_hidden)

    def to_config(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "d_hidden": self.d_hidden}

    def mean(self, h: Tensor) -> Tensor:
        """The policy parameter of a hidden thought: ``P(h)`` (``[..., d]``)."""
        return self.proj(h)

    def embed(self, action: Tensor, **_: Any) -> Tensor:
        """The latent input is the action itself."""
        return action


class SoftHead(nn.Module):
    """``z = sum_i y_i E[S_i]`` over the top-``k`` support of the LM head (then ``P`` when ``project``).

    ``residual``: ``z = sum_i y_i E[S_i] + R(h)`` with ``R = Linear, GELU, Linear`` (last layer
    zero-initialised, so training starts from pure soft thoughts). ``y`` stays the explorable,
    exactly-scored action (a distribution over candidate intermediate values); ``R(h)`` is a deterministic
    channel for what a single value cannot say (where in the problem the step is). The trajectory stores
    ``R(h)`` so replay rebuilds ``z`` exactly.
    """

    kind = "soft"

    def __init__(
        self,
        d_model: int,
        k: int = 8,
        temperature: float = 1.0,
        project: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.k, self.temperature = d_model, k, temperature
        self.project, self.residual = project, residual
        self.proj = Projection(d_model) if project else None
        self.res = None
        if residual:
            self.res = nn.Sequential(nn.Linear(d_model, d_model), GELU(), nn.Linear(d_model, d_model))
            nn.init.zeros_(self.res[2].weight)
            nn.init.zeros_(self.res[2].bias)

    def to_config(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "k": self.k,
            "temperature": self.temperature,
            "project": self.project,
            "residual": self.residual,
        }

    def support(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(ids [..., k], logits at ids / temperature [..., k])`` in fp32, greedy token first."""
        k = min(self.k, logits.shape[-1])
        sub, ids = torch.topk(logits.float(), k, dim=-1)
        return ids, sub / self.temperature

    def residual_of(self, h: Tensor) -> Tensor | None:
        """``R(h)``, or None without the residual channel."""
        return self.res(h) if self.res is not None else None

    def embed(
        self, action: Tensor, ids: Tensor, embedding: nn.Embedding, residual: Tensor | None = None
    ) -> Tensor:
        """``z = sum_i exp(x_i) E[S_i]`` (+ ``residual``) for a log-space action ``x`` (``y = exp(x)``)."""
        e = embedding(ids)  # [..., k, d]
        y = action.exp().to(e.dtype)
        z = (y.unsqueeze(-1) * e).sum(-2)
        z = self.proj(z) if self.proj is not None else z
        return z if residual is None else z + residual.to(z.dtype)


def build_head(
    kind: str,
    d_model: int,
    k: int = 8,
    temperature: float = 1.0,
    project: bool = False,
    residual: bool = False,
):
    """A fresh head of ``kind`` (``hidden`` or ``soft``)."""
    if kind == "hidden":
        return HiddenHead(d_model)
    if kind == "soft":
        return SoftHead(d_model, k=k, temperature=temperature, project=project, residual=residual)
    raise ValueError(f"unknown thought head {kind!r}; expected 'hidden' or 'soft'")
