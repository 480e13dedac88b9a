"""Throughput of the RL machinery: rollout workers, the step's time split, TRL side by side, weight sync.

    python bench/throughput.py                      # needs runs/bench-rl (python bench/rl.py trains it)
    python bench/throughput.py --budget-s 120 --skip-trl

1. Rollout samples/s through the Ray pool with 1 and 2 workers (same requests, same per-sample seeds).
2. The GRPO step (trainers/grpo.py, Ray workers + DeepSpeed rank) split into rollout, reward, update, sync.
3. Side by side, same run: TRL's GRPOTrainer doing token-level GRPO over the CoT of the CoT-SFT model (same
   size, task, prompts per step and group size): seconds per step, and pass@8 after the same wall clock.
4. Weight sync of a 124M-parameter GPT-2 (vocab 50257, 12 x 768) to 2 workers: object-store put + checksum on
   the trainer side, then every worker reads, verifies and loads it.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def start_checkpoint(runs: Path) -> str:
    sys.path.insert(0, str(REPO / "bench"))
    from rl import pick_start

    return str(pick_start(runs / "codi_soft")[0])


def rollout_rate(model_dir: str, questions: list[str], workers: int, reps: int) -> float:
    from rollouts.pool import Request, RolloutPool

    pool = RolloutPool(model_dir, workers=workers)
    reqs = [Request(q, "", 1000 + i, {}) for i, q in enumerate(questions)]
    kw = dict(policy="gumbel", policy_kwargs={"tau": 0.5}, answer_temperature=1.0, max_answer_tokens=16)
    pool.rollout(reqs[: 8 * workers], **kw)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        pool.rollout(reqs, **kw)
        times.append(time.perf_counter() - t0)
    pool.shutdown()
    return len(reqs) / statistics.median(times)


def grpo_run(
    model_dir: str, out: Path, budget_s: float, prompts: int, group: int, eval_problems: int
) -> dict:
    from rl_latent.config import load_config
    from rl_latent.pipeline import run_recipe
    from rl_latent.tracking import read_jsonl

    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (a leftover checkpoint would be resumed)
    cfg = load_config(
        REPO / "configs" / "grpo-quickstart.yaml",
        [
            f"train.init_from={model_dir}", f"train.output_dir={out}", "train.max_steps=100000",
            f"train.time_budget_s={budget_s}", "train.save_every=0", "train.resume=false", "rl.eval_every=0",
            f"rl.prompts_per_step={prompts}", f"rl.group_size={group}", f"rl.eval_problems={eval_problems}",
            "rl.workers=2", "rl.trainer_cpus=2", "tracking.wandb=none", "optim.lr=1e-4",
            "rl.minibatches=1",  # one optimizer step per generation round, as the TRL run does
        ],
    )  # fmt: skip
    summary = run_recipe(cfg, progress=False)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "timing/rollout" in r][2:]  # after warm-up
    split = {
        k: statistics.mean(r[f"timing/{k}"] for r in rows) for k in ("rollout", "reward", "update", "sync")
    }
    return {
        "step_time_s": round(sum(split.values()), 4),
        "split_s": {k: round(v, 4) for k, v in split.items()},
        "steps": summary["steps"],
        "pass@8_start": summary["start/pass@8"],
        "pass@8": summary["pass@8"],
        "pass@1": summary["pass@1"],
        "accuracy_greedy": summary["accuracy"],
        "latent_steps": summary["latent_steps"],
        "logprob_gap_max": max(r["policy/logprob_gap"] for r in rows),
    }


def weight_sync_124m(out: Path, reps: int, warmup: int = 3) -> dict:
    import ray
    import torch
    from transformers import GPT2Config

    from rl_latent.data.tokenizer import build_tokenizer
    from rl_latent.model import LatentReasoner
    from rollouts.pool import RolloutPool
    from rollouts.worker import to_numpy_state, weights_checksum

    tok = build_tokenizer(max_number=199)
    model = LatentReasoner.from_config("gpt2", tok, n_layer=12, n_embd=768, n_head=12, max_positions=1024)
    model.lm.resize_token_embeddings(GPT2Config().vocab_size)  # GPT-2's 50257-token embedding
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    pool = RolloutPool(str(out), workers=2)
    parts = {"put_s": [], "checksum_s": [], "workers_load_s": [], "total_s": []}
    # The first puts fault in fresh object-store pages (0.25-0.7 s for 500 MB here); once freed snapshots
    # are recycled a put is a 0.07 s memcpy. An RL run syncs every step, so the steady state is the figure;
    # the cold syncs are reported apart.
    for i in range(warmup + reps):
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)  # new weights each time
        t0 = time.perf_counter()
        arrays = to_numpy_state(model.state_dict())
        ref = [ray.put(arrays)]
        t1 = time.perf_counter()
        checksum = weights_checksum(arrays)
        t2 = time.perf_counter()
        pool.sync(ref, i + 1, checksum)
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            parts[k].append(v)
    pool.shutdown()
    steady = {k: round(statistics.median(v[warmup:]), 4) for k, v in parts.items()}
    return {"params": n_params, "workers": 2, "reps": reps, **steady,
            "cold_total_s": [round(t, 3) for t in parts["total_s"][:warmup]]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", default=str(REPO / "runs" / "bench-rl"), help="where bench/rl.py trained")
    ap.add_argument("--budget-s", type=float, default=150.0, help="wall clock of each side-by-side run")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (both sides)")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (both sides)")
    ap.add_argument("--rollout-samples", type=int, default=512)
    ap.add_argument("--eval-problems", type=int, default=100)
    ap.add_argument("--trl-threads", type=int, default=1, help="torch threads of the TRL run")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-throughput"))
    args = ap.parse_args()

    from rl_latent.config import load_config
    from rl_latent.data.build import load_splits
    from trainers.rl import init_ray

    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = start_checkpoint(runs)
    cfg = load_config(REPO / "configs" / "grpo-quickstart.yaml")
    splits = load_splits(cfg.data)
    train, test = splits["train"], splits["test"]
    questions = [train[i]["question"] for i in range(args.rollout_samples)]
    init_ray(None, 4)

    res: dict = {"model": model_dir}
    one = rollout_rate(model_dir, questions, 1, reps=3)
    two = rollout_rate(model_dir, questions, 2, reps=3)
    res["rollout"] = {"samples": len(questions), "samples_per_s_1_worker": round(one, 1),
                      "samples_per_s_2_workers": round(two, 1), "speedup": round(two / one, 3)}  # fmt: skip
    print(json.dumps(res["rollout"]), file=sys.stderr)

    res["grpo_latent"] = grpo_run(
        model_dir, out / "grpo", args.budget_s, args.prompts, args.group, args.eval_problems
    )
    print(json.dumps(res["grpo_latent"]), file=sys.stderr)

    if not args.skip_trl:
        from trl_baseline import run_trl_grpo

        rows = [dict(train[i]) for i in range(len(train))]
        evals = [dict(test[i]) for i in range(args.eval_problems)]
        trl = run_trl_grpo(
            str(runs / "cot_sft" / "model"), rows, evals, prompts_per_step=args.prompts,
            group_size=args.group, budget_s=args.budget_s, out_dir=str(out / "trl"),
            num_threads=args.trl_threads,
        )  # fmt: skip
        keys = ("step_time_s", "steps", "pass@1", "pass@8", "accuracy_greedy", "completion_tokens_mean")
        res["trl_grpo_cot"] = {k: trl[k] for k in (*keys, "torch_threads")}
        res["step_speedup_vs_trl"] = round(trl["step_time_s"] / res["grpo_latent"]["step_time_s"], 2)
        print(json.dumps(res["trl_grpo_cot"]), file=sys.stderr)

    res["weight_sync_gpt2_124m"] = weight_sync_124m(out / "gpt2-124m", reps=5)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
