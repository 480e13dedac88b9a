"""k-by-k multiplication in the iCoT format (Deng et al., "Implicit Chain of Thought Reasoning").

Why: multi-digit multiplication is the standard latent-reasoning benchmark beside GSM8K; generating it
locally in the exact iCoT text format lets runs on generated data compare with published numbers.

Format, one problem a line: `question||cot #### answer`, numbers as space-separated digits, least
significant first. For `a * b` the CoT lists, for each digit b_j of b (j = 0..k-1), the partial product
`a * b_j * 10^j` written with k+1+j digits; from j = 1 on, except for the last, it is followed by the
running sum `( sum_{i<=j} a * b_i * 10^i )` padded to the same k+1+j digits. The answer is `a * b` with
2k digits. Example: `5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + ... #### 5 5 6 0 8 2 0 1`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from datasets import Dataset, DatasetDict

from rl_latent.data.schema import disjoint_splits, draw_rows, make_dataset


def _digits_to_int(digits: str, where: str) -> tuple[int, int]:
    """Value and digit count of a reversed-digit string like `5 6 3 2` (= 2365)."""
    parts = digits.split()
    if not parts or not all(len(p) == 1 and p.isdigit() for p in parts):
        raise ValueError(f"{where}: {digits!r} is not space-separated single digits")
    return int("".join(reversed(parts))), len(parts)


def _int_to_digits(value: int, width: int) -> str:
    """`value` as `width` space-separated digits, least significant first (zero padded)."""
    text = str(value).zfill(width)
    if len(text) > width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return " ".join(reversed(text))


def parse_question(question: str) -> tuple[int, int, int]:
    """(a, b, k) from an iCoT question `d d d d * d d d d` (both operands k reversed digits)."""
    sides = question.split(" * ")
    if len(sides) != 2:
        raise ValueError(f"multiplication question {question!r} must read 'DIGITS * DIGITS'")
    a, ka = _digits_to_int(sides[0], f"question {question!r}")
    b, kb = _digits_to_int(sides[1], f"question {question!r}")
    if ka != kb:
        raise ValueError(f"question {question!r}: operands have {ka} and {kb} digits; k-by-k needs equal")
    return a, b, ka


def _solve(question: str) -> tuple[list[str], list[str], str]:
    """(steps, running sums after each step, answer) of a k-by-k question."""
    a, b, k = parse_question(question)
    steps, sums, total = [], [], 0
    for j in range(k):
        digit = (b // 10**j) % 10
        width = k + 1 + j
        partial = a * digit * 10**j
        total += partial
        step = _int_to_digits(partial, width)
        if 0 < j < k - 1:
            step += f" ( {_int_to_digits(total, width)} )"
        steps.append(step)
        sums.append(_int_to_digits(total, width))
    answer = _int_to_digits(a * b, 2 * k)
    sums[-1] = answer
    return steps, sums, answer


def icot_mult_solution(question: str) -> tuple[list[str], str]:
    """(steps, answer) for an iCoT multiplication question; `" + ".join(steps)` is the file's CoT."""
    steps, _, answer = _solve(question)
    return steps, answer


def mult_row(question: str) -> dict[str, Any]:
    """A schema row for a question: step_results are the running sums (the answer for the last step)."""
    steps, sums, answer = _solve(question)
    k = parse_question(question)[2]
    return {
        "question": question,
        "steps": steps,
        "answer": answer,
        "step_results": sums,
        "num_steps": len(steps),
        "dag": [[j - 1] if j else [] for j in range(len(steps))],
        "source": f"mult{k}",
    }


def draw_multiplication(rng: random.Random, k: int) -> dict[str, Any]:
    """One k-by-k problem; the most significant digit of each operand is non-zero (as in iCoT's files)."""

    def operand() -> str:
        digits = [rng.randrange(10) for _ in range(k - 1)] + [rng.randint(1, 9)]
        return " ".join(map(str, digits))

    return mult_row(f"{operand()} * {operand()}")


def generate_multiplication(n: int, seed: int, k: int = 4) -> Dataset:
    """`n` k-by-k multiplication problems in the common schema, deterministic given (seed, k)."""
    if k < 1:
        raise ValueError(f"multiplication needs k >= 1 digits, got {k}")
    rows = draw_rows(lambda rng: draw_multiplication(rng, k), seed, n, what=f"mult{k} problems")
    return make_dataset(rows, f"mult{k}")


def multiplication_splits(
    seed: int, k: int = 4, n_train: int = 10000, n_valid: int = 500, n_test: int = 500
) -> DatasetDict:
    """Splits "train"/"validation"/"test" of exact sizes with no question shared between them."""
    if k < 1:
        raise ValueError(f"multiplication needs k >= 1 digits, got {k}")
    return disjoint_splits(
        lambda rng: draw_multiplication(rng, k), seed, n_train, n_valid, n_test, f"mult{k} problems"
    )


def to_icot_line(row: Mapping[str, Any]) -> str:
    """One row as an iCoT text line `question||step + step ... #### answer` (no newline)."""
    sep = " + " if row["source"].startswith("mult") else " "
    return f"{row['question']}||{sep.join(row['steps'])} #### {row['answer']}"
