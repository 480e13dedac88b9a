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


class ConfigError(ValueError):
    """A config file or override that cannot be applied (the message names the key and the source)."""


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field with its documentation (and allowed values) attached."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    task: str = _f(
        "arith", "data source: generated `arith` or `mult` task, or `file`", ("arith", "mult", "file")
    )
    path: str | None = _f(None, "task=file: hub name or local path (GSM8K, GSM8k-Aug, iCoT .txt, our .jsonl)")
    test_path: str | None = _f(
        None, "optional separate test file (e.g. the iCoT valid file) for task=file/mult"
    )
    seed: int = _f(0, "seed of the generated task (splits are disjoint and deterministic given it)")
    difficulty: str = _f("2", "arith difficulty level (see rl_latent.data.arith.DIFFICULTIES)")
    nl_cot: bool = _f(False, "arith: natural-language CoT steps instead of <<a+b=c>> equations")
    mult_k: int = _f(4, "mult: k-by-k digit multiplication")
    n_train: int = _f(20000, "generated training problems")
    n_valid: int = _f(200, "generated validation problems (evaluated during training)")
    n_test: int = _f(500, "generated test problems (final evaluation)")
    max_len: int = _f(256, "maximum tokens of prompt + target; longer training rows are dropped (counted)")


@dataclass
class ModelConfig:
    name_or_path: str | None = _f(None, "HF model name or local dir; None builds a tiny model from scratch")
    gguf_file: str | None = _f(None, "GGUF file inside name_or_path (loaded through transformers)")
    arch: str = _f("gpt2", "architecture of a from-scratch model", ("gpt2", "llama", "qwen2"))
    n_layer: int = _f(4, "from-scratch model: decoder layers")
    n_embd: int = _f(128, "from-scratch model: hidden size")
    n_head: int = _f(4, "from-scratch model: attention heads")
    max_positions: int = _f(256, "from-scratch model: maximum sequence length")
    max_number: int = _f(
        199, "from-scratch model: every integer 0..max_number is one token of the task tokenizer"
    )


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.98, "AdamW beta2")
    warmup_steps: int = _f(100, "linear warm-up steps")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up", ("cosine", "constant", "linear"))
    grad_clip: float = _f(1.0, "gradient-norm clipping (0 disables)")


@dataclass
class TrainConfig:
    recipe: str = _f(
        "sft", "training recipe (a file under trainers/)", ("sft", "codi", "shortcut", "grpo", "ppo")
    )
    mode: str = _f(
        "cot", "sft: `cot` trains question -> CoT -> answer, `nocot` question -> answer", ("cot", "nocot")
    )
    init_from: str | None = _f(None, "checkpoint/model dir to start from (None: name_or_path or scratch)")
    batch_size: int = _f(64, "micro-batch size per rank")
    grad_accum: int = _f(1, "gradient accumulation steps")
    max_steps: int = _f(3000, "optimizer steps (the schedule's length)")
    time_budget_s: float = _f(0.0, "stop training after this many seconds of training (0 = no limit)")
    eval_every: int = _f(
        500, "evaluate greedy accuracy on the valid split every N steps (0 = only at the end)"
    )
    save_every: int = _f(1000, "write a checkpoint every N steps (and always at the end)")
    keep_checkpoints: int = _f(2, "how many recent checkpoints to keep")
    zero_stage: int = _f(0, "DeepSpeed ZeRO stage", (0, 1, 2, 3))
    precision: str = _f("fp32", "training precision (bf16 on GPU only)", ("fp32", "bf16"))
    seed: int = _f(0, "seed for model init, data order and sampling")
    output_dir: str = _f("runs/quickstart", "where runs, checkpoints and metrics are written")
    resume: bool = _f(True, "resume from the run's latest checkpoint when there is one")
    log_every: int = _f(20, "log training scalars every N steps")


@dataclass
class LatentConfig:
    head: str = _f(
        "hidden",
        "thought head: `hidden` (CODI: z = P(h)) or `soft` (z = sum_i y_i E[S_i] over the LM head's top-k)",
        ("hidden", "soft"),
    )
    support_k: int = _f(8, "soft head: top-k support size of each soft thought")
    temperature: float = _f(1.0, "soft head: p = softmax(logits / temperature) over the support")
    project: bool = _f(False, "soft head: pass the mixture through CODI's projection P as well")
    residual: bool = _f(
        False, "soft head: z = mixture + R(h), a deterministic hidden channel beside the soft one"
    )
    fixed_steps: int = _f(
        0, "0 = adaptive (stop at <eot>, learned from the CoT length); K > 0 = always K steps"
    )
    max_steps: int = _f(8, "cap on latent steps in adaptive mode (the stop is forced there)")
    steps_per_cot_step: int = _f(1, "adaptive mode: target latent steps = lead_steps + this x the CoT steps")
    lead_steps: int = _f(0, "adaptive mode: free latent steps before the first step-aligned one")
    answer_prefix: bool = _f(
        False,
        "student answers `<eot> The answer is: N` (CODI's text) instead of `<eot> N` (4 fewer positions)",
    )
    policy: str = _f(
        "gumbel", "latent policy when sampling (pass@k, RL)", ("vanilla", "gumbel", "dirichlet", "gaussian")
    )
    tau: float = _f(0.5, "gumbel: Concrete temperature tau")
    learn_exits: bool = _f(
        False, "System-1.5 models in RL: exits are Bernoulli(w) actions with log-probs (else: w > lambda)"
    )
    concentration: float = _f(10.0, "dirichlet: y ~ Dirichlet(concentration * p + dirichlet_floor)")
    dirichlet_floor: float = _f(0.05, "dirichlet: added to every concentration (keeps log-densities finite)")
    std: float = _f(0.1, "gaussian (hidden head): z ~ N(P(h), std^2 I)")


@dataclass
class CodiConfig:
    beta: float = _f(1.0, "weight of the hidden-state distillation (KD) at the answer-emitting token")
    gamma: float = _f(1.0, "weight of the teacher's CoT cross-entropy")
    align: float = _f(
        0.0, "weight of the step-aligned loss: thought t's distribution vs step t's result (soft)"
    )
    stop_weight: float = _f(1.0, "weight of the learned stop (<eot> after the target number of latent steps)")
    gold_anneal_steps: int = _f(
        0, "step-aligned: feed the gold result's embedding, mixed linearly into the soft thought over N steps"
    )
    teacher_drop_last: bool = _f(True, "the teacher's CoT loses its last step (as in CODI)")
    lora_r: int = _f(0, "LoRA rank through peft (0 = full fine-tuning)")
    lora_alpha: int = _f(32, "LoRA alpha")


@dataclass
class RLConfig:
    prompts_per_step: int = _f(16, "prompts rolled out per RL step (each gives group_size samples)")
    group_size: int = _f(8, "samples per prompt (the GRPO group)")
    epochs: int = _f(1, "passes over each step's trajectories")
    minibatches: int = _f(2, "optimizer steps per epoch (the step's samples split evenly, whole groups)")
    eps_low: float = _f(0.2, "clip ratio below: r >= 1 - eps_low")
    eps_high: float = _f(0.28, "clip ratio above: r <= 1 + eps_high (DAPO's clip-higher)")
    kl_beta: float = _f(
        0.0, "weight of the k3 KL to the frozen initial policy (0: no reference model loaded)"
    )
    dr_grpo: bool = _f(False, "Dr.GRPO advantages: r - mean(group), no division by the group's std")
    answer_temperature: float = _f(1.0, "sampling temperature of the answer tokens in rollouts (0 = greedy)")
    rewards: list[Any] = _f(
        ["correct"],
        "rewards: names, dotted paths (pkg.mod:fn) or entry points, or {name, weight, kwargs} mappings",
    )
    on_reward_error: str = _f(
        "raise",
        "a reward that raises/returns NaN on a sample: stop the run, or skip the sample",
        ("raise", "skip"),
    )
    workers: int = _f(1, "Ray rollout workers (each holds a copy of the policy)")
    worker_cpus: float = _f(1.0, "CPUs reserved per rollout worker (also its torch threads)")
    worker_gpus: float = _f(0.0, "GPUs per rollout worker (fractions share one GPU)")
    trainer_ranks: int = _f(1, "trainer ranks: Ray actors forming one DeepSpeed process group")
    trainer_cpus: float = _f(1.0, "CPUs reserved per trainer rank")
    trainer_gpus: float = _f(0.0, "GPUs per trainer rank (1 on a GPU machine)")
    ray_address: str | None = _f(None, "Ray cluster to join (None: the RAY_ADDRESS env or a new local one)")
    eval_every: int = _f(10, "evaluate pass@k on held-out problems every N RL steps (0 = start and end only)")
    eval_problems: int = _f(100, "held-out problems per evaluation")
    eval_n: int = _f(16, "samples per problem for the unbiased pass@k")
    eval_ks: list[int] = _f([1, 8], "k values of the logged pass@k")
    gamma: float = _f(1.0, "ppo: discount over a trajectory's positions")
    lam: float = _f(0.95, "ppo: GAE lambda")
    vf_coef: float = _f(0.5, "ppo: weight of the value loss")
    vf_clip: float = _f(0.2, "ppo: value clipping range around the rollout's values (0 = off)")


@dataclass
class ShortcutConfig:
    layers: list[int] = _f([], "router + adapter layers; exiting at l skips blocks l.. ([] = every layer)")
    rank: int = _f(32, "adapter rank (low-rank residual MLP)")
    router_hidden: int = _f(32, "router MLP width")
    step: bool = _f(True, "step shortcut: a latent position's exit also reads the previous position's state")
    lam: float = _f(0.5, "inference exit threshold lambda: a position exits where w > lam (>= 1: never)")
    match: float = _f(1.0, "weight: every exit state matches the frozen full path's final state")
    final: float = _f(1.0, "weight: the blended output matches the full path (hidden state + logit KL)")
    nll: float = _f(1.0, "weight: the answer NLL of the blended output")
    router: float = _f(1.0, "weight: router BCE against exp(-KL(full || exit) / kl_scale)")
    compute: float = _f(0.5, "weight: the compute penalty, expected blocks run / n_layer")
    kl_scale: float = _f(0.1, "router target temperature: an exit with KL = kl_scale gets target 1/e")
    critical: float = _f(0.1, "critical positions: compute penalty x this, kl_scale x this (kept deep)")


@dataclass
class EvalConfig:
    split: str = _f("test", "which split to evaluate at the end", ("train", "validation", "test"))
    max_problems: int | None = _f(None, "evaluate at most this many problems (None = all)")
    n_samples: int = _f(1, "samples per problem for pass@k (1 = greedy only)")
    ks: list[int] = _f([1], "k values of the unbiased pass@k")
    temperature: float = _f(1.0, "sampling temperature for n_samples > 1")
    top_p: float = _f(1.0, "nucleus sampling for n_samples > 1")
    max_new_tokens: int = _f(96, "generation cap per answer")
    probe: int = _f(5, "latent models: keep this many top tokens per latent step in samples.jsonl (0 = off)")
    batch_size: int = _f(256, "problems per generation batch")


@dataclass
class TrackingConfig:
    wandb: str = _f(
        "auto",
        "W&B mode: auto (online with WANDB_API_KEY, else offline), offline, online, none",
        ("auto", "offline", "online", "none"),
    )
    project: str = _f("rl-latent", "W&B project")
    run_name: str | None = _f(None, "W&B run name (default: the output dir's name)")


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
