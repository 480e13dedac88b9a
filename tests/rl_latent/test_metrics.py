"""Tests for rl_latent.metrics: pass@k against brute-force enumeration, the answer parser, matching."""

import itertools
import json
import math

import pytest

from rl_latent.metrics import (
    accuracy,
    answers_match,
    extract_answer,
    mean_pass_at_k,
    normalize_number,
    pass_at_k,
)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct sample."""
    samples = [i < c for i in range(n)]
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_enumeration():
    checked = 0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 9))


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c = 4 < k
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    # large n stays finite and matches the closed form
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - math.comb(197, 100) / math.comb(200, 100))


@pytest.mark.parametrize(
    "n,c,k,exc",
    [(0, 0, 1, ValueError), (5, 6, 1, ValueError), (5, -1, 1, ValueError), (5, 2, 0, ValueError)]
    + [(5, 2, 6, ValueError), (5.0, 2, 1, TypeError), (5, True, 1, TypeError)],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k, exc):
    with pytest.raises(exc):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    out = mean_pass_at_k([4, 4], [1, 0], [1, 2, 4])
    assert list(out) == ["pass@1", "pass@2", "pass@4"]
    assert out["pass@1"] == pytest.approx((0.25 + 0.0) / 2)
    assert out["pass@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["pass@4"] == pytest.approx(0.5)


def test_mean_pass_at_k_errors_name_the_problem():
    with pytest.raises(ValueError, match="problem 1 has only n=2"):
        mean_pass_at_k([8, 2], [1, 1], [1, 4])
    with pytest.raises(ValueError, match="entries"):
        mean_pass_at_k([8, 8], [1], [1])
    with pytest.raises(ValueError, match="problem 0"):
        mean_pass_at_k([8], [9], [1])


@pytest.mark.parametrize(
    "text,expected",
    [
        # word-level tokenizer spacing
        ("<< 2 * 3 = 6 >> The answer is : 21", "21"),
        ("The answer is : - 3", "-3"),
        ("#### 1 , 000", "1000"),
        ("The answer is : $ 1 , 000 .", "1000"),
        ("The answer is : 2 . 5", "2.5"),
        ("The answer is : 5 5 6 0", "5560"),
        # normal text
        ("The answer is: $1,000.", "1000"),
        ("#### 72", "72"),
        ("The answer is -3.", "-3"),
        ("So the answer is 2.50 dollars.", "2.5"),
        ("The answer is .5", "0.5"),
        ("the ANSWER IS:7", "7"),
        # the LAST "answer is" wins; "answer is" beats "####"
        ("The answer is 4. Wait, no. The answer is 5.", "5"),
        ("#### 9\nThe answer is: 10", "10"),
        # ... and "####" beats an earlier "answer is" (real GSM8K row: "the final answer is 15 gallons...")
        ("the final answer is 15 gallons * 8 pints / gallon = <<15*8=120>>120 pints\n#### 120", "120"),
        # no number after the last marker -> fall back to "####", then to the last number
        ("#### 12\nThe answer is unknown", "12"),
        ("She has 3 apples and 4 pears, 7 fruits in total.", "7"),
        ("I paid 21. 5 people came", "5"),  # "21. 5" is a sentence end, not 21.5
        ("4 - 2 = 2 and then 10 - 8", "8"),  # a subtraction, not -8
        ("released on 12.05.2020", "2020"),  # one decimal point at most: never "12.052020"
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_on_real_gsm8k_answers(shared_data):
    """Every GSM8K train answer ends with "#### <number>" (some with commas, some say "answer is")."""
    with (shared_data / "gsm8k" / "train.jsonl").open() as f:
        rows = [json.loads(line) for line in f]
    with_commas = 0
    for i, row in enumerate(rows):
        gold = row["answer"].rsplit("####", 1)[1].strip()
        with_commas += "," in gold
        parsed = extract_answer(row["answer"])
        assert parsed == gold.replace(",", ""), (i, gold, parsed)
        assert answers_match(parsed, gold), (i, gold)
    assert extract_answer(rows[0]["answer"]) == "72"
    assert with_commas > 0  # the sample really exercises the thousands separator


def test_extract_answer_on_real_icot_lines(shared_data):
    line = (shared_data / "icot" / "4_by_4_mult" / "valid.txt").read_text().splitlines()[0]
    target = line.rsplit("####", 1)[1].strip()  # e.g. "5 5 6 0 8 2 0 1"
    assert " " in target
    parsed = extract_answer(line)
    assert parsed == target.replace(" ", "")
    assert answers_match(parsed, target)
    assert not answers_match(parsed[:-1] + str((int(parsed[-1]) + 1) % 10), target)


def test_normalize_number():
    assert normalize_number("1,080") == "1080"
    assert normalize_number(" -3 ") == "-3"
    assert normalize_number("5 5 6 0") == "5560"
    assert normalize_number("3.0") == "3"
    assert normalize_number("-0") == "0"
    assert normalize_number("12 apples") is None
    assert normalize_number("abc") is None


def test_answers_match():
    assert answers_match("1000", "1,000")
    assert answers_match("2.5", "2.50")
    assert answers_match("3", "3.0000001")  # within 1e-6
    assert not answers_match("3", "3.00001")
    assert not answers_match("-3", "3")
    assert not answers_match(None, "3")
    assert answers_match(" yes ", "yes")  # non-numeric: exact after strip
    assert not answers_match("yes", "no")
    # 20-digit strings: float64 would call these equal
    assert not answers_match("12345678901234567891", "12345678901234567892")


def test_accuracy():
    assert accuracy(["1", "2", None, "4"], ["1", "3", "3", "4.0"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        accuracy(["1", "2"], ["1"])
    with pytest.raises(ValueError):
        accuracy([], [])
