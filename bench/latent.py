"""Latent reasoning against its baselines: No-CoT, CoT-SFT, CODI as published, and step-aligned CODI with the
hidden and the soft thought head.

    python bench/latent.py                               # quickstart task (arith level 2)
    python bench/latent.py --task-seed 3 --difficulty 3
    python bench/latent.py --config configs/mult4.yaml   # 4x4 multiplication, iCoT valid file as test
    python bench/latent.py --data ../shared/data/icot/gsm8k/valid.txt   # also score every model on a file

Every method trains through its real recipe (DeepSpeed engine, checkpoints), chained as the pipeline chains
them (CODI starts from the CoT-SFT model), each under `--budget-s` training seconds. Prints one JSON object:
{method: {accuracy, positions, latent_steps, latency_b1_ms, samples_per_s_b64, train_seconds, ...}, ...,
"latent_steps_by_cot_steps": {method: {n_cot_steps: mean latent steps}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_latent.config import load_config, stage_config  # noqa: E402
from rl_latent.pipeline import run_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("cot_sft", "no_cot", "codi", "codi_hidden", "codi_soft")  # codi: as published (hidden, K = 6)
STAGE_OF = {m: m for m in METHODS}
LATENCY_REPEATS = 3  # latency_b1_ms is the median of these timings (each over --latency-problems problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--task-seed", type=int, default=None, help="seed of the generated task (train and test)")
    ap.add_argument("--difficulty", default=None, help="difficulty level of the generated task")
    ap.add_argument("--data", default=None, help="also score every model on this file (any supported format)")
    ap.add_argument("--budget-s", type=float, default=1800.0, help="cap on training seconds per method")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS)
    )
    ap.add_argument(
        "--steps", default="cot_sft=1000,no_cot=1000,codi=600,codi_hidden=3000,codi_soft=3000",
        help="optimizer steps (the LR schedule's length) per method; --budget-s caps the seconds",
    )  # fmt: skip
    ap.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    ap.add_argument("--latency-problems", type=int, default=50, help="problems timed one at a time")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-latent"))
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args()

    overrides = [f"train.output_dir={args.out}", "tracking.wandb=none", "train.resume=false", *args.overrides]
    if args.budget_s is not None:
        overrides.append(f"train.time_budget_s={args.budget_s}")
    if args.task_seed is not None:
        overrides.append(f"data.seed={args.task_seed}")
    if args.difficulty is not None:
        overrides.append(f"data.difficulty={args.difficulty}")
    cfg = load_config(args.config, overrides)
    for item in filter(None, args.steps.split(",")):
        method, n = item.split("=")
        cfg.stage_overrides.setdefault(STAGE_OF[method], {})["train.max_steps"] = int(n)
    methods = [m for m in args.methods.split(",") if m]
    if any(m.startswith("codi") for m in methods) and "cot_sft" not in methods and not args.reuse:
        raise SystemExit("CODI methods start from the CoT-SFT model: include cot_sft or pass --reuse")

    results: dict[str, dict] = {}
    by_steps: dict[str, dict] = {}
    model_dirs: dict[str, str] = {}
    for method in methods:
        stage = STAGE_OF[method]
        run_dir = Path(args.out) / stage
        model_dir = run_dir / "model"
        scfg = stage_config(cfg, stage)
        if args.reuse and (model_dir / "config.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # only this method's own dir
            if scfg.train.recipe == "codi":
                scfg.train.init_from = model_dirs.get("cot_sft", str(Path(args.out) / "cot_sft" / "model"))
            summary = run_recipe(scfg, progress=sys.stderr.isatty())
        model_dirs[method] = str(model_dir)
        res, steps = measure(str(model_dir), scfg, args.latency_problems)
        res["train_seconds"] = summary.get("train_seconds")
        res["steps"] = summary.get("steps")
        if args.data:
            res["data"] = score_file(str(model_dir), args.data, scfg)
        results[method] = res
        by_steps[method] = steps
        print(f"{method}: {json.dumps(res)}", file=sys.stderr)
    results["latent_steps_by_cot_steps"] = by_steps
    results["task"] = {"task": cfg.data.task, "difficulty": cfg.data.difficulty, "seed": cfg.data.seed,
                       "test": cfg.data.test_path or f"generated ({cfg.data.n_test})"}  # fmt: skip
    print(json.dumps(results, indent=2))


def test_split(cfg):
    """The test split of ``cfg.data``; a generated task's train split is not made (it takes seconds)."""
    import dataclasses

    from rl_latent.data.build import load_splits

    arith = cfg.data.task == "arith"
    return load_splits(dataclasses.replace(cfg.data, n_train=0) if arith else cfg.data)["test"]


def measure(
    model_dir: str, cfg, latency_problems: int, lam: float | None = None, exit_at: int | None = None
) -> tuple[dict, dict]:
    """Greedy accuracy and compute on the test split, batch-1 latency, batch-64 throughput (``lam``: decode a
    System-1.5 model with this exit threshold; ``exit_at``: with every position exiting at this layer)."""
    import torch

    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner

    test = test_split(cfg)
    model = LatentReasoner.from_pretrained(model_dir)
    if lam is not None:
        model.latent_extra["shortcut"]["lam"] = lam
    if exit_at is not None:
        model.latent_extra["shortcut"]["exit_at"] = exit_at
    kw = dict(max_new_tokens=cfg.eval.max_new_tokens, progress=False, latent=cfg.latent)
    full = evaluate(model, test, batch_size=cfg.eval.batch_size, **kw)
    torch.manual_seed(0)
    n_lat = min(latency_problems, len(test))
    evaluate(model, test, batch_size=1, max_problems=min(3, n_lat), **kw)  # warm-up: first calls pay setup
    runs = []
    for _ in range(LATENCY_REPEATS):  # the median of repeats: batch-1 timings on a shared CPU vary up to 2x
        t0 = time.perf_counter()
        evaluate(model, test, batch_size=1, max_problems=n_lat, **kw)
        runs.append(1000 * (time.perf_counter() - t0) / n_lat)
    latency_ms = sorted(runs)[len(runs) // 2]
    n_tp = min(256, len(test))
    t0 = time.perf_counter()
    evaluate(model, test, batch_size=64, max_problems=n_tp, **kw)
    per_s = n_tp / (time.perf_counter() - t0)
    m = full.metrics
    groups: dict[int, list[int]] = defaultdict(list)
    for rec in full.records:
        groups[int(rec.get("num_steps") or 0)].append(rec.get("latent_steps", 0))
    steps = {str(k): round(sum(v) / len(v), 3) for k, v in sorted(groups.items())}
    out = {
        "accuracy": m["accuracy"],
        "positions": round(m["positions"], 3),
        "latent_steps": round(m["latent_steps"], 3),
        "layer_evals": round(m["layer_evals"], 3),
        "flops": round(m["flops"], 1),
        "latency_b1_ms": round(latency_ms, 2),
        "latency_b1_ms_runs": [round(r, 2) for r in runs],
        "samples_per_s_b64": round(per_s, 1),
        "n_test": len(test),
    }
    return out, steps


def alternate(models: dict, test, problems: int, rounds: int, kw: dict) -> dict[str, list[float]]:
    """Batch-1 ms per problem of each model, timed in rounds: every round times each model once on the same
    ``problems`` (one at a time, as ``latency_b1_ms``), seconds apart, so a slow spell of a shared CPU hits
    all of them. ``measure`` times one model's repeats in a row, minutes from the next model's: the ratio of
    two of its latencies moved 6.2x-11.4x across runs of the same models, alternated medians' 7.6x-9.6x."""
    from rl_latent.evaluate import evaluate

    for m in models.values():  # warm-up: first calls pay setup
        evaluate(m, test, max_problems=min(3, problems), **kw)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            evaluate(m, test, max_problems=problems, **kw)
            times[name].append(round(1000 * (time.perf_counter() - t0) / problems, 2))
    return times


def score_file(model_dir: str, path: str, cfg) -> dict:
    from rl_latent.data.build import load_eval_data
    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner

    model = LatentReasoner.from_pretrained(model_dir)
    res = evaluate(model, load_eval_data(path), max_new_tokens=cfg.eval.max_new_tokens, progress=False)
    return {"file": path, "accuracy": res.metrics["accuracy"], "positions": res.metrics["positions"]}


if __name__ == "__main__":
    main()
