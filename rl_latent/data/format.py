"""How a problem becomes model text: the prompt, and the target for each training mode.

One place decides the text format so that training, evaluation and every later stage (CODI's teacher uses the
CoT target, its student the latent one) agree on it. The answer prefix follows CODI: "The answer is:".
"""

from __future__ import annotations

from typing import Any

ANSWER_PREFIX = "The answer is:"
MODES = ("cot", "nocot")


def prompt_text(row: dict[str, Any]) -> str:
    """The question as the model sees it."""
    return row["question"].strip()


def cot_text(row: dict[str, Any]) -> str:
    """The chain of thought: the steps in order, space separated."""
    return " ".join(s.strip() for s in row["steps"])


def answer_text(row: dict[str, Any]) -> str:
    return f"{ANSWER_PREFIX} {row['answer'].strip()}"


def target_text(row: dict[str, Any], mode: str) -> str:
    """What follows the prompt: `CoT + answer` (cot) or the answer alone (nocot). Starts with a space."""
    if mode == "cot":
        return f" {cot_text(row)} {answer_text(row)}"
    if mode == "nocot":
        return f" {answer_text(row)}"
    raise ValueError(f"unknown target mode {mode!r}; expected one of {MODES}")
