"""The DeepSpeed engine: schedule math, what is optimised, weights read-back, 2-rank data parallelism."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.engine import (
    build_engine,
    deepspeed_config,
    gathered_state_dict,
    init_distributed,
    lr_multiplier,
    unwrap,
)

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("two_rank_worker.py")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_lr_multiplier_warmup_then_cosine_or_constant():
    kw = dict(warmup_steps=4, total_steps=14)
    assert [lr_multiplier(s, schedule="cosine", **kw) for s in range(4)] == [0.0, 0.25, 0.5, 0.75]
    assert lr_multiplier(4, schedule="cosine", **kw) == 1.0
    assert lr_multiplier(9, schedule="cosine", **kw) == pytest.approx(0.5)  # halfway through the decay
    assert lr_multiplier(14, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(99, schedule="cosine", **kw) == pytest.approx(0.0)  # clipped past the end
    assert lr_multiplier(7, schedule="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    assert lr_multiplier(2, schedule="constant", **kw) == 0.5
    assert lr_multiplier(13, schedule="constant", **kw) == 1.0


def test_init_distributed_single_process_uses_gloo_on_cpu_without_building_shm_op():
    import deepspeed.comm
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    assert init_distributed() == (0, 1)
    assert init_distributed() == (0, 1)  # idempotent
    assert torch.distributed.get_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        assert get_accelerator().device_name() == "cpu"
        assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
        assert deepspeed.comm.comm.cdb.shm_comm_op is None


def test_config_turns_per_step_instrumentation_off():
    cfg = deepspeed_config(
        micro_batch_size=8, grad_accum=4, world_size=2, zero_stage=2, grad_clip=1.0, precision="fp32"
    )
    assert cfg["train_batch_size"] == 64
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["wall_clock_breakdown"] is False
    assert cfg["timers"]["throughput"]["enabled"] is False
    assert cfg["flops_profiler"]["enabled"] is False and cfg["comms_logger"]["enabled"] is False


def test_build_engine_trains_only_trainable_params_and_follows_the_schedule(tiny_gpt2, train_steps):
    model = tiny_gpt2()
    for p in model.transformer.h[0].parameters():
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    engine = build_engine(
        model, lr=1e-2, total_steps=6, micro_batch_size=4, grad_accum=2, warmup_steps=2, weight_decay=0.1
    )
    opt_params = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters() if p.requires_grad}
    decayed = {id(p) for g in engine.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(p.ndim >= 2 for p in model.parameters() if id(p) in decayed)

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 64, (4, 12), generator=gen) for _ in range(6)]  # 3 optimizer steps
    assert engine.get_lr() == [0.0, 0.0]  # warmup starts at 0
    train_steps(engine, batches)
    assert engine.global_steps == 3
    expected = 1e-2 * lr_multiplier(3, warmup_steps=2, total_steps=6, schedule="cosine")
    assert engine.get_lr()[0] == pytest.approx(expected)
    params = dict(unwrap(engine).named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    unchanged = [n for n, v in trainable.items() if torch.equal(params[n], v)]
    assert not unchanged, f"trainable parameters that did not move: {unchanged}"


def test_build_engine_rejects_bad_arguments(tiny_gpt2):
    with pytest.raises(ValueError, match="schedule"):
        build_engine(tiny_gpt2(), lr=1e-3, total_steps=1, micro_batch_size=1, schedule="linear")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16"):
            build_engine(tiny_gpt2(), lr=1e-3, total_steps=1, micro_batch_size=1, precision="bf16")
    frozen = tiny_gpt2().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        build_engine(frozen, lr=1e-3, total_steps=1, micro_batch_size=1)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_gathered_state_dict_is_full_fp32_with_tied_weights(zero_stage, tiny_gpt2, train_steps):
    model = tiny_gpt2()
    engine = build_engine(model, lr=1e-2, total_steps=2, micro_batch_size=4, zero_stage=zero_stage)
    train_steps(engine, [torch.randint(0, 64, (4, 12))])
    state = gathered_state_dict(engine)
    assert set(state) == set(model.state_dict())
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])  # tied, both names kept
    for name, tensor in unwrap(engine).state_dict().items():
        assert state[name].dtype == torch.float32 and state[name].device.type == "cpu"
        assert torch.equal(state[name], tensor.float().cpu()), name


def test_two_ranks_on_different_data_stay_identical(tmp_path):
    """torchrun, 2 CPU ranks (gloo), ZeRO 0/2/3: replicas agree, moved, survive a checkpoint round trip."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}  # this process's own group
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    out = tmp_path / "report.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(WORKER), "--zero-stages", "0,2,3"]
    cmd += ["--out", str(out), "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["world"] == 2
    assert sorted(report["stages"]) == ["0", "2", "3"]
    trained_by_stage = []
    for stage, ranks in report["stages"].items():
        r0, r1 = ranks
        assert r0["first_loss"] != r1["first_loss"], f"stage {stage}: ranks saw the same data"
        assert r0["init"] == r1["init"]
        assert r0["trained"] == r1["trained"], f"stage {stage}: replicas diverged"
        assert abs(r0["trained"] - r0["init"]) > 1e-3, f"stage {stage}: parameters did not change"
        assert r0["exported"] == pytest.approx(r0["trained"], rel=1e-12), f"stage {stage}: HF export"
        for r in ranks:
            assert r["fresh_before_load"] != r["trained"]
            assert r["loaded"] == r["trained"], f"stage {stage} rank {r['rank']}: checkpoint reload"
            assert r["data_position"] == 3
        trained_by_stage.append(r0["trained"])
    # Same math at every stage: all agree to fp32 round-off.
    assert max(trained_by_stage) - min(trained_by_stage) < 1e-6 * abs(trained_by_stage[0])
