"""Backbone building helpers: tiny configs, GGUF file discovery and path handling, load errors."""

from pathlib import Path

import pytest

from rl_latent.model import find_package_gguf, load_lm, tiny_config
from rl_latent.model.build import _split_gguf, add_latent_tokens


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral"])
def test_tiny_config_uses_the_tokenizer(arch, word_tokenizer):
    tok = word_tokenizer()
    add_latent_tokens(tok)
    config = tiny_config(arch, tok, n_layer=3, n_embd=48, n_head=6, n_kv_head=2, max_positions=128)
    assert config.model_type == arch and config.vocab_size == len(tok)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 48, 6)
    assert config.eos_token_id == tok.eos_token_id == config.pad_token_id
    assert config.bos_token_id is None  # the tokenizer has none; not GPT-2's 50256 or Llama's 1
    if arch != "gpt2":
        assert config.num_key_value_heads == 2 and config.intermediate_size == 4 * 48
        assert getattr(config, "sliding_window", None) is None


def test_find_package_gguf_errors_name_the_package():
    with pytest.raises(FileNotFoundError, match="no_such_pkg_xyz"):
        find_package_gguf("no_such_pkg_xyz")
    with pytest.raises(FileNotFoundError, match="'pytest'"):
        find_package_gguf("pytest")  # installed, but ships no .gguf


def test_split_gguf_accepts_the_usual_spellings(tmp_path):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"")
    assert _split_gguf(f, None) == (str(tmp_path), "m.Q4.gguf")
    assert _split_gguf("ignored-dir", f) == (str(tmp_path), "m.Q4.gguf")
    assert _split_gguf(tmp_path, "m.Q4.gguf") == (str(tmp_path), "m.Q4.gguf")
    assert _split_gguf("org/model", None) == ("org/model", None)


def test_load_lm_error_names_the_path(tmp_path):
    missing = Path(tmp_path) / "nothing-here"
    with pytest.raises(OSError, match="nothing-here"):
        load_lm(missing)
