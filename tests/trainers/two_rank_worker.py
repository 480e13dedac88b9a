"""Worker for the 2-rank test (run under torchrun): replicas trained on different data must stay identical.

For each ZeRO stage asked for, every rank builds the same tiny GPT-2, trains 3 steps through ``build_engine``
on its OWN data, then the ranks all-gather a checksum of their (gathered) parameters. The ranks then save a
checkpoint together and load it into a freshly initialised engine; rank 0 also reloads the exported HF model.
Rank 0 writes one JSON report per stage to ``--out`` for the test to assert on. One launch runs all stages
because starting torchrun and importing the stack costs more than the training itself.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainers.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainers.engine import build_engine, gathered_parameters, init_distributed


def checksum(engine_or_model: torch.nn.Module) -> float:
    """Position-weighted float64 sum of all parameters, gathered first under ZeRO-3 (same on every rank)."""
    with gathered_parameters(engine_or_model) as params:
        return float(sum((i + 1) * p.detach().double().sum() for i, p in enumerate(params)))


def tiny_model(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg)


def run_stage(stage: int, rank: int, run_dir: Path) -> dict:
    """Train, checksum, checkpoint and reload at one ZeRO stage; returns this rank's observations."""
    model = tiny_model(seed=0)
    init_sum = checksum(model)
    engine = build_engine(model, lr=1e-2, total_steps=3, micro_batch_size=4, zero_stage=stage)
    gen = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
    losses = []
    for _ in range(3):
        batch = torch.randint(0, 64, (4, 12), generator=gen)
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    trained_sum = checksum(engine)

    ckpt = save_checkpoint(engine, model, run_dir, step=3, state={"data_position": 3})
    exported_sum = checksum(GPT2LMHeadModel.from_pretrained(ckpt / "model")) if rank == 0 else None
    fresh = build_engine(tiny_model(seed=1), lr=1e-2, total_steps=3, micro_batch_size=4, zero_stage=stage)
    fresh_sum = checksum(fresh)
    state = load_checkpoint(fresh, latest_checkpoint(run_dir))
    return {
        "rank": rank,
        "init": init_sum,
        "trained": trained_sum,
        "first_loss": losses[0],
        "exported": exported_sum,
        "fresh_before_load": fresh_sum,
        "loaded": checksum(fresh),
        "data_position": state["data_position"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero-stages", type=lambda s: [int(x) for x in s.split(",")], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()

    rank, world = init_distributed()
    reports = {}
    for stage in args.zero_stages:
        mine = run_stage(stage, rank, args.run_dir / f"zero{stage}")
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        reports[str(stage)] = gathered
    if rank == 0:
        args.out.write_text(json.dumps({"world": world, "stages": reports}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
