"""From a DataConfig to splits and the from-scratch tokenizer."""

from rl_latent.config import DataConfig
from rl_latent.data.build import load_splits, task_tokenizer


def _single_token(tok, text: str) -> bool:
    return len(tok(text, add_special_tokens=False)["input_ids"]) == 1


def test_task_tokenizer_honours_max_number_for_every_task():
    for task in ("arith", "mult"):
        cfg = DataConfig(task=task, mult_k=2, n_train=20, n_valid=4, n_test=4)
        tok = task_tokenizer(cfg, max_number=50, splits=load_splits(cfg) if task == "mult" else None)
        assert _single_token(tok, "50") and not _single_token(tok, "51"), task
        if task == "mult":  # and every word the data uses is in the vocabulary
            row = load_splits(cfg)["train"][0]
            ids = tok(row["question"] + " " + " ".join(row["steps"]), add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
