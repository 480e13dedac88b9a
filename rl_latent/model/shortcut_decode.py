"""Positions through a stack with System-1.5 shortcuts: the recurrence of :mod:`rl_latent.model.shortcuts`.

- :func:`shortcut_step`: one new position on a KV cache; training's soft blend, or hard exits (one row
  decided in Python, a batch with masks), at a threshold, imposed, or sampled (the RL action of
  ``latent.learn_exits``).
- :func:`shortcut_forward`: a whole sequence with every position's exit layer given: the trainer's replay of a
  decode, with the log-probs of its exits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rl_latent.model.shortcuts import SHORTCUT_NAME, Shortcuts


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


__all__ = ["StepOut", "shortcut_forward", "shortcut_step"]
