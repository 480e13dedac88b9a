"""Run a Hugging Face causal LM one decoder block at a time.

System-1.5 shortcuts need to act *between* decoder blocks (a router reads h_{l-1}, an adapter may replace the
block's output), which HF's fused ``model.forward`` does not allow. This module re-creates the forward pass
as a loop over the model's own blocks, reusing the model's own pieces (embeddings, rotary embedding module,
``masking_utils.create_causal_mask``, the decoder layers, the final norm and ``lm_head``), so the result
matches ``lm(...)`` to float rounding, KV cache and left padding included.

Architecture-specific glue is a small per-family adapter (:class:`DecoderAdapter`), looked up by
``config.model_type``. Add a family with :func:`register_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

LayerHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``layer_hook(layer_idx, hidden_in, hidden_out) -> hidden_out``: may replace a block's output."""


@dataclass
class LayerwiseOutput:
    """What :func:`layerwise_forward` returns.

    ``hidden_states`` has ``num_layers + 1`` entries like HF's ``output_hidden_states``: the input of block 0,
    then each block's output (after ``layer_hook``), the last one with the final norm applied.
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    past_key_values: Cache | None


@dataclass
class LayerContext:
    """Per-call state shared by every block: masks (one per layer), positions, rotary embeddings, cache."""

    masks: list[Any]
    position_ids: torch.Tensor
    past_key_values: Cache | None
    use_cache: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class KVStack:
    """Every block's key/value projection, stacked (see :meth:`DecoderAdapter.cache_kv`): a block's keys and
    values of a normalised state ``n`` are ``(n * gain[i] + shift[i]) @ weight[i].T + bias[i]``."""

    gain: torch.Tensor  # [L, d] the block's norm weight
    shift: torch.Tensor | None  # [L, d] its norm bias (LayerNorm)
    weight: torch.Tensor  # [L, 2 kv, d] key rows, then value rows
    bias: torch.Tensor | None  # [L, 2 kv]
    key_norm: torch.Tensor | None  # [L, head_dim] a per-head RMSNorm on keys (Qwen3)
    kv_dim: int
    head_dim: int
    eps: float


class DecoderAdapter:
    """The few architecture-specific pieces of a decoder-only LM; subclasses fill them in.

    The adapter keeps only a reference to the LM and looks modules up on every call, so it stays valid after
    ``resize_token_embeddings`` swaps the embedding modules.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        self.lm = lm
        self._kv: tuple[tuple, KVStack] | None = None
        self._kv_params: list[nn.Parameter] | None = None
        self._rotary_table: tuple | None = None  # (key, cos [n, head_dim], sin): see LlamaLikeAdapter._rotary

    @property
    def base(self) -> nn.Module:
        """The decoder stack without the LM head (``lm.model`` / ``lm.transformer``), peft or not."""
        lm = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return lm.base_model

    @property
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (what HF calls ``inputs_embeds``), before any position embedding."""
        return self.lm.get_input_embeddings()(input_ids)

    def begin(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past_key_values: Cache | None,
        use_cache: bool,
    ) -> tuple[torch.Tensor, LayerContext]:
        """Return the input of block 0 and the context every block needs."""
        raise NotImplementedError

    def run_layer(self, idx: int, hidden: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Apply decoder block ``idx`` (it appends its keys/values to ``ctx.past_key_values``)."""
        raise NotImplementedError

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden)

    def cache_kv(self, first: int, hidden: torch.Tensor, ctx: LayerContext) -> None:
        """Cache keys and values of ``hidden`` [B, q, d] in every block from ``first`` on, without running the
        rest of those blocks (a System-1.5 exit: deeper blocks keep the position's state for later positions
        to attend to). What each block caches equals what the block itself would (its own norm, projections,
        rotary embedding); the blocks share one normalisation and run as one batched matmul, on projections
        stacked once per weight version: at batch 1 the per-block calls cost more than the arithmetic."""
        cache, n_blocks = ctx.past_key_values, len(self.layers)
        if cache is None or first >= n_blocks:
            return
        st = self._kv_stack()
        x = self._normalize(hidden, st.eps)[:, None]  # [B, 1, q, d]
        h = x * st.gain[first:, None, :] + (0 if st.shift is None else st.shift[first:, None, :])
        kv = torch.matmul(h, st.weight[first:].transpose(1, 2))  # [B, nb, q, 2 kv]
        if st.bias is not None:
            kv = kv + st.bias[first:, None, :]
        k, v = kv.split(st.kv_dim, dim=-1)
        shape = (*k.shape[:-1], -1, st.head_dim)
        k, v = k.reshape(shape).transpose(2, 3), v.reshape(shape).transpose(2, 3)  # [B, nb, heads, q, hd]
        if st.key_norm is not None:
            k = self._normalize(k, st.eps) * st.key_norm[first:, None, None, :]
        k = self._position_keys(k, ctx)
        for i in range(first, n_blocks):
            cache.update(k[:, i - first], v[:, i - first], i)

    def _kv_stack(self) -> KVStack:
        """The stacked projections, rebuilt when a weight changed (an optimizer step bumps its version)."""
        if self._kv_params is None:  # the modules stay; what they hold may change (keyed below)
            self._kv_params = [
                p for i in range(len(self.layers)) for m in self._kv_modules(i) for p in m.parameters()
            ]
        params = self._kv_params
        key = tuple((p.data_ptr(), p._version) for p in params)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if grad or self._kv is None or self._kv[0] != key:
            wrapped = [type(m).__name__ for i in range(len(self.layers)) for m in self._kv_modules(i)
                       if hasattr(m, "base_layer")]  # fmt: skip
            if wrapped:  # a peft (LoRA) layer: its weight is the base's alone
                raise NotImplementedError(
                    f"cache_kv reads the key/value projections' weights, wrapped here ({wrapped[0]}): "
                    "merge the adapter first (peft's merge_and_unload; checkpoints are saved merged)"
                )
            with torch.set_grad_enabled(grad):  # a stack built under autograd is not kept: it holds the graph
                st = self._build_kv_stack()
            if grad:
                return st
            self._kv = (key, st)
        return self._kv[1]

    def _kv_modules(self, idx: int) -> list[nn.Module]:
        """The modules of block ``idx`` that make its keys and values (their weights key the stack)."""
        raise NotImplementedError

    def _build_kv_stack(self) -> KVStack:
        raise NotImplementedError

    @staticmethod
    def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
        """The block norm without its weight (RMSNorm, in fp32 as HF computes it)."""
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def _position_keys(self, k: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        return k

    def _causal_masks(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past_key_values: Cache | None,
    ) -> list[Any]:
        """One mask per layer, built by transformers' own mask functions (full or sliding, per layer type).

        One new position with nothing padded in full attention may attend to everything: no mask (None, which
        transformers' SDPA masks return there too and what an eager one of zeros adds up to), without building
        one: at batch 1 the mask functions cost about what a block does."""
        config = self.lm.config
        layer_types = getattr(config, "layer_types", None)
        if layer_types is None:
            kind = (
                "sliding_attention"
                if getattr(config, "sliding_window", None) is not None
                else "full_attention"
            )
            layer_types = [kind] * config.num_hidden_layers
        if (
            inputs_embeds.shape[1] == 1
            and "flex" not in str(getattr(config, "_attn_implementation", ""))
            and all(kind == "full_attention" for kind in layer_types)
            and (attention_mask is None or bool(attention_mask.all()))
        ):
            return [None] * len(layer_types)
        kwargs = dict(
            config=config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        built: dict[str, Any] = {}
        for kind in set(layer_types):
            if kind == "full_attention":
                built[kind] = create_causal_mask(**kwargs)
            elif kind == "sliding_attention":
                built[kind] = create_sliding_window_causal_mask(**kwargs)
            else:
                raise NotImplementedError(
                    f"layer type {kind!r} of model_type {config.model_type!r} "
                    "is not supported by layerwise_forward"
                )
        return [built[kind] for kind in layer_types]


class LlamaLikeAdapter(DecoderAdapter):
    """Llama, Qwen2/3, Mistral, SmolLM: ``embed_tokens``, ``layers``, ``rotary_emb``, ``norm``."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.layers

    def begin(self, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache):
        masks = self._causal_masks(inputs_embeds, attention_mask, position_ids, past_key_values)
        rotary = self._rotary(inputs_embeds, position_ids)
        ctx = LayerContext(masks, position_ids, past_key_values, use_cache, {"position_embeddings": rotary})
        return inputs_embeds, ctx

    def run_layer(self, idx, hidden, ctx):
        return self.layers[idx](
            hidden,
            attention_mask=ctx.masks[idx],
            position_embeddings=ctx.extra["position_embeddings"],
            position_ids=ctx.position_ids,
            past_key_values=ctx.past_key_values,
            use_cache=ctx.use_cache,
        )

    def final_norm(self, hidden):
        return self.base.norm(hidden)

    def _rotary(self, inputs_embeds, position_ids):
        """The rotary module's ``(cos, sin)`` at ``position_ids``. A decode step (one new position per row, no
        autograd) reads them from a table the module computed once for positions 0..n-1: it computes every
        position elementwise, on its own, so a row of the table is what a call for that position returns
        (tested bit for bit). Rotary types that change their frequencies with the length (dynamic, longrope)
        always call the module. At batch 1 the module's call costs about what a router does."""
        rot = self.base.rotary_emb
        kind = getattr(rot, "rope_type", None)
        static = isinstance(kind, str) and "dynamic" not in kind and kind != "longrope"
        static = static and hasattr(rot, "inv_freq")
        if inputs_embeds.shape[1] != 1 or torch.is_grad_enabled() or not static:
            return rot(inputs_embeds, position_ids)
        need = int(position_ids.max()) + 1
        key = (rot.inv_freq.data_ptr(), rot.inv_freq._version, inputs_embeds.dtype, inputs_embeds.device)
        table = self._rotary_table
        if table is None or table[0] != key or len(table[1]) < need:
            n = max(need, 2 * (0 if table is None else len(table[1])),
                    getattr(self.lm.config, "max_position_embeddings", 0) or 0)  # fmt: skip
            cos, sin = rot(inputs_embeds[:1], torch.arange(n, device=inputs_embeds.device)[None])
            self._rotary_table = table = (key, cos[0], sin[0])
        return F.embedding(position_ids, table[1]), F.embedding(position_ids, table[2])

    def _kv_modules(self, idx):
        attn = self.layers[idx].self_attn
        mods = [self.layers[idx].input_layernorm, attn.k_proj, attn.v_proj, getattr(attn, "k_norm", None)]
        return [m for m in mods if m is not None]

    def _build_kv_stack(self):
        blocks = list(self.layers)
        attn = [b.self_attn for b in blocks]
        eps = {b.input_layernorm.variance_epsilon for b in blocks} | {
            a.k_norm.variance_epsilon for a in attn if hasattr(a, "k_norm")
        }
        if len(eps) != 1:
            raise NotImplementedError(f"cache_kv needs one norm epsilon across blocks, got {sorted(eps)}")
        has_bias = attn[0].k_proj.bias is not None
        return KVStack(
            gain=torch.stack([b.input_layernorm.weight for b in blocks]),
            shift=None,
            weight=torch.stack([torch.cat([a.k_proj.weight, a.v_proj.weight]) for a in attn]),
            bias=torch.stack([torch.cat([a.k_proj.bias, a.v_proj.bias]) for a in attn]) if has_bias else None,
            key_norm=torch.stack([a.k_norm.weight for a in attn]) if hasattr(attn[0], "k_norm") else None,
            kv_dim=attn[0].k_proj.out_features, head_dim=attn[0].head_dim, eps=eps.pop(),
        )  # fmt: skip

    def _position_keys(self, k, ctx):
        from transformers.models.llama.modeling_llama import rotate_half

        cos, sin = (t[:, None, None].to(k.dtype) for t in ctx.extra["position_embeddings"])  # [B,1,1,q,hd]
        return k * cos + rotate_half(k) * sin


class GPT2Adapter(DecoderAdapter):
    """GPT-2: learned position embeddings ``wpe`` added to token embeddings, blocks ``h``, norm ``ln_f``."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.h

    def begin(self, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache):
        if self.lm.config.add_cross_attention:
            raise NotImplementedError("layerwise_forward does not support GPT-2 with cross-attention")
        base = self.base
        hidden = base.drop(inputs_embeds + base.wpe(position_ids).to(inputs_embeds.device))
        masks = self._causal_masks(inputs_embeds, attention_mask, position_ids, past_key_values)
        return hidden, LayerContext(masks, position_ids, past_key_values, use_cache)

    def run_layer(self, idx, hidden, ctx):
        base = self.base
        cache = None if (base.gradient_checkpointing and base.training) else ctx.past_key_values
        return self.layers[idx](
            hidden,
            past_key_values=cache,
            attention_mask=ctx.masks[idx],
            use_cache=ctx.use_cache,
            position_ids=ctx.position_ids,
        )

    def final_norm(self, hidden):
        return self.base.ln_f(hidden)

    def _kv_modules(self, idx):
        return [self.layers[idx].ln_1, self.layers[idx].attn.c_attn]

    def _build_kv_stack(self):
        blocks, d = list(self.layers), self.lm.config.hidden_size
        eps = {b.ln_1.eps for b in blocks}
        if len(eps) != 1:
            raise NotImplementedError(f"cache_kv needs one norm epsilon across blocks, got {sorted(eps)}")
        return KVStack(  # Conv1D: y = x @ weight + bias, the key and value columns after the query's
            gain=torch.stack([b.ln_1.weight for b in blocks]),
            shift=torch.stack([b.ln_1.bias for b in blocks]),
            weight=torch.stack([b.attn.c_attn.weight[:, d:].T for b in blocks]),
            bias=torch.stack([b.attn.c_attn.bias[d:] for b in blocks]),
            key_norm=None, kv_dim=d, head_dim=blocks[0].attn.head_dim, eps=eps.pop(),
        )  # fmt: skip

    @staticmethod
    def _normalize(x, eps):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps)


_ADAPTERS: dict[str, type[DecoderAdapter]] = {
    "gpt2": GPT2Adapter,
    "llama": LlamaLikeAdapter,
    "mistral": LlamaLikeAdapter,
    "qwen2": LlamaLikeAdapter,
    "qwen3": LlamaLikeAdapter,
}


def register_adapter(model_type: str, adapter_cls: type[DecoderAdapter]) -> None:
    """Teach :func:`get_adapter` a new ``config.model_type`` (e.g. a Llama-like family not listed here)."""
    _ADAPTERS[model_type] = adapter_cls


def get_adapter(lm: PreTrainedModel) -> DecoderAdapter:
    """The adapter for ``lm``'s family; families are listed explicitly because a structural guess would
    silently miss per-family details (e.g. Gemma's embedding scaling)."""
    model_type = lm.config.model_type
    if model_type not in _ADAPTERS:
        raise NotImplementedError(
            f"layerwise_forward has no adapter for model_type {model_type!r} "
            f"(supported: {sorted(_ADAPTERS)}); add one with rl_latent.model.layerwise.register_adapter"
        )
    return _ADAPTERS[model_type](lm)


def default_position_ids(
    seq_len: int, past_key_values: Cache | None, device: torch.device | str
) -> torch.Tensor:
    """HF's default when no positions are given: ``arange(seq_len) + past_length``, shape (1, seq_len)."""
    past = past_key_values.get_seq_length() if past_key_values is not None else 0
    return (torch.arange(seq_len, device=device) + past).unsqueeze(0)


def layerwise_forward(
    lm: PreTrainedModel,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Cache | None = None,
    use_cache: bool = False,
    layer_hook: LayerHook | None = None,
    adapter: DecoderAdapter | None = None,
) -> LayerwiseOutput:
    """``lm(...)`` computed block by block, with an optional hook after each block.

    Semantics follow HF: ``attention_mask`` is 2D over past + current tokens; ``position_ids`` default to
    ``arange + past length`` (pass them explicitly for left-padded batches); a ``DynamicCache`` is created
    when ``use_cache`` and none is given. ``layer_hook(i, hidden_in, hidden_out)`` may return a replacement
    for block ``i``'s output; the keys/values block ``i`` cached come from ``hidden_in`` and are kept.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("layerwise_forward needs exactly one of input_ids or inputs_embeds")
    adapter = adapter or get_adapter(lm)
    if inputs_embeds is None:
        inputs_embeds = adapter.embed(input_ids)
    if use_cache and past_key_values is None:
        past_key_values = DynamicCache(config=lm.config)
    if position_ids is None:
        position_ids = default_position_ids(inputs_embeds.shape[1], past_key_values, inputs_embeds.device)

    hidden, ctx = adapter.begin(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache)
    states = [hidden]
    for idx in range(len(adapter.layers)):
        out = adapter.run_layer(idx, hidden, ctx)
        if layer_hook is not None:
            out = layer_hook(idx, hidden, out)
        hidden = out
        states.append(hidden)
    states[-1] = adapter.final_norm(hidden)
    logits = adapter.lm_head(states[-1])
    return LayerwiseOutput(logits=logits, hidden_states=tuple(states), past_key_values=past_key_values)
