"""From a `DataConfig` to train/valid/test splits and the tokenizer a from-scratch model uses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datasets import Dataset, DatasetDict

from rl_latent.config import ConfigError, DataConfig


def load_splits(cfg: DataConfig) -> DatasetDict:
    """The three splits of the configured data. Generated tasks have disjoint, seeded splits; a file is carved
    into train/valid/test deterministically unless `test_path` gives the test set."""
    from rl_latent.data.arith import arith_splits, get_difficulty
    from rl_latent.data.loaders import load_data
    from rl_latent.data.multiplication import multiplication_splits

    if cfg.task == "arith":
        spec = dataclasses.replace(get_difficulty(cfg.difficulty), nl_cot=cfg.nl_cot)
        splits = arith_splits(cfg.seed, spec, cfg.n_train, cfg.n_valid, cfg.n_test)
    elif cfg.task == "mult":
        splits = multiplication_splits(cfg.seed, cfg.mult_k, cfg.n_train, cfg.n_valid, cfg.n_test)
    elif cfg.task == "file":
        if not cfg.path:
            raise ConfigError("data.task=file needs data.path")
        full = load_data(cfg.path, "train").shuffle(seed=cfg.seed)
        n_hold = cfg.n_valid + (0 if cfg.test_path else cfg.n_test)
        if len(full) <= n_hold:
            raise ConfigError(
                f"data.path {cfg.path} has {len(full)} rows; need more than {n_hold} to hold out"
            )
        splits = DatasetDict(
            train=full.select(range(n_hold, min(len(full), n_hold + cfg.n_train))),
            validation=full.select(range(cfg.n_valid)),
        )
        if not cfg.test_path:
            splits["test"] = full.select(range(cfg.n_valid, n_hold))
    else:
        raise ConfigError(f"unknown data.task {cfg.task!r}")
    if cfg.test_path:
        splits["test"] = load_data(cfg.test_path, "test")
    return splits


def load_eval_data(path: str) -> Dataset:
    """Any supported file (GSM8K, GSM8k-Aug, iCoT, our jsonl) or hub name, as one evaluation set."""
    from rl_latent.data.loaders import load_data

    return load_data(path, "test")


def dataset_name(cfg: DataConfig) -> str:
    """A short stable name for metric keys (`eval/<name>/accuracy`)."""
    if cfg.task == "arith":
        return f"arith-d{cfg.difficulty}" + ("-nl" if cfg.nl_cot else "")
    if cfg.task == "mult":
        return f"mult{cfg.mult_k}"
    return Path(cfg.test_path or cfg.path or "data").stem


def task_tokenizer(cfg: DataConfig, max_number: int, splits: DatasetDict | None = None):
    """The word-level tokenizer of a from-scratch model: every number 0..max_number one token, plus every word
    the data uses."""
    from rl_latent.data.tokenizer import build_tokenizer, task_tokenizer_for

    if cfg.task == "arith":
        return build_tokenizer(max_number=max_number)
    if splits is None:
        splits = load_splits(cfg)
    return task_tokenizer_for(splits, max_number=max_number)
