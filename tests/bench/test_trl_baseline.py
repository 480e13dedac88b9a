"""bench/trl_baseline.py: TRL's GRPOTrainer runs a couple of steps on a tiny CoT-SFT-shaped model (untrained)
and the function reports its timing and held-out pass@k."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

pytest.importorskip("trl")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on 2 contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def task_and_model(tmp_path):
    """The quickstart task (few rows) and a tiny randomly initialised Llama with its task tokenizer, saved as
    our framework saves a CoT-SFT checkpoint."""
    from rl_latent.config import load_config
    from rl_latent.data.build import load_splits, task_tokenizer
    from rl_latent.model import LatentReasoner

    cfg = load_config(
        str(REPO / "configs" / "quickstart.yaml"), ["data.n_train=16", "data.n_valid=4", "data.n_test=4"]
    )
    splits = load_splits(cfg.data)
    tok = task_tokenizer(cfg.data, cfg.model.max_number, splits)
    model = LatentReasoner.from_config("llama", tok, n_layer=1, n_embd=32, n_head=2, max_positions=128)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    return str(model_dir), list(splits["train"]), list(splits["test"])


def test_run_trl_grpo_runs_trl_and_reports(task_and_model, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    from bench.trl_baseline import run_trl_grpo

    # count TRL's own generation rounds: one per optimizer step proves GRPOTrainer did the training
    rounds = []
    original = GRPOTrainer._generate_and_score_completions

    def counting(self, inputs):
        rounds.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", counting)

    model_dir, train_rows, test_rows = task_and_model
    res = run_trl_grpo(
        model_dir,
        train_rows,
        test_rows,
        prompts_per_step=2,
        group_size=2,
        budget_s=30.0,
        max_steps=2,
        max_completion_length=12,
        eval_n=2,
        eval_ks=(1, 2),
        out_dir=str(tmp_path / "trl"),
    )
    assert res["trainer"] == "trl.trainer.grpo_trainer.GRPOTrainer"
    assert res["steps"] >= 1 and res["steps"] == res["global_step"] == 2
    assert rounds == [4] * res["steps"]  # each step: one round of 2 prompts x 2 completions
    assert res["step_time_s"] > 0 and res["train_seconds"] > 0
    for key in ("pass@1", "pass@2", "accuracy_greedy"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["pass@1"] <= res["pass@2"]
    assert 0 < res["completion_tokens_mean"] <= 12
    assert res["eval_problems"] == 4
    b = res["batch"]
    assert (b["num_generations"], b["per_device_train_batch_size"], b["generation_batch_size"]) == (2, 4, 4)
    assert b["gradient_accumulation_steps"] == b["steps_per_generation"] == 1
    assert not list((tmp_path / "trl").glob("checkpoint-*"))  # no saving


def test_budget_stops_training(task_and_model, tmp_path):
    """With no step cap, the wall-clock budget alone stops TRL (a zero budget: after the first step)."""
    from bench.trl_baseline import run_trl_grpo

    model_dir, train_rows, test_rows = task_and_model
    res = run_trl_grpo(
        model_dir,
        train_rows,
        test_rows[:2],
        prompts_per_step=2,
        group_size=2,
        budget_s=0.0,
        max_completion_length=8,
        eval_n=2,
        eval_ks=(1,),
        out_dir=str(tmp_path / "trl"),
    )
    assert res["steps"] == res["global_step"] == 1
    assert res["step_time_s"] == pytest.approx(res["first_step_time_s"])
