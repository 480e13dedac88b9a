"""Checkpoints: exact resume, atomicity under a crash while writing, pruning, and clear errors."""

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

import trainers.checkpoint as ckpt_mod
from trainers.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from trainers.engine import build_engine, gathered_state_dict, unwrap

ENGINE_ARGS = dict(lr=1e-2, total_steps=6, micro_batch_size=4, grad_accum=2, warmup_steps=2, weight_decay=0.1)


def make_batches(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, 64, (4, 12), generator=gen) for _ in range(n)]


def weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unwrap(engine).state_dict().items()}


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_resume_reproduces_uninterrupted_training_exactly(tmp_path, zero_stage, tiny_gpt2, train_steps):
    """Dropout is on, so matching losses also need the RNG states restored, not just weights and Adam."""
    batches = make_batches(12)  # 6 optimizer steps at grad_accum=2
    model = tiny_gpt2(seed=0, dropout=0.1)
    engine = build_engine(model, zero_stage=zero_stage, **ENGINE_ARGS)
    train_steps(engine, batches[:6])
    at_save = weights(engine)
    ckpt = save_checkpoint(engine, model, tmp_path, step=3, state={"data_position": 6, "note": "x"})
    expected_losses = train_steps(engine, batches[6:])
    expected_weights = weights(engine)
    expected_lr = engine.get_lr()

    torch.manual_seed(999)  # scramble the RNGs: the checkpoint must restore them
    fresh_model = tiny_gpt2(seed=123, dropout=0.1)
    fresh = build_engine(fresh_model, zero_stage=zero_stage, **ENGINE_ARGS)
    assert latest_checkpoint(tmp_path) == ckpt
    state = load_checkpoint(fresh, ckpt)
    assert state["step"] == 3 and state["data_position"] == 6 and state["note"] == "x"
    assert state["weights_version"] == 3  # defaults to the engine's optimizer step count
    assert fresh.global_steps == 3
    resumed_losses = train_steps(fresh, batches[state["data_position"] :])
    assert resumed_losses == expected_losses
    assert fresh.get_lr() == expected_lr
    got = weights(fresh)
    assert all(torch.equal(got[k], v) for k, v in expected_weights.items())

    exported = GPT2LMHeadModel.from_pretrained(ckpt / "model").state_dict()
    assert all(torch.equal(exported[k], v) for k, v in at_save.items())


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch, tiny_gpt2, train_steps):
    model = tiny_gpt2()
    engine = build_engine(model, lr=1e-2, total_steps=4, micro_batch_size=4)
    batches = make_batches(3)
    train_steps(engine, batches[:1])
    first = save_checkpoint(engine, model, tmp_path, step=1, state={"data_position": 1})
    train_steps(engine, batches[1:2])

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while exporting the HF model")

    with monkeypatch.context() as m:
        m.setattr(GPT2LMHeadModel, "save_pretrained", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            save_checkpoint(engine, model, tmp_path, step=2, state={"data_position": 2})
    root = tmp_path / "checkpoints"
    assert (root / ".tmp-step-000002").is_dir()  # the half-written dir is there ...
    assert latest_checkpoint(tmp_path) == first  # ... but never picked up
    assert list_checkpoints(tmp_path) == [first]
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == first  # the fallback scan ignores temp dirs too

    # Crash after the step dir is in place but before the pointer moves: latest still names step 1.
    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "_write_atomic", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            save_checkpoint(engine, model, tmp_path, step=2, state={"data_position": 2})
    (root / "latest").write_text(first.name + "\n")  # what the pointer said before the crash
    assert latest_checkpoint(tmp_path) == first
    assert json.loads((first / "trainer_state.json").read_text())["data_position"] == 1

    # The next good save replaces the leftovers and moves the pointer.
    second = save_checkpoint(engine, model, tmp_path, step=2, state={"data_position": 2})
    assert latest_checkpoint(tmp_path) == second
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())
    assert load_checkpoint(engine, second)["data_position"] == 2


def test_keep_prunes_oldest(tmp_path, tiny_gpt2):
    model = tiny_gpt2()
    engine = build_engine(model, lr=1e-2, total_steps=4, micro_batch_size=4)
    for step in range(1, 5):
        save_checkpoint(engine, model, tmp_path, step=step, state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert latest_checkpoint(tmp_path).name == "step-000004"


def test_missing_and_incomplete_checkpoints(tmp_path, tiny_gpt2):
    assert latest_checkpoint(tmp_path) is None
    engine = build_engine(tiny_gpt2(), lr=1e-2, total_steps=1, micro_batch_size=4)
    with pytest.raises(FileNotFoundError, match="trainer_state.json is missing"):
        load_checkpoint(engine, tmp_path / "checkpoints" / "step-000001")
    with pytest.raises(TypeError, match=r"state\['bad'\] is not JSON-serialisable"):
        save_checkpoint(engine, unwrap(engine), tmp_path, step=1, state={"bad": torch.zeros(1)})
    assert latest_checkpoint(tmp_path) is None  # nothing was written


def test_export_without_save_pretrained_is_skipped(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    engine = build_engine(model, lr=1e-2, total_steps=1, micro_batch_size=2)
    ckpt = save_checkpoint(engine, model, tmp_path, step=0, state={})
    assert not (ckpt / "model").exists() and (ckpt / "deepspeed").is_dir()
    assert set(gathered_state_dict(engine)) == {"0.weight", "0.bias"}
