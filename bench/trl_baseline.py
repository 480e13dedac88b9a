"""TRL's own `GRPOTrainer` doing token-level GRPO over the chain of thought: the baseline that our
latent-thought GRPO step is timed against (same model size, task, batch and group size).

    python bench/trl_baseline.py --model-dir runs/bench-latent/cot_sft/model --budget-s 120 \\
        --prompts-per-step 8 --group-size 8 --eval-problems 100

Prints one JSON object (see `run_trl_grpo`). Importable: `from bench.trl_baseline import run_trl_grpo`.

Setup, everything fp32 on the CPU, nothing from the hub:
  * The policy is `LatentReasoner.from_pretrained(model_dir).lm` (a plain HF causal LM); its word-level
    task tokenizer is the processing class. Prompts are plain text (`prompt_text(row)`, no chat template),
    which TRL tokenizes with `tokenizer(text=prompts)`; the task tokenizer adds no special tokens, so TRL
    sees exactly the prompt ids the CoT-SFT model was trained on. TRL left-pads prompts itself, so the
    tokenizer is used as loaded (no chat template or padding side needs setting).
  * Reward: 1.0 when `extract_answer(completion)` matches the row's answer (`answers_match`), else 0.0.
  * Batch mapping: one optimizer step = one generation round = `prompts_per_step` prompts x `group_size`
    completions, in a single micro-batch:
        num_generations             = group_size
        per_device_train_batch_size = prompts_per_step * group_size   (completions per micro-batch)
        gradient_accumulation_steps = 1
        generation_batch_size       = prompts_per_step * group_size   (so steps_per_generation = 1)
        num_iterations              = 1                               (on-policy: one update per round)
  * beta = 0 (no reference model), temperature 1.0, top_k 0 / top_p 1 (plain sampling), constant learning
    rate, no warm-up, TRL's default loss ("dapo") and per-group reward scaling, no vLLM, no saving,
    report_to none. TRL overrides two `TrainingArguments` defaults that matter on a CPU: `bf16` (True unless
    fp16) and `gradient_checkpointing` (True); both are switched off here (the latter through its
    transformers 5 name, `activation_checkpointing`).
  * A `TrainerCallback` times every optimizer step (on_step_begin -> on_step_end: generation, reward,
    forward/backward and the optimizer update) and stops training once `budget_s` seconds have passed.
  * After training, `rl_latent.evaluate.evaluate` scores the trained LM on the held-out rows: greedy
    accuracy, and the unbiased pass@k from `eval_n` samples per problem at temperature 1, with the same
    `max_completion_length` cap on new tokens as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import TrainerCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class BudgetTimer(TrainerCallback):
    """Times each optimizer step and stops training once `budget_s` wall-clock seconds have passed."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.train_start: float | None = None
        self.step_start: float | None = None
        self.last_step_end: float | None = None
        self.step_times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step_times.append(now - self.step_start)
        self.last_step_end = now
        if now - self.train_start >= self.budget_s:
            control.should_training_stop = True
        return control

    @property
    def train_seconds(self) -> float:
        """From the start of training to the end of the last optimizer step."""
        if self.train_start is None or self.last_step_end is None:
            return 0.0
        return self.last_step_end - self.train_start


def correctness_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 for a completion whose final answer matches the target, else 0.0 (TRL passes the dataset's other
    columns as keyword lists, one entry per completion)."""
    from rl_latent.metrics import answers_match, extract_answer

    return [float(answers_match(extract_answer(c), a)) for c, a in zip(completions, answer)]


def run_trl_grpo(
    model_dir: str,
    train_rows: list[dict],
    eval_rows: list[dict],
    *,
    prompts_per_step: int,
    group_size: int,
    budget_s: float,
    max_completion_length: int = 48,
    lr: float = 1e-5,
    eval_n: int = 16,
    eval_ks=(1, 8),
    seed: int = 0,
    out_dir: str,
    max_steps: int | None = None,
    eval_batch_size: int = 64,
    num_threads: int | None = None,
) -> dict:
    """TRL GRPOTrainer (token-level GRPO over the CoT) for `budget_s` wall-clock seconds of training; returns
    {"steps": int, "step_time_s": mean seconds per optimizer step (excluding the first warm-up step),
     "train_seconds": float, "pass@1": float, "pass@8": float (held-out, n=eval_n samples per problem,
     unbiased estimator), "accuracy_greedy": float, "completion_tokens_mean": float}.

    Optional extras: `max_steps` also caps the optimizer steps (tests); `eval_batch_size` is the number of
    problems per generate call in the evaluation; `num_threads` sets torch's CPU threads for the whole run
    (restored after). One pass@k key per k in `eval_ks`. `completion_tokens_mean` is TRL's
    `completions/mean_length` averaged over the training steps. Extra keys: "eval_completion_tokens_mean"
    (greedy held-out completions), "first_step_time_s", "global_step" (TRL's own `state.global_step`),
    "trainer", "trl_version", "reward_mean_first"/"reward_mean_last" (mean training reward of the first and
    last step), "batch" (the mapping above), "eval_problems", "eval_n", "torch_threads"."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl_latent.data.format import prompt_text
    from rl_latent.evaluate import evaluate
    from rl_latent.model import LatentReasoner

    if prompts_per_step < 1 or group_size < 2:
        raise ValueError(f"need prompts_per_step >= 1, group_size >= 2; got {prompts_per_step}, {group_size}")
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        model = LatentReasoner.from_pretrained(model_dir)
        model.lm.to(torch.float32)
        train_ds = Dataset.from_dict(
            {"prompt": [prompt_text(r) for r in train_rows], "answer": [str(r["answer"]) for r in train_rows]}
        )
        completions_per_step = prompts_per_step * group_size
        args = GRPOConfig(
            output_dir=out_dir,
            # one optimizer step = one generation round of prompts_per_step x group_size completions
            num_generations=group_size,
            per_device_train_batch_size=completions_per_step,
            gradient_accumulation_steps=1,
            generation_batch_size=completions_per_step,
            num_iterations=1,
            max_completion_length=max_completion_length,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.0,
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_steps=max_steps if max_steps is not None else 10**9,  # the budget callback stops it
            seed=seed,
            data_seed=seed,
            use_cpu=True,
            bf16=False,
            fp16=False,
            activation_checkpointing=False,  # transformers 5's name for gradient_checkpointing
            use_vllm=False,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        timer = BudgetTimer(budget_s)
        trainer = GRPOTrainer(
            model=model.lm,
            reward_funcs=correctness_reward,
            args=args,
            train_dataset=train_ds,
            processing_class=model.tokenizer,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)  # with tqdm off, it prints every log dict to stdout
        trainer.train()
        if trainer.model is not model.lm:  # CPU, one process: the Trainer trains the LM in place
            raise RuntimeError("GRPOTrainer replaced the model; evaluating it would miss the training")

        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
        lengths = [h["completions/mean_length"] for h in logs]
        rewards = [h["reward"] for h in logs if "reward" in h]
        steps = len(timer.step_times)
        timed = timer.step_times[1:] if steps > 1 else timer.step_times

        res = evaluate(
            model,
            eval_rows,
            n_samples=eval_n,
            ks=tuple(eval_ks),
            temperature=1.0,
            max_new_tokens=max_completion_length,
            batch_size=eval_batch_size,
            progress=False,
            desc="trl-eval",
        )
        nan = float("nan")
        return {
            "steps": steps,
            "step_time_s": sum(timed) / len(timed) if timed else nan,
            "train_seconds": timer.train_seconds,
            **{f"pass@{k}": res.metrics[f"pass@{k}"] for k in eval_ks},
            "accuracy_greedy": res.metrics["accuracy"],
            "completion_tokens_mean": sum(lengths) / len(lengths) if lengths else nan,
            "eval_completion_tokens_mean": sum(r["positions"] for r in res.records) / len(res.records),
            "first_step_time_s": timer.step_times[0] if timer.step_times else nan,
            "global_step": trainer.state.global_step,
            "trainer": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
            "trl_version": trl.__version__,
            "reward_mean_first": rewards[0] if rewards else nan,
            "reward_mean_last": rewards[-1] if rewards else nan,
            "batch": {
                "prompts_per_step": prompts_per_step,
                "group_size": group_size,
                "num_generations": args.num_generations,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "generation_batch_size": args.generation_batch_size,
                "steps_per_generation": args.steps_per_generation,
            },
            "eval_problems": len(eval_rows),
            "eval_n": eval_n,
            "torch_threads": torch.get_num_threads(),
        }
    finally:
        torch.set_num_threads(threads_before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", default=str(REPO / "runs" / "bench-latent" / "cot_sft" / "model"))
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"), help="the task's config")
    ap.add_argument("--budget-s", type=float, default=120.0, help="training wall-clock seconds")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--eval-problems", type=int, default=100, help="held-out (test split) problems scored")
    ap.add_argument("--eval-n", type=int, default=16, help="samples per problem for pass@k")
    ap.add_argument("--max-completion-length", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (0: torch's default). On a small shared CPU one thread is much faster:\n"
        "two threads contending with other jobs made generation ~20x slower (OpenMP spin-waits)",
    )  # fmt: skip
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-trl"), help="TRL's output_dir (no saving)")
    args = ap.parse_args()

    from rl_latent.config import load_config
    from rl_latent.data.build import load_splits

    splits = load_splits(load_config(args.config).data)
    test = splits["test"]
    result = run_trl_grpo(
        args.model_dir,
        list(splits["train"]),
        [test[i] for i in range(min(args.eval_problems, len(test)))],
        prompts_per_step=args.prompts_per_step,
        group_size=args.group_size,
        budget_s=args.budget_s,
        max_completion_length=args.max_completion_length,
        lr=args.lr,
        eval_n=args.eval_n,
        eval_ks=(1, 8),
        seed=args.seed,
        out_dir=args.out,
        num_threads=args.threads or None,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
