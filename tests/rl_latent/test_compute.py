"""Tests for rl_latent.compute against hand-computed values."""

import pytest
import torch

from rl_latent.compute import (
    SUMMARY_KEYS,
    SampleCompute,
    flops_per_token,
    generation_compute,
    non_embedding_params,
    summarize,
)


def test_flops_per_token_kaplan():
    # GPT-2 small shape: N = 85M non-embedding, 12 layers, d 768, ctx 1024
    assert flops_per_token(85_000_000, 12, 768, 1024) == 2 * 85_000_000 + 2 * 12 * 1024 * 768
    assert flops_per_token(100, 2, 4, 3) == 200 + 48
    assert flops_per_token(0, 0, 0, 0) == 0.0
    with pytest.raises(ValueError, match="context"):
        flops_per_token(100, 2, 4, -1)
    with pytest.raises(TypeError, match="d_model"):
        flops_per_token(100, 2, 4.0, 3)


def test_generation_compute_hand_values():
    # prompt 10, 2 latent steps + 3 tokens = 5 positions at contexts 11..15 (sum 65)
    s = generation_compute(
        prompt_len=10,
        gen_len=3,
        n_layer=2,
        n_params_non_embedding=100,
        d_model=4,
        latent_steps=2,
        wall_s=0.25,
    )
    assert s == SampleCompute(
        positions=5, latent_steps=2, layer_evals=10, flops=5 * 200 + 2 * 2 * 4 * 65, wall_s=0.25
    )
    assert s.flops == 2040.0
    # equals the per-token formula summed over the growing context
    assert s.flops == sum(flops_per_token(100, 2, 4, 10 + j + 1) for j in range(5))


def test_generation_compute_zero_positions():
    s = generation_compute(prompt_len=7, gen_len=0, n_layer=4, n_params_non_embedding=10, d_model=8)
    assert (s.positions, s.latent_steps, s.layer_evals, s.flops, s.wall_s) == (0, 0, 0, 0.0, 0.0)


def test_generation_compute_with_layer_exits():
    # 3 positions of a 4-layer model, N = 400 (100 per layer), d 2, prompt 5: ctx 6, 7, 8
    s = generation_compute(5, 1, 4, 400, 2, latent_steps=2, layers_per_position=[4, 1, 0])
    assert s.layer_evals == 5
    # per layer eval: 2 N / L + 2 ctx d = 200 + 4 ctx
    assert s.flops == pytest.approx(4 * (200 + 24) + 1 * (200 + 28) + 0)
    # all layers run == the default path
    full = generation_compute(5, 1, 4, 400, 2, latent_steps=2, layers_per_position=[4, 4, 4])
    assert full == generation_compute(5, 1, 4, 400, 2, latent_steps=2)
    with pytest.raises(ValueError, match="2 entries but the sample has 3 positions"):
        generation_compute(5, 1, 4, 400, 2, latent_steps=2, layers_per_position=[4, 4])
    with pytest.raises(ValueError, match=r"layers_per_position\[1\]=5 exceeds n_layer=4"):
        generation_compute(5, 1, 4, 400, 2, latent_steps=2, layers_per_position=[4, 5, 0])


def test_generation_compute_rejects_bad_arguments():
    with pytest.raises(ValueError, match="latent_steps"):
        generation_compute(5, 1, 4, 400, 2, latent_steps=-1)
    with pytest.raises(ValueError, match="wall_s"):
        generation_compute(5, 1, 4, 400, 2, wall_s=-1.0)


def test_summarize_means_and_keys():
    a = SampleCompute(positions=4, latent_steps=2, layer_evals=8, flops=100.0, wall_s=0.010)
    b = SampleCompute(positions=6, latent_steps=0, layer_evals=12, flops=300.0, wall_s=0.030)
    out = summarize([a, b])
    assert tuple(out) == SUMMARY_KEYS
    assert out == pytest.approx(
        {"positions": 5.0, "latent_steps": 1.0, "layer_evals": 10.0, "flops": 200.0, "wall_ms": 20.0}
    )
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(TypeError, match=r"samples\[1\]"):
        summarize([a, {"positions": 1}])


class _TinyLM(torch.nn.Module):
    """GPT-2-shaped toy: token + position embeddings, one block's linears and norms, an lm_head."""

    def __init__(self, vocab: int, d: int, n_pos: int, tied: bool) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, d)
        self.wpe = torch.nn.Embedding(n_pos, d)
        self.ln = torch.nn.LayerNorm(d)
        self.fc = torch.nn.Linear(d, 4 * d)
        self.proj = torch.nn.Linear(4 * d, d)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head


@pytest.mark.parametrize("tied", [True, False])
def test_non_embedding_params_excludes_embeddings_and_head(tied):
    vocab, d, n_pos = 50, 8, 16
    model = _TinyLM(vocab, d, n_pos, tied)
    body = 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)  # ln + fc + proj
    assert non_embedding_params(model) == body
    total = sum(p.numel() for p in model.parameters())  # counts a tied weight once
    assert total - body == vocab * d + n_pos * d + (0 if tied else vocab * d)
