"""A tiny word-level tokenizer for building small test models (no hub access needed)."""

from collections.abc import Callable

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["<unk>", "<eos>"] + [str(i) for i in range(10)] + ["+", "-", "*", "=", "the", "answer", "is", ":"]


def make_word_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture
def word_tokenizer() -> Callable[[], PreTrainedTokenizerFast]:
    """A factory: every model gets its own tokenizer, since wrapping a model adds tokens to it."""
    return make_word_tokenizer
