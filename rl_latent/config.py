"""Typed configuration: dataclasses, YAML recipes, dotted command-line overrides, validation.

Every field carries its documentation in `metadata["help"]` (``rl-latent config`` prints them). A recipe is a
YAML file whose nested keys mirror these dataclasses; ``key.sub=value`` overrides on the command line are
parsed as YAML scalars and coerced to the field's type. An unknown key is an error that names it and suggests
the closest real key, because a typo in an RL config silently running the defaults costs hours.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_latent.config_sections import (  # noqa: F401  (the sections are part of this module's API)
    CodiConfig,
    DataConfig,
    EvalConfig,
    LatentConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    ShortcutConfig,
    TrackingConfig,
    TrainConfig,
    _f,
)


class ConfigError(ValueError):
    """A config file or override that cannot be applied (the message names the key and the source)."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    codi: CodiConfig = field(default_factory=CodiConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stages: list[str] = _f(["cot_sft", "no_cot"], "pipeline stages, chained in order (`rl-latent pipeline`)")
    stage_overrides: dict[str, dict[str, Any]] = _f(
        {}, "per-stage dotted overrides applied after the stage's own, e.g. {codi_soft: {optim.lr: 1e-3}}"
    )


# ---------------------------------------------------------------------------------------------- helpers


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a config class (for suggestions and documentation)."""
    keys = []
    for f in dataclasses.fields(cls):
        t = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every field, in declaration order."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            rows += describe(t, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rows.append((prefix + f.name, _type_name(t), default, f.metadata.get("help", "")))
    return rows


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _unknown(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close:  # a misspelt leaf under a right section ("optim.lrr") or a leaf without its section ("lr")
        leaf = key.split(".")[-1]
        close = [k for k in all_keys() if difflib.get_close_matches(leaf, [k.split(".")[-1]], cutoff=0.75)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _coerce(value: Any, t: Any, key: str, source: str) -> Any:
    """Coerce a YAML value to the annotated type, with an error naming the key."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key, source)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' in {source}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        (inner,) = typing.get_args(t)
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key, source) for v in value]
    try:
        if t is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if t is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if t is float:
            return float(value)
        if t is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{key}' in {source}: expected {_type_name(t)}, got {value!r}"
        ) from None
    return value


def _apply(obj: Any, data: dict, source: str, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' in {source} must be a mapping")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = prefix + str(name)
        if name not in fields:
            while isinstance(value, dict) and len(value) == 1:  # name the whole key: 'optm.lr', not 'optm'
                ((sub, value),) = value.items()
                key = f"{key}.{sub}"
            raise _unknown(key, source)
        t = hints[name]
        if dataclasses.is_dataclass(t):
            _apply(getattr(obj, name), value or {}, source, key + ".")
            continue
        coerced = _coerce(value, t, key, source)
        choices = fields[name].metadata.get("choices")
        if choices and coerced not in choices:
            raise ConfigError(f"config key '{key}' in {source}: {coerced!r} is not one of {list(choices)}")
        setattr(obj, name, coerced)


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from defaults, then a YAML recipe, then `key.sub=value` overrides (later wins)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        _apply(cfg, data, str(path))
    cli = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        cli.append((key.strip(), yaml.safe_load(raw) if raw else ""))
        _apply(cfg, _nest(*cli[-1]), "command-line override")
    cfg._cli_overrides = cli  # re-applied by stage_config after the recipe's stage_overrides
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a single field's type cannot express."""
    if cfg.data.task == "file" and not cfg.data.path:
        raise ConfigError("data.task=file needs data.path (a hub name or a local file)")
    if cfg.eval.n_samples < max(cfg.eval.ks):
        raise ConfigError(f"eval.ks={cfg.eval.ks} needs eval.n_samples >= {max(cfg.eval.ks)}")
    for stage in cfg.stages:
        if stage not in STAGES:
            close = difflib.get_close_matches(stage, list(STAGES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown pipeline stage '{stage}'{hint} (known: {list(STAGES)})")
    for stage, over in cfg.stage_overrides.items():
        if stage not in STAGES:
            raise ConfigError(f"stage_overrides: unknown stage '{stage}' (known: {list(STAGES)})")
        if not isinstance(over, dict):
            raise ConfigError(f"stage_overrides.{stage} must be a mapping of dotted keys to values")
        probe = copy.deepcopy(cfg)
        for key, value in over.items():
            _apply(probe, _nest(str(key), value), f"stage_overrides.{stage}")
    rl = cfg.rl
    if rl.group_size < 2 and cfg.train.recipe == "grpo":
        raise ConfigError(f"rl.group_size={rl.group_size}: GRPO needs at least 2 samples per prompt")
    if not 1 <= rl.pass_k < max(rl.group_size, 2):
        raise ConfigError(f"rl.pass_k={rl.pass_k}: needs 1 <= pass_k < rl.group_size={rl.group_size}")
    if not 0.0 <= rl.positive_weight <= 1.0:
        raise ConfigError(f"rl.positive_weight={rl.positive_weight} must be in [0, 1]")
    if not 0.0 <= rl.unlikely_beta <= 1.0:
        raise ConfigError(f"rl.unlikely_beta={rl.unlikely_beta} must be in [0, 1]")
    if rl.dynamic_sampling < 0:
        raise ConfigError(f"rl.dynamic_sampling={rl.dynamic_sampling} must be >= 0 (extra rollout rounds)")
    grpo_only = rl.pass_k > 1 or rl.positive_weight != 1.0 or rl.dynamic_sampling or rl.unlikely_beta
    if grpo_only and cfg.train.recipe != "grpo":
        raise ConfigError(
            f"rl.pass_k={rl.pass_k}, rl.positive_weight={rl.positive_weight}, "
            f"rl.dynamic_sampling={rl.dynamic_sampling}, rl.unlikely_beta={rl.unlikely_beta} act on GRPO's "
            "group advantages; "
            f"{cfg.train.recipe} has none"
        )
    for key in ("prompts_per_step", "epochs", "minibatches", "workers", "trainer_ranks", "eval_n"):
        if getattr(rl, key) < 1:
            raise ConfigError(f"rl.{key}={getattr(rl, key)} must be >= 1")
    if rl.prompts_per_step % (rl.minibatches * rl.trainer_ranks):
        raise ConfigError(
            f"rl.prompts_per_step={rl.prompts_per_step} must divide into rl.minibatches={rl.minibatches} x "
            f"rl.trainer_ranks={rl.trainer_ranks} (minibatches hold whole groups)"
        )
    if rl.eval_n < max(rl.eval_ks):
        raise ConfigError(f"rl.eval_ks={rl.eval_ks} needs rl.eval_n >= {max(rl.eval_ks)}")
    if rl.trainable == "shortcuts" and rl.answer_temperature == 0 and cfg.latent.policy == "vanilla":
        raise ConfigError(
            "rl.trainable=shortcuts with greedy thoughts and answers (latent.policy=vanilla, "
            "rl.answer_temperature=0): the adapters then change the answer only deterministically, and the "
            "policy gradient of the exit decisions moves them blind to it (measured: answers lost at "
            "unchanged exits); train the exit policy alone with rl.trainable=routers"
        )
    if not cfg.latent.exit_temperature > 0:
        raise ConfigError(f"latent.exit_temperature={cfg.latent.exit_temperature} must be > 0")
    if cfg.latent.learn_exits and cfg.train.recipe == "ppo":
        raise ConfigError(
            "latent.learn_exits works with GRPO (train.recipe=grpo); PPO has no exit values yet"
        )
    if cfg.latent.fixed_steps < 0 or cfg.latent.max_steps < 1:
        raise ConfigError("latent.fixed_steps must be >= 0 and latent.max_steps >= 1")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# Pipeline stages: name -> (recipe, overrides applied on top of the config, stage it starts from).
# `stage_overrides` in a recipe then wins over these. CODI stages start from the CoT-SFT model, as the paper
# starts from a pretrained one (docs/decisions.md has the measurements behind each choice).
STAGES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "cot_sft": ("sft", {"train.mode": "cot"}, None),
    "no_cot": ("sft", {"train.mode": "nocot"}, None),
    # CODI as published: hidden head, 6 latent steps, beta = gamma = 1, teacher CoT without its last step.
    "codi": (
        "codi",
        {
            "latent.head": "hidden",
            "latent.fixed_steps": 6,
            "codi.align": 0.0,
            "codi.beta": 1.0,
            "codi.gamma": 1.0,
        },
        "cot_sft",
    ),
    # Step-aligned thoughts (adaptive length, one per CoT step): decision j's LM-head distribution is trained
    # on step j+1's result and the gold result's embedding is fed at first. `hidden`: z = P(h), as CODI.
    "codi_hidden": (
        "codi",
        {
            "latent.head": "hidden",
            "latent.fixed_steps": 0,
            "codi.align": 1.0,
            "codi.beta": 0.0,
            "codi.gamma": 0.0,
            "codi.gold_anneal_steps": 300,
        },
        "cot_sft",
    ),  # fmt: skip
    # `soft`: z = sum_i p_i E[S_i], so each thought is a distribution over candidate intermediate values.
    "codi_soft": (
        "codi",
        {
            "latent.head": "soft",
            "latent.fixed_steps": 0,
            "codi.align": 1.0,
            "codi.beta": 0.0,
            "codi.gamma": 0.0,
            "codi.gold_anneal_steps": 300,
        },
        "cot_sft",
    ),  # fmt: skip
    # System-1.5 stage 2: frozen CODI model, routers and adapters learn where a position can leave the stack.
    "system15": ("shortcut", {}, "codi_soft"),
    # RL on the soft thoughts: each one a Gumbel-softmax sample with an exact log-density (trainers/grpo.py).
    "grpo": ("grpo", {"latent.policy": "gumbel"}, "codi_soft"),
    "ppo": ("ppo", {"latent.policy": "gumbel"}, "codi_soft"),
}


def stage_config(cfg: Config, stage: str) -> Config:
    """The config a pipeline stage runs with, its own output dir under ``train.output_dir``.

    Precedence, lowest first: the recipe YAML and command line (``cfg``), the stage's defining overrides
    (``STAGES``), the recipe's ``stage_overrides``, then the command line again for every key the stage does
    not define (so ``rl-latent pipeline quickstart.yaml train.max_steps=3`` means 3 steps in every stage)."""
    recipe, overrides, _ = STAGES[stage]
    out = copy.deepcopy(cfg)
    out.train.recipe = recipe
    out.train.output_dir = str(Path(cfg.train.output_dir) / stage)
    for key, value in overrides.items():
        _apply(out, _nest(key, value), f"stage {stage}")
    for key, value in cfg.stage_overrides.get(stage, {}).items():
        _apply(out, _nest(str(key), value), f"stage_overrides.{stage}")
    for key, value in getattr(cfg, "_cli_overrides", []):  # the command line wins, except over what defines
        if key not in overrides and not key.startswith(("stage", "train.output_dir")):  # the stage itself
            _apply(out, _nest(key, value), "command-line override")
    return out
