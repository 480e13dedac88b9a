"""Real data sets (GSM8K, GSM8k-Aug, iCoT files, our own JSONL) in the common schema, by hub name or path.

Why one entry point: configs name their data with one string (`data.train: whynlp/gsm8k-aug` or
`data.train: /data/train.jsonl`), and every trainer wants the same seven columns back. Local files are
parsed here line by line so that a malformed row fails with its file and line (`train.jsonl:17: ...`)
instead of deep inside `datasets`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset

from rl_latent.data.multiplication import mult_row
from rl_latent.data.schema import COLUMNS, DataFormatError, make_dataset, validate_row

_EQUATION = re.compile(r"<<([^<>]*)>>")
_NUMBER = re.compile(r"\d*\.?\d+")
_ANSWER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_MULT_QUESTION = re.compile(r"^\d( \d)* \* \d( \d)*$")

Row = dict[str, Any]
Converter = Callable[[Mapping[str, Any], str], Row]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def equation_result(step: str) -> str:
    """The value right of the last `=` in a `<<expr=result>>` step ("" when the step has no `=`)."""
    inner = step.strip().removeprefix("<<").removesuffix(">>")
    return inner.rsplit("=", 1)[1].strip() if "=" in inner else ""


def equation_dag(steps: list[str]) -> list[list[int]]:
    """Heuristic step DAG for equation CoTs: step j reads step i < j when a number in j's expression (left
    of `=`) equals i's result; each operand links to the latest earlier step that produced its value."""
    results = [_number(equation_result(s)) for s in steps]
    dag = []
    for j, step in enumerate(steps):
        inner = step.strip().removeprefix("<<").removesuffix(">>")
        expr = inner.rsplit("=", 1)[0] if "=" in inner else inner
        parents = set()
        for operand in _NUMBER.findall(expr):
            value = float(operand)
            for i in range(j - 1, -1, -1):
                if results[i] is not None and results[i] == value:
                    parents.add(i)
                    break
        dag.append(sorted(parents))
    return dag


def _clean_answer(raw: Any, where: str) -> str:
    text = str(raw).strip().replace(",", "").removeprefix("####").strip().removeprefix("$").strip()
    if not _ANSWER.fullmatch(text):
        raise DataFormatError(f"{where}: unparsable numeric answer {raw!r}")
    return text


def _equation_row(question: Any, steps: list[str], answer: str, source: str, where: str) -> Row:
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(f"{where}: 'question' must be a non-empty string")
    return {
        "question": question.strip(),
        "steps": steps,
        "answer": answer,
        "step_results": [equation_result(s) for s in steps],
        "num_steps": len(steps),
        "dag": equation_dag(steps),
        "source": source,
    }


def _require(raw: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in raw]
    if missing:
        raise DataFormatError(f"{where}: missing key(s) {missing} (has {sorted(raw)})")


def gsm8k_row(raw: Mapping[str, Any], where: str) -> Row:
    """openai/gsm8k row (question; answer with `<<...>>` annotations and a final `#### 72`)."""
    _require(raw, ("question", "answer"), where)
    text = str(raw["answer"])
    if "####" not in text:
        raise DataFormatError(f"{where}: no '####' answer")
    body, final = text.rsplit("####", 1)
    steps = [f"<<{e}>>" for e in _EQUATION.findall(body)]
    return _equation_row(raw["question"], steps, _clean_answer(final, where), "gsm8k", where)


def gsm8k_aug_row(raw: Mapping[str, Any], where: str) -> Row:
    """whynlp/gsm8k-aug row: question, steps (list of `<<...>>` strings; also a `cot` string), answer."""
    _require(raw, ("question", "answer"), where)
    if "steps" in raw:
        steps = raw["steps"]
        if isinstance(steps, str):
            steps = [f"<<{e}>>" for e in _EQUATION.findall(steps)] or steps.split()
    elif "cot" in raw:
        cot = raw["cot"]
        steps = cot if isinstance(cot, list) else [f"<<{e}>>" for e in _EQUATION.findall(str(cot))]
    else:
        raise DataFormatError(f"{where}: missing key 'steps' (or 'cot') (has {sorted(raw)})")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DataFormatError(f"{where}: 'steps' must be a list of strings, got {steps!r}")
    steps = [s.strip() for s in steps if s.strip()]
    return _equation_row(raw["question"], steps, _clean_answer(raw["answer"], where), "gsm8k-aug", where)


def icot_row(line: str, where: str) -> Row:
    """One iCoT line `question||cot #### answer`; multiplication lines are recomputed and checked."""
    if "||" not in line:
        raise DataFormatError(f"{where}: no '||' between question and CoT")
    question, rest = line.split("||", 1)
    if "####" not in rest:
        raise DataFormatError(f"{where}: no '####' answer")
    cot, answer = (part.strip() for part in rest.rsplit("####", 1))
    question = question.strip()
    if _MULT_QUESTION.match(question):
        try:
            row = mult_row(question)
        except ValueError as err:
            raise DataFormatError(f"{where}: {err}") from None
        if " + ".join(row["steps"]) != cot or row["answer"] != answer:
            raise DataFormatError(f"{where}: CoT or answer disagrees with the product of {question!r}")
        return row
    steps = [f"<<{e}>>" for e in _EQUATION.findall(cot)]
    return _equation_row(question, steps, _clean_answer(answer, where), "icot", where)


def _ours_row(raw: Mapping[str, Any], where: str) -> Row:
    return validate_row(raw, where)


def detect_format(raw: Mapping[str, Any]) -> str:
    """ "rl-latent" (our schema), "gsm8k-aug" (steps/cot column) or "gsm8k" (answer with `####`)."""
    if "step_results" in raw and "dag" in raw:
        return "rl-latent"
    if "steps" in raw or "cot" in raw:
        return "gsm8k-aug"
    return "gsm8k"


_CONVERTERS: dict[str, Converter] = {
    "rl-latent": _ours_row,
    "gsm8k-aug": gsm8k_aug_row,
    "gsm8k": gsm8k_row,
}


def _read_json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each row of a .jsonl (1-based line numbers) or .json list (1-based rows)."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{where}: bad JSON ({err.msg})") from None
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: bad JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: a .json data file must hold a list of row objects")
    for i, record in enumerate(data, start=1):
        yield f"{path}:{i}", record


def _convert_json(path: Path, fmt: str | None) -> Dataset:
    rows = []
    for where, record in _read_json_records(path):
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fmt = fmt or detect_format(record)
        rows.append(_CONVERTERS[fmt](record, where))
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return make_dataset(rows, str(path))


def load_icot(path: str | Path) -> Dataset:
    """An iCoT text file (`question||cot #### answer` a line): its GSM8K or multiplication files."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                rows.append(icot_row(line.rstrip("\n"), f"{path}:{lineno}"))
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return make_dataset(rows, str(path))


def _load_hub(name: str, split: str, config: str | None, convert: Converter) -> Dataset:
    """Load from the HF hub (or its cache) and convert row by row; errors name `name[split]` and the row."""
    from datasets import load_dataset

    raw = load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    rows = [convert(r, f"{name}[{split}]:{i}") for i, r in enumerate(raw, start=1)]
    return make_dataset(rows, f"{name}[{split}]")


def _local_file(name_or_path: str | Path, split: str) -> Path | None:
    """The local file meant: a file, or `<dir>/<split>.{jsonl,json,txt}` (`valid` also for validation)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        names = [split] + (["valid", "val"] if split == "validation" else [])
        for name in names:
            for suffix in (".jsonl", ".json", ".txt"):
                if (path / f"{name}{suffix}").is_file():
                    return path / f"{name}{suffix}"
        raise FileNotFoundError(f"{path}: no {split}.jsonl / {split}.json / {split}.txt in this directory")
    if path.suffix in (".jsonl", ".json", ".txt"):
        raise FileNotFoundError(f"data file not found: {path}")
    return None


def load_gsm8k(name_or_path: str | Path = "openai/gsm8k", split: str = "train") -> Dataset:
    """GSM8K (openai/gsm8k schema) from the hub ("main" config) or a local .jsonl/.json file."""
    local = _local_file(name_or_path, split)
    if local is not None:
        return _convert_json(local, "gsm8k")
    return _load_hub(str(name_or_path), split, "main", gsm8k_row)


def load_gsm8k_aug(name_or_path: str | Path = "whynlp/gsm8k-aug", split: str = "train") -> Dataset:
    """GSM8k-Aug (whynlp/gsm8k-aug: question, steps, answer; splits train/validation/test) or a local file."""
    local = _local_file(name_or_path, split)
    if local is not None:
        return load_icot(local) if local.suffix == ".txt" else _convert_json(local, "gsm8k-aug")
    return _load_hub(str(name_or_path), split, None, gsm8k_aug_row)


def load_data(name_or_path: str | Path, split: str = "train") -> Dataset:
    """One entry point: a local file or directory, else a hub name.

    Local: `.txt` is iCoT; `.jsonl`/`.json` are detected by keys (ours from `save_jsonl`, GSM8k-Aug, or
    GSM8K); a directory holds `<split>.jsonl|json|txt`. Hub: `openai/gsm8k` or `gsm8k` ("main" config),
    names containing `gsm8k-aug`, and any other name whose columns fit one of those formats.
    """
    local = _local_file(name_or_path, split)
    if local is not None:
        return load_icot(local) if local.suffix == ".txt" else _convert_json(local, None)
    name = str(name_or_path)
    if name in ("openai/gsm8k", "gsm8k"):
        return _load_hub("openai/gsm8k", split, "main", gsm8k_row)
    if "gsm8k-aug" in name.lower():
        return _load_hub(name, split, None, gsm8k_aug_row)
    return _load_hub(name, split, None, lambda r, where: _CONVERTERS[detect_format(r)](r, where))


def save_jsonl(dataset: Dataset, path: str | Path) -> Path:
    """Write `dataset` (our schema) as JSON lines that `load_data` reads back identically."""
    missing = [c for c in COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"cannot save to {path}: dataset lacks schema column(s) {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in dataset.select_columns(list(COLUMNS)):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
