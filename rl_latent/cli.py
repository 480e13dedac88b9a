"""`rl-latent data | train | eval | pipeline | config`.

rl-latent train configs/quickstart.yaml optim.lr=3e-4      # one recipe, dotted overrides
rl-latent pipeline configs/quickstart.yaml                 # the stages chained, with a summary
rl-latent eval runs/quickstart/cot_sft/model --difficulty 3 --task-seed 7
rl-latent eval runs/quickstart/cot_sft/model --data ../shared/data/icot/gsm8k/valid.txt
rl-latent data configs/quickstart.yaml --show 3            # write and show the splits
rl-latent config configs/quickstart.yaml                   # every key, its value and what it does
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rl_latent.config import ConfigError, describe, load_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_train(args: argparse.Namespace) -> None:
    from rl_latent.pipeline import run_recipe

    cfg = load_config(args.config, args.overrides)
    summary = run_recipe(cfg)
    print(json.dumps(summary, indent=2))


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from rl_latent.pipeline import run_pipeline

    run_pipeline(load_config(args.config, args.overrides))


def _cmd_data(args: argparse.Namespace) -> None:
    from rl_latent.data.build import dataset_name, load_splits
    from rl_latent.data.format import prompt_text, target_text
    from rl_latent.data.loaders import save_jsonl

    cfg = load_config(args.config, args.overrides)
    splits = load_splits(cfg.data)
    out = Path(args.out or Path(cfg.train.output_dir) / "data")
    out.mkdir(parents=True, exist_ok=True)
    for name, ds in splits.items():
        save_jsonl(ds, out / f"{name}.jsonl")
        steps = sum(ds["num_steps"]) / max(1, len(ds))
        print(f"{name:>6}: {len(ds):6d} problems, {steps:.2f} steps on average -> {out / f'{name}.jsonl'}")
    for row in splits["train"].select(range(min(args.show, len(splits["train"])))):
        print(f"\n[{dataset_name(cfg.data)}] {prompt_text(row)}\n  ->{target_text(row, 'cot')}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from rl_latent.eval_cli import run_eval

    run_eval(args)


def _cmd_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    from rl_latent.config import to_dict

    values = to_dict(cfg)
    for key, typ, _default, help_ in describe():
        value: object = values
        for part in key.split("."):  # a key names a field; its value may itself be a dict (stage_overrides)
            value = value[part]  # type: ignore[index]
        print(f"{key:<24} {value!s:<18} {help_}  [{typ}]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rl-latent", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_: str, required: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", nargs=None if required else "?", help="YAML recipe under configs/")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
        return sp

    with_config("train", "run one training recipe").set_defaults(fn=_cmd_train)
    with_config("pipeline", "run the configured stages in order and summarise").set_defaults(fn=_cmd_pipeline)
    sp = with_config("data", "generate/load the configured data, write the splits as jsonl", required=False)
    sp.add_argument("--out", help="output folder (default: <train.output_dir>/data)")
    sp.add_argument("--show", type=int, default=2, help="print this many training examples")
    sp.set_defaults(fn=_cmd_data)
    with_config(
        "config", "print every config key with its value and documentation", required=False
    ).set_defaults(fn=_cmd_config)

    sp = sub.add_parser("eval", help="evaluate a saved model on any data set")
    sp.add_argument("checkpoint", help="a model dir written by training (runs/<run>/model or a checkpoint)")
    sp.add_argument(
        "--config", help="recipe whose data/eval sections to use (default: the run's config.yaml)"
    )
    sp.add_argument("--data", help="a data file or hub name (GSM8K, GSM8k-Aug, iCoT .txt, our .jsonl)")
    sp.add_argument("--task", choices=["arith", "mult"], help="a generated task (default: the run's)")
    sp.add_argument("--task-seed", type=int, help="seed of the generated task")
    sp.add_argument("--difficulty", help="difficulty level of the generated task")
    sp.add_argument("--split", default=None, help="split of a generated task (default: test)")
    sp.add_argument("--n-samples", type=int, default=None, help="samples per problem for pass@k")
    sp.add_argument("--ks", default=None, help="comma-separated k values, e.g. 1,4,8")
    sp.add_argument("--max-problems", type=int, default=None)
    sp.add_argument("--wandb", default=None, choices=["auto", "offline", "online", "none"])
    sp.add_argument("--out", help="output folder (default: <checkpoint>/../eval-<data>)")
    sp.add_argument("--show", type=int, default=3, help="print this many problems with the model's output")
    sp.add_argument(
        "--probe",
        type=int,
        default=None,
        help="latent models: top tokens kept per latent step (default eval.probe)",
    )
    sp.add_argument(
        "--lam", type=float, default=None,
        help="System-1.5 models: decode with this exit threshold (default: the model's; >= 1: no exits)",
    )  # fmt: skip
    sp.add_argument(
        "--exit-at", type=int, default=None,
        help="System-1.5 models: every position exits at this router layer (a static depth; the routers are "
        "ignored)",
    )  # fmt: skip
    sp.set_defaults(fn=_cmd_eval)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except ConfigError as e:
        print(f"rl-latent: config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
