"""Batch-1 latency of a shortcuts bench's models, timed in alternation.

    python bench/latency.py --run runs/s20-p --lam 0.7          # cot_sft, codi_soft, system15 at lambda 0.7
    python bench/latency.py --run runs/s20-p --lam 0.7 --repeats 9

``bench/shortcuts.py`` times each model three times in a row, minutes apart from the next model; on a shared
CPU a whole block of timings can run 1.5x slow, and the ratio between two models then moves with it (6.2x to
11.4x across three runs of the same models). Here each round times every model once on the same problems
(greedy, one problem at a time, as ``latency_b1_ms``), so a slow spell hits all of them: the ratio of
medians is the number to quote, or the median of each round's own ratio (``over_system15_per_round``) when the
machine's speed drifts during the run. Prints one JSON object: per model its timings (ms per problem) and
median, and each model's median over System-1.5's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/shortcuts.py, loaded as a module, sets the hub offline, puts the repo on sys.path and names the task
_spec = importlib.util.spec_from_file_location("bench_shortcuts", REPO / "bench" / "shortcuts.py")
bench_shortcuts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_shortcuts)
DEFAULTS = bench_shortcuts.DEFAULTS  # the task that bench trains on
MODELS = {method: stage for method, (stage, _) in bench_shortcuts.METHODS.items()}  # method -> its run dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True, help="a bench/shortcuts.py --out directory")
    ap.add_argument("--lam", type=float, default=0.7, help="System-1.5 exit threshold")
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--problems", type=int, default=30, help="test problems per timing")
    ap.add_argument("--repeats", type=int, default=5, help="rounds (each times every model once)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (after " + " ".join(DEFAULTS) + ")")
    args = ap.parse_args()

    from rl_latent.config import load_config, stage_config
    from rl_latent.model import LatentReasoner

    cfg = stage_config(load_config(args.config, [*DEFAULTS, *args.overrides]), "cot_sft")
    test = bench_shortcuts.bench_latent.test_split(cfg)
    models = {}
    for name, stage in MODELS.items():
        path = Path(args.run) / stage / "model"
        if not (path / "config.json").is_file():
            sys.exit(f"{path}: no model (train it with bench/shortcuts.py --out {args.run})")
        models[name] = LatentReasoner.from_pretrained(str(path))
    models["system15"].latent_extra["shortcut"]["lam"] = args.lam
    kw = dict(max_new_tokens=cfg.eval.max_new_tokens, progress=False, latent=cfg.latent, batch_size=1)
    times = bench_shortcuts.bench_latent.alternate(models, test, args.problems, args.repeats, kw)
    med = {k: statistics.median(v) for k, v in times.items()}
    others = [k for k in models if k != "system15"]
    out = {
        "run": args.run, "lam": args.lam, "problems": args.problems,
        "latency_b1_ms": {k: {"median": round(med[k], 2), "runs": v} for k, v in times.items()},
        "over_system15": {k: round(med[k] / med["system15"], 2) for k in others},
        # each round's own ratio (timings seconds apart), then their median: steadier when the machine's speed
        # drifts over the run, as a shared one's does
        "over_system15_per_round": {
            k: round(statistics.median(a / b for a, b in zip(times[k], times["system15"])), 2) for k in others
        },
    }  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
