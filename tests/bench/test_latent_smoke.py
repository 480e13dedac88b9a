"""bench/latent.py runs end to end (a few steps per method) and prints the JSON object the issue asks for."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = {"accuracy", "positions", "latent_steps", "latency_b1_ms", "samples_per_s_b64", "train_seconds"}


def test_latent_bench_prints_one_json_object(tmp_path):
    cmd = [
        sys.executable, str(REPO / "bench/latent.py"), "--task-seed", "3", "--difficulty", "1",
        "--steps", "cot_sft=2,no_cot=2,codi=2,codi_hidden=2,codi_soft=2", "--latency-problems", "2",
        "--out", str(tmp_path / "bench"), "data.n_train=64", "data.n_valid=4", "data.n_test=8",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.batch_size=8",
        "eval.max_new_tokens=24", "train.eval_every=0",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    for method in ("cot_sft", "no_cot", "codi", "codi_hidden", "codi_soft"):
        assert KEYS <= set(res[method]), method
        assert res[method]["steps"] == 2 and 0.0 <= res[method]["accuracy"] <= 1.0
        assert res[method]["latency_b1_ms"] > 0 and res[method]["samples_per_s_b64"] > 0
    assert res["cot_sft"]["latent_steps"] == 0 and res["codi"]["latent_steps"] == 6  # published CODI: K = 6
    assert set(res["latent_steps_by_cot_steps"]["codi_soft"]) <= {"2", "3"}  # level 1: 2-3 CoT steps
    assert res["task"]["difficulty"] == "1" and res["task"]["seed"] == 3
