"""Supervised fine-tuning: the CoT-SFT and No-CoT baselines.

    cot:    question -> "<<a+b=c>> ... The answer is: 21" <eos>   (loss on everything after the question)
    nocot:  question -> "The answer is: 21" <eos>

The whole path: config -> splits -> model -> token ids (`encode_sft`) -> DeepSpeed engine -> teacher-forced
cross-entropy (`train_step`) -> checkpoints -> greedy evaluation. The loop, checkpoints and evaluation are the
shared `trainers.recipe.Recipe`.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_latent.config import Config
from trainers.common import collate, encode_sft
from trainers.recipe import Recipe, run_recipe_class


class SFTRecipe(Recipe):
    name = "sft"

    def prepare(self) -> str:
        cfg = self.cfg
        self.name = f"sft[{cfg.train.mode}]"
        self.enc = encode_sft(self.splits["train"], self.model.tokenizer, cfg.train.mode, cfg.data.max_len)
        if not self.enc.input_ids:
            raise ValueError(f"no training row fits data.max_len={cfg.data.max_len}")
        return (
            f"{len(self.enc.input_ids)} train rows ({self.enc.dropped} over max_len), mode={cfg.train.mode}"
        )

    def train_step(self) -> dict[str, float]:
        pad = self.model.tokenizer.pad_token_id

        def terms_of(idx: list[int]) -> dict[str, torch.Tensor]:
            batch = collate([self.enc.input_ids[i] for i in idx], [self.enc.labels[i] for i in idx], pad)
            return {"loss": self.engine(**{k: v.to(self.engine.device) for k, v in batch.items()}).loss}

        return self.accumulate(len(self.enc.input_ids), terms_of)


def run(cfg: Config, progress: bool = True) -> dict[str, Any]:
    return run_recipe_class(SFTRecipe, cfg, progress)
