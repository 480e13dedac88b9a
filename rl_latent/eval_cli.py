"""`rl-latent eval`: score a saved model on a generated task or any data file.

Writes `results.json` (metrics), `samples.jsonl` (every problem with the model's output), `metrics.jsonl` and
W&B files (through the Tracker), and `results.png`; prints a readable summary with a few examples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rl_latent.config import Config, load_config


def resolve_model_dir(path: str) -> Path:
    """Accept a model dir, a run dir (uses <run>/model) or a checkpoint dir (uses <ckpt>/model)."""
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"no model found at {path} (expected a dir with config.json, or <dir>/model)")


def _run_config(model_dir: Path, args: argparse.Namespace) -> Config:
    if args.config:
        return load_config(args.config)
    for cand in (model_dir.parent / "config.yaml", model_dir.parent.parent.parent / "config.yaml"):
        if cand.is_file():
            return load_config(cand)
    return Config()


def run_eval(args: argparse.Namespace) -> dict[str, float]:
    from rl_latent.data.build import dataset_name, load_eval_data, load_splits
    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner
    from rl_latent.model.shortcuts import shortcut_exit_at
    from rl_latent.tracking import Tracker, plot_bars

    model_dir = resolve_model_dir(args.checkpoint)
    cfg = _run_config(model_dir, args)
    if args.task:
        cfg.data.task = args.task
    if args.task_seed is not None:
        cfg.data.seed = args.task_seed
    if args.difficulty is not None:
        cfg.data.difficulty = str(args.difficulty)
    ec = cfg.eval
    n_samples = args.n_samples or ec.n_samples
    ks = [int(k) for k in args.ks.split(",")] if args.ks else (ec.ks if n_samples > 1 else [1])
    if n_samples < max(ks):
        raise SystemExit(f"--ks {ks} needs --n-samples >= {max(ks)}")

    if args.data:
        data, name = load_eval_data(args.data), Path(args.data).stem
    else:
        split = args.split or ec.split
        if split != "train":
            cfg.data.n_train = 0  # the splits are drawn independently: skip generating the training one
        splits = load_splits(cfg.data)
        if split not in splits:
            raise SystemExit(f"--split {split!r}: the task has splits {sorted(splits)}")
        data, name = splits[split], dataset_name(cfg.data) + ("" if split == "test" else f"-{split}")
    if len(data) == 0:
        raise SystemExit(f"{name}: no problems to evaluate")
    out = Path(args.out) if args.out else model_dir.parent / f"eval-{name}"
    out.mkdir(parents=True, exist_ok=True)

    model = LatentReasoner.from_pretrained(str(model_dir))
    for key in ("lam", "exit_at"):
        if getattr(args, key, None) is None:
            continue
        flag = "--" + key.replace("_", "-")
        if "shortcut" not in model.latent_extra:
            raise SystemExit(
                f"{flag}: {model_dir} has no System-1.5 shortcuts (train it with the system15 stage)"
            )
        model.latent_extra["shortcut"][key] = getattr(args, key)
    try:
        shortcut_exit_at(model)
    except ValueError as e:
        raise SystemExit(f"--exit-at: {e}") from None
    max_problems = args.max_problems or ec.max_problems
    n_problems = min(len(data), max_problems or len(data))
    print(f"evaluating {model_dir} on {name} ({n_problems} problems, {n_samples} sample(s) each)")
    t0 = time.perf_counter()
    res = evaluate(
        model,
        data,
        n_samples=n_samples,
        ks=ks,
        temperature=ec.temperature,
        top_p=ec.top_p,
        max_new_tokens=ec.max_new_tokens,
        batch_size=ec.batch_size,
        max_problems=max_problems,
        desc=f"eval {name}",
        latent=cfg.latent,
        probe_k=ec.probe if args.probe is None else args.probe,
    )
    seconds = time.perf_counter() - t0
    metrics = {**res.metrics, "seconds": round(seconds, 2)}

    (out / "results.json").write_text(
        json.dumps({"model": str(model_dir), "data": name, **metrics}, indent=2)
    )
    with open(out / "samples.jsonl", "w") as f:
        for rec in res.records:
            f.write(json.dumps(rec) + "\n")
    with Tracker(
        out,
        project=cfg.tracking.project,
        run_name=f"eval-{name}",
        mode=args.wandb or cfg.tracking.wandb,
        config={"model": str(model_dir), "data": name},
    ) as tracker:
        tracker.log({f"eval/{name}/{k}": v for k, v in metrics.items()}, step=0)
        tracker.summary(metrics)
    keys = ["accuracy"] + [k for k in metrics if k.startswith("pass@")]
    plot_bars({model_dir.parent.name or "model": metrics}, keys, out / "results.png", title=f"{name}")

    print(f"\n{name}: accuracy {metrics['accuracy']:.3f}", end="")
    for k in keys[1:]:
        print(f", {k} {metrics[k]:.3f}", end="")
    print(
        f" | {metrics['positions']:.1f} positions, {metrics['layer_evals']:.0f} layer evals, "
        f"{metrics['flops']:.3g} FLOPs, {metrics['wall_ms']:.2f} ms per problem | {seconds:.1f}s"
    )
    for rec in res.records[: args.show]:
        mark = "ok " if rec["correct"] else "BAD"
        print(f"  [{mark}] {rec['question']}\n        -> {rec['output']}   (target {rec['target']})")
        for j, top in enumerate(rec.get("latent_top_tokens", [])):  # the CODI probe: what each thought holds
            what = "stop?" if j == rec["latent_steps"] else f"thought {j + 1}"
            print(f"        {what:>10}: " + "  ".join(f"{t!r} {p:.2f}" for t, p in top))
    print(f"results in {out}/ (results.json, samples.jsonl, metrics.jsonl, results.png, wandb/)")
    return metrics
