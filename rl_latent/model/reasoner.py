"""``LatentReasoner``: the one model every recipe trains (CODI, System-1.5, GRPO/PPO).

It wraps any HF causal LM with what latent reasoning needs on top: the ``<bot>``/``<eot>`` markers that open
and close the latent phase, a ``heads`` dict for thought heads added by later stages, a block-by-block forward
for shortcuts, and one-call checkpoints (HF directory + ``latent_heads.safetensors`` +
``latent_config.json``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from rl_latent.model.build import (
    BOT_TOKEN,
    EOT_TOKEN,
    add_latent_tokens,
    build_from_config,
    load_lm,
    resize_for_tokenizer,
    set_special_ids,
    tiny_config,
    token_id,
)
from rl_latent.model.layerwise import (
    DecoderAdapter,
    LayerHook,
    LayerwiseOutput,
    get_adapter,
    layerwise_forward,
)

LATENT_CONFIG = "latent_config.json"
LATENT_HEADS = "latent_heads.safetensors"
FORMAT_VERSION = 1


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch: ``clamp(cumsum(mask) - 1, min=0)`` along the sequence.

    The first real token of every row gets position 0, whatever its padding; pads get 0 (they are masked).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class LatentReasoner(nn.Module):
    """A causal LM plus latent-reasoning markers and heads.

    Heads stored in ``heads`` must be rebuildable on load: each needs a ``to_config() -> dict`` method
    returning JSON-serialisable keyword arguments of its own constructor. ``latent_extra`` is a free JSON dict
    later stages may use to persist settings (e.g. head type, number of latent steps); it round-trips through
    checkpoints.
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        bot_token: str = BOT_TOKEN,
        eot_token: str = EOT_TOKEN,
    ) -> None:
        super().__init__()
        added = add_latent_tokens(tokenizer, bot_token, eot_token)
        resize_for_tokenizer(lm, tokenizer, added)
        set_special_ids(lm.config, tokenizer)
        if lm.generation_config is not None:
            lm.generation_config.pad_token_id = tokenizer.pad_token_id
        self.lm = lm
        self.tokenizer = tokenizer
        self.bot_token, self.eot_token = bot_token, eot_token
        self.bot_id = token_id(tokenizer, bot_token)
        self.eot_id = token_id(tokenizer, eot_token)
        if self.bot_id == self.eot_id:
            raise ValueError(f"bot token {bot_token!r} and eot token {eot_token!r} share id {self.bot_id}")
        self.heads = nn.ModuleDict()
        self.latent_extra: dict[str, Any] = {}
        self._adapter: DecoderAdapter | None = None
        self._n_params: dict[tuple, int] = {}

    # ----------------------------------------------------------------------------------------------- build
    @classmethod
    def from_config(
        cls,
        arch: str,
        tokenizer: PreTrainedTokenizerBase,
        n_layer: int = 4,
        n_embd: int = 128,
        n_head: int = 4,
        n_kv_head: int | None = None,
        intermediate_size: int | None = None,
        max_positions: int = 512,
        seed: int = 0,
    ) -> LatentReasoner:
        """A small randomly initialised model of family ``arch`` ("gpt2", "llama", "qwen2", "mistral")."""
        add_latent_tokens(tokenizer)
        config = tiny_config(
            arch, tokenizer, n_layer, n_embd, n_head, n_kv_head, intermediate_size, max_positions
        )
        return cls(build_from_config(config, seed=seed), tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        gguf_file: str | Path | None = None,
        dtype: torch.dtype | str | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> LatentReasoner:
        """Load a HF name, a local HF directory, a GGUF file, or a directory written by
        :meth:`save_pretrained` (then heads and ``latent_extra`` are restored too)."""
        lm, tok = load_lm(name_or_path, gguf_file=gguf_file, dtype=dtype, tokenizer=tokenizer)
        meta_path = Path(name_or_path) / LATENT_CONFIG
        if gguf_file is not None or not meta_path.is_file():
            return cls(lm, tok)
        meta = json.loads(meta_path.read_text())
        for key in ("bot_token", "eot_token", "bot_id", "eot_id", "heads"):
            if key not in meta:
                raise KeyError(f"{meta_path}: missing key {key!r}")
        model = cls(lm, tok, meta["bot_token"], meta["eot_token"])
        if (model.bot_id, model.eot_id) != (meta["bot_id"], meta["eot_id"]):
            raise ValueError(
                f"{meta_path}: bot/eot ids {meta['bot_id']}/{meta['eot_id']} do not match the tokenizer's "
                f"{model.bot_id}/{model.eot_id}"
            )
        model.latent_extra = dict(meta.get("extra", {}))
        model._load_heads(Path(name_or_path), meta["heads"])
        return model

    def _load_heads(self, path: Path, specs: dict[str, dict[str, Any]]) -> None:
        """Rebuild each head from its recorded class and kwargs, then load its weights."""
        if not specs:
            return
        tensors = load_file(str(path / LATENT_HEADS), device=str(self.lm.device))
        for name, spec in specs.items():
            module_name, _, qualname = spec["target"].partition(":")
            try:
                obj: Any = importlib.import_module(module_name)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as err:
                raise ImportError(
                    f"{path / LATENT_CONFIG}: head {name!r}: cannot import {spec['target']!r}"
                ) from err
            head = obj(**spec["kwargs"])
            prefix = f"{name}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            head.load_state_dict(state, strict=True)
            self.heads[name] = head.to(self.lm.device)

    # ------------------------------------------------------------------------------------------------ save
    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write a HF directory (model, tokenizer), ``latent_heads.safetensors``, ``latent_config.json``.

        ``state_dict`` (keys as in ``self.state_dict()``) replaces the live weights, e.g. the full weights
        gathered from ZeRO-3 shards, where the local parameters are empty placeholders."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lm_state = None if state_dict is None else _sub_state(state_dict, "lm.")
        lm = self.lm
        if hasattr(lm, "merge_and_unload"):  # a peft (LoRA) model: export merged weights, keep training live
            if any(p.numel() == 0 for p in lm.parameters()):
                raise NotImplementedError("saving gathered (ZeRO-3) weights of a LoRA model is not supported")
            import copy

            lm, lm_state = copy.deepcopy(lm).merge_and_unload(), None  # live weights == the gathered ones
        lm.save_pretrained(path, state_dict=lm_state)
        self.tokenizer.save_pretrained(path)
        specs: dict[str, dict[str, Any]] = {}
        tensors: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if not callable(getattr(head, "to_config", None)):
                raise TypeError(
                    f"head {name!r} ({type(head).__name__}) needs a to_config() method to be saved"
                )
            cls = type(head)
            specs[name] = {"target": f"{cls.__module__}:{cls.__qualname__}", "kwargs": head.to_config()}
            head_state = head.state_dict() if state_dict is None else _sub_state(state_dict, f"heads.{name}.")
            for key, value in head_state.items():
                tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
        save_file(tensors, str(path / LATENT_HEADS), metadata={"format_version": str(FORMAT_VERSION)})
        meta = {
            "format_version": FORMAT_VERSION,
            "model_type": self.config.model_type,
            "bot_token": self.bot_token,
            "eot_token": self.eot_token,
            "bot_id": self.bot_id,
            "eot_id": self.eot_id,
            "pad_id": self.tokenizer.pad_token_id,
            "heads": specs,
            "extra": self.latent_extra,
        }
        (path / LATENT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")

    # ------------------------------------------------------------------------------------------ properties
    @property
    def config(self) -> PretrainedConfig:
        return self.lm.config

    @property
    def num_layers(self) -> int:
        return self.lm.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def adapter(self) -> DecoderAdapter:
        """Per-family glue used by :meth:`layerwise_forward` (see :mod:`rl_latent.model.layerwise`)."""
        if self._adapter is None:
            self._adapter = get_adapter(self.lm)
        return self._adapter

    def n_params(self, non_embedding: bool = False) -> int:
        """Parameters of the LM (heads excluded); ``non_embedding`` drops token and position embeddings and an
        untied output head, the count that scales per-token FLOPs (~2N, Kaplan et al. 2020). Cached per LM
        and embedding shape (every rollout asks; counting walks every module)."""
        emb, out = self.lm.get_input_embeddings(), self.lm.get_output_embeddings()
        key = (non_embedding, id(self.lm), tuple(emb.weight.shape), None if out is None else id(out.weight))
        if key not in self._n_params:
            total = sum(p.numel() for p in self.lm.parameters())
            if non_embedding:
                embedding = {id(m.weight): m.weight for m in self.lm.modules() if isinstance(m, nn.Embedding)}
                if out is not None:
                    embedding[id(out.weight)] = out.weight
                total -= sum(w.numel() for w in embedding.values())
            self._n_params[key] = total
        return self._n_params[key]

    # ------------------------------------------------------------------------------------------- compute
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (``inputs_embeds``); GPT-2 adds position embeddings later, in the model."""
        return self.lm.get_input_embeddings()(input_ids)

    @staticmethod
    def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """See :func:`position_ids_from_mask`."""
        return position_ids_from_mask(attention_mask)

    @staticmethod
    def _positions(
        attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, q_len: int
    ) -> torch.Tensor | None:
        """Positions from a 2D mask, last ``q_len`` columns (so decode steps with a cache work too)."""
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            return position_ids_from_mask(attention_mask)[:, -q_len:]
        return position_ids

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``lm(...)``, except that missing ``position_ids`` come from a 2D ``attention_mask``."""
        q_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        return self.lm(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=self._positions(attention_mask, position_ids, q_len),
            past_key_values=past_key_values,
            use_cache=use_cache,
            labels=labels,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )

    def layerwise_forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        layer_hook: LayerHook | None = None,
    ) -> LayerwiseOutput:
        """The forward pass one block at a time (see :func:`rl_latent.model.layerwise.layerwise_forward`);
        missing ``position_ids`` come from a 2D ``attention_mask`` as in :meth:`forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("layerwise_forward needs exactly one of input_ids or inputs_embeds")
        q_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        return layerwise_forward(
            self.lm,
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=self._positions(attention_mask, position_ids, q_len),
            past_key_values=past_key_values,
            use_cache=use_cache,
            layer_hook=layer_hook,
            adapter=self.adapter,
        )
