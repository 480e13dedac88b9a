"""Per-sample compute accounting: generated positions, latent steps, layer evaluations, FLOPs, wall time.

Latent reasoning trades tokens for continuous thoughts and System-1.5 shortcuts skip layers, so "how much
compute did this answer cost" is a first-class metric (and a reward term). Counting is analytic, from the
model's shape, so that it is identical on every device and cheap enough to attach to every rollout.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SampleCompute",
    "flops_per_token",
    "generation_compute",
    "summarize",
    "non_embedding_params",
    "SUMMARY_KEYS",
]

SUMMARY_KEYS = ("positions", "latent_steps", "layer_evals", "flops", "wall_ms")


def _nonneg_int(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def flops_per_token(n_params_non_embedding: int, n_layer: int, d_model: int, context: int) -> float:
    """Analytic forward FLOPs for one token attending to ``context`` positions.

    C_forward = 2 N + 2 n_layer n_ctx d_model   (Kaplan et al. 2020, "Scaling Laws for Neural Language
    Models", Table 1, with d_attn = d_model), where N is the non-embedding parameter count: 2 FLOPs per
    weight (multiply-add) plus the attention scores and weighted sum over the n_ctx keys.
    Embedding look-ups, the unembedding and non-matmul ops are not counted, as in the paper.
    """
    n = _nonneg_int("n_params_non_embedding", n_params_non_embedding)
    layers = _nonneg_int("n_layer", n_layer)
    d = _nonneg_int("d_model", d_model)
    ctx = _nonneg_int("context", context)
    return float(2 * n + 2 * layers * ctx * d)


@dataclass
class SampleCompute:
    """Compute spent generating one sample (the prompt's prefill is not counted: it is the same for every
    method given the same prompt)."""

    positions: int  # generated positions: latent steps + generated tokens
    latent_steps: int  # continuous-thought positions among them
    layer_evals: int  # transformer-layer evaluations actually run for the generated positions
    flops: float  # analytic forward FLOPs over the generated positions (Kaplan et al. 2020)
    wall_s: float  # measured wall-clock seconds (0.0 when not measured)


def generation_compute(
    prompt_len: int,
    gen_len: int,
    n_layer: int,
    n_params_non_embedding: int,
    d_model: int,
    latent_steps: int = 0,
    wall_s: float = 0.0,
    layers_per_position: Sequence[int] | None = None,
    extra_flops: float = 0.0,
) -> SampleCompute:
    """Compute for one generated sample of ``latent_steps`` latent positions plus ``gen_len`` tokens.

    Positions are numbered j = 0..P-1 with P = latent_steps + gen_len; position j sits at absolute index
    prompt_len + j and attends to ctx_j = prompt_len + j + 1 keys (itself included). With every layer run:

        flops = sum_j [2 N + 2 n_layer ctx_j d_model]
              = 2 N P + 2 n_layer d_model (P prompt_len + P (P + 1) / 2)

    (Kaplan et al. 2020, Table 1, summed over the growing context.) With shortcuts (System-1.5), position
    j runs only l_j = ``layers_per_position[j]`` layers; the per-layer share of Kaplan's count is
    2 N / n_layer + 2 ctx_j d_model, so flops = sum_j l_j (2 N / n_layer + 2 ctx_j d_model) and
    layer_evals = sum_j l_j (else P n_layer). ``extra_flops`` adds what runs beside the blocks (routers,
    adapters, the key/value projections of an exited token's copied state); it is not a layer evaluation.
    """
    prompt_len = _nonneg_int("prompt_len", prompt_len)
    gen_len = _nonneg_int("gen_len", gen_len)
    n_layer = _nonneg_int("n_layer", n_layer)
    n = _nonneg_int("n_params_non_embedding", n_params_non_embedding)
    d = _nonneg_int("d_model", d_model)
    latent_steps = _nonneg_int("latent_steps", latent_steps)
    if wall_s < 0:
        raise ValueError(f"wall_s must be >= 0, got {wall_s}")
    positions = latent_steps + gen_len
    if layers_per_position is None:
        layer_evals = positions * n_layer
        # integer arithmetic for the sum, so large counts stay exact before the final float
        ctx_sum = positions * prompt_len + positions * (positions + 1) // 2
        flops = float(2 * n * positions + 2 * n_layer * d * ctx_sum)
    else:
        if len(layers_per_position) != positions:
            raise ValueError(
                f"layers_per_position has {len(layers_per_position)} entries but the sample has "
                f"{positions} positions (latent_steps={latent_steps} + gen_len={gen_len})"
            )
        if n_layer == 0:
            raise ValueError("n_layer must be >= 1 when layers_per_position is given")
        layer_evals = 0
        flops = 0.0
        for j, lj in enumerate(layers_per_position):
            lj = _nonneg_int(f"layers_per_position[{j}]", lj)
            if lj > n_layer:
                raise ValueError(f"layers_per_position[{j}]={lj} exceeds n_layer={n_layer}")
            ctx = prompt_len + j + 1
            layer_evals += lj
            flops += lj * (2 * n / n_layer + 2 * ctx * d)
    if extra_flops < 0:
        raise ValueError(f"extra_flops must be >= 0, got {extra_flops}")
    return SampleCompute(
        positions=positions,
        latent_steps=latent_steps,
        layer_evals=layer_evals,
        flops=flops + float(extra_flops),
        wall_s=float(wall_s),
    )


def summarize(samples: Iterable[SampleCompute]) -> dict[str, float]:
    """Means over samples, with stable keys ``positions``, ``latent_steps``, ``layer_evals``, ``flops``,
    ``wall_ms`` (wall time in milliseconds), ready to log under e.g. ``eval/<dataset>/``."""
    items = list(samples)
    if not items:
        raise ValueError("summarize needs at least one SampleCompute")
    for i, s in enumerate(items):
        if not isinstance(s, SampleCompute):
            raise TypeError(f"samples[{i}] is {type(s).__name__}, expected SampleCompute")
    m = len(items)
    return {
        "positions": sum(s.positions for s in items) / m,
        "latent_steps": sum(s.latent_steps for s in items) / m,
        "layer_evals": sum(s.layer_evals for s in items) / m,
        "flops": sum(s.flops for s in items) / m,
        "wall_ms": 1000.0 * sum(s.wall_s for s in items) / m,
    }


def non_embedding_params(model: Any) -> int:
    """Kaplan's N for a torch model: all parameters except token/position embeddings and the unembedding.

    Excludes every ``nn.Embedding`` module's parameters and the output embedding (``lm_head``, whether tied
    or not), counting each shared tensor once. Heads added on top (thought projections, routers,
    adapters) are counted, since they run per position.
    """
    import torch.nn as nn

    excluded: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            excluded.update(id(p) for p in mod.parameters(recurse=False))
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        excluded.update(id(p) for p in out.parameters())
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already de-duplicates shared tensors
        if id(p) in excluded or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
