"""System-1.5 stage 2: criticality labels, the losses train only routers and adapters (and cut compute), and
`rl-latent train configs/system15-quickstart.yaml` runs end to end with a frozen backbone."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from rl_latent.cli import main
from rl_latent.config import Config
from rl_latent.model.shortcuts import SHORTCUT_NAME, Shortcuts
from rl_latent.tracking import read_jsonl
from rollouts.sampler import rollout
from tests.conftest import REPO
from tests.rollouts.latent_fixtures import QUESTIONS, make_latent_model
from trainers.shortcut import criticality, shortcut_losses


def test_criticality_from_the_step_dag_and_without_one():
    chain = [[], [0], [1]]  # step s reads step s-1: every step is critical
    # positions: z1 (says step 1), z2 (step 2), z3 (the stop), <eot> (emits the answer), a_0 (emits eos)
    assert criticality(3, 2, chain) == [True, True, False, True, False]
    unread = [[], [], [1]]  # step 0 is read by nobody, but z1 says step 1, which step 2 reads
    assert criticality(2, 1, unread) == [True, False, True]
    side = [[], [], [0]]  # step 1 is a side computation nobody reads
    assert criticality(3, 1, side) == [False, True, False, True]
    assert criticality(3, 1, None) == [True, True, False, True]  # no DAG: every step counts
    # one lead step and two latent steps per CoT step: only the last of each group says a result
    assert criticality(4, 1, chain, lead=1, per_step=2) == [False, True, False, False, True]
    assert criticality(3, 2, chain, answer=False) == [True, True, False, False, False]  # step results only


def test_stage2_losses_train_only_the_shortcuts_and_cut_expected_depth():
    torch.manual_seed(0)
    model = make_latent_model(arch="llama")
    for p in model.parameters():
        p.requires_grad_(False)
    model.heads[SHORTCUT_NAME] = Shortcuts(model.hidden_size, model.num_layers, [0, 1], rank=8)
    frozen = {k: v.clone() for k, v in model.lm.state_dict().items()}
    traj = rollout(model, QUESTIONS, max_answer_tokens=6, lam=1.0)
    opt = torch.optim.Adam(model.heads[SHORTCUT_NAME].parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        terms = shortcut_losses(model, traj, Config(), [None] * len(QUESTIONS))
        first = first or {k: float(v.detach()) for k, v in terms.items()}
        opt.zero_grad()
        terms["loss"].backward()
        assert all(p.grad is None for p in model.lm.parameters())
        opt.step()
    assert float(terms["loss"].detach()) < 0.5 * first["loss"]
    assert float(terms["expected_layers"].detach()) < first["expected_layers"]
    assert all(torch.equal(frozen[k], v) for k, v in model.lm.state_dict().items())


def test_system15_entry_point_freezes_the_backbone_and_logs_compute(tiny_latent_dirs, tmp_path, capsys):
    out = tmp_path / "s15"
    overrides = {
        "train.init_from": tiny_latent_dirs["soft"],
        "train.output_dir": str(out),
        "train.max_steps": 4,
        "train.batch_size": 8,
        "train.eval_every": 2,
        "train.save_every": 2,
        "train.log_every": 1,
        "train.time_budget_s": 0,
        "shortcut.step_positions": "all",  # the non-default parts: <eot> reads the last thought's state ...
        "shortcut.router_latent": "true",  # ... the routers' thought bias (a DeepSpeed-trained parameter) ...
        "shortcut.router_prev": "true",  # ... and their read of the previous position's final state
        "data.n_train": 64,
        "data.n_valid": 8,
        "data.n_test": 8,
        "eval.max_new_tokens": 6,
        "tracking.wandb": "offline",
    }
    main(
        [
            "train",
            str(REPO / "configs" / "system15-quickstart.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()],
        ]
    )
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{") :])
    assert summary["steps"] == 4 and summary["layer_evals"] > 0
    rows = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in (
        "train/match",
        "train/final",
        "train/nll",
        "train/router",
        "train/compute",
        "train/expected_layers",
    ):
        assert key in steps[0], key
    assert any("eval/arith-d2/layer_evals" in r for r in rows)
    before = load_file(Path(tiny_latent_dirs["soft"]) / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone is frozen
    heads = load_file(out / "model" / "latent_heads.safetensors")
    assert any(k.startswith("shortcuts.routers.") for k in heads)
    meta = json.loads((out / "model" / "latent_config.json").read_text())
    assert meta["extra"]["shortcut"]["lam"] == 0.5 and SHORTCUT_NAME in meta["heads"]
