"""bench/baselines.py runs end to end (tiny budget) and prints the JSON object the issue asks for."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_baselines_prints_one_json_object(tmp_path, shared_data):
    cmd = [
        sys.executable,
        str(REPO / "bench/baselines.py"),
        "--budget-s",
        "2",
        "--task-seed",
        "3",
        "--difficulty",
        "1",
        "--out",
        str(tmp_path / "bench"),
        "--data",
        str(shared_data / "icot/gsm8k/valid.txt"),
        "data.n_train=64",
        "data.n_valid=4",
        "data.n_test=8",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "train.batch_size=8",
        "eval.max_new_tokens=24",
        "train.eval_every=0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert (tmp_path / "bench" / "cot_sft" / "model" / "config.json").is_file()
    for method in ("cot_sft", "no_cot"):
        assert {"accuracy", "positions", "train_seconds"} <= set(res[method])
        assert 0.0 <= res[method]["accuracy"] <= 1.0
        assert res[method]["train_seconds"] <= 10.0  # the budget stops training
        assert res[method]["data"]["file"].endswith("valid.txt")
    assert res["task"] == {"task": "arith", "difficulty": "1", "seed": 3, "n_test": 8}
