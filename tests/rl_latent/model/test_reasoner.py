"""LatentReasoner: latent markers, positions under left padding, parameter counts, checkpoint round trips."""

import json

import pytest
import torch
from torch import nn

from rl_latent.model import LatentReasoner, position_ids_from_mask, tiny_config
from rl_latent.model.build import add_latent_tokens, build_from_config


class TinyHead(nn.Module):
    """A stand-in thought head with the to_config() protocol heads must follow to be saved."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def to_config(self) -> dict:
        return {"dim": self.dim, "scale": self.scale}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(h)) * self.scale


def test_position_ids_from_mask_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(position_ids_from_mask(mask), expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bot_eot_are_distinct_single_special_ids(arch, word_tokenizer):
    model = LatentReasoner.from_config(arch, word_tokenizer(), n_layer=2, n_embd=32)
    tok = model.tokenizer
    assert model.bot_id != model.eot_id
    assert tok.encode("3 <bot> <eot> 4", add_special_tokens=False) == [
        tok.convert_tokens_to_ids("3"),
        model.bot_id,
        model.eot_id,
        tok.convert_tokens_to_ids("4"),
    ]
    assert tok.decode([model.bot_id, model.eot_id], skip_special_tokens=True) == ""
    assert model.config.vocab_size == len(tok) and max(model.bot_id, model.eot_id) < len(tok)
    assert tok.pad_token == "<eos>" and model.config.pad_token_id == tok.pad_token_id
    assert tok.padding_side == "left"


def test_bot_eot_embedding_rows_get_gradients(word_tokenizer):
    model = LatentReasoner.from_config("llama", word_tokenizer(), n_layer=2, n_embd=32)
    ids = torch.tensor([[3, model.bot_id, model.eot_id, 4]])
    # Loss on the final hidden state only, so the tied lm_head cannot put gradient on every row.
    model.layerwise_forward(input_ids=ids).hidden_states[-1].pow(2).sum().backward()
    grad = model.lm.get_input_embeddings().weight.grad
    used = {3, 4, model.bot_id, model.eot_id}
    assert grad[model.bot_id].abs().sum() > 0 and grad[model.eot_id].abs().sum() > 0
    assert all(grad[i].abs().sum() == 0 for i in range(len(model.tokenizer)) if i not in used)


@pytest.mark.parametrize("tokens_already_in_tokenizer", [False, True])
def test_wrapping_a_pretrained_lm_adds_rows_initialised_to_the_mean(
    word_tokenizer, tokens_already_in_tokenizer
):
    tok = word_tokenizer()
    lm = build_from_config(tiny_config("llama", tok, n_layer=1, n_embd=16, n_head=2), seed=3)
    if tokens_already_in_tokenizer:  # e.g. a tokenizer saved by us, paired with the original weights
        add_latent_tokens(tok)
    old = lm.get_input_embeddings().weight.detach().clone()
    model = LatentReasoner(lm, tok)
    weight = model.lm.get_input_embeddings().weight
    assert weight.shape[0] == len(tok) == old.shape[0] + 2
    torch.testing.assert_close(weight[: old.shape[0]], old)
    for new_id in (model.bot_id, model.eot_id):
        torch.testing.assert_close(weight[new_id], old.mean(0))
    assert model.lm.get_output_embeddings().weight is weight  # still tied after resizing


def test_forward_defaults_positions_from_mask(word_tokenizer):
    # GPT-2: absolute positions, so a left-padded row is wrong with HF's default arange positions (RoPE
    # models are invariant to that constant shift).
    model = LatentReasoner.from_config("gpt2", word_tokenizer(), n_layer=2, n_embd=32).eval()
    enc = model.tokenizer(["1 + 2", "the answer is : 3 4"], padding=True, return_tensors="pt")
    with torch.no_grad():
        mine = model(**enc).logits
        hf_right = model.lm(**enc, position_ids=position_ids_from_mask(enc["attention_mask"])).logits
        hf_default = model.lm(**enc).logits  # arange positions: wrong for the left-padded row
    torch.testing.assert_close(mine, hf_right, atol=0, rtol=0)
    assert (hf_default[0] - mine[0]).abs().max() > 1e-4
    # The left-padded row must give the same last-token logits as the same prompt alone.
    alone = model.tokenizer(["1 + 2"], return_tensors="pt")
    with torch.no_grad():
        solo = model(**alone).logits
    torch.testing.assert_close(mine[0, -1], solo[0, -1], atol=1e-5, rtol=0)


def test_n_params(word_tokenizer):
    model = LatentReasoner.from_config("gpt2", word_tokenizer(), n_layer=2, n_embd=32, max_positions=64)
    vocab = len(model.tokenizer)
    # Tied lm_head counted once; token (vocab x d) and position (64 x d) embeddings removed.
    assert model.n_params() == sum(p.numel() for p in model.lm.parameters())
    assert model.n_params(non_embedding=True) == model.n_params() - vocab * 32 - 64 * 32
    assert model.num_layers == 2 and model.hidden_size == 32


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_save_and_load_round_trip(arch, word_tokenizer, tmp_path):
    model = LatentReasoner.from_config(arch, word_tokenizer(), n_layer=2, n_embd=32, seed=1).eval()
    model.heads["thought"] = TinyHead(32, scale=0.5)
    model.latent_extra = {"head_type": "soft", "max_latent_steps": 6}
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "latent_config.json").read_text())
    assert meta["bot_id"] == model.bot_id and meta["heads"]["thought"]["kwargs"] == {"dim": 32, "scale": 0.5}

    loaded = LatentReasoner.from_pretrained(tmp_path).eval()
    assert (loaded.bot_id, loaded.eot_id) == (model.bot_id, model.eot_id)
    assert loaded.latent_extra == model.latent_extra
    assert isinstance(loaded.heads["thought"], TinyHead) and loaded.heads["thought"].scale == 0.5
    for key, value in model.heads.state_dict().items():
        assert torch.equal(loaded.heads.state_dict()[key], value)
    enc = model.tokenizer(["1 + 2 <bot> <eot> =", "3"], padding=True, return_tensors="pt")
    assert torch.equal(
        loaded.tokenizer(["1 + 2 <bot> <eot> =", "3"], padding=True, return_tensors="pt")["input_ids"],
        enc["input_ids"],
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, model(**enc).logits, atol=0, rtol=0)


def test_saving_a_head_without_to_config_fails_clearly(word_tokenizer, tmp_path):
    model = LatentReasoner.from_config("gpt2", word_tokenizer(), n_layer=1, n_embd=16, n_head=2)
    model.heads["bad"] = nn.Linear(16, 16)
    with pytest.raises(TypeError, match="'bad'.*to_config"):
        model.save_pretrained(tmp_path)


def test_from_config_rejects_unknown_arch(word_tokenizer):
    with pytest.raises(ValueError, match="unknown arch 'bert'"):
        LatentReasoner.from_config("bert", word_tokenizer())
