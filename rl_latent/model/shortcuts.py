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
path). Choices where the paper is silent are in docs/decisions.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
            nn.LayerNorm(d_model), nn.Linear(d_model, d_hidden), nn.GELU(), nn.Linear(d_hidden, 1)
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
        z = F.linear(F.gelu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias).squeeze(-1)
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
        y = F.linear(F.gelu(F.linear(h, self.down.weight, self.down.bias)), self.up.weight, self.up.bias)
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


@dataclass
class StepOut:
    """One position through the shortcut stack (``B`` rows)."""

    logits: Tensor  # [B, V] from the LM head on the final (normed) state
    hidden: Tensor  # [B, d] the final normed state (what a thought head reads)
    states: list[Tensor]  # [B, d] x_0 .. x_L (x_L before the final norm): the next latent step's ``prev``
    top: Tensor  # [B, d] x_L before the final norm
    w: dict[int, Tensor] = field(default_factory=dict)  # router outputs (soft) per router layer
    exits: dict[int, Tensor] = field(default_factory=dict)  # s_l per router layer (soft mode)
    paths: dict[int, Tensor] = field(default_factory=dict)  # p_l, the computing path's state (soft mode)
    expected_layers: Tensor | None = None  # [B] sum_l c_l (soft)
    exit_layer: Tensor | None = None  # [B] int: the router layer a row exited at (n_layer: none)
    exit_logp: Tensor | None = None  # [B] log-prob of the sampled exit decisions (zeros unless sampled)

    @property
    def blocks_run(self) -> Tensor | None:
        """[B] int: blocks fully run (hard): an exit at router layer l ran blocks 0..l-1; no exit, all L."""
        return self.exit_layer


def exit_scale(lam: float | None, temperature: float = 1.0) -> tuple[float, float]:
    """``(c, T)`` of the sampled exit policy ``Bernoulli(sigmoid((z - c) / T))`` (``z``: a router's logit),
    with ``c = logit(lambda)``: the policy's mode is the greedy decode's ``w > lambda``, and ``T < 1`` keeps
    samples near it (only routers with ``|z - c| <~ T`` explore). ``lambda`` None (nothing exits greedily)
    centres on 1/2. ``(0, 1)`` is ``Bernoulli(w)``, Wang et al.'s router output read as a probability."""
    if not temperature > 0:
        raise ValueError(f"exit temperature {temperature} must be > 0")
    lam = 0.5 if lam is None else min(max(float(lam), 1e-6), 1 - 1e-6)
    return math.log(lam / (1 - lam)), float(temperature)


def shortcut_step(
    model: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor | None,
    cache: Any,
    *,
    prev: list[Tensor] | None = None,
    latent: Tensor | None = None,
    context: Tensor | None = None,
    lam: float | None = None,
    exits: Tensor | None = None,
    uniforms: Tensor | None = None,
    scale: tuple[float, float] = (0.0, 1.0),
    deferred: list | None = None,
    position_ids: Tensor | None = None,
) -> StepOut:
    """Run one new position (``inputs_embeds`` [B, 1, d]) through the stack with shortcuts, on ``cache``.

    Soft (``lam`` None, ``exits`` None): training's blend, differentiable in the router and adapter weights.
    Hard: a row exits at the first router layer with ``w > lam``; ``exits`` [B] (a router layer per row, or
    n_layer for none) imposes the exit layers instead. ``uniforms`` [B, routers] samples them as RL actions:
    router k exits when ``u_k < q_k``, ``q = sigmoid((z - c) / T)`` with ``(c, T) = scale`` (see
    :func:`exit_scale`; the default is ``q = w``), and ``exit_logp`` sums each row's ``log q`` /
    ``log(1 - q)`` over the routers it reached (fp32, from log-sigmoids). ``prev`` holds the previous
    position's states x_0..x_L, ``context`` [B, d] its final normed state (``StepOut.hidden``; routers with
    ``router_prev`` read it) and ``latent`` [B] marks rows whose input is a latent thought.

    ``deferred`` (a list the caller keeps across the positions of one decode, batch 1 only) postpones an
    exited position's key/value copies (``DecoderAdapter.cache_kv``) until a later position runs a block: a
    position reads the cache only inside the blocks it runs, so copies no later block reads (those of the
    positions after the last one that runs a block) are never made. The cache is complete whenever a block
    runs, not after the last position; pass None (the default) when the cache is read afterwards.

    ``position_ids`` [B, 1] is the new position's index, derived from ``attention_mask`` (past and new
    columns) when not given; a caller that tracks it saves that work, and then may pass ``attention_mask``
    None when no row has padding (every row attends to its whole cache).
    """
    sc = model.heads[SHORTCUT_NAME]
    off = sc.offsets(latent, context)
    ad = model.adapter
    if position_ids is None and attention_mask is None:
        raise ValueError("shortcut_step needs position_ids or an attention_mask to derive them from")
    pos = model.position_ids_from_mask(attention_mask)[:, -1:] if position_ids is None else position_ids
    x, ctx = ad.begin(inputs_embeds, attention_mask, pos, cache, True)
    x = x[:, 0]
    B = x.shape[0]
    hard = lam is not None or exits is not None or uniforms is not None
    if deferred and not (hard and B == 1 and all(m is None for m in ctx.masks)):
        _flush(ad, deferred)  # a batch, or masks built on the cache's length (padding, sliding windows)
        x, ctx = ad.begin(inputs_embeds, attention_mask, pos, cache, True)
        x = x[:, 0]
    if hard and B == 1:
        out = _hard_one(sc, ad, x, ctx, prev, latent, off, lam, exits, uniforms, scale, deferred)
    elif not hard:
        out = _soft(sc, ad, x, ctx, prev, latent, off)
    else:
        out = _hard_batch(sc, ad, x, ctx, prev, latent, off, lam, exits, uniforms, scale)
    out.hidden = ad.final_norm(out.top)
    out.logits = ad.lm_head(out.hidden)
    return out


def _flush(ad: Any, deferred: list) -> None:
    """Make the key/value copies ``shortcut_step`` postponed, in position order."""
    for first, h, ctx in deferred:
        ad.cache_kv(first, h, ctx)
    deferred.clear()


def _router(
    sc: Shortcuts, li: int, x: Tensor, off: Tensor | None, scale: tuple[float, float] | None = None
) -> Tensor:
    """Router logit ``z`` at layer ``li`` (fp32) of states ``x`` [..., d] with their offsets ``off`` [..., R]
    (see ``Shortcuts.offsets``); with ``scale = (c, T)`` the sampled exit's logit ``(z - c) / T``."""
    z = sc.routers[str(li)](x, None if off is None else off[..., sc.layers.index(li)])
    z = z if z.dtype == torch.float32 else z.float()  # a dtype check costs less than a no-op cast
    return z if scale is None else (z - scale[0]) / scale[1]


def _soft(sc, ad, x, ctx, prev, latent, off) -> StepOut:
    """The soft recurrence of the module docstring: every block runs on the computing path's mixture."""
    B, L = x.shape[0], len(ad.layers)
    states = [x]
    p = x  # the computing path's state
    S, E = torch.zeros_like(x), torch.zeros_like(x)
    c = torch.ones(B, dtype=x.dtype, device=x.device)
    ws, ss, ps, expected = {}, {}, {}, torch.zeros(B, dtype=torch.float32, device=x.device)
    for li in range(L):
        if li in sc.layers:
            w = torch.sigmoid(_router(sc, li, p, off)).to(x.dtype)
            s = sc.exit_state(li, p, None if prev is None else prev[li], latent)
            ws[li], ss[li], ps[li] = w, s, p
            S = S + (c * w)[:, None] * s
            E = E + (c * w)[:, None] * p
            c = c * (1 - w)
        expected = expected + c.float()
        p = ad.run_layer(li, (E + c[:, None] * p)[:, None], ctx)[:, 0]
        states.append(S + c[:, None] * p)
    return StepOut(logits=None, hidden=None, states=states, top=states[-1], w=ws, exits=ss, paths=ps,
                   expected_layers=expected)  # fmt: skip


def _hard_batch(sc, ad, x, ctx, prev, latent, off, lam, exits, uniforms, scale) -> StepOut:
    """Hard decisions for a batch: rows leave at their own layers, selected with masks."""
    B, L = x.shape[0], len(ad.layers)
    states = [x]
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    any_done = False  # in Python: at batch 1 per-layer mask arithmetic costs about what a router does
    exit_layer = torch.full((B,), L, dtype=torch.long, device=x.device)
    exit_logp = torch.zeros(B, dtype=torch.float32, device=x.device)
    kv = x  # what deeper blocks cache for a row that has exited: its state at the exit layer
    for li in range(L):
        go, s = None, None
        if li in sc.layers:
            if exits is not None:
                go = exits == li
            else:
                z = _router(sc, li, x, off, None if uniforms is None else scale)
                if uniforms is None:
                    go = torch.sigmoid(z) > lam
                else:
                    go = uniforms[:, sc.layers.index(li)].to(z.device) < torch.sigmoid(z)
                    step_lp = torch.where(go, F.logsigmoid(z), F.logsigmoid(-z))
                    exit_logp = exit_logp + (torch.where(done, 0.0, step_lp) if any_done else step_lp)
            go = go & ~done if any_done else go
            if bool(go.any()):
                s = sc.exit_state(li, x, None if prev is None else prev[li], latent)
            else:
                go = None
        if go is None and not any_done:  # every row runs block l
            x = ad.run_layer(li, x[:, None], ctx)[:, 0]
            states.append(x)
            continue
        computing = ~done if go is None else ~done & ~go
        # block l caches keys/values of every row: a computing or exiting row's state entering it, an
        # exited row's state at its exit layer; its output is kept only for rows still computing
        inp = torch.where(done[:, None], kv, x)
        nobody = not bool(computing.any())
        if nobody:  # every row has left: blocks l.. only cache keys/values, all in one call
            ad.cache_kv(li, inp[:, None], ctx)
        else:
            x = torch.where(computing[:, None], ad.run_layer(li, inp[:, None], ctx)[:, 0], x)
        if go is not None:
            kv = torch.where(go[:, None], x, kv)  # an exiting row did not run block l: x is its input
            x = torch.where(go[:, None], s, x)
            exit_layer = torch.where(go, li, exit_layer)
            done, any_done = done | go, True
        if nobody:
            states.extend([x] * (L - li))
            break
        states.append(x)
    return StepOut(logits=None, hidden=None, states=states, top=x, exit_layer=exit_layer, exit_logp=exit_logp)


def _fp32(v: float) -> float:
    """``v`` rounded to fp32, as ``torch.tensor(v, dtype=torch.float32)`` rounds it (to nearest), without
    making a tensor: the one-row path asks at every decoded position."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _hard_one(sc, ad, x, ctx, prev, latent, off, lam, exits, uniforms, scale, deferred) -> StepOut:
    """:func:`_hard_batch` for one row, decided in Python: the same arithmetic and decisions (compared in
    fp32, as the batched path compares tensors), without the masks and selects, which at batch 1 cost about
    what the blocks do."""
    L = len(ad.layers)
    states = [x]
    exit_at = None if exits is None else int(exits[0])
    lam32 = None if lam is None else _fp32(lam)  # `w > lam` is in fp32
    exit_logp = torch.zeros(1, dtype=torch.float32, device=x.device)
    for li in range(L):
        if li in sc.layers:
            if exit_at is not None:
                go = exit_at == li
            else:
                z = _router(sc, li, x, off, None if uniforms is None else scale)
                if uniforms is None:
                    go = float(torch.sigmoid(z)) > lam32
                else:
                    go = float(uniforms[0, sc.layers.index(li)]) < float(torch.sigmoid(z))
                    exit_logp = exit_logp + F.logsigmoid(z if go else -z)
            if go:
                s = sc.exit_state(li, x, None if prev is None else prev[li], latent)
                if deferred is None:
                    ad.cache_kv(li, x[:, None], ctx)
                else:
                    deferred.append((li, x[:, None], ctx))
                states.extend([s] * (L - li))
                exit_layer = torch.full((1,), li, dtype=torch.long, device=x.device)
                return StepOut(logits=None, hidden=None, states=states, top=s, exit_layer=exit_layer,
                               exit_logp=exit_logp)  # fmt: skip
        if deferred:
            _flush(ad, deferred)
        x = ad.run_layer(li, x[:, None], ctx)[:, 0]
        states.append(x)
    exit_layer = torch.full((1,), L, dtype=torch.long, device=x.device)
    return StepOut(logits=None, hidden=None, states=states, top=x, exit_layer=exit_layer, exit_logp=exit_logp)


def shortcut_forward(
    model: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    exits: Tensor,
    latent: Tensor,
    scale: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor]:
    """A whole sequence with the exit layer of every position given (``exits`` [B, T], n_layer = none): the
    replay of a decode that ran :func:`shortcut_step` position by position. Block l computes keys/values of
    every position's state entering it, an exited position's state at its exit layer (as in decode), and
    keeps its output only where the position still computes; the step shortcut reads position t-1's state
    at the same layer. Returns logits [B, T, V], the final normed state [B, T, d] and the log-prob of the exit
    decisions [B, T] (summed Bernoulli log q / log(1 - q) over the routers each position reached, fp32;
    ``q = sigmoid((z - c) / T)`` with ``(c, T) = scale``, as the decode sampled them).
    The exits are given, so routers are evaluated after the sweep: with ``router_prev`` they read position
    t-1's final state, which the sweep computes last."""
    sc, ad, L = model.heads[SHORTCUT_NAME], model.adapter, model.num_layers
    pos = model.position_ids_from_mask(attention_mask)
    x, ctx = ad.begin(inputs_embeds, attention_mask, pos, None, False)
    done = torch.zeros(exits.shape, dtype=torch.bool, device=x.device)
    kv = x  # an exited position's state at its exit layer (what deeper blocks cache for it)
    read: dict[int, tuple[Tensor, Tensor]] = {}  # per router layer: the state it reads, who had left before
    for li in range(L):
        go = None
        if li in sc.layers:
            read[li] = (x, done)
            go = (exits == li) & ~done
            if bool(go.any()):
                prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # position t-1's state entering block l
                s = sc.exit_state(li, x, prev, latent)
            else:
                go = None
        keep = ~done if go is None else ~done & ~go
        x = torch.where(keep[..., None], ad.run_layer(li, torch.where(done[..., None], kv, x), ctx), x)
        if go is not None:
            kv = torch.where(go[..., None], x, kv)
            x = torch.where(go[..., None], s, x)
            done = done | go
    hidden = ad.final_norm(x)
    off = sc.offsets(latent, torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1))  # reads position t-1's state
    logp = torch.zeros(exits.shape, dtype=torch.float32, device=x.device)
    for li, (xl, gone) in read.items():
        z = _router(sc, li, xl, off, scale)
        logp = logp + torch.where(gone, 0.0, torch.where(exits == li, F.logsigmoid(z), F.logsigmoid(-z)))
    return ad.lm_head(hidden), hidden, logp


__all__ = ["SHORTCUT_NAME", "Adapter", "Router", "Shortcuts", "StepOut", "exit_scale", "has_shortcuts",
           "shortcut_exit_at", "shortcut_forward", "shortcut_step"]  # fmt: skip
