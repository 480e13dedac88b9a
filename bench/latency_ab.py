"""Batch-1 latency of one model under two checkouts of this repo, timed in turn: did a code change help?

    git clone -q . /tmp/old && git -C /tmp/old checkout -q HEAD~3     # the code to compare with
    python bench/latency_ab.py --b /tmp/old --run runs/s22-rl --lam 0.7  # this checkout (a) vs /tmp/old (b)
    python bench/latency_ab.py --b /tmp/old --run runs/s22-rl --model cot_sft --rounds 8

Two worker processes, one per checkout (each imports ``rl_latent`` and ``rollouts`` from its own tree), load
the same model and test problems; every round each times ``--problems`` problems one at a time (greedy, as
``latency_b1_ms``), seconds apart, and which goes first alternates from round to round (on a shared CPU the
second of a pair read ~2% slower). Single runs minutes apart differ by up to 30% here; this A/B's noise: the
same code against itself read 0.944 to 1.024 (16 rounds of 30 problems, four runs). Prints one JSON object:
per side its checkout, its first evaluation's accuracy and layer evaluations (both sides should decode
alike), its timings (ms per problem) and their median, and ``b_over_a``, the median of each round's ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """Load the model from ``--run`` with ``--repo``'s code; on each stdin line time the problems once."""
    sys.path.insert(0, args.repo)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rl_latent.config import load_config, stage_config
    from rl_latent.data.build import load_splits
    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner

    cfg = stage_config(load_config(args.config, args.overrides), "cot_sft")
    cfg.data.n_train = 0 if cfg.data.task == "arith" else cfg.data.n_train  # only the test split is timed
    test = load_splits(cfg.data)["test"]
    model = LatentReasoner.from_pretrained(str(Path(args.run) / args.stage / "model"))
    if "shortcut" in model.latent_extra:
        model.latent_extra["shortcut"]["lam"] = args.lam
    kw = dict(max_new_tokens=cfg.eval.max_new_tokens, progress=False, latent=cfg.latent, batch_size=1)
    first = evaluate(model, test, max_problems=args.problems, **kw).metrics  # also the warm-up
    print(json.dumps({k: first[k] for k in ("accuracy", "layer_evals")}), flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        evaluate(model, test, max_problems=args.problems, **kw)
        print(1000 * (time.perf_counter() - t0) / args.problems, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", default=str(REPO), help="checkout A (default: this one)")
    ap.add_argument("--b", help="checkout B (e.g. a clone at the commit to compare with); required")
    ap.add_argument("--run", required=True, help="a bench/shortcuts.py --out directory (its models)")
    ap.add_argument("--model", default="system15", choices=["cot_sft", "codi", "system15"])
    ap.add_argument("--lam", type=float, default=0.7, help="System-1.5 exit threshold")
    ap.add_argument("--problems", type=int, default=30, help="test problems per timing")
    ap.add_argument("--rounds", type=int, default=16, help="rounds (each times both sides once)")
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (after bench/shortcuts.py's)")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.b:
        ap.error("--b CHECKOUT is required")
    # bench/shortcuts.py names the task its models were trained on and each method's run dir; the workers
    # get them as arguments (loading that module here imports this checkout's code, which a worker must not)
    spec = importlib.util.spec_from_file_location("bench_shortcuts", REPO / "bench" / "shortcuts.py")
    bench_shortcuts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_shortcuts)
    stage = bench_shortcuts.METHODS[args.model][0]
    overrides = [*bench_shortcuts.DEFAULTS, *args.overrides]

    sides = {"a": str(Path(args.a).resolve()), "b": str(Path(args.b).resolve())}
    for side, repo in sides.items():
        if not (Path(repo) / "rl_latent").is_dir():
            sys.exit(f"--{side} {repo}: not a checkout of this repo (no rl_latent/)")
    run = str(Path(args.run).resolve())
    procs, first = {}, {}
    for side, repo in sides.items():
        cmd = [sys.executable, __file__, "--worker", "--repo", repo, "--run", run, "--stage", stage,
               "--lam", str(args.lam), "--problems", str(args.problems), "--config", args.config,
               "--", *overrides]  # fmt: skip
        procs[side] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = procs[side].stdout.readline()
        if not line:
            sys.exit(f"the worker for --{side} {repo} exited before timing (its error is above)")
        first[side] = json.loads(line)
    times: dict[str, list[float]] = {"a": [], "b": []}
    try:
        for r in range(args.rounds):
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                procs[side].stdin.write("go\n")
                procs[side].stdin.flush()
                times[side].append(round(float(procs[side].stdout.readline()), 2))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    out = {
        "run": run, "model": args.model, "lam": args.lam, "problems": args.problems, "rounds": args.rounds,
        **{side: {"checkout": sides[side], **first[side], "median_ms": statistics.median(times[side]),
                  "ms": times[side]} for side in sides},
        "b_over_a": round(statistics.median(b / a for a, b in zip(times["a"], times["b"])), 3),
    }  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
