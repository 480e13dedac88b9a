"""Shared pieces of the engine/checkpoint tests: one torch thread, a tiny GPT-2, a few optimizer steps."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train ~5x faster on one thread than on 2 contended ones (OpenMP spin-waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_gpt2(seed: int = 0, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    drop = dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    cfg = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0, **drop
    )
    return GPT2LMHeadModel(cfg)


def _train_steps(engine, batches: list[torch.Tensor]) -> list[float]:
    losses = []
    for batch in batches:
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def tiny_gpt2():
    return _tiny_gpt2


@pytest.fixture
def train_steps():
    return _train_steps
