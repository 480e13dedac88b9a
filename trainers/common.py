"""What every recipe shares: seeding, building the model, encoding text for teacher forcing, batching.

Kept deliberately small: a recipe file (sft.py, codi.py, ...) should read top to bottom as the whole training
path, calling into here only for plumbing that would otherwise be copied between recipes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_latent.config import Config
from rl_latent.data.format import prompt_text, target_text

IGNORE = -100  # label value that cross-entropy skips (prompt tokens, padding)


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last dim, from log-probabilities (exact, not a
    sample estimate); the shared form of the distillation KLs (CODI's exit loss, System-1.5's stage 2)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def train_only_head(model: Any, head: str, part: str | None = None) -> int:
    """Freeze every parameter of ``model`` but those of ``model.heads[head]`` (or of its submodule ``part``);
    returns how many train.

    System-1.5 trains its routers and adapters on a frozen backbone in stage 2, so the full path, and with it
    every position that does not exit, stays the model's; exit RL (``rl.trainable: routers``) trains the
    routers alone, so every state a decode computes stays the model's too and only the depth is learned."""
    if head not in model.heads:
        raise KeyError(f"the model has no {head!r} head (heads: {sorted(model.heads)})")
    module = model.heads[head] if part is None else model.heads[head].get_submodule(part)
    model.requires_grad_(False)
    module.requires_grad_(True)
    return sum(p.numel() for p in module.parameters())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, splits: Any = None):
    """The model a recipe starts from: a previous stage's checkpoint, a pretrained HF model, or a tiny model
    built from a config with the task's own tokenizer (every number one token)."""
    from rl_latent.data.build import task_tokenizer
    from rl_latent.model import LatentReasoner

    if cfg.train.init_from:
        return LatentReasoner.from_pretrained(cfg.train.init_from)
    if cfg.model.name_or_path:
        return LatentReasoner.from_pretrained(cfg.model.name_or_path, gguf_file=cfg.model.gguf_file)
    tok = task_tokenizer(cfg.data, cfg.model.max_number, splits)
    return LatentReasoner.from_config(
        cfg.model.arch,
        tok,
        n_layer=cfg.model.n_layer,
        n_embd=cfg.model.n_embd,
        n_head=cfg.model.n_head,
        max_positions=cfg.model.max_positions,
        seed=cfg.train.seed,
    )


@dataclass
class Encoded:
    """Teacher-forcing rows: token ids and labels (IGNORE on the prompt), unpadded."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    dropped: int  # rows longer than max_len


def encode_sft(rows: Any, tokenizer: Any, mode: str, max_len: int) -> Encoded:
    """prompt + target + <eos>, with the loss on the target and <eos> only."""
    prompts = [prompt_text(r) for r in rows]
    targets = [target_text(r, mode) for r in rows]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    ids, labels, dropped = [], [], 0
    for p, t in zip(p_ids, t_ids):
        seq = p + t + [eos]
        if len(seq) > max_len:
            dropped += 1
            continue
        ids.append(seq)
        labels.append([IGNORE] * len(p) + t + [eos])
    return Encoded(ids, labels, dropped)


def collate(ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a training batch (positions then start at 0 for every row, so no position ids are needed)."""
    n = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), n), pad_id, dtype=torch.long)
    lab = torch.full((len(ids), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "labels": lab, "attention_mask": mask}


def batch_indices(
    n_rows: int, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1
) -> list[int]:
    """Rows of this rank's micro-batch at a global step: a seeded permutation per epoch, sliced by step.

    Stateless on purpose: resuming at step s reads exactly the batches an uninterrupted run would have read.
    """
    global_bs = batch_size * world
    per_epoch = max(1, n_rows // global_bs)
    epoch, offset = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_rows, generator=g)
    start = offset * global_bs + rank * batch_size
    return perm[start : start + batch_size].tolist()


def run_dir(cfg: Config) -> Path:
    path = Path(cfg.train.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resumable_checkpoint(cfg: Config, path: Path) -> Path | None:
    """The run's latest checkpoint, or None; refuses (before anything is written, so a refused run loses
    nothing) to reuse a run dir without ``train.resume``."""
    from trainers.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(path)
    if ckpt is not None and not cfg.train.resume:
        raise FileExistsError(
            f"{path} already holds a run (checkpoint {ckpt.name}); pass train.resume=true to "
            "continue it or choose a new train.output_dir"
        )
    return ckpt


def engine_from_config(
    model: torch.nn.Module,
    cfg: Config,
    *,
    total_steps: int,
    micro_batch_size: int,
    grad_accum: int | None = None,
):
    """The DeepSpeed engine with the config's optimizer, schedule, ZeRO stage and precision."""
    from trainers.engine import build_engine

    return build_engine(
        model,
        lr=cfg.optim.lr,
        total_steps=total_steps,
        micro_batch_size=micro_batch_size,
        grad_accum=cfg.train.grad_accum if grad_accum is None else grad_accum,
        zero_stage=cfg.train.zero_stage,
        weight_decay=cfg.optim.weight_decay,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        warmup_steps=cfg.optim.warmup_steps,
        schedule=cfg.optim.schedule,
        grad_clip=cfg.optim.grad_clip,
        precision=cfg.train.precision,
    )
