"""Chain the stages of the framework on one config: each stage is a recipe run in its own output dir,
starting from the model of the stage it builds on. Ends with a table a person can read.

Stages (see `rl_latent.config.STAGES`): cot_sft, no_cot (baselines), codi, codi_hidden, codi_soft, system15,
grpo, ppo.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

from rl_latent.config import STAGES, Config, stage_config
from rl_latent.tracking import plot_bars

RECIPES = {
    "sft": "trainers.sft",
    "codi": "trainers.codi",
    "shortcut": "trainers.shortcut",
    "grpo": "trainers.grpo",
    "ppo": "trainers.ppo",
}


def run_recipe(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Run the recipe named by `train.recipe` (a module under trainers/ with `run(cfg)`)."""
    return importlib.import_module(RECIPES[cfg.train.recipe]).run(cfg, progress=progress)


def run_pipeline(cfg: Config, progress: bool = True) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for i, stage in enumerate(cfg.stages, 1):
        scfg = stage_config(cfg, stage)
        parent = STAGES[stage][2]
        if parent is not None:
            if parent not in results:
                raise ValueError(f"stage '{stage}' starts from '{parent}', which must run before it")
            scfg.train.init_from = results[parent]["model_dir"]
        print(f"\n=== stage {i}/{len(cfg.stages)}: {stage} ({scfg.train.recipe}) -> {scfg.train.output_dir}")
        results[stage] = run_recipe(scfg, progress=progress)
    out = Path(cfg.train.output_dir) / "pipeline_summary.json"
    out.write_text(json.dumps(results, indent=2))
    plot_bars(results, ["accuracy"], out.with_suffix(".png"), title="accuracy by stage (test split)")
    print(format_summary(results, time.perf_counter() - t0, out))
    return results


def format_summary(results: dict[str, dict[str, Any]], seconds: float, path: Path | None = None) -> str:
    """A fixed-width table: one row per stage."""
    cols = ["accuracy", "pass@8", "positions", "latent_steps", "layer_evals", "train_seconds", "steps"]
    lines = ["", f"{'stage':<12}" + "".join(f"{c:>15}" for c in cols)]
    for stage, res in results.items():
        cells = []
        for c in cols:
            v = res.get(c, "")
            cells.append(f"{v:>15.3f}" if isinstance(v, float) else f"{v!s:>15}")
        lines.append(f"{stage:<12}" + "".join(cells))
    lines.append(f"pipeline finished in {seconds / 60:.1f} min" + (f"; summary in {path}" if path else ""))
    return "\n".join(lines)
