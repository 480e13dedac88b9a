"""The skeleton every supervised recipe shares (torchtune-style setup / train / cleanup).

A recipe subclass says only what differs: how it prepares the model and data (``prepare``) and what one
optimizer step computes (``train_step``). Everything else is here once: the run dir and its refusal to be
reused without ``train.resume``, the DeepSpeed engine, W&B/JSONL tracking, time budgets, periodic
evaluation, atomic checkpoints with exact resume, the exported model and the final summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rl_latent.config import Config, dump, to_dict
from rl_latent.data.build import dataset_name, load_splits
from rl_latent.evaluate import evaluate
from rl_latent.tracking import Tracker
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.common import (
    batch_indices,
    build_model,
    engine_from_config,
    resumable_checkpoint,
    run_dir,
    seed_everything,
)
from trainers.engine import init_distributed


class Recipe:
    name = "recipe"

    def __init__(self, cfg: Config, progress: bool = True):
        self.cfg = cfg
        self.progress = progress

    # ------------------------------------------------------------------ what a recipe defines
    def prepare(self) -> str:
        """Adapt ``self.model`` and encode ``self.splits``; return a one-line description for the log."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One optimizer step at ``self.step`` (all micro-batches); returns scalars to log, ``loss`` first."""
        raise NotImplementedError

    def accumulate(self, n_rows: int, terms_of: Any) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches. ``terms_of(row indices)`` returns a
        micro-batch's loss terms (``loss`` first); each is backpropagated and stepped through the engine,
        which steps the optimizer at the accumulation boundary. Returns the terms averaged over micro-batches.
        """
        tc = self.cfg.train
        sums: dict[str, float] = {}
        for micro in range(tc.grad_accum):
            step = self.step * tc.grad_accum + micro
            terms = terms_of(batch_indices(n_rows, tc.batch_size, tc.seed, step, self.rank, self.world))
            self.engine.backward(terms["loss"])
            self.engine.step()
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + float(v.detach()) / tc.grad_accum
        return {"loss": sums.pop("loss"), **sums}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.rank, self.world = init_distributed()
        seed_everything(cfg.train.seed)
        self.dir = run_dir(cfg)
        ckpt = resumable_checkpoint(cfg, self.dir)
        dump(cfg, self.dir / "config.yaml")
        self.splits = load_splits(cfg.data)
        self.data_name = dataset_name(cfg.data)
        self.model = build_model(cfg, self.splits)
        about = self.prepare()
        self.engine = engine_from_config(
            self.model, cfg, total_steps=cfg.train.max_steps, micro_batch_size=cfg.train.batch_size
        )
        self.tracker = Tracker(
            self.dir,
            project=cfg.tracking.project,
            run_name=cfg.tracking.run_name or self.dir.name,
            mode=cfg.tracking.wandb if self.rank == 0 else "none",
            config=to_dict(cfg),
        )
        self.step, self.train_seconds, self._saved_step = 0, 0.0, -1
        if ckpt is not None:
            state = load_checkpoint(self.engine, ckpt)
            self.step, self.train_seconds = state["step"], state["train_seconds"]
            self._saved_step = self.step
            self._say(f"resumed from {ckpt} at step {self.step}")
        self._say(
            f"{self.data_name}: {about}, model {self.model.n_params() / 1e6:.2f}M params, world={self.world}"
        )

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, tc = self.cfg, self.cfg.train
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.name, disable=not self.progress)
        while self.step < tc.max_steps:
            if tc.time_budget_s and self.train_seconds >= tc.time_budget_s:
                self._say(f"time budget {tc.time_budget_s:.0f}s reached at step {self.step}")
                break
            t0 = time.perf_counter()
            self.model.train()
            scalars = self.train_step()
            self.step += 1
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == 1:
                lr = self.engine.get_lr()[0]
                bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{lr:.2e}")
                logged = {f"train/{k}": v for k, v in scalars.items()}
                logged.update({"train/lr": lr, "timing/update": dt, "train/seconds": self.train_seconds})
                self.tracker.log(logged, step=self.step)
            if tc.eval_every and self.step % tc.eval_every == 0:
                self._eval("validation", max_problems=cfg.data.n_valid)
            if tc.save_every and self.step % tc.save_every == 0:
                self._save()
        bar.close()
        if self._saved_step != self.step:
            self._save()

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> dict[str, Any]:
        """Final evaluation on the configured split, the exported model, and a summary."""
        ec = self.cfg.eval
        res = self._eval(ec.split, max_problems=ec.max_problems, n_samples=ec.n_samples)
        final = self.dir / "model"
        if self.rank == 0:
            self.model.save_pretrained(final)
        summary = {
            "accuracy": res["accuracy"],
            "positions": res["positions"],
            "latent_steps": res["latent_steps"],
            "layer_evals": res["layer_evals"],
            "train_seconds": round(self.train_seconds, 1),
            "steps": self.step,
            "model_dir": str(final),
            **{k: v for k, v in res.items() if k.startswith("pass@")},
        }
        self.tracker.summary(summary)
        self.tracker.finish()
        return summary

    # ------------------------------------------------------------------ helpers
    def _eval(self, split: str, max_problems: int | None, n_samples: int = 1) -> dict[str, float]:
        ec = self.cfg.eval
        res = evaluate(
            self.model,
            self.splits[split],
            n_samples=n_samples,
            ks=ec.ks if n_samples > 1 else [1],
            temperature=ec.temperature,
            top_p=ec.top_p,
            max_new_tokens=ec.max_new_tokens,
            batch_size=ec.batch_size,
            max_problems=max_problems,
            progress=False,
            latent=self.cfg.latent,
        )
        name = self.data_name if split == "test" else f"{self.data_name}-{split}"
        self.tracker.log({f"eval/{name}/{k}": v for k, v in res.metrics.items()}, step=self.step)
        self._say(
            f"step {self.step}: {split} accuracy {res.metrics['accuracy']:.3f} "
            f"({res.metrics['positions']:.1f} positions, {res.metrics['latent_steps']:.1f} latent steps)"
        )
        return res.metrics

    def _save(self) -> Path:
        self._saved_step = self.step
        return save_checkpoint(
            self.engine,
            self.model,
            self.dir,
            self.step,
            {"train_seconds": self.train_seconds},
            keep=self.cfg.train.keep_checkpoints,
        )

    def _say(self, msg: str) -> None:
        if self.rank == 0 and self.progress:
            tqdm.write(msg)


def run_recipe_class(cls: type[Recipe], cfg: Config, progress: bool = True) -> dict[str, Any]:
    recipe = cls(cfg, progress=progress)
    recipe.setup()
    recipe.train()
    return recipe.cleanup()
