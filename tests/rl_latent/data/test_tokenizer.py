"""The word-level tokenizer: one token per number in range, no <unk> on task data, HF round-trip."""

import pytest
from transformers import AutoTokenizer

from rl_latent.data.arith import ArithSpec, generate_arith, get_difficulty
from rl_latent.data.format import ANSWER_PREFIX
from rl_latent.data.loaders import load_data
from rl_latent.data.multiplication import generate_multiplication
from rl_latent.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, task_tokenizer_for


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(max_number=999)


def _pieces(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text)["input_ids"])


def test_every_number_in_range_is_one_token_and_larger_ones_split_into_digits(tok):
    text = " ".join(str(i) for i in range(1000))
    ids = tok(text)["input_ids"]
    assert len(ids) == 1000 and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == [str(i) for i in range(1000)]
    assert _pieces(tok, "1000 -3 007 2.5") == ["1", "0", "0", "0", "-", "3", "0", "0", "7", "2", ".", "5"]


def test_equation_and_answer_prefix_pieces(tok):
    assert _pieces(tok, "<<5+8=13>>") == ["<<", "5", "+", "8", "=", "13", ">>"]
    assert _pieces(tok, f"#### 72 {ANSWER_PREFIX} 72") == ["####", "72", "The", "answer", "is", ":", "72"]
    assert _pieces(tok, "<bot><eot>") == ["<bot>", "<eot>"]


def test_special_tokens_are_set(tok):
    assert tok.convert_ids_to_tokens(list(range(6))) == list(SPECIAL_TOKENS)
    named = (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token)
    assert named == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert {"<bot>", "<eot>"} <= set(tok.all_special_tokens)


@pytest.mark.parametrize(
    "spec", [get_difficulty("1"), get_difficulty("5"), ArithSpec(nl_cot=True, distractors=2)], ids=str
)
def test_generated_problems_round_trip_without_unk(tok, spec):
    for row in generate_arith(100, 0, spec):
        text = " ".join([row["question"], *row["steps"], ANSWER_PREFIX, row["answer"]])
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text
        decoded = tok.decode(ids)
        assert decoded.split() == tok.convert_ids_to_tokens(ids)  # tokens joined by single spaces
        assert "".join(decoded.split()) == "".join(text.split())  # lossless up to spacing


def test_save_and_autotokenizer_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<bot> a = 5 , q = 8 , c = a + q . what is c ? <<5+8=13>> <eot> The answer is: 13 1234"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert loaded.convert_tokens_to_ids(["<bot>", "<eot>"]) == tok.convert_tokens_to_ids(["<bot>", "<eot>"])


def test_other_max_number_is_exact(tok):
    small = build_tokenizer(max_number=500)
    assert _pieces(small, "500 501 99 0") == ["500", "5", "0", "1", "99", "0"]
    assert len(tok) - len(small) == 499


def test_task_tokenizer_covers_real_and_multiplication_data(shared_data):
    gsm8k = load_data(shared_data / "icot" / "gsm8k" / "valid.txt").select(range(100))
    mult = generate_multiplication(20, 0, 4)
    for ds in (gsm8k, mult):
        tok = task_tokenizer_for(ds)
        for row in ds:
            for text in (row["question"], *row["steps"], row["answer"]):
                assert tok.unk_token_id not in tok(text)["input_ids"], text
