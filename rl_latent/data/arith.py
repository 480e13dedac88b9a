"""The embedded default task: procedural multi-step arithmetic over named variables.

Why this task: it needs no network, its answers are exactly verifiable, every CoT step is one equation in
the GSM8k-Aug format `<<a+b=c>>`, and the step-dependency DAG is known exactly (which the step shortcut
needs). The knobs in `ArithSpec` scale difficulty smoothly, from 2 steps to long chains with distractors.

A problem, e.g. `a = 5 , q = 8 , c = a + q , x = q - 2 , d = c - 3 , e = d + a . what is e ?`:
base facts, then a chain of derived variables where step i's left operand is step i-1's variable (a base
variable for step 1), so every derived step lies on the answer's path; distractor facts (`x` above) are
derived from earlier non-distractor variables and never read again.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, DatasetDict

from rl_latent.data.schema import disjoint_splits, draw_rows, make_dataset

_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
OP_WORDS: dict[str, str] = {"+": "plus", "-": "minus", "*": "times"}
"""How the natural-language CoT reads each operator."""

TEMPLATE_WORDS: tuple[str, ...] = ("what", "is", "so", *OP_WORDS.values())
"""Every word (besides variables, numbers, punctuation) in questions and CoTs; the tokenizer needs them."""

_LETTERS = string.ascii_lowercase
_MAX_CONST = 9


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty knobs of the arithmetic task.

    num_steps: the maximum number of derived (CoT) steps.
    min_steps: the minimum; each problem draws its step count uniformly in [min_steps, num_steps]
        (None means exactly num_steps).
    max_value: every value (base, intermediate, answer) lies in [0, max_value).
    ops: operators to draw from, any of "+", "-", "*" ("*" only between operands >= 2 whose product
        stays in range, so no trivial `x*1` steps).
    distractors: extra derived facts in the question that the answer does not need.
    base_vars: number of given facts `a = 5`.
    reuse_derived: whether a right operand may be an earlier derived variable (then a step reads a value the
        CoT computed two or more steps back: a harder lookup); otherwise it is a given fact or a constant.
    const_prob: chance that a right operand is a small constant rather than a variable (constants are read
        straight from the statement; variables need a lookup of their value).
    nl_cot: write each step as a sentence (`c is a plus q , so c = 5 + 8 = 13 .`, like GSM8k-Aug-NL)
        instead of the equation `<<5+8=13>>`.
    """

    num_steps: int = 4
    min_steps: int | None = None
    max_value: int = 20
    ops: tuple[str, ...] = ("+", "-")
    distractors: int = 0
    base_vars: int = 2
    reuse_derived: bool = True
    const_prob: float = 0.3
    nl_cot: bool = False

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"ArithSpec.num_steps must be >= 1, got {self.num_steps}")
        if self.min_steps is not None and not 1 <= self.min_steps <= self.num_steps:
            raise ValueError(f"ArithSpec.min_steps must lie in [1, {self.num_steps}], got {self.min_steps}")
        if self.max_value < 2:
            raise ValueError(f"ArithSpec.max_value must be >= 2, got {self.max_value}")
        bad = [op for op in self.ops if op not in _OPS]
        if not self.ops or bad:
            raise ValueError(f"ArithSpec.ops must be a non-empty subset of {sorted(_OPS)}, got {self.ops!r}")
        if self.distractors < 0 or self.base_vars < 1:
            raise ValueError(f"ArithSpec needs distractors >= 0 and base_vars >= 1, got {self}")
        if self.base_vars + self.num_steps + self.distractors > len(_LETTERS):
            raise ValueError(f"ArithSpec needs more than {len(_LETTERS)} variable names: {self}")


DIFFICULTIES: dict[str, ArithSpec] = {
    # 1-2: one given fact and constant operands: the chain itself is the difficulty (2 is the quickstart).
    "1": ArithSpec(num_steps=3, min_steps=2, max_value=10, base_vars=1, const_prob=1.0, reuse_derived=False),
    "2": ArithSpec(num_steps=4, min_steps=2, max_value=10, base_vars=1, const_prob=1.0, reuse_derived=False),
    # 3: variable binding (which given fact a step reads) over a wider range.
    "3": ArithSpec(num_steps=4, min_steps=2, max_value=20, const_prob=0.5, reuse_derived=False),
    # 4-5: steps read values computed earlier in the chain, distractors, multiplication.
    "4": ArithSpec(num_steps=6, min_steps=4, max_value=50, ops=("+", "-", "*"), distractors=2, base_vars=3),
    "5": ArithSpec(num_steps=8, max_value=100, ops=("+", "-", "*"), distractors=3, base_vars=3),
}
"""Named difficulty levels, easiest first. Level "2" is the quickstart default (see docs/decisions.md)."""


def get_difficulty(name: str) -> ArithSpec:
    """The `ArithSpec` of a named difficulty level (a ValueError lists the valid names)."""
    try:
        return DIFFICULTIES[str(name)]
    except KeyError:
        raise ValueError(f"unknown arith difficulty {name!r}; valid: {sorted(DIFFICULTIES)}") from None


class _Redraw(Exception):
    """No valid operand/op found for a step: redraw the whole problem."""


def _pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    """`rng.choice` without its per-call overhead (generation speed matters at 50k+ problems)."""
    return seq[int(rng.random() * len(seq))]


def _valid(op: str, x: int, y: int, max_value: int) -> bool:
    """In range, and '*' only between operands >= 2 (so no trivial `*0` / `*1` steps)."""
    if op == "*":
        return x >= 2 and y >= 2 and x * y < max_value
    return 0 <= _OPS[op](x, y) < max_value


def _pick_step(
    rng: random.Random, spec: ArithSpec, values: dict[str, int], left: str, candidates: list[str]
) -> tuple[str, int, str, int]:
    """Right operand (a variable name or a constant, as text), its value, op, and an in-range result.

    Rejection sampling first (op uniform; a constant in [1, 9] with probability `spec.const_prob`, else an
    earlier variable); after 8 misses, an exhaustive draw: op uniform among the ops with any valid operand,
    then uniform among that op's valid operands (variables preferred with probability 1 - const_prob).
    """
    x, top = values[left], spec.max_value
    n_const = min(_MAX_CONST, top - 1)
    for _ in range(8):
        op = _pick(rng, spec.ops)
        if candidates and rng.random() >= spec.const_prob:
            text = _pick(rng, candidates)
            y = values[text]
        else:
            y = 1 + int(rng.random() * n_const)
            text = str(y)
        if _valid(op, x, y, top):
            return text, y, op, _OPS[op](x, y)
    consts = [(str(c), c) for c in range(1, n_const + 1)]
    variables = [(v, values[v]) for v in candidates]
    ops = list(spec.ops)
    while ops:
        op = ops.pop(int(rng.random() * len(ops)))
        ok_vars = [(t, y) for t, y in variables if _valid(op, x, y, top)]
        ok_consts = [(t, y) for t, y in consts if _valid(op, x, y, top)]
        pool = ok_vars if ok_vars and (not ok_consts or rng.random() >= spec.const_prob) else ok_consts
        if pool:
            text, y = _pick(rng, pool)
            return text, y, op, _OPS[op](x, y)
    raise _Redraw


def _nl_step(var: str, left: str, op: str, right: str, a: int, b: int, result: int) -> str:
    return f"{var} is {left} {OP_WORDS[op]} {right} , so {var} = {a} {op} {b} = {result} ."


def _draw_once(rng: random.Random, spec: ArithSpec) -> dict[str, Any]:
    lo = spec.min_steps or spec.num_steps
    n_steps = lo + int(rng.random() * (spec.num_steps - lo + 1))
    names = rng.sample(_LETTERS, spec.base_vars + n_steps + spec.distractors)
    base, derived, extra = (
        names[: spec.base_vars],
        names[spec.base_vars : spec.base_vars + n_steps],
        names[spec.base_vars + n_steps :],
    )
    values = {v: int(rng.random() * spec.max_value) for v in base}
    statements = [f"{v} = {values[v]}" for v in base]
    steps, results, dag = [], [], []
    step_of = {}  # derived variable -> its step index
    left = _pick(rng, base)
    for i, var in enumerate(derived):
        earlier = [v for v in (values if spec.reuse_derived else base) if v != left]
        right, b, op, result = _pick_step(rng, spec, values, left, earlier)
        a = values[left]
        values[var] = result
        step_of[var] = i
        statements.append(f"{var} = {left} {op} {right}")
        if spec.nl_cot:
            steps.append(_nl_step(var, left, op, right, a, b, result))
        else:
            steps.append(f"<<{a}{op}{b}={result}>>")
        results.append(str(result))
        dag.append(sorted({step_of[v] for v in (left, right) if v in step_of}))
        left = var
    defines = base + derived  # the variable each statement defines, in question order
    for var in extra:  # distractors: read earlier non-distractor variables, are never read
        pos = spec.base_vars + int(rng.random() * (len(statements) - spec.base_vars + 1))
        defined = [v for v in defines[:pos] if v not in extra]
        d_left = _pick(rng, defined)
        others = [v for v in defined if v != d_left]
        d_right, _, d_op, d_result = _pick_step(rng, spec, values, d_left, others)
        statements.insert(pos, f"{var} = {d_left} {d_op} {d_right}")
        defines.insert(pos, var)
        values[var] = d_result
    question = " , ".join(statements) + f" . what is {derived[-1]} ?"
    return {
        "question": question,
        "steps": steps,
        "answer": results[-1],
        "step_results": results,
        "num_steps": n_steps,
        "dag": dag,
        "source": "arith",
    }


def draw_arith(rng: random.Random, spec: ArithSpec) -> dict[str, Any]:
    """One problem as a schema row, drawn from `rng` (redrawn whole when a step has no in-range option)."""
    for _ in range(1000):
        try:
            return _draw_once(rng, spec)
        except _Redraw:
            continue
    raise ValueError(f"could not draw an arithmetic problem within range for {spec}; widen max_value or ops")


def generate_arith(n: int, seed: int, spec: ArithSpec | None = None) -> Dataset:
    """`n` arithmetic problems in the common schema, deterministic given (seed, spec)."""
    spec = spec or ArithSpec()
    rows = draw_rows(lambda rng: draw_arith(rng, spec), seed, n, what="arith problems")
    return make_dataset(rows, "arith")


def arith_splits(
    seed: int, spec: ArithSpec | None = None, n_train: int = 10000, n_valid: int = 500, n_test: int = 500
) -> DatasetDict:
    """Splits "train"/"validation"/"test" of exact sizes with no question shared between them."""
    spec = spec or ArithSpec()
    draw = lambda rng: draw_arith(rng, spec)
    return disjoint_splits(draw, seed, n_train, n_valid, n_test, "arith problems")
