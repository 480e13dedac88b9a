"""Evaluation metrics: unbiased pass@k, GSM8K-style answer parsing, accuracy.

These are pure functions so that rewards (answer correctness), evaluation and tests all score an answer the
same way. The parser accepts both normally formatted text and text decoded by a word-level tokenizer, whose
output puts spaces between every token (``The answer is : - 3``, ``#### 1 , 000``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = [
    "pass_at_k",
    "mean_pass_at_k",
    "extract_answer",
    "normalize_number",
    "answers_match",
    "accuracy",
    "NUMERIC_TOLERANCE",
]

NUMERIC_TOLERANCE = Decimal("1e-6")

# A number as a model writes it. Digit groups may be joined by
#   - thousands separators, written "1,000" or (word-level tokenizer) "1 , 000";
#   - a decimal point, written "2.5" or "2 . 5" (but not "21. 5": that is a sentence end then a number);
#   - plain spaces ("5 5 6 0", iCoT digit strings; "1 000").
# An optional sign and currency symbol may come first, each possibly followed by spaces ("- 3", "$ 5").
_INT_JOIN = r"(?:,\d{3}(?!\d)|[ \t]+,[ \t]+\d{3}(?!\d)|[ \t]+\d+)"
_DECIMAL = r"(?:\.\d+|[ \t]+\.[ \t]+\d+)"
_BODY = rf"(?:\d+{_INT_JOIN}*{_DECIMAL}?|(?<![\d.])\.\d+)"  # at most one decimal point
_NUMBER_RE = re.compile(rf"(?P<sign>-[ \t]*)?\$?[ \t]*(?P<sign2>-[ \t]*)?(?P<body>{_BODY})")
_FULL_NUMBER_RE = re.compile(rf"\s*(?:-[ \t]*)?\$?[ \t]*(?:-[ \t]*)?{_BODY}[ \t]*\.?\s*")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_HASHES = "####"


def _validate_int(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct.

    pass@k = 1 - C(n-c, k) / C(n, k)   (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", eq. 1), i.e. the probability that a random k-subset of the n samples holds a correct one.
    Computed in the numerically stable product form of the paper's reference code,
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, and exactly 1.0 when n - c < k (every k-subset holds a correct one).
    """
    n = _validate_int("n", n)
    c = _validate_int("c", c)
    k = _validate_int("k", k)
    if n < 1:
        raise ValueError(f"pass@k needs n >= 1 samples, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(
    n_per_problem: Sequence[int], correct_per_problem: Sequence[int], ks: Sequence[int]
) -> dict[str, float]:
    """Mean over problems of the unbiased pass@k, for each k in ``ks``; keys ``"pass@1"``, ``"pass@8"``...

    mean_k = (1/P) sum_p pass_at_k(n_p, c_p, k) (Chen et al. 2021). A k larger than some problem's sample
    count is an error naming the problem: silently skipping it would average over a different problem set.
    """
    if len(n_per_problem) != len(correct_per_problem):
        raise ValueError(
            f"n_per_problem has {len(n_per_problem)} entries but correct_per_problem has "
            f"{len(correct_per_problem)}"
        )
    if len(n_per_problem) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    if len(ks) == 0:
        raise ValueError("mean_pass_at_k needs at least one k")
    out: dict[str, float] = {}
    for k in ks:
        k = _validate_int("k", k)
        total = 0.0
        for p, (n, c) in enumerate(zip(n_per_problem, correct_per_problem)):
            if k > n:
                raise ValueError(f"pass@{k} asked for but problem {p} has only n={n} samples (need n >= k)")
            try:
                total += pass_at_k(n, c, k)
            except (ValueError, TypeError) as e:
                raise type(e)(f"problem {p}: {e}") from e
        out[f"pass@{k}"] = total / len(n_per_problem)
    return out


def _canonical(sign: bool, body: str) -> str:
    """Canonical string of a matched number: no spaces, commas or '$'; '-' kept; '2.50' -> '2.5'.

    Integer digits are kept as written (leading zeros matter in iCoT reversed-digit answers).
    """
    digits = re.sub(r"[ \t,]", "", body)
    if "." in digits:
        whole, frac = digits.split(".", 1)
        frac = frac.rstrip("0")
        whole = whole or "0"
        digits = f"{whole}.{frac}" if frac else whole
    if sign and digits.strip("0.") != "":
        return "-" + digits
    return digits


def _first_number(text: str) -> str | None:
    for m in _NUMBER_RE.finditer(text):
        return _canonical(_is_negative(text, m), m.group("body"))
    return None


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER_RE.finditer(text):
        last = m
    return None if last is None else _canonical(_is_negative(text, last), last.group("body"))


def _is_negative(text: str, m: re.Match[str]) -> bool:
    """A '-' is a sign unless it follows an operand ("4 - 2" is a subtraction, not "-2")."""
    if not (m.group("sign") or m.group("sign2")):
        return False
    before = text[: m.start()].rstrip()
    return not (before and (before[-1].isalnum() or before[-1] in ")]"))


def extract_answer(text: str) -> str | None:
    """Parse the final numeric answer out of generated text (GSM8K style), or None when there is none.

    Priority: the first number after the LAST "answer is" (case-insensitive, optional ':') or the last
    "####", whichever comes later in the text (if no number follows it, the other one); else the last number
    in the text. The number is normalised: '$', ','
    thousands separators and spaces inside it are dropped, a trailing '.' is dropped, a leading '-' kept:
    ``"The answer is : - 3"`` -> ``"-3"``, ``"#### 1 , 000"`` -> ``"1000"``, ``"$1,000."`` -> ``"1000"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    # (start, end) of the last "answer is" and of the last "####"
    spans: list[tuple[int, int]] = []
    markers = list(_ANSWER_IS_RE.finditer(text))
    if markers:
        spans.append(markers[-1].span())
    idx = text.rfind(_HASHES)
    if idx >= 0:
        spans.append((idx, idx + len(_HASHES)))
    # the marker written last is the final answer (GSM8K gold text can say "the final answer is 15 * 8 =
    # 120 pints" before "#### 120")
    spans.sort(key=lambda s: s[0], reverse=True)
    for _, end in spans:
        found = _first_number(text[end:])
        if found is not None:
            return found
    return _last_number(text)


def normalize_number(text: str) -> str | None:
    """Canonical form of ``text`` when the whole of it is one number (as :func:`extract_answer` writes it),
    else None. Used to normalise targets: ``"1,080"`` -> ``"1080"``, ``"5 5 6 0"`` -> ``"5560"``."""
    if not _FULL_NUMBER_RE.fullmatch(text):
        return None
    return _first_number(text)


def _to_decimal(s: str | None) -> Decimal | None:
    if s is None:
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def answers_match(pred: str | None, target: str) -> bool:
    """Whether a predicted answer equals the target.

    Numeric when both sides are numbers after normalisation (:func:`normalize_number`):
    |pred - target| <= 1e-6, in exact decimal arithmetic (long iCoT digit strings exceed float precision).
    Otherwise exact string equality after stripping whitespace. ``None`` (nothing parsed) never matches.
    """
    if pred is None:
        return False
    if not isinstance(target, str):
        raise TypeError(f"target must be a str, got {type(target).__name__} {target!r}")
    p = _to_decimal(normalize_number(pred))
    t = _to_decimal(normalize_number(target))
    if p is not None and t is not None:
        return abs(p - t) <= NUMERIC_TOLERANCE
    return pred.strip() == target.strip()


def accuracy(preds: Sequence[str | None], targets: Sequence[str]) -> float:
    """Fraction of predictions that match their targets: (1/N) sum_i answers_match(pred_i, target_i).

    ``preds`` are parsed answers (e.g. from :func:`extract_answer`), not raw generations.
    """
    if len(preds) != len(targets):
        raise ValueError(f"accuracy got {len(preds)} predictions but {len(targets)} targets")
    if len(preds) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(answers_match(p, t) for p, t in zip(preds, targets)) / len(preds)
