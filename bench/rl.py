"""RL over latent thoughts, one latent policy against another, from the same CODI checkpoint and wall clock.

    python bench/rl.py                                  # quickstart task, 1200 s of GRPO per policy (~2 h)
    python bench/rl.py --policies gumbel                # the target's run: ~22 minutes
    python bench/rl.py --task-seed 3                    # difficulty 3: CODI stays under 40% in 2000 steps
    python bench/rl.py --policies gumbel,gumbel_compute --reuse

1. Start: CoT-SFT, then step-aligned CODI with the soft head (and the hidden head, for the Gaussian policy),
   checkpointed every 125 steps; the start is the checkpoint whose validation accuracy is closest to
   ``--start-accuracy`` (45%) inside 40-80% (so that RL has room both ways). ``--reuse`` keeps models already
   trained in ``--out``.
2. For each policy, GRPO (trainers/grpo.py, the real Ray + DeepSpeed loop) for ``--budget-s`` training
   seconds or ``--max-steps`` steps, whichever comes first (the recipe's cosine LR decays over the steps),
   with the recipe's rewards (``--rl-config``). ``gumbel_compute`` is rewarded for a correct answer and
   charged per latent step on correct samples only (``COMPUTE_REWARDS``: the recipe's exploration bonus is
   left out, it pays for answers that differ), and starts from that checkpoint taught to overthink, 0..3
   redundant thoughts after the last step (``slack_start``: the step-aligned start has no thought to spare).
3. Held-out pass@1 / pass@8 (n = 16 samples per problem, unbiased estimator), greedy accuracy and latent
   steps at the start and at the end, on the same test problems and the same per-sample seeds
   (``rl.eval_seed=0`` whatever ``train.seed``: runs with other training seeds are scored on the same draws;
   the start's pass@8 moved 0.865-0.885 with the eval seed in session 13).
4. ``accuracy_fresh``: greedy accuracy (and ``greedy_latent_steps_fresh``) of the start and the end model on
   ``--fresh-problems`` (5000) problems of the same task drawn with another seed, which no model trained on.
   Greedy accuracy on the 300 test problems has a standard error of ~2.7 points; on 5000, ~0.7.

Prints one JSON object: {policy: {start: {...}, end: {...}, gain: {pass@1, pass@8}, steps, ...}, "task": ...}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_latent.config import load_config, stage_config  # noqa: E402
from rl_latent.data.build import load_splits  # noqa: E402
from rl_latent.evaluate import evaluate  # noqa: E402
from rl_latent.model import LatentReasoner  # noqa: E402
from rl_latent.pipeline import run_recipe  # noqa: E402
from rl_latent.tracking import read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("gumbel", "dirichlet", "vanilla", "gaussian", "gumbel_compute")
HEAD_OF = {"gaussian": "codi_hidden"}  # every other policy samples the soft head
# 0.15 per latent step cut 30-43% of the sampled thoughts over four seeds with pass@1 and pass@8 up (greedy
# accuracy on 10,000 fresh problems 0.0 / -1.4 / -1.9 / +0.2; -1.8 / -3.5 without the compute reward); 0.1 cut
# 18.9%, 0.2 43% (docs/results.md, sessions 14-16).
# At 0.15 a correct answer after 7 or 8 thoughts (of latent.max_steps 8) scores below a wrong one.
COMPUTE_REWARDS = [
    "correct",
    {"name": "compute", "weight": 0.15, "kwargs": {"unit": "latent_steps", "only_correct": True}},
]
KEYS = ("pass@1", "pass@8", "accuracy", "latent_steps", "greedy_latent_steps")


def _validation(row: dict) -> float | None:
    """The validation accuracy a metrics row holds, if any."""
    return next((v for k, v in row.items() if k.endswith("-validation/accuracy")), None)


def pick_start(run: Path, lo: float = 0.4, hi: float = 0.8, target: float = 0.6) -> tuple[Path, float]:
    """The checkpoint whose validation accuracy is closest to ``target`` within [lo, hi]."""
    found = []
    for r in read_jsonl(run / "metrics.jsonl"):
        acc = _validation(r)
        ckpt = run / "checkpoints" / f"step-{r['step']:06d}" / "model"
        if acc is not None and lo <= acc <= hi and ckpt.is_dir():
            found.append((abs(acc - target), ckpt, acc))
    if not found:
        raise SystemExit(
            f"{run}: no checkpoint scores {lo:.0%}-{hi:.0%} on validation; see its metrics.jsonl"
        )
    _, ckpt, acc = min(found, key=lambda x: x[0])
    return ckpt, acc


def train_start(cfg, out: Path, stage: str, steps: int, reuse: bool, init_from: str | None = None) -> Path:
    run = out / stage
    if reuse and (run / "model" / "config.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    scfg = stage_config(cfg, stage)
    scfg.train.max_steps, scfg.train.time_budget_s = steps, 0
    if stage != "cot_sft":  # CODI: evaluate and keep every checkpoint, to pick the start from
        scfg.train.init_from = init_from
        scfg.train.eval_every = scfg.train.save_every = 125
        scfg.train.keep_checkpoints = 0
    run_recipe(scfg, progress=sys.stderr.isatty())
    return run


def validation_accuracy(run: Path) -> float | None:
    """The last validation accuracy a training run logged."""
    accs = [a for r in read_jsonl(run / "metrics.jsonl") if (a := _validation(r)) is not None]
    return accs[-1] if accs else None


def fresh_problems(base, n: int):
    """``n`` problems of the bench's task drawn with another seed (the training split of task seed + 1000)."""
    data = copy.deepcopy(base.data)
    data.seed, data.n_train, data.n_valid, data.n_test = data.seed + 1000, n, 1, 1
    return load_splits(data)["train"]


def greedy_on(model_dir: Path, problems, cfg) -> dict[str, float]:
    """Greedy accuracy and thoughts of a saved latent model (deterministic thoughts, greedy answer)."""
    model = LatentReasoner.from_pretrained(str(model_dir))
    res = evaluate(model, problems, max_new_tokens=cfg.eval.max_new_tokens, progress=False, latent=cfg.latent)
    return {
        "accuracy_fresh": res.metrics["accuracy"],
        "greedy_latent_steps_fresh": res.metrics["latent_steps"],
    }


def slack_start(base, out: Path, ckpt: Path, steps: int, reuse: bool, pad: int = 3) -> Path:
    """``gumbel_compute``'s start: the RL start checkpoint taught to overthink, ``steps`` more CODI steps with
    ``latent.pad_steps`` = ``pad``: each training row ends its thoughts 0..pad steps late, every wasted
    thought repeating the final result, so the stop comes anywhere in [n, n + pad] for an n-step problem.

    The step-aligned start has no compute to give back: each of its thoughts is a step result the answer
    reads, and capping it one thought short costs 14 points of greedy accuracy (0.573 -> 0.437 with
    ``max_steps`` 3). Two thoughts per CoT step (session 5) did not help: the pair's first thought is half
    the step. A model whose extra thoughts are truly redundant is where a compute reward has something to
    cut; the bench measures whether GRPO finds the earliest stop without losing accuracy.
    """
    run = out / f"codi_soft_pad{pad}"
    if reuse and (run / "model" / "config.json").is_file():
        return run / "model"
    shutil.rmtree(run, ignore_errors=True)
    scfg = stage_config(base, "codi_soft")
    scfg.train.output_dir, scfg.train.init_from = str(run), str(ckpt)
    scfg.train.max_steps, scfg.train.time_budget_s = steps, 0
    scfg.train.eval_every = scfg.train.save_every = steps
    scfg.latent.pad_steps = pad
    scfg.codi.gold_anneal_steps = 0  # its thoughts already say the step results
    scfg.optim.lr, scfg.optim.warmup_steps = 1e-3, 20
    run_recipe(scfg, progress=sys.stderr.isatty())
    return run / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--rl-config", default=str(REPO / "configs" / "grpo-quickstart.yaml"))
    ap.add_argument("--task-seed", type=int, default=None, help="seed of the generated task (train and test)")
    ap.add_argument("--difficulty", default=None, help="difficulty level of the generated task")
    ap.add_argument("--budget-s", type=float, default=1200.0, help="GRPO training seconds per policy")
    ap.add_argument(
        "--max-steps", type=int, default=2800,
        help="GRPO steps per policy, the LR schedule's length (2800: about what 1200 s reaches on 2 cores)",
    )  # fmt: skip
    ap.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated subset of " + ",".join(POLICIES)
    )
    ap.add_argument("--eval-problems", type=int, default=300, help="held-out problems for pass@k")
    ap.add_argument(
        "--fresh-problems", type=int, default=5000,
        help="fresh problems (another task seed) for the start's and end's greedy accuracy (0: skip)",
    )  # fmt: skip
    ap.add_argument("--workers", type=int, default=2, help="Ray rollout workers")
    ap.add_argument(
        "--slack-steps",
        type=int,
        default=500,
        help="CODI steps teaching gumbel_compute's start to overthink (0..3 wasted thoughts)",
    )
    ap.add_argument(
        "--start-accuracy", type=float, default=0.45,
        help="start from the CODI checkpoint whose validation accuracy is closest to this, within 40-80%%",
    )  # fmt: skip
    ap.add_argument(
        "--padded-start", action="store_true",
        help="every soft-head policy starts from gumbel_compute's start (thoughts padded 0-3 steps late)",
    )  # fmt: skip
    ap.add_argument("--reuse", action="store_true", help="reuse start models already trained in --out")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-rl"))
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the GRPO config")
    args = ap.parse_args()

    task = [f"data.seed={args.task_seed}"] if args.task_seed is not None else []
    task += [f"data.difficulty={args.difficulty}"] if args.difficulty is not None else []
    out = Path(args.out)
    base = load_config(args.config, [f"train.output_dir={out}", "tracking.wandb=none", *task])
    cot = train_start(base, out, "cot_sft", 1000, args.reuse)
    starts = {}
    for stage in sorted({HEAD_OF.get(p, "codi_soft") for p in args.policies.split(",") if p}):
        run = train_start(base, out, stage, 2000, args.reuse, init_from=str(cot / "model"))
        starts[stage] = pick_start(run, target=args.start_accuracy)

    if "gumbel_compute" in args.policies.split(",") or args.padded_start:
        ckpt, _ = starts["codi_soft"]
        slack = slack_start(base, out, ckpt, args.slack_steps, args.reuse)
        starts["slack"] = (slack, validation_accuracy(slack.parent))

    fresh = fresh_problems(base, args.fresh_problems) if args.fresh_problems else None
    start_fresh: dict[Path, dict[str, float]] = {}  # policies that share a start score it once
    results: dict[str, dict] = {}
    for policy in [p for p in args.policies.split(",") if p]:
        if policy not in POLICIES:
            raise SystemExit(f"unknown policy {policy!r}; choose from {POLICIES}")
        padded = policy == "gumbel_compute" or (args.padded_start and policy not in HEAD_OF)
        ckpt, start_acc = starts["slack" if padded else HEAD_OF.get(policy, "codi_soft")]
        run = out / f"grpo-{policy}"
        shutil.rmtree(run, ignore_errors=True)
        # the recipe's rewards except for gumbel_compute; an rl.rewards in the overrides comes last and wins
        rewards = [f"rl.rewards={json.dumps(COMPUTE_REWARDS)}"] if policy == "gumbel_compute" else []
        cfg = load_config(
            args.rl_config,
            [
                *task, f"train.init_from={ckpt}", f"train.output_dir={run}",
                f"train.max_steps={args.max_steps}", f"train.time_budget_s={args.budget_s}",
                "train.save_every=0", "rl.eval_every=0",
                f"rl.eval_problems={args.eval_problems}", "rl.eval_n=16", "rl.eval_ks=[1,8]",
                "rl.eval_seed=0", f"rl.workers={args.workers}", "rl.trainer_cpus=2",
                f"latent.policy={policy.split('_')[0]}", *rewards, "tracking.wandb=none", *args.overrides,
            ],
        )  # fmt: skip
        summary = run_recipe(cfg, progress=sys.stderr.isatty())
        start = {k: summary[f"start/{k}"] for k in KEYS}
        end = {k: summary[k] for k in KEYS}
        if fresh is not None:
            if ckpt not in start_fresh:
                start_fresh[ckpt] = greedy_on(ckpt, fresh, cfg)
            start |= start_fresh[ckpt]
            end |= greedy_on(Path(summary["model_dir"]), fresh, cfg)
        gains = ("pass@1", "pass@8", "accuracy", "accuracy_fresh")
        results[policy] = {
            "start": start,
            "end": end,
            "gain": {k: round(end[k] - start[k], 4) for k in gains if k in end},
            **{
                f"{k}_change": round(end[k] / max(start[k], 1e-9) - 1, 4)
                for k in ("latent_steps", "greedy_latent_steps", "greedy_latent_steps_fresh")
                if k in end
            },
            "rl_steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "start_checkpoint": str(ckpt),
            "start_validation_accuracy": start_acc,
        }
        print(f"{policy}: {json.dumps(results[policy])}", file=sys.stderr)
    results["task"] = {"difficulty": base.data.difficulty, "seed": base.data.seed, "budget_s": args.budget_s,
                       "eval_problems": args.eval_problems, "eval_n": 16,
                       "fresh_problems": args.fresh_problems}  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
