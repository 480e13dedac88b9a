"""System-1.5 shortcuts (Wang et al., 2025): routers and adapters that let a position leave the stack early.

Per chosen layer l (``layers``; exiting *at* l means blocks l..L-1 are not run) there is a router
``w_l = sigmoid(MLP(x_l))`` reading the block's input ``x_l`` and an adapter ``g_l`` whose output ``s_l``
estimates the top of the stack (the state the final norm and LM head read):

    depth shortcut:  s_l = g_l(x_{l,t})
    step shortcut:   s_l = g_l(x_{l,t}) + g'_l(x_{l,t-1})   (the previous position's state at the same layer)

The step shortcut applies to latent positions (``step_positions="latent"``, the paper's: a latent step
reuses the previous step's state) or to every generated position (``"all"``): the ``<eot>`` position then
reads the last thought, which holds the answer long before the ``<eot>`` position's own blocks find it.

One recurrence serves training (soft ``w``) and inference (hard ``w = 1[w_l > lambda]``). ``p`` is the state
of the path still computing (``p_0 = x_0``); routers and adapters read it:

    S_0 = 0, E_0 = 0, c_0 = 1;  at a router layer:  S <- S + c w s_l,  E <- E + c w p_l,  c <- c (1 - w)
    u_l = E + c p_l;   p_{l+1} = f_l(u_l)       (f_l is decoder block l; it caches keys/values of u_l)
    top = S + c p_L

``c`` is the probability the position is still computing, so block l runs with probability ``c`` and the
expected layer evaluations are ``sum_l c_l`` (the compute penalty of stage 2). With hard decisions a
position that exits at l hands the final norm and LM head its exit state ``s_l``, and every deeper block
caches keys and values of its state at the exit layer, ``p_l`` (the blocks' own norms and K/V projections
without the rest of the blocks, ``DecoderAdapter.cache_kv``): CALM's state propagation (Schuster et al.,
2022). The exit state would be the wrong thing to copy: it says what the position outputs (for the last
thought, "stop"), while later positions attend to what it holds (the final step's result). With
``lambda >= 1`` nothing exits and the result equals the full model's exactly (no arithmetic on the full
path). Choices where the paper is silent are in docs/decisions.md. The recurrence runs in
:mod:`rl_latent.model.shortcut_decode` (a decoded position, a replayed sequence); this module holds the
routers and adapters and what a decode asks of them (lambda, static depth, FLOPs, the sampled exit's scale).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rl_latent.model.gelu import GELU, gelu

SHORTCUT_NAME = "shortcuts"


class Router(nn.Module):
    """``w = sigmoid(W2 GELU(W1 LN(x)) + b + o)``; the bias starts at -4 so a new router almost never exits.
    ``o`` is the position's offset (:meth:`Shortcuts.offsets`, every router's in one matmul):
    ``b_lat 1[latent] + v . c``. ``b_lat`` (``latent_bias=True``) separates thought inputs from tokens: at
    the first layer a router reads only the input, and a soft thought over numbers looks like a number token.
    ``v`` (``read_prev=True``, starts at 0) reads ``c``, the previous position's final state layer-normed
    (:meth:`Shortcuts.context`): the last thought's top state says the next position only decides "stop",
    which no router can see in that position's own input (a linear probe: 1.0 vs 0.66, docs/decisions.md)."""

    def __init__(
        self, d_model: int, d_hidden: int, latent_bias: bool = False, read_prev: bool = False
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, d_hidden), GELU(), nn.Linear(d_hidden, 1)
        )
        nn.init.constant_(self.net[-1].bias, -4.0)
        # 1-d, not a scalar: DeepSpeed broadcasts parameters as bytes, which a 0-d tensor cannot be viewed as
        self.latent_bias = nn.Parameter(torch.zeros(1)) if latent_bias else None
        self.prev = nn.Linear(d_model, 1, bias=False) if read_prev else None
        if self.prev is not None:
            nn.init.zeros_(self.prev.weight)

    def forward(self, x: Tensor, offset: Tensor | None = None) -> Tensor:
        """The logit ``z`` (``w = sigmoid(z)``) of states ``x`` [..., d], plus ``offset`` [...] if given."""
        # functional calls: the router runs at every layer of every decoded position, and at batch 1 the
        # per-module call overhead is most of its cost
        ln, fc1, _, fc2 = self.net
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        z = F.linear(gelu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias).squeeze(-1)
        return z if offset is None else z + offset


class Adapter(nn.Module):
    """A low-rank residual MLP ``x + U GELU(D LN(x))`` (``residual=False``: no ``x``); U starts at 0."""

    def __init__(self, d_model: int, rank: int, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.norm = nn.LayerNorm(d_model)
        self.down = nn.Linear(d_model, rank)
        self.up = nn.Linear(rank, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        y = F.linear(gelu(F.linear(h, self.down.weight, self.down.bias)), self.up.weight, self.up.bias)
        return x + y if self.residual else y


class Shortcuts(nn.Module):
    """Routers and adapters at ``layers`` of an ``n_layer`` model, stored as
    ``LatentReasoner.heads["shortcuts"]`` (it round-trips through checkpoints with ``to_config``). The
    defaults of ``step_positions``, ``router_latent`` and ``router_prev`` are those of checkpoints saved
    before they existed; stage 2's (``ShortcutConfig``) are ``"all"``, True and True."""

    kind = SHORTCUT_NAME

    def __init__(
        self, d_model: int, n_layer: int, layers: list[int], rank: int = 32, router_hidden: int = 32,
        step: bool = True, step_positions: str = "latent", router_latent: bool = False,
        router_prev: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if step_positions not in ("latent", "all"):
            raise ValueError(f"step_positions={step_positions!r}: 'latent' or 'all'")
        bad = [li for li in layers if not 0 <= li < n_layer]
        if bad or not layers:
            raise ValueError(f"shortcut layers {layers} must be a non-empty subset of 0..{n_layer - 1}")
        self.d_model, self.n_layer, self.rank, self.router_hidden = d_model, n_layer, rank, router_hidden
        self.layers, self.step, self.step_positions = sorted(set(layers)), step, step_positions
        self.router_latent, self.router_prev = router_latent, router_prev
        self.routers = nn.ModuleDict(
            {str(li): Router(d_model, router_hidden, router_latent, router_prev) for li in self.layers}
        )
        self.adapters = nn.ModuleDict({str(li): Adapter(d_model, rank) for li in self.layers})
        self.step_adapters = nn.ModuleDict(
            {str(li): Adapter(d_model, rank, residual=False) for li in self.layers} if step else {}
        )
        self._flops: dict[str, float] | None = None

    def to_config(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "n_layer": self.n_layer, "layers": self.layers, "rank": self.rank,
                "router_hidden": self.router_hidden, "step": self.step,
                "step_positions": self.step_positions, "router_latent": self.router_latent,
                "router_prev": self.router_prev}  # fmt: skip

    def context(self, hidden: Tensor | None) -> Tensor | None:
        """What routers read of the previous position: its final normed state (``StepOut.hidden``; the
        prompt's for the first generated position), layer-normed without weights; None when routers do not
        read it."""
        if not self.router_prev or hidden is None:
            return None
        return F.layer_norm(hidden, hidden.shape[-1:])

    def offsets(self, latent: Tensor | None, hidden: Tensor | None) -> Tensor | None:
        """Every router's offset ``o_k = b_lat,k 1[latent] + v_k . context(hidden)`` [..., R] (router k sits
        at ``layers[k]``), in one matmul for all routers; None when the routers have neither term or neither
        input is given. ``latent`` [...] marks thought inputs, ``hidden`` [..., d] is the previous position's
        final normed state."""
        routers = list(self.routers.values())
        off = None
        if self.router_latent and latent is not None:
            bias = torch.cat([r.latent_bias for r in routers])
            off = latent[..., None].to(bias.dtype) * bias
        c = self.context(hidden)
        if c is not None:
            read = F.linear(c, torch.cat([r.prev.weight for r in routers]))
            off = read if off is None else off + read
        return off

    def exit_state(self, li: int, x: Tensor, prev: Tensor | None, latent: Tensor | None) -> Tensor:
        """``s_l``: the adapter's estimate of the top state, plus the step term of ``prev`` on every row
        (``step_positions="all"``) or on the ``latent`` rows (any shape); none without ``prev`` or
        ``latent``."""
        s = self.adapters[str(li)](x)
        if not self.step or prev is None or latent is None:
            return s
        if self.step_positions == "all":  # no mask to build and multiply by: this runs at every decoded exit
            return s + self.step_adapters[str(li)](prev)
        if not bool(latent.any()):
            return s
        return s + latent[..., None].to(s.dtype) * self.step_adapters[str(li)](prev)

    def flops(self) -> dict[str, float]:
        """Forward FLOPs (2 per weight) of one router and one exit state (adapter + step adapter); the shapes
        are fixed, so counted once (every decoded sample asks)."""
        if self._flops is None:
            count = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
            l0 = str(self.layers[0])
            adapter = count(self.adapters[l0]) + (count(self.step_adapters[l0]) if self.step else 0)
            self._flops = {"router": 2.0 * count(self.routers[l0]), "exit": 2.0 * adapter}
        return self._flops


def has_shortcuts(model: Any) -> bool:
    return SHORTCUT_NAME in getattr(model, "heads", {})


def shortcut_lambda(model: Any, lam: float | None = None) -> float | None:
    """The exit threshold to decode with: ``lam``, else the model's own (``latent_extra["shortcut"]["lam"]``);
    None (the plain forward) for a model without shortcuts or a threshold nothing can pass."""
    if not has_shortcuts(model):
        return None
    lam = float(model.latent_extra.get("shortcut", {}).get("lam", 0.5) if lam is None else lam)
    return (
        None if lam >= 1.0 else lam
    )  # sigmoid(.) > 1 never holds: the plain forward is the same computation


def shortcut_exit_at(model: Any, exit_at: int | None = None) -> int | None:
    """The static depth to decode with: ``exit_at``, else the model's own
    (``latent_extra["shortcut"]["exit_at"]``, normally unset). Every generated position then exits at that
    router layer whatever its router says (blocks 0..exit_at-1 run): the static-depth baseline of early-exit
    work, and a probe of how well each adapter stands in for the blocks above it. None: the routers decide."""
    if not has_shortcuts(model):
        return None
    if exit_at is None:
        exit_at = model.latent_extra.get("shortcut", {}).get("exit_at")
    if exit_at is None:
        return None
    layers = model.heads[SHORTCUT_NAME].layers
    if int(exit_at) not in layers:
        raise ValueError(f"exit_at={exit_at}: the model's shortcuts exit only at router layers {layers}")
    return int(exit_at)


def shortcut_flops(model: Any, blocks_run: list[int], routed: bool = True) -> float:
    """FLOPs beside the blocks for positions that ran ``blocks_run[j]`` blocks: every router reached (when
    ``routed``: a static depth runs none), one exit state when the position exited, and the key/value
    projections of its copied state in each skipped block."""
    sc = model.heads[SHORTCUT_NAME]
    per = sc.flops()
    # read once: a transformers config's attribute lookup is slow, and this runs for every sample
    cfg = model.config
    L, d = model.num_layers, cfg.hidden_size
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    kv_dim = d // cfg.num_attention_heads * n_kv
    total = 0.0
    for r in blocks_run:
        total += routed * per["router"] * sum(1 for li in sc.layers if li <= r and li < L)
        if r < L:
            total += per["exit"] + (L - r) * 2.0 * 2 * d * kv_dim
    return total


def exit_scale(lam: float | None, temperature: float = 1.0) -> tuple[float, float]:
    """``(c, T)`` of the sampled exit policy ``Bernoulli(sigmoid((z - c) / T))`` (``z``: a router's logit),
    with ``c = logit(lambda)``: the policy's mode is the greedy decode's ``w > lambda``, and ``T < 1`` keeps
    samples near it (only routers with ``|z - c| <~ T`` explore). ``lambda`` None (nothing exits greedily)
    centres on 1/2. ``(0, 1)`` is ``Bernoulli(w)``, Wang et al.'s router output read as a probability."""
    if not temperature > 0:
        raise ValueError(f"exit temperature {temperature} must be > 0")
    lam = 0.5 if lam is None else min(max(float(lam), 1e-6), 1 - 1e-6)
    return math.log(lam / (1 - lam)), float(temperature)


__all__ = ["SHORTCUT_NAME", "Adapter", "Router", "Shortcuts", "exit_scale", "has_shortcuts",
           "shortcut_exit_at", "shortcut_flops", "shortcut_lambda"]  # fmt: skip
