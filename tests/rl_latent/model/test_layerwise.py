"""layerwise_forward reproduces the HF forward (KV cache, left padding); hooks can replace block outputs."""

import pytest
import torch
from transformers.cache_utils import DynamicCache

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


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)  # fmt: skip
    lm = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # trained-looking key norms (they start at 1)
        for layer in lm.model.layers:
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return lm


@pytest.mark.parametrize("arch", [*ARCHS, "qwen3"])
@pytest.mark.parametrize("first", [0, 1, 2])
@torch.no_grad()
def test_cache_kv_caches_what_each_block_would(arch, first, word_tokenizer):
    """An exited position's copied state: every block from ``first`` on caches, in one call, the keys and
    values it would cache running on that state (left-padded rows: each at its own position)."""
    if arch == "qwen3":
        lm = _qwen3()
        ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
        mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    else:
        lm = tiny(arch, word_tokenizer).lm
        ids, mask = left_padded(LatentReasoner(lm, word_tokenizer()))
    ad = get_adapter(lm)
    caches = [lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                 use_cache=True).past_key_values for _ in range(2)]  # fmt: skip
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    pos = position_ids_from_mask(mask)[:, -1:]
    x = torch.randn(2, 1, lm.config.hidden_size) * 3
    _, ctx_ref = ad.begin(x, mask, pos, caches[0], True)
    _, ctx = ad.begin(x, mask, pos, caches[1], True)
    for i in range(first, len(ad.layers)):
        ad.run_layer(i, x, ctx_ref)
    ad.cache_kv(first, x, ctx)
    for i in range(len(ad.layers)):
        ref, mine = caches[0].layers[i], caches[1].layers[i]
        torch.testing.assert_close(mine.keys, ref.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values, ref.values, atol=1e-5, rtol=1e-5)
    assert caches[1].layers[first].keys.shape[-2] == mask.shape[1]  # the new position was appended
    if first:
        assert caches[1].layers[0].keys.shape[-2] == mask.shape[1] - 1  # blocks before it untouched


@torch.no_grad()
def test_cache_kv_follows_the_weights(word_tokenizer):
    """The stacked projections are rebuilt after a weight changes in place (an optimizer step)."""
    lm = tiny("llama", word_tokenizer).lm
    ad = get_adapter(lm)

    def cached_keys():
        cache = DynamicCache(config=lm.config)
        x = torch.randn(1, 1, lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
        one, zero = torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
        _, ctx = ad.begin(x, one, zero, cache, True)
        ad.cache_kv(0, x, ctx)
        return cache.layers[1].keys.clone()

    before = cached_keys()
    lm.model.layers[1].self_attn.k_proj.weight.mul_(2.0)
    torch.testing.assert_close(cached_keys(), 2 * before)


@torch.no_grad()
def test_cache_kv_refuses_lora_wrapped_projections(word_tokenizer):
    """A LoRA-wrapped projection's ``weight`` is the base's alone: stacking it would drop the adapter."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=2, target_modules=["k_proj", "v_proj"])
    lm = get_peft_model(tiny("llama", word_tokenizer).lm, lora)
    ad = get_adapter(lm)
    cache = DynamicCache(config=lm.config)
    x = torch.randn(1, 1, lm.config.hidden_size)
    one, zero = torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    _, ctx = ad.begin(x, one, zero, cache, True)
    with pytest.raises(NotImplementedError, match="merge"):
        ad.cache_kv(0, x, ctx)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_decode_step_reads_the_rotary_modules_own_values_from_its_table(arch, word_tokenizer):
    model = tiny(arch, word_tokenizer)
    adapter, rot = get_adapter(model.lm), model.lm.model.rotary_emb
    n = model.lm.config.max_position_embeddings
    x = torch.zeros(3, 1, model.hidden_size)

    def same(x, pos):
        mine, theirs = adapter._rotary(x, pos), rot(x, pos)
        return all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(mine, theirs))

    # under autograd, or with several positions per row, the module itself runs: no table
    assert same(x, torch.tensor([[2]] * 3)) and adapter._rotary_table is None
    with torch.no_grad():
        assert same(torch.zeros(3, 2, model.hidden_size), torch.tensor([[2, 3]] * 3))
        assert adapter._rotary_table is None
        for pos in ([[0], [5], [n - 1]], [[n + 7], [1], [2 * n + 3]]):  # the second grows the table
            assert same(x, torch.tensor(pos))
        table = adapter._rotary_table
        assert same(x, torch.tensor([[3], [4], [5]]))
        assert adapter._rotary_table is table, "a position the table holds does not rebuild it"
        rot.inv_freq.mul_(2.0)  # the module's frequencies changed: the table follows
        assert same(x, torch.tensor([[2], [9], [4]])) and adapter._rotary_table is not table
