"""System-1.5 shortcuts against CODI and CoT-SFT: accuracy against compute.

    python bench/shortcuts.py                         # quickstart task with natural-language CoT, 6 layers
    python bench/shortcuts.py --task-seed 3 --difficulty 3
    python bench/shortcuts.py --reuse --lams 0.2,0.5,0.8    # re-measure trained models at other lambdas

Trains (or with ``--reuse`` reads from ``--out``) CoT-SFT, CODI (step-aligned soft thoughts, from the CoT-SFT
model) and System-1.5 stage 2 (routers + adapters on the frozen CODI model), each through its real recipe.
Then GRPO from the System-1.5 model with its exits as actions under a compute reward (``system15_rl``,
``--rl-budget-s`` seconds on Ray workers and a DeepSpeed rank). By default that RL learns the exits only:
only the routers train (``rl.trainable=routers``) and thoughts and answers are greedy, as at inference, so
the exits are the only actions (``configs/system15-rl-quickstart.yaml``'s recipe); ``--rl-full`` trains every
weight with Gumbel thoughts and sampled answers.
Measures every model on the test split, System-1.5 models once per lambda: greedy ``accuracy``, generated
``positions``, ``layer_evals`` and ``flops`` per answer, ``latency_b1_ms`` (problems one at a time) and
``samples_per_s_b64``. ``codi_depth_bound`` counts the positions System-1.5 keeps at full depth (the
prompt's last and the critical ones): the most that exits at the other positions can save.
``system15_depth@l`` decodes the System-1.5 model with every generated position leaving at router layer
``l`` through its adapter (a static depth, routers ignored): how much of the top of the stack an adapter
can stand in for, the ceiling on exits at critical positions. ``latency_alternated`` times CoT-SFT and the
System-1.5 setting target 1 picks in alternation (``--latency-rounds``): the latency target's ratio. Prints
one JSON object and writes ``accuracy_vs_compute.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rl_latent.config import load_config, stage_config  # noqa: E402
from rl_latent.pipeline import run_recipe  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_latent", REPO / "bench" / "latent.py")
bench_latent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_latent)

# system15_rl's recipe: GRPO on the exits only (frozen backbone, greedy thoughts and answers)
EXIT_RL = REPO / "configs" / "system15-rl-quickstart.yaml"
# the stage each method is trained by, and the one it starts from
METHODS = {"cot_sft": ("cot_sft", None), "codi": ("codi_soft", "cot_sft"), "system15": ("system15", "codi")}
# the task with natural-language CoT; room for depth. Stage 2 keeps its defaults (docs/decisions.md, session
# 19: with <eot> reading the last thought, the extra depth price on critical positions costs no exits there)
DEFAULTS = ["data.nl_cot=true", "model.n_layer=6"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--task-seed", type=int, default=None, help="seed of the generated task (train and test)")
    ap.add_argument("--difficulty", default=None, help="difficulty level of the generated task")
    ap.add_argument("--data", default=None, help="also score every model on this file (any supported format)")
    ap.add_argument("--budget-s", type=float, default=2400.0, help="cap on training seconds per method")
    ap.add_argument(
        "--steps", default="cot_sft=1000,codi=6000,system15=1600",  # CODI to 1.000 (~30 min here)
        help="optimizer steps (the LR schedule's length) per method; --budget-s caps the seconds",
    )  # fmt: skip
    ap.add_argument("--lams", default="0.3,0.5,0.7,0.9", help="System-1.5 exit thresholds to measure")
    ap.add_argument("--rl-budget-s", type=float, default=600.0, help="GRPO seconds for system15_rl (0: skip)")
    ap.add_argument(
        "--rl-layer-scale", type=float, default=100.0,
        help="system15_rl: compute reward = -layer_evals / this, on correct answers",
    )  # fmt: skip
    ap.add_argument(
        "--rl-full", action="store_true",
        help="system15_rl trains every weight with Gumbel thoughts and sampled answers (default: exits only)",
    )  # fmt: skip
    ap.add_argument(
        "--rl-lr", type=float, default=None, help="system15_rl learning rate (default: its recipe's)"
    )
    ap.add_argument(
        "--no-static-depth", dest="static_depth", action="store_false",
        help="skip system15_depth@l (every position exits at router layer l)",
    )  # fmt: skip
    ap.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    ap.add_argument("--latency-problems", type=int, default=30, help="problems timed one at a time")
    ap.add_argument(
        "--latency-rounds", type=int, default=9,
        help="rounds timing CoT-SFT and target 1's System-1.5 setting in alternation (the target's ratio)",
    )  # fmt: skip
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-shortcuts"))
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (after " + " ".join(DEFAULTS) + ")")
    args = ap.parse_args()

    overrides = [f"train.output_dir={args.out}", "tracking.wandb=none", "train.resume=false", *DEFAULTS]
    overrides += [f"train.time_budget_s={args.budget_s}", *args.overrides]
    if args.task_seed is not None:
        overrides.append(f"data.seed={args.task_seed}")
    if args.difficulty is not None:
        overrides.append(f"data.difficulty={args.difficulty}")
    cfg = load_config(args.config, overrides)
    steps = dict(item.split("=") for item in args.steps.split(",") if item)
    for method, n in steps.items():
        cfg.stage_overrides.setdefault(METHODS[method][0], {})["train.max_steps"] = int(n)

    results: dict[str, dict] = {}
    model_dirs: dict[str, str] = {}
    for method, (stage, parent) in METHODS.items():
        run_dir = Path(args.out) / stage
        scfg = stage_config(cfg, stage)
        if args.reuse and (run_dir / "model" / "config.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # only this method's own dir
            if parent:
                scfg.train.init_from = model_dirs[parent]
            summary = run_recipe(scfg, progress=sys.stderr.isatty())
        model_dirs[method] = str(run_dir / "model")
        if method == "codi":
            results["codi_depth_bound"] = depth_bound(model_dirs[method], scfg)
        lams = [float(x) for x in args.lams.split(",")] if method == "system15" else [None]
        for lam in lams:
            res, _ = bench_latent.measure(model_dirs[method], scfg, args.latency_problems, lam=lam)
            res["train_seconds"], res["steps"] = summary.get("train_seconds"), summary.get("steps")
            if args.data:
                res["data"] = bench_latent.score_file(model_dirs[method], args.data, scfg)
            name = method if lam is None else f"{method}@{lam:g}"
            results[name] = res
            print(f"{name}: {json.dumps(res)}", file=sys.stderr)
    best = targets(results).get("best")
    if best and args.latency_rounds > 0:
        results["latency_alternated"] = latency_alternated(model_dirs, best, cfg, args)
    if args.static_depth:
        results.update(static_depths(model_dirs["system15"], stage_config(cfg, "system15"), args))
    if args.rl_budget_s > 0:
        results.update(
            system15_rl(cfg, args, model_dirs["system15"], [float(x) for x in args.lams.split(",")])
        )
    out = {**results, "targets": targets(results), "task": task_of(cfg)}
    plot(results, Path(args.out) / "accuracy_vs_compute.png")
    print(json.dumps(out, indent=2))


def depth_bound(model_dir: str, scfg) -> dict:
    """Where CODI's layer evaluations go, by the positions System-1.5 keeps deep: the prompt's last position
    (always run in full) and the critical ones (``trainers.shortcut.criticality``, from the step DAG). Every
    position runs all L blocks, so ``1 - deep / positions`` is the largest saving exits can give while the
    deep positions run in full, even if every other position ran no block at all."""
    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner
    from rollouts.sampler import latent_settings
    from trainers.shortcut import criticality

    test = bench_latent.test_split(scfg)
    model = LatentReasoner.from_pretrained(model_dir)
    res = evaluate(model, test, batch_size=scfg.eval.batch_size, max_new_tokens=scfg.eval.max_new_tokens,
                   progress=False)  # fmt: skip
    st = latent_settings(model)
    deep = total = 0
    for rec, row in zip(res.records, test):
        n = rec["latent_steps"]
        flags = criticality(n, rec["positions"] - 1 - n, row.get("dag"), st.get("lead_steps", 0),
                            st.get("steps_per_cot_step", 1))  # fmt: skip
        deep, total = deep + 1 + sum(flags), total + rec["positions"]
    n = max(1, len(res.records))
    return {"positions": round(total / n, 3), "deep_positions": round(deep / n, 3),
            "max_saving_without_deep_exits": round(1 - deep / max(1, total), 4)}  # fmt: skip


def latency_alternated(model_dirs: dict[str, str], best: str, cfg, args) -> dict:
    """CoT-SFT against the System-1.5 setting target 1 picks (``best``, ``system15@lambda``), timed in
    alternation (``bench_latent.alternate``; bench/latency.py adds CODI): the ratio the latency target reads.
    Each method's own ``latency_b1_ms`` times it alone, minutes from the others."""
    import statistics

    from rl_latent.model import LatentReasoner

    scfg = stage_config(cfg, "cot_sft")
    test = bench_latent.test_split(scfg)
    models = {"cot_sft": LatentReasoner.from_pretrained(model_dirs["cot_sft"]),
              best: LatentReasoner.from_pretrained(model_dirs["system15"])}  # fmt: skip
    models[best].latent_extra["shortcut"]["lam"] = float(best.split("@")[1])
    kw = dict(max_new_tokens=scfg.eval.max_new_tokens, progress=False, latent=scfg.latent, batch_size=1)
    times = bench_latent.alternate(models, test, args.latency_problems, args.latency_rounds, kw)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [a / b for a, b in zip(times["cot_sft"], times[best])]  # each round's timings seconds apart
    return {
        "setting": best,
        "latency_b1_ms": {k: {"median": round(med[k], 2), "runs": v} for k, v in times.items()},
        "speedup": round(med["cot_sft"] / med[best], 2),
        "speedup_per_round": round(statistics.median(per_round), 2),
    }


def static_depths(model_dir: str, scfg, args) -> dict[str, dict]:
    """The System-1.5 model decoded at each static depth: every generated position exits at router layer l."""
    from rl_latent.model import LatentReasoner

    layers = LatentReasoner.from_pretrained(model_dir).heads["shortcuts"].layers
    out = {}
    for li in layers:
        res, _ = bench_latent.measure(model_dir, scfg, args.latency_problems, exit_at=li)
        out[f"system15_depth@{li}"] = res
        print(f"system15_depth@{li}: {json.dumps(res)}", file=sys.stderr)
    return out


def system15_rl(cfg, args, start: str, lams: list[float]) -> dict[str, dict]:
    """GRPO from the System-1.5 model with its exits as Bernoulli actions (``latent.learn_exits``) under a
    compute reward on layer evaluations (correct answers only), then the same measurements. Exits only by
    default (frozen backbone, greedy thoughts and answers); ``--rl-full`` trains everything."""
    run_dir = Path(args.out) / "system15_rl"
    rcfg = stage_config(cfg, "grpo")
    if not (args.reuse and (run_dir / "model" / "config.json").is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
        rcfg.train.init_from, rcfg.train.output_dir = start, str(run_dir)
        rcfg.train.time_budget_s, rcfg.train.max_steps = args.rl_budget_s, 100_000
        rcfg.latent.learn_exits = True
        # exits only, as configs/system15-rl-quickstart.yaml (+ the command line's rl./optim. overrides)
        if not args.rl_full:
            recipe = load_config(EXIT_RL, [o for o in args.overrides if o.startswith(("rl.", "optim."))])
            rcfg.rl, rcfg.optim, rcfg.latent.policy = recipe.rl, recipe.optim, recipe.latent.policy
        if args.rl_lr is not None:
            rcfg.optim.lr = args.rl_lr
        rcfg.rl.rewards = [
            "correct",
            {"name": "compute", "weight": 1.0,
             "kwargs": {"unit": "layer_evals", "scale": args.rl_layer_scale, "only_correct": True}},
        ]  # fmt: skip
        rcfg.rl.eval_every, rcfg.rl.eval_problems = 0, 100
        run_recipe(rcfg, progress=sys.stderr.isatty())
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {}
    for lam in lams:
        res, _ = bench_latent.measure(str(run_dir / "model"), rcfg, args.latency_problems, lam=lam)
        res["train_seconds"], res["steps"] = summary.get("train_seconds"), summary.get("steps")
        out[f"system15_rl@{lam:g}"] = res
        print(f"system15_rl@{lam:g}: {json.dumps(res)}", file=sys.stderr)
    return out


def targets(results: dict[str, dict]) -> dict:
    """The issue's targets. Target 1: the System-1.5 setting with the fewest layer evaluations among those
    within one point of CODI's accuracy, its saving against CODI, and its batch-1 speed-up against CoT-SFT
    (from ``latency_alternated`` when it timed that setting; ``..._timed_alone``: from ``latency_b1_ms``).
    Target 3: ``system15_rl`` against ``system15`` (the model RL started from), see ``rl_targets``."""
    codi, cot = results["codi"], results["cot_sft"]
    out: dict = {"rl": rl_targets(results)} if any(k.startswith("system15_rl@") for k in results) else {}
    if "codi_depth_bound" in results:  # the saving reachable without exits at critical positions
        out["max_saving_without_deep_exits"] = results["codi_depth_bound"]["max_saving_without_deep_exits"]
    ok = [
        (k, r)
        for k, r in results.items()
        if k.startswith("system15@") and r["accuracy"] >= codi["accuracy"] - 0.01
    ]
    if not ok:
        return {**out, "best": None, "note": "no lambda keeps accuracy within 1 point of CODI"}
    name, best = min(ok, key=lambda kr: kr[1]["layer_evals"])
    saving = 1 - best["layer_evals"] / codi["layer_evals"]
    sequential = cot["latency_b1_ms"] / best["latency_b1_ms"]  # each timed alone, minutes apart
    alt = results.get("latency_alternated", {})
    speedup = alt["speedup"] if alt.get("setting") == name else sequential
    return {
        **out,
        "best": name,
        "accuracy_drop": round(codi["accuracy"] - best["accuracy"], 4),
        "layer_evals_saving_vs_codi": round(saving, 4),
        "latency_b1_speedup_vs_cot_sft": round(speedup, 2),
        "latency_b1_speedup_timed_alone": round(sequential, 2),
        "met": {"layer_evals_saving>=0.40": saving >= 0.40, "latency_speedup>=10x": speedup >= 10},
    }


def rl_targets(results: dict[str, dict]) -> dict:
    """Target 3 on the accuracy-compute frontier: for each System-1.5 operating point (lambda < 1), the
    ``system15_rl`` setting (any lambda) with the fewest layer evaluations among those within one point
    of its accuracy; met where one of them saves layer evaluations. A point another lambda beats on both
    accuracy and layer evaluations (``dominated_by``) is no one's choice and does not count. ``best``: the
    largest saving."""
    rl = {k: r for k, r in results.items() if k.startswith("system15_rl@")}
    s15 = {k: r for k, r in results.items() if k.startswith("system15@")}
    per = {}
    for k, base in s15.items():
        if float(k.split("@")[1]) >= 1:
            continue
        beats = [
            n for n, r in s15.items()
            if r["layer_evals"] <= base["layer_evals"] and r["accuracy"] >= base["accuracy"]
            and (r["layer_evals"], r["accuracy"]) != (base["layer_evals"], base["accuracy"])
        ]  # fmt: skip
        ok = [(n, r) for n, r in rl.items() if r["accuracy"] >= base["accuracy"] - 0.01]
        if not ok:
            per[k] = {"rl": None}
        else:
            n, r = min(ok, key=lambda nr: nr[1]["layer_evals"])
            per[k] = {
                "rl": n,
                "layer_evals_saving": round(1 - r["layer_evals"] / base["layer_evals"], 4),
                "accuracy_drop": round(base["accuracy"] - r["accuracy"], 4),
            }
        if beats:
            per[k]["dominated_by"] = beats[0]
    found = {k: v for k, v in per.items() if v["rl"] is not None and "dominated_by" not in v}
    best = max(found, key=lambda k: found[k]["layer_evals_saving"]) if found else None
    met = best is not None and found[best]["layer_evals_saving"] > 0
    return {"vs_system15": per, "best": best, "met": {"fewer_layer_evals_within_1pt": met}}


def task_of(cfg) -> dict:
    return {"task": cfg.data.task, "difficulty": cfg.data.difficulty, "seed": cfg.data.seed,
            "nl_cot": cfg.data.nl_cot, "n_layer": cfg.model.n_layer,
            "test": cfg.data.test_path or f"generated ({cfg.data.n_test})"}  # fmt: skip


def plot(results: dict[str, dict], path: Path) -> None:
    """Accuracy against layer evaluations per answer: one point per method, System-1.5's lambdas joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    s15 = sorted(
        (r["layer_evals"], r["accuracy"], k) for k, r in results.items() if k.startswith("system15@")
    )
    if s15:
        ax.plot([x for x, _, _ in s15], [y for _, y, _ in s15], "o-", label="System-1.5 (lambda)")
        for x, y, k in s15:
            ax.annotate(k.split("@")[1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    depth = sorted(
        (r["layer_evals"], r["accuracy"]) for k, r in results.items() if k.startswith("system15_depth@")
    )
    if depth:
        ax.plot([x for x, _ in depth], [y for _, y in depth], "x--", label="static depth (every position)")
    for k in ("codi", "cot_sft"):
        if k in results:
            ax.plot(results[k]["layer_evals"], results[k]["accuracy"], "s", label=k)
    ax.set_xlabel("layer evaluations per answer")
    ax.set_ylabel("accuracy (test)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
