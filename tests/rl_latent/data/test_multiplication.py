"""k-by-k multiplication must reproduce the real iCoT files exactly, line by line."""

import pytest

from rl_latent.data.multiplication import (
    generate_multiplication,
    icot_mult_solution,
    multiplication_splits,
    parse_question,
    to_icot_line,
)
from rl_latent.data.schema import FEATURES


@pytest.mark.parametrize("name, k", [("4_by_4_mult", 4), ("5_by_5_mult", 5)])
def test_every_line_of_the_icot_files_is_regenerated(shared_data, name, k):
    lines = (shared_data / "icot" / name / "valid.txt").read_text().splitlines()
    assert len(lines) == 1000
    for lineno, line in enumerate(lines, start=1):
        question = line.split("||")[0]
        steps, answer = icot_mult_solution(question)
        assert f"{question}||{' + '.join(steps)} #### {answer}" == line, f"{name}:{lineno}"
        assert len(steps) == k


def test_generated_rows_are_correct_products():
    ds = generate_multiplication(100, seed=0, k=4)
    assert ds.features == FEATURES
    for row in ds:
        a, b, k = parse_question(row["question"])
        assert k == 4 and 1000 <= a <= 9999 and 1000 <= b <= 9999
        assert int("".join(reversed(row["answer"].split()))) == a * b
        assert row["step_results"][-1] == row["answer"]
        sums = [int("".join(reversed(s.split()))) for s in row["step_results"]]
        assert sums == [a * (b % 10 ** (j + 1)) for j in range(4)]  # running sums of the partial products
        assert row["dag"] == [[], [0], [1], [2]] and row["source"] == "mult4"
        steps, answer = icot_mult_solution(row["question"])
        assert to_icot_line(row) == f"{row['question']}||{' + '.join(steps)} #### {answer}"
    assert generate_multiplication(20, 0, 4).to_list() == ds.select(range(20)).to_list()


def test_splits_are_disjoint_and_exact():
    splits = multiplication_splits(1, k=2, n_train=200, n_valid=30, n_test=30)  # 8100 questions in all
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [200, 30, 30]
    qs = {s: set(splits[s]["question"]) for s in splits}
    assert not qs["train"] & (qs["validation"] | qs["test"]) and not qs["validation"] & qs["test"]


def test_malformed_question_is_named():
    with pytest.raises(ValueError, match="operands have 3 and 2 digits"):
        icot_mult_solution("1 2 3 * 4 5")
    with pytest.raises(ValueError, match="not space-separated single digits"):
        icot_mult_solution("12 3 * 4 5")
