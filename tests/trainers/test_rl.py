"""The RL loop end to end on a tiny latent model: the real entry point, Ray actors, DeepSpeed ranks, W&B."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_latent.cli import main
from rl_latent.config import load_config
from rl_latent.tracking import read_jsonl
from tests.conftest import REPO
from trainers.rl import eval_requests, round_size

CONFIG = str(REPO / "configs" / "grpo-quickstart.yaml")
REWARDS = "[correct, compute, {name: batch_exploration, weight: 0.5}]"  # every built-in kind


def _overrides(model_dir: str, out: Path, **extra) -> list[str]:
    base = {
        "train.init_from": model_dir,
        "train.output_dir": str(out),
        "train.max_steps": 3,
        "train.save_every": 2,
        "train.time_budget_s": 0,
        "data.n_train": 64,
        "data.n_valid": 8,
        "data.n_test": 8,
        "rl.prompts_per_step": 4,
        "rl.group_size": 4,
        "rl.eval_every": 2,
        "rl.eval_problems": 4,
        "rl.eval_n": 8,
        "eval.max_new_tokens": 6,
        "optim.lr": 1e-3,
        "rl.rewards": "[correct, compute]",  # an untrained model is never correct; its latent steps vary
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def test_grpo_entry_point_logs_everything_and_exports_the_model(
    ray_local, tiny_latent_dirs, tmp_path, capsys
):
    out = tmp_path / "grpo"
    main(["train", CONFIG, *_overrides(tiny_latent_dirs["soft"], out, **{"rl.rewards": REWARDS})])
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :])["steps"] == 3  # the summary `rl-latent train` prints
    rows = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in rows if "train/reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    keys = ["policy/kl", "policy/clipfrac", "policy/entropy", "policy/logprob_gap", "train/correct"]
    keys += [
        "train/compute",
        "train/batch_exploration",
        "timing/rollout",
        "timing/reward",
        "timing/update",
        "timing/sync",
        "rollout/staleness",
    ]
    for key in keys:
        assert key in steps[0], key
    assert max(r["policy/logprob_gap"] for r in steps) <= 1e-4
    assert all(r["rollout/staleness"] == 0 for r in steps)
    evals = [r["step"] for r in rows if "eval/arith-d2/pass@8" in r]
    assert evals == [0, 2, 3]  # start, every 2 steps, end
    assert (out / "pass_at_k.png").stat().st_size > 1000
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    before = load_file(Path(tiny_latent_dirs["soft"]) / "model.safetensors")
    after = _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved


def test_two_deepspeed_ranks_take_the_step_one_rank_takes(ray_local, tiny_latent_dirs, tmp_path):
    runs = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        over = _overrides(
            tiny_latent_dirs["soft"], out, **{"rl.trainer_ranks": ranks, "rl.trainer_cpus": 1,
            "rl.minibatches": 1, "train.max_steps": 2, "rl.eval_every": 0, "tracking.wandb": "none"}
        )  # fmt: skip
        main(["train", CONFIG, *over])
        runs[ranks] = _weights(out)
    # The loss is a mean over the global count of positions: splitting the batch over ranks changes nothing.
    for k, v in runs[1].items():
        torch.testing.assert_close(runs[2][k], v, atol=2e-6, rtol=1e-5)


def test_ppo_trains_a_value_head_beside_the_policy(ray_local, tiny_latent_dirs, tmp_path):
    out = tmp_path / "ppo"
    over = _overrides(
        tiny_latent_dirs["hidden"], out, **{"train.recipe": "ppo", "latent.policy": "gaussian",
        "rl.eval_every": 0, "tracking.wandb": "none", "train.max_steps": 2}
    )  # fmt: skip
    main(["train", CONFIG, *over])
    steps = [r for r in read_jsonl(out / "metrics.jsonl") if "train/value_loss" in r]
    assert len(steps) == 2 and all(r["policy/logprob_gap"] <= 1e-4 for r in steps)
    assert (out / "model" / "model.safetensors").is_file()
    ckpt = out / "checkpoints" / "step-000002" / "model"
    assert (ckpt / "value_head.pt").is_file()


@pytest.mark.parametrize(
    "reward,match",
    [
        (
            "tests.trainers.bad_rewards:raises",
            r"reward 'tests.trainers.bad_rewards:raises' raised ValueError.* sample 4",
        ),
        ("tests.trainers.bad_rewards:half_the_values", r"returned 8 values for 16 samples"),
        ("no_such_reward", r"unknown reward"),
    ],
)
def test_a_bad_reward_stops_the_run_naming_it(ray_local, tiny_latent_dirs, tmp_path, reward, match):
    over = _overrides(tiny_latent_dirs["soft"], tmp_path / "bad", **{"rl.rewards": f"[{reward}]"})
    with pytest.raises(Exception, match=match):
        main(["train", CONFIG, *over, "tracking.wandb=none"])


def test_skip_keeps_training_without_the_bad_samples(ray_local, tiny_latent_dirs, tmp_path):
    out = tmp_path / "skip"
    over = _overrides(
        tiny_latent_dirs["soft"], out, **{"rl.rewards": "[tests.trainers.bad_rewards:raises, correct]",
        "rl.on_reward_error": "skip", "tracking.wandb": "none", "rl.eval_every": 0}
    )  # fmt: skip
    main(["train", CONFIG, *over])
    steps = [r for r in read_jsonl(out / "metrics.jsonl") if "train/skipped" in r]
    assert [r["train/skipped"] for r in steps] == [4.0, 4.0, 4.0]  # the 4 samples of prompt 1, each step


def test_round_size_rolls_out_the_missing_groups_over_the_informative_share():
    assert round_size(16, 0, 0) == 16  # the step's own round
    assert round_size(16, 0, 16) == 16  # nothing informative yet: a full round
    assert round_size(16, 14, 16) == 4  # 2 missing at 14/16 informative: ceil(2.29) + 1
    assert round_size(16, 4, 16) == 16  # 12 missing at 1/4: 49, capped


def test_eval_requests_draw_the_same_samples_for_one_eval_seed():
    rows = [{"question": "q0", "answer": 1}, {"question": "q1", "answer": 2}]
    a, b, c = eval_requests(rows, 3, 0), eval_requests(rows, 3, 0), eval_requests(rows, 3, 1)
    assert [r.question for r in a] == ["q0"] * 3 + ["q1"] * 3 and a[3].target == "2"
    assert [r.seed for r in a] == [r.seed for r in b] and len({r.seed for r in a}) == 6
    assert not {r.seed for r in a} & {r.seed for r in c}  # another eval seed, other draws
    # the default follows train.seed; rl.eval_seed pins it across training seeds
    assert load_config(CONFIG).rl.eval_seed is None
    assert load_config(CONFIG, ["rl.eval_seed=5", "train.seed=1"]).rl.eval_seed == 5


def test_dynamic_sampling_replaces_uniform_groups_with_fresh_prompts(ray_local, tiny_latent_dirs, tmp_path):
    # round 0's 4 groups all score 0 (no advantage); round 1's 4 fresh ones alternate 0/1 and are kept
    rewards = "[tests.trainers.bad_rewards:alternating_after_round0]"
    runs = {}
    for extra in (0, 1):
        out = tmp_path / f"ds{extra}"
        over = _overrides(
            tiny_latent_dirs["soft"], out, **{"rl.rewards": rewards, "rl.dynamic_sampling": extra,
            "tracking.wandb": "none", "rl.eval_every": 0, "train.max_steps": 2}
        )  # fmt: skip
        main(["train", CONFIG, *over])
        runs[extra] = [r for r in read_jsonl(out / "metrics.jsonl") if "train/reward" in r]
    assert [r["rollout/rounds"] for r in runs[0]] == [1.0, 1.0]
    assert [r["train/reward"] for r in runs[0]] == [0.0, 0.0]  # uniform groups: nothing to learn from
    assert [r["rollout/rounds"] for r in runs[1]] == [2.0, 2.0]
    assert [r["train/informative_groups"] for r in runs[1]] == [0.0, 0.0]  # of round 0
    assert [r["train/reward"] for r in runs[1]] == [0.5, 0.5]  # the step trained on round 1's groups
    assert all(r["train/grad_norm"] > 0 for r in runs[1])


def _train_cmd(model_dir: str, out: Path) -> list[str]:
    over = _overrides(model_dir, out, **{"train.max_steps": 4, "rl.eval_every": 0, "tracking.wandb": "none"})
    return [sys.executable, "-m", "rl_latent.cli", "train", CONFIG, *over]


def test_sigkill_and_resume_gives_the_steps_an_uninterrupted_run_gives(tiny_latent_dirs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_latent_dirs["soft"], full), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(tiny_latent_dirs["soft"], killed), env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not (latest.is_file() and latest.read_text().strip() == "step-000002"):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "model").exists()  # it died mid-run

    subprocess.run(_train_cmd(tiny_latent_dirs["soft"], killed), env=env, check=True, capture_output=True)

    def last_by_step(run: Path) -> dict[int, dict]:
        rows = {}
        for r in read_jsonl(run / "metrics.jsonl"):
            if "train/reward" in r:
                rows[r["step"]] = {
                    k: v for k, v in r.items() if not k.startswith(("timing/", "time", "train/sec"))
                }
        return rows

    a, b = last_by_step(full), last_by_step(killed)
    assert a[3] == b[3] and a[4] == b[4]
    wa, wb = _weights(full), _weights(killed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grpo_learns_system15_exits_as_actions(ray_local, tiny_latent_dirs, tmp_path, capsys):
    out = tmp_path / "exits"
    extra = {
        "latent.learn_exits": "true",
        "rl.rewards": "[correct, {name: compute, kwargs: {unit: layer_evals}}]",
    }
    main(["train", CONFIG, *_overrides(tiny_latent_dirs["system15"], out, **extra)])
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert max(r["policy/logprob_gap"] for r in rows) <= 1e-4  # exit log-probs included
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/arith-d2/layer_evals" in r]
    assert evals and all(r["eval/arith-d2/layer_evals"] > 0 for r in evals)
    before = load_file(Path(tiny_latent_dirs["system15"]) / "latent_heads.safetensors")
    after = load_file(out / "model" / "latent_heads.safetensors")
    routers = [k for k in before if k.startswith("shortcuts.routers.")]
    assert routers and any(not torch.equal(before[k], after[k]) for k in routers)  # the exits were trained


def test_exit_only_rl_trains_the_routers_and_leaves_the_backbone(ray_local, tiny_latent_dirs, tmp_path):
    """configs/system15-rl-quickstart.yaml (rl.trainable=routers, greedy thoughts and answers): the exits
    are the only actions, the routers the only weights that move (the adapters stay the start's). Sampled at
    exit temperature 0.5, which the replay (log-prob gap) reads off the workers' trajectories."""
    out = tmp_path / "exit-only"
    extra = {
        "latent.exit_temperature": 0.5,
        "rl.workers": 1,
        "rl.trainer_cpus": 1,
        "rl.rewards": "[correct, {name: compute, kwargs: {unit: layer_evals}}]",
    }
    main(["train", str(REPO / "configs" / "system15-rl-quickstart.yaml"),
          *_overrides(tiny_latent_dirs["system15"], out, **extra)])  # fmt: skip
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert max(r["policy/logprob_gap"] for r in rows) <= 1e-4
    assert max(r["train/grad_norm"] for r in rows) > 0  # the exit decisions carry the gradient
    start = Path(tiny_latent_dirs["system15"])
    wa, wb = load_file(start / "model.safetensors"), _weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # backbone untouched (the export adds tied lm_head)
    before, after = (
        load_file(start / "latent_heads.safetensors"),
        load_file(out / "model" / "latent_heads.safetensors"),
    )
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("shortcuts.routers.") for k in moved)
    assert any(k.startswith("shortcuts.adapters.") for k in before)  # there were adapters to leave alone


def test_learn_exits_needs_a_model_with_shortcuts(ray_local, tiny_latent_dirs, tmp_path, capsys):
    args = _overrides(tiny_latent_dirs["soft"], tmp_path / "x", **{"latent.learn_exits": "true"})
    with pytest.raises(SystemExit):
        main(["train", CONFIG, *args])
    err = capsys.readouterr().err
    assert "latent.learn_exits" in err and "no System-1.5 shortcuts" in err
