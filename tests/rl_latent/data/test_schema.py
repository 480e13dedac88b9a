"""The common row schema: its validator names the row and the problem; split helpers stay disjoint."""

import random

import pytest

from rl_latent.data.schema import (
    COLUMNS,
    FEATURES,
    DataFormatError,
    derive_seed,
    disjoint_splits,
    make_dataset,
    validate_row,
)

GOOD = {
    "question": "a = 5 , b = 8 , c = a + b . what is c ?",
    "steps": ["<<5+8=13>>"],
    "answer": "13",
    "step_results": ["13"],
    "num_steps": 1,
    "dag": [[]],
    "source": "arith",
}


def test_good_row_passes_and_extra_keys_are_dropped():
    assert validate_row({**GOOD, "extra": 1}, "x") == GOOD
    ds = make_dataset([GOOD, GOOD])
    assert ds.features == FEATURES and ds.column_names == list(COLUMNS) and ds[1] == GOOD


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answer": None}, "'answer' must be a non-empty string"),
        ({"steps": "<<5+8=13>>"}, "'steps' must be a list of strings"),
        ({"num_steps": 2}, "'num_steps' is 2 but there are 1 steps"),
        ({"step_results": []}, "0 step_results for 1 steps"),
        ({"dag": [[0]]}, r"dag\[0\] = \[0\] must list earlier step indices"),
        ({"dag": []}, "'dag' must list the parents"),
    ],
)
def test_bad_rows_name_the_place_and_the_problem(change, message):
    with pytest.raises(DataFormatError, match=rf"^train\.jsonl:17: {message}"):
        validate_row({**GOOD, **change}, "train.jsonl:17")


def test_missing_key_and_row_number_in_make_dataset():
    bad = {k: v for k, v in GOOD.items() if k != "dag"}
    with pytest.raises(DataFormatError, match=r"^mine:2: missing key\(s\) \['dag'\]"):
        make_dataset([GOOD, bad], "mine")


def test_disjoint_splits_skip_collisions_in_a_tiny_space():
    space = [f"q{i}" for i in range(12)]

    def draw(rng: random.Random) -> dict:
        return {**GOOD, "question": rng.choice(space)}

    splits = disjoint_splits(draw, 0, n_train=20, n_valid=3, n_test=3)
    questions = {k: set(v["question"]) for k, v in splits.items()}
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [20, 3, 3]
    assert not questions["train"] & (questions["validation"] | questions["test"])
    assert not questions["validation"] & questions["test"]
    assert len(questions["validation"]) == 3 and len(questions["test"]) == 3  # no repeats in eval splits
    with pytest.raises(ValueError, match="could only draw 0 of 1 problems .* too small"):
        disjoint_splits(draw, 0, n_train=1, n_valid=6, n_test=6)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "test") == derive_seed(0, "test")
    assert len({derive_seed(s, t) for s in range(3) for t in ("test", "validation")}) == 6
