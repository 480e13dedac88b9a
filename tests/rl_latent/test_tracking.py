"""Tests for rl_latent.tracking: real offline W&B files, the JSONL mirror, summaries and plots."""

import json

import pytest

from rl_latent.tracking import Tracker, plot_bars, plot_curves, read_jsonl, resolve_mode

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_offline_run_writes_wandb_files_and_jsonl(tmp_path):
    with Tracker(tmp_path, run_name="t-offline", mode="offline", config={"lr": 1e-4}) as tr:
        tr.log({"train/loss": 2.5, "timing/update": 0.1}, step=0)
        tr.log({"train/loss": 1.5, "eval/gsm8k/pass@8": 0.75}, step=3)
        tr.summary({"eval/gsm8k/accuracy": 0.5})
        run_id = tr.wandb_run.id
    wandb_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1 and run_id in wandb_files[0].name
    assert wandb_files[0].stat().st_size > 0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3]
    assert rows[0]["train/loss"] == 2.5 and rows[0]["timing/update"] == 0.1
    assert rows[1]["eval/gsm8k/pass@8"] == 0.75 and "timing/update" not in rows[1]
    assert all(isinstance(r["time"], float) for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"eval/gsm8k/accuracy": 0.5}


def test_mode_none_writes_only_jsonl(tmp_path):
    tr = Tracker(tmp_path, mode="none")
    assert tr.wandb_run is None
    tr.log({"train/loss": 1.0}, step=1)
    tr.summary({"best": 1})
    tr.summary({"last": 2})  # merged with the earlier summary
    tr.finish()
    tr.finish()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["train/loss"] == 1.0
    assert json.loads((tmp_path / "summary.json").read_text()) == {"best": 1, "last": 2}
    with pytest.raises(RuntimeError, match="already finished"):
        tr.log({"x": 1.0}, step=2)


def test_log_converts_scalars_and_rejects_bad_input(tmp_path):
    import numpy as np
    import torch

    with Tracker(tmp_path, mode="none") as tr:
        tr.log({"a": np.float32(0.5), "b": torch.tensor(3), "c": np.int64(7)}, step=0)
        with pytest.raises(TypeError, match="'v' has non-scalar"):
            tr.log({"v": [1, 2]}, step=1)
        with pytest.raises(TypeError, match="'t' is not a scalar"):
            tr.log({"t": torch.ones(3)}, step=1)
        with pytest.raises(ValueError, match="reserved"):
            tr.log({"step": 1.0}, step=1)
        tr.log({"a": 1.0}, step=5)
        with pytest.raises(ValueError, match="step 4 is before the last logged step 5"):
            tr.log({"a": 1.0}, step=4)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["a"] == 0.5 and rows[0]["b"] == 3 and rows[0]["c"] == 7
    assert [r["step"] for r in rows] == [0, 5]  # rejected calls wrote nothing


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "none"
    assert resolve_mode("offline") == "offline"
    with pytest.raises(ValueError, match="tracking mode"):
        resolve_mode("cloud")


def test_read_jsonl_names_bad_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 0}\n\n{"step": 1\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:3: invalid JSON"):
        read_jsonl(p)


def test_plots_produce_pngs(tmp_path):
    records = [{"step": s, "time": 0.0, "train/loss": 1.0 / (s + 1)} for s in range(5)]
    records += [{"step": s, "time": 0.0, "eval/gsm8k/accuracy": 0.1 * s} for s in (0, 4)]
    curves = tmp_path / "plots" / "curves.png"
    plot_curves(records, ["train/loss", "eval/gsm8k/accuracy"], curves, "run")
    bars = tmp_path / "bars.png"
    results = {"codi": {"accuracy": 0.4, "pass@8": 0.7}, "grpo": {"accuracy": 0.5, "pass@8": 0.8}}
    results["greedy"] = {"accuracy": 0.45}  # no pass@8: no bar there
    plot_bars(results, ["accuracy", "pass@8"], bars, "methods")
    for png in (curves, bars):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    with pytest.raises(ValueError, match="'eval/x'"):
        plot_curves(records, ["eval/x"], tmp_path / "x.png", "x")
    with pytest.raises(ValueError, match="no method in results has key 'pass@1'"):
        plot_bars(results, ["pass@1"], tmp_path / "y.png", "y")
