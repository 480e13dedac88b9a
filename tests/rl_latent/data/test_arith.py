"""The procedural arithmetic task: CoT, answers and DAG must agree with the question text itself."""

import re

import pytest

from rl_latent.data.arith import DIFFICULTIES, ArithSpec, arith_splits, generate_arith, get_difficulty
from rl_latent.data.schema import FEATURES, validate_row

_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def _evaluate(question: str) -> tuple[dict[str, int], list[tuple[str, str, str, str]], str]:
    """Re-derive every value from the question text alone: (values, derived statements, asked variable)."""
    body, asked = re.fullmatch(r"(.*) \. what is ([a-z]) \?", question).groups()
    values: dict[str, int] = {}
    derived = []
    for statement in body.split(" , "):
        parts = statement.split()
        if len(parts) == 3:
            values[parts[0]] = int(parts[2])
        else:
            var, _, left, op, right = parts
            y = values[right] if right.isalpha() else int(right)
            values[var] = _OPS[op](values[left], y)
            derived.append((var, left, op, right))
    return values, derived, asked


@pytest.mark.parametrize("level", sorted(DIFFICULTIES))
def test_every_level_is_consistent_with_its_question(level):
    spec = get_difficulty(level)
    ds = generate_arith(200, seed=3, spec=spec)
    assert ds.features == FEATURES and len(ds) == 200
    lo = spec.min_steps or spec.num_steps
    for i, row in enumerate(ds):
        validate_row(row, f"row {i}")
        values, derived, asked = _evaluate(row["question"])
        assert all(0 <= v < spec.max_value for v in values.values())
        assert row["answer"] == str(values[asked])
        assert lo <= row["num_steps"] <= spec.num_steps
        assert len(derived) == row["num_steps"] + spec.distractors
        # the chain: the steps' variables, each reading the previous one, ending at the asked variable
        chain = [asked]
        while True:
            parent = next((d[1] for d in derived if d[0] == chain[-1]), None)
            if parent is None or parent not in {d[0] for d in derived}:
                break
            chain.append(parent)
        chain.reverse()
        assert len(chain) == row["num_steps"]
        step_of = {v: j for j, v in enumerate(chain)}
        distractors = {d[0] for d in derived} - set(chain)
        for _, left, _, right in derived:  # distractors are never read
            assert left not in distractors and right not in distractors
        for j, var in enumerate(chain):
            _, left, op, right = next(d for d in derived if d[0] == var)
            a, b = values[left], values[right] if right.isalpha() else int(right)
            assert row["steps"][j] == f"<<{a}{op}{b}={values[var]}>>"
            assert row["step_results"][j] == str(values[var])
            assert row["dag"][j] == sorted({step_of[v] for v in (left, right) if v in step_of})
            if op == "*":
                assert a >= 2 and b >= 2


def test_deterministic_given_seed_and_spec():
    spec = ArithSpec(num_steps=5, min_steps=2, distractors=2, max_value=40, ops=("+", "-", "*"))
    a, b = generate_arith(50, 7, spec), generate_arith(50, 7, spec)
    assert a.to_list() == b.to_list()
    assert a["question"] != generate_arith(50, 8, spec)["question"]


def test_variable_names_are_not_alphabetical():
    names = ["".join(re.findall(r"\b([a-z]) =", q)) for q in generate_arith(50, 0)["question"]]
    assert len(set(names)) > 10
    assert not all(n == "".join(sorted(n)) for n in names)


def test_nl_cot_sentences_end_with_the_result():
    ds = generate_arith(100, 1, ArithSpec(nl_cot=True, distractors=1))
    for row in ds:
        for step, result in zip(row["steps"], row["step_results"]):
            pattern = r"([a-z]) is ([a-z]) (plus|minus|times) (\w+) , so \1 = (\d+) [-+*] (\d+) = (\d+) \."
            m = re.fullmatch(pattern, step)
            assert m, step
            assert m.group(7) == result


def test_splits_are_disjoint_and_exact():
    splits = arith_splits(0, get_difficulty("1"), n_train=300, n_valid=40, n_test=40)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "validation": 40, "test": 40}
    train, valid, test = (set(splits[k]["question"]) for k in ("train", "validation", "test"))
    assert not train & valid and not train & test and not valid & test


def test_bad_spec_and_unknown_level_are_named():
    with pytest.raises(ValueError, match="ops"):
        ArithSpec(ops=("/",))
    with pytest.raises(ValueError, match="min_steps"):
        ArithSpec(num_steps=2, min_steps=3)
    with pytest.raises(ValueError, match="valid: \\['1', '2'"):
        get_difficulty("hard")
    with pytest.raises(ValueError, match="could not draw an arithmetic problem"):
        generate_arith(1, 0, ArithSpec(ops=("*",), max_value=4))  # 2*2 is already out of range
