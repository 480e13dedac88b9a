"""Data for rl-latent: one row schema for every source, procedural tasks, real-data loaders, tokenizer.

Every loader and generator returns a `datasets.Dataset` with the columns of `FEATURES` (see `schema`).
"""

from rl_latent.data.arith import DIFFICULTIES, ArithSpec, arith_splits, generate_arith, get_difficulty
from rl_latent.data.format import ANSWER_PREFIX
from rl_latent.data.loaders import (
    equation_dag,
    equation_result,
    load_data,
    load_gsm8k,
    load_gsm8k_aug,
    load_icot,
    save_jsonl,
)
from rl_latent.data.multiplication import (
    generate_multiplication,
    icot_mult_solution,
    multiplication_splits,
    to_icot_line,
)
from rl_latent.data.schema import COLUMNS, FEATURES, DataFormatError, make_dataset, validate_row
from rl_latent.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, task_tokenizer_for

__all__ = [
    "ANSWER_PREFIX",
    "COLUMNS",
    "DIFFICULTIES",
    "FEATURES",
    "SPECIAL_TOKENS",
    "ArithSpec",
    "DataFormatError",
    "arith_splits",
    "build_tokenizer",
    "equation_dag",
    "equation_result",
    "generate_arith",
    "generate_multiplication",
    "get_difficulty",
    "icot_mult_solution",
    "load_data",
    "load_gsm8k",
    "load_gsm8k_aug",
    "load_icot",
    "make_dataset",
    "multiplication_splits",
    "save_jsonl",
    "task_tokenizer_for",
    "to_icot_line",
    "validate_row",
]
