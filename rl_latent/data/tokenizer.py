"""A local word-level tokenizer in which every integer 0..max_number is one token.

Why: no tokenizer can be downloaded here, and for latent reasoning one token per intermediate value is
what we want: a soft token (a mixture of token embeddings) is then a distribution over candidate
intermediate results, which Gumbel-softmax rollouts explore directly.

Pre-tokenization (serialised in tokenizer.json, so `save_pretrained` / `AutoTokenizer` round-trip):
split on whitespace, then isolate `<<`, `>>`, `####`, whole numbers 0..max_number (no leading zeros),
single digits (so larger numbers become digit tokens), runs of letters, and any other single character.
No special tokens are added automatically; callers place `<bos>`/`<eos>`/`<bot>`/`<eot>` themselves.
Decoding joins tokens with single spaces (`<<5+8=13>>` decodes to `<< 5 + 8 = 13 >>`).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from rl_latent.data.arith import TEMPLATE_WORDS
from rl_latent.data.format import ANSWER_PREFIX  # its words are in the vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<bot>", "<eot>")
"""Ids 0..5 in this order; `<bot>`/`<eot>` open and close the latent thoughts."""

PUNCTUATION: tuple[str, ...] = (
    *"+-*/=,.?:;()$%",
    "<<",
    ">>",
    "####",
    *"#<>!'\"&[]_",
)


def _le_regex(m: str) -> str:
    """Regex for numbers of exactly len(m) digits, no leading zero, that are <= m (m a decimal string).

    Standard digit-range construction: either m itself, or m's first i digits followed by a smaller
    digit at position i and any digits after it.
    """
    alts = [m]
    for i, ch in enumerate(m):
        lo, hi = (1 if i == 0 else 0), int(ch) - 1
        if hi >= lo:
            alts.append(f"{m[:i]}[{lo}-{hi}][0-9]{{{len(m) - i - 1}}}")
    return "|".join(alts)


def number_regex(max_number: int) -> str:
    """Regex matching exactly the whole numbers 0..max_number (not inside a longer digit run)."""
    if max_number < 9:
        raise ValueError(f"max_number must be >= 9 (every digit is a token), got {max_number}")
    m = str(max_number)
    alts = ["0"]
    if len(m) > 1:
        alts.append(f"[1-9][0-9]{{0,{len(m) - 2}}}")  # all numbers with fewer digits than max_number
    alts.append(_le_regex(m))
    return f"(?<![0-9])(?:{'|'.join(alts)})(?![0-9])"


def _pre_tokenizer(max_number: int) -> pre_tokenizers.PreTokenizer:
    pattern = f"<<|>>|####|{number_regex(max_number)}|[0-9]|[A-Za-z]+|\\S"
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(pattern), behavior="isolated")]
    )


def build_tokenizer(max_number: int = 999, extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A word-level HF fast tokenizer: specials, numbers 0..max_number, letters, punctuation, task words.

    `extra_words` adds more tokens (pieces as the pre-tokenizer cuts them, e.g. "Natalia"); words that the
    pre-tokenizer would split further (e.g. "a+b") are never produced and so are useless here.
    The vocabulary order is deterministic: specials, numbers, letters, punctuation, template words, then
    the sorted extra words.
    """
    from transformers import PreTrainedTokenizerFast

    words: list[str] = list(SPECIAL_TOKENS)
    words += [str(i) for i in range(max_number + 1)]
    words += list(string.ascii_lowercase + string.ascii_uppercase)
    words += list(PUNCTUATION)
    words += list(TEMPLATE_WORDS) + ANSWER_PREFIX.replace(":", "").split()
    seen = set(words)
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    for word in sorted(set(extra_words) - seen):
        if word.strip() != word or not word:
            raise ValueError(f"extra word {word!r} is empty or contains whitespace")
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = _pre_tokenizer(max_number)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        extra_special_tokens=["<bot>", "<eot>"],
    )


def dataset_words(dataset: Dataset | DatasetDict, max_number: int = 999) -> set[str]:
    """Every pre-tokenized piece of the question, steps and answer columns that is not a number token."""
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    pre = _pre_tokenizer(max_number)
    words: set[str] = set()
    for split in splits:
        for column in ("question", "steps", "answer"):
            for value in split[column]:
                for text in [value] if isinstance(value, str) else value:
                    words.update(piece for piece, _ in pre.pre_tokenize_str(text))
    return {w for w in words if not w.isdigit()}


def task_tokenizer_for(dataset: Dataset | DatasetDict, max_number: int = 999) -> PreTrainedTokenizerFast:
    """`build_tokenizer` extended with every word of a dataset (all splits of a DatasetDict), so that
    nothing in it maps to `<unk>`; for the multiplication task, GSM8K, or custom data."""
    return build_tokenizer(max_number=max_number, extra_words=dataset_words(dataset, max_number))
