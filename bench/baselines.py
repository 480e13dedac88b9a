"""CoT-SFT vs No-CoT on the quickstart task: greedy accuracy, generated positions, training seconds.

    python bench/baselines.py                          # quickstart task, 8-minute training budget per method
    python bench/baselines.py --task-seed 3 --difficulty 3
    python bench/baselines.py --data ../shared/data/icot/gsm8k/valid.txt   # also score the models on a file

Prints one JSON object: {"cot_sft": {"accuracy", "positions", "train_seconds", ...}, "no_cot": {...}, ...}.
Training goes through the real recipe (DeepSpeed engine, checkpoints) with W&B off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_latent.config import load_config, stage_config  # noqa: E402
from rl_latent.pipeline import run_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--task-seed", type=int, default=None, help="seed of the generated task (train and test)")
    ap.add_argument("--difficulty", default=None, help="difficulty level of the generated task")
    ap.add_argument("--data", default=None, help="also score both models on this file (any supported format)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="training seconds per method")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps per method (the LR schedule)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-baselines"))
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args()

    overrides = [
        f"train.output_dir={args.out}",
        f"train.time_budget_s={args.budget_s}",
        "tracking.wandb=none",
        "train.resume=false",
        *args.overrides,
    ]
    if args.task_seed is not None:
        overrides.append(f"data.seed={args.task_seed}")
    if args.difficulty is not None:
        overrides.append(f"data.difficulty={args.difficulty}")
    cfg = load_config(args.config, overrides)
    for stage in ("cot_sft", "no_cot"):  # equal steps for both, whatever the demo's stage_overrides say
        cfg.stage_overrides.setdefault(stage, {})["train.max_steps"] = args.steps
    for stage in ("cot_sft", "no_cot"):  # every bench run starts fresh; only its own stage dirs are removed
        shutil.rmtree(Path(args.out) / stage, ignore_errors=True)

    results: dict[str, dict] = {}
    for stage in ("cot_sft", "no_cot"):
        scfg = stage_config(cfg, stage)
        summary = run_recipe(scfg, progress=sys.stderr.isatty())
        results[stage] = {k: summary[k] for k in ("accuracy", "positions", "train_seconds", "steps")}
        if args.data:
            results[stage]["data"] = score_file(summary["model_dir"], args.data, cfg)
    results["task"] = {
        "task": cfg.data.task,
        "difficulty": cfg.data.difficulty,
        "seed": cfg.data.seed,
        "n_test": cfg.data.n_test,
    }
    print(json.dumps(results, indent=2))


def score_file(model_dir: str, path: str, cfg) -> dict:
    from rl_latent.data.build import load_eval_data
    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner

    model = LatentReasoner.from_pretrained(model_dir)
    res = evaluate(
        model,
        load_eval_data(path),
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        progress=False,
    )
    return {"file": path, "accuracy": res.metrics["accuracy"], "positions": res.metrics["positions"]}


if __name__ == "__main__":
    main()
