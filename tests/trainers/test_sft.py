"""The SFT recipe through its real entry points: a few steps of CoT-SFT / No-CoT on the embedded task,
exact resume after a crash, `rl-latent eval` outputs and the pipeline summary."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_latent.cli import main
from rl_latent.config import load_config
from trainers import recipe, sft

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.n_train=96",
    "data.n_valid=8",
    "data.n_test=16",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "train.batch_size=8",
    "train.log_every=1",
    "tracking.wandb=offline",
    "eval.max_new_tokens=40",
    "optim.warmup_steps=2",
]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_cot_sft_runs_from_the_cli_and_writes_a_run(tmp_path):
    out = tmp_path / "run"
    main(
        [
            "train",
            str(REPO / "configs/quickstart.yaml"),
            *TINY,
            "train.max_steps=6",
            "train.eval_every=3",
            "train.save_every=3",
            f"train.output_dir={out}",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and 0.0 <= summary["accuracy"] <= 1.0 and summary["positions"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]  # it learns something even in 6 steps
    assert any("eval/arith-d2-validation/accuracy" in r for r in rows)
    assert any("eval/arith-d2/accuracy" in r for r in rows)
    assert list((out / "wandb").rglob("*.wandb")), "no W&B offline run files"
    assert (out / "model" / "latent_config.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000003", "step-000006"]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    common = [
        *TINY,
        "train.max_steps=6",
        "train.save_every=3",
        "train.eval_every=0",
        "tracking.wandb=none",
        "data.n_test=4",
    ]
    whole = load_config(REPO / "configs/quickstart.yaml", [*common, f"train.output_dir={tmp_path / 'a'}"])
    sft.run(whole, progress=False)

    crashed = load_config(REPO / "configs/quickstart.yaml", [*common, f"train.output_dir={tmp_path / 'b'}"])
    real_save = recipe.save_checkpoint

    def save_then_die(engine, model, run_dir, step, state, keep):
        path = real_save(engine, model, run_dir, step, state, keep=keep)
        if step == 3:
            raise RuntimeError("simulated crash after the step-3 checkpoint")
        return path

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft.run(crashed, progress=False)
    monkeypatch.setattr(recipe, "save_checkpoint", real_save)
    resumed = sft.SFTRecipe(crashed, progress=False)
    resumed.setup()
    assert resumed.step == 3
    resumed.train()
    resumed.cleanup()

    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    la = [
        r["train/loss"]
        for r in map(json.loads, (tmp_path / "a/metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    lb = [
        r["train/loss"]
        for r in map(json.loads, (tmp_path / "b/metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert la == lb


def test_nocot_eval_cli_and_pipeline(tmp_path, capsys, shared_data):
    out = tmp_path / "pipe"
    main(
        [
            "pipeline",
            str(REPO / "configs/quickstart.yaml"),
            *TINY,
            "train.max_steps=3",
            "train.eval_every=0",
            f"train.output_dir={out}",
            *("rl.prompts_per_step=4", "rl.group_size=2", "rl.eval_problems=4", "rl.eval_n=8"),
            "rl.workers=1",
        ]
    )
    printed = capsys.readouterr().out
    assert "cot_sft" in printed and "no_cot" in printed and "pipeline finished" in printed
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert set(summary) == {"cot_sft", "no_cot", "codi_hidden", "codi_soft", "system15", "grpo"}
    assert "grpo: 3 steps" in printed and "pass@8" in printed  # the RL stage's readable summary
    assert all(s["steps"] == 3 for s in summary.values())  # the command line wins over stage_overrides
    assert summary["codi_soft"]["latent_steps"] > 0 and summary["cot_sft"]["latent_steps"] == 0

    ev = tmp_path / "ev-soft"  # a latent model through `rl-latent eval`, with the CODI probe
    main(["eval", str(out / "codi_soft" / "model"), "--max-problems", "3", "--probe", "3", "--wandb", "none",
          "--out", str(ev), "--show", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "thought 1:" in printed or "stop?:" in printed
    rec = json.loads((ev / "samples.jsonl").read_text().splitlines()[0])
    assert len(rec["latent_top_tokens"][0]) == 3 and rec["latent_steps"] >= 0

    ev = tmp_path / "ev"
    main(
        [
            "eval",
            str(out / "no_cot" / "model"),
            "--difficulty",
            "3",
            "--task-seed",
            "5",
            "--n-samples",
            "4",
            "--ks",
            "1,4",
            "--max-problems",
            "6",
            "--wandb",
            "offline",
            "--out",
            str(ev),
        ]
    )
    res = json.loads((ev / "results.json").read_text())
    assert {"accuracy", "pass@1", "pass@4", "positions", "layer_evals", "flops", "wall_ms"} <= set(res)
    assert res["pass@4"] >= res["pass@1"]
    assert len((ev / "samples.jsonl").read_text().splitlines()) == 6
    assert (ev / "results.png").stat().st_size > 1000 and list((ev / "wandb").rglob("*.wandb"))

    ev2 = tmp_path / "ev2"
    main(
        [
            "eval",
            str(out / "cot_sft" / "model"),
            "--data",
            str(shared_data / "icot/gsm8k/valid.txt"),
            "--max-problems",
            "4",
            "--wandb",
            "none",
            "--out",
            str(ev2),
        ]
    )
    assert json.loads((ev2 / "results.json").read_text())["n"] == 4


def test_a_second_run_into_a_used_dir_without_resume_is_refused(tmp_path):
    cfg = load_config(
        REPO / "configs/quickstart.yaml",
        [
            *TINY,
            "train.max_steps=1",
            "train.eval_every=0",
            "tracking.wandb=none",
            f"train.output_dir={tmp_path}",
        ],
    )
    sft.run(cfg, progress=False)
    cfg.train.resume = False
    with pytest.raises(FileExistsError, match="train.resume=true"):
        sft.run(cfg, progress=False)
