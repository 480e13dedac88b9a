"""The config sections: one dataclass per YAML section, every field documented.

Each field carries its help text (and allowed values) in ``metadata`` through ``_f``; ``rl-latent config``
prints them. ``rl_latent.config`` assembles the sections into ``Config`` and loads, overrides and validates
recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    pad_steps: int = _f(
        0,
        "CODI, adaptive mode: each row's target adds 0..N thoughts repeating the final result (overthinking)",
    )
    answer_prefix: bool = _f(
        False,
        "student answers `<eot> The answer is: N` (CODI's text) instead of `<eot> N` (4 fewer positions)",
    )
    policy: str = _f(
        "gumbel", "latent policy when sampling (pass@k, RL)", ("vanilla", "gumbel", "dirichlet", "gaussian")
    )
    tau: float = _f(0.5, "gumbel: Concrete temperature tau")
    learn_exits: bool = _f(
        False, "System-1.5 models in RL: exits are Bernoulli actions with log-probs (else: w > lambda)"
    )
    exit_temperature: float = _f(
        1.0,
        "learn_exits: an exit is Bernoulli(sigmoid((z - logit(lambda)) / T)), z the router's logit, lambda "
        "the model's: its mode is the greedy decode (w > lambda); T < 1 keeps samples near that decode, "
        "T = 1 at lambda 0.5 is Bernoulli(w)",
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
    exit_weight: float = _f(
        0.0,
        "weight of LayerSkip's early-exit loss: every lower block's output, through the final norm and LM "
        "head, matches the last layer's distribution (trains the stack for System-1.5 exits)",
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
    pass_k: int = _f(
        1, "pass@k training: a sample's reward is the expected best of the k-subsets of its group holding it"
    )
    positive_weight: float = _f(
        1.0, "scale of positive advantages (W-REINFORCE: 0.1 learns mostly from failures, keeps diversity)"
    )
    unlikely_beta: float = _f(
        0.0, "unlikeliness reward (He et al. 2025): a group's correct samples lose up to this share of their "
        "reward, the most likely one the most, so GRPO lifts rare correct trajectories (pass@k); 0 = off",
    )  # fmt: skip
    dynamic_sampling: int = _f(
        0, "DAPO dynamic sampling: up to this many extra rollout rounds of fresh prompts per step, to "
        "replace groups whose rewards are all equal (zero advantage); 0 = off",
    )  # fmt: skip
    answer_temperature: float = _f(
        1.0, "sampling temperature of the answer tokens in rollouts (0 = greedy: the tokens are not actions)"
    )
    trainable: str = _f(
        "all",
        "what RL trains: the whole policy; only the System-1.5 routers (the exit policy, with "
        "latent.learn_exits: RL learns the depth and leaves every state as it was); or the routers and "
        "adapters on the frozen backbone (needs sampled thoughts or answers: the adapters' effect on a "
        "greedy answer is deterministic, and the policy gradient does not see it)",
        ("all", "routers", "shortcuts"),
    )
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
    eval_seed: int | None = _f(
        None, "seed of the evaluation's samples (None: train.seed); fix it to compare seeds on the same draws"
    )
    gamma: float = _f(1.0, "ppo: discount over a trajectory's positions")
    lam: float = _f(0.95, "ppo: GAE lambda")
    vf_coef: float = _f(0.5, "ppo: weight of the value loss")
    vf_clip: float = _f(0.2, "ppo: value clipping range around the rollout's values (0 = off)")


@dataclass
class ShortcutConfig:
    layers: list[int] = _f([], "router + adapter layers; exiting at l skips blocks l.. ([] = every layer)")
    rank: int = _f(32, "adapter rank (low-rank residual MLP)")
    router_hidden: int = _f(32, "router MLP width")
    step: bool = _f(True, "step shortcut: a position's exit also reads the previous position's state")
    step_positions: str = _f(
        "all",
        "where the step shortcut applies: latent positions (the paper's) or every generated one (<eot> reads "
        "the last thought)",
        ("latent", "all"),
    )
    router_latent: bool = _f(
        True, "routers add a learned bias on thought inputs (a first-layer router reads only the input)"
    )
    router_prev: bool = _f(
        True, "routers also read the previous position's final state (it says the next one only decides stop)"
    )
    lam: float = _f(0.5, "inference exit threshold lambda: a position exits where w > lam (>= 1: never)")
    match: float = _f(1.0, "weight: every exit state matches the frozen full path's final state")
    final: float = _f(1.0, "weight: the blended output matches the full path (hidden state + logit KL)")
    nll: float = _f(1.0, "weight: the answer NLL of the blended output")
    router: float = _f(1.0, "weight: router BCE against exp(-KL(full || exit) / kl_scale)")
    compute: float = _f(0.5, "weight: the compute penalty, expected blocks run / n_layer")
    kl_scale: float = _f(0.1, "router target temperature: an exit with KL = kl_scale gets target 1/e")
    critical: float = _f(0.1, "critical positions: compute penalty x this, kl_scale x this (kept deep)")
    critical_answer: bool = _f(
        False, "the position that emits the first answer token counts as critical (else only step results)"
    )


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
