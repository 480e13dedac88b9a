"""layerwise_forward reproduces the HF forward (KV cache, left padding); hooks can replace block outputs."""

import pytest
import torch

from rl_latent.model import LatentReasoner, get_adapter, layerwise_forward, position_ids_from_mask

ARCHS = ["gpt2", "llama", "qwen2", "mistral"]
PROMPTS = ["1 + 2 = 3", "the answer is : 4 5 * 6 - 7"]


def tiny(arch, word_tokenizer) -> LatentReasoner:
    # n_kv_head < n_head exercises grouped-query attention in the Llama family (ignored by GPT-2).
    return LatentReasoner.from_config(
        arch, word_tokenizer(), n_layer=3, n_embd=32, n_head=4, n_kv_head=2
    ).eval()


def left_padded(model: LatentReasoner) -> tuple[torch.Tensor, torch.Tensor]:
    enc = model.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert enc["attention_mask"][0, 0] == 0, "the short prompt should be left-padded"
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_hf_forward_with_left_padding_and_cache(arch, word_tokenizer):
    model = tiny(arch, word_tokenizer)
    ids, mask = left_padded(model)
    with torch.no_grad():
        ref = model.lm(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
            output_hidden_states=True,
        )
        out = model.layerwise_forward(input_ids=ids, attention_mask=mask, use_cache=True)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
        assert len(out.hidden_states) == model.num_layers + 1 == len(ref.hidden_states)
        for mine, theirs in zip(out.hidden_states, ref.hidden_states):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
        ref_cache, my_cache = ref.past_key_values, out.past_key_values
        for _ in range(3):
            nxt = ref.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            pos = position_ids_from_mask(mask)[:, -1:]
            ref = model.lm(
                input_ids=nxt,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=ref_cache,
                use_cache=True,
            )
            out = model.layerwise_forward(
                input_ids=nxt, attention_mask=mask, past_key_values=my_cache, use_cache=True
            )
            torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
        assert my_cache.get_seq_length() == ids.shape[1] + 3


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_inputs_embeds_equal_input_ids(arch, word_tokenizer):
    model = tiny(arch, word_tokenizer)
    ids, mask = left_padded(model)
    with torch.no_grad():
        a = model.layerwise_forward(input_ids=ids, attention_mask=mask)
        b = model.layerwise_forward(inputs_embeds=model.embed(ids), attention_mask=mask)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_identity_hook_changes_nothing_and_zeroing_hook_does(arch, word_tokenizer):
    model = tiny(arch, word_tokenizer)
    ids, mask = left_padded(model)
    seen = []

    def identity(idx, hidden_in, hidden_out):
        seen.append((idx, hidden_in.shape, hidden_out.shape))
        return hidden_out

    def zero_layer_1(idx, hidden_in, hidden_out):
        return torch.zeros_like(hidden_out) if idx == 1 else hidden_out

    with torch.no_grad():
        plain = model.layerwise_forward(input_ids=ids, attention_mask=mask)
        same = model.layerwise_forward(input_ids=ids, attention_mask=mask, layer_hook=identity)
        zeroed = model.layerwise_forward(input_ids=ids, attention_mask=mask, layer_hook=zero_layer_1)
    assert [s[0] for s in seen] == list(range(model.num_layers))
    assert all(s[1] == s[2] == (2, ids.shape[1], model.hidden_size) for s in seen)
    torch.testing.assert_close(same.logits, plain.logits, atol=0, rtol=0)
    assert torch.count_nonzero(zeroed.hidden_states[2]) == 0
    assert (zeroed.logits - plain.logits).abs().max() > 1e-3


def test_unknown_family_is_refused(word_tokenizer):
    model = tiny("llama", word_tokenizer)
    model.lm.config.model_type = "gemma"  # a family whose forward differs (embedding scaling)
    with pytest.raises(NotImplementedError, match="gemma"):
        get_adapter(model.lm)
    with pytest.raises(ValueError, match="exactly one"):
        layerwise_forward(tiny("gpt2", word_tokenizer).lm)
