"""The one type that crosses rollout, reward and trainer: a batch of latent trajectories.

A sample's path is ``prompt <bot> z_1 .. z_n <eot> a_0 .. a_{A-1}`` (a_{A-1} is ``<eos>`` unless capped).
Thinking is a sequence of *decisions*: decision j is made from the output at ``<bot>`` (j = 0) or at latent
position ``z_j`` (j >= 1); it either continues (an action is sampled and becomes ``z_{j+1}``) or stops (the
next input is ``<eot>``). ``n = latent_steps`` decisions continued; decision n stopped.

Log-probabilities (all fp32, per sample, summed by :meth:`Trajectory.logp`):

- ``latent_logp[b, j]``: log-density of decision j's action (``action_mask``). For the soft head the stop is a
  function of the action (``argmax y == <eot>``), so the stopping decision also has an action and no extra
  term.
- ``stop_logp[b, j]``: hidden head only, the Bernoulli ``p(<eot>)`` stop/continue decision (``stop_mask``).
- ``answer_logp[b, i]``: the answer tokens under the sampling distribution (``answer_mask``). Greedy answers
  (``answer_temperature == 0``) are a function of the thoughts, not actions: their log-probs (under
  softmax(logits)) are kept for the replay check and left out of ``logp`` and of every loss.
A forced stop (the cap, or fixed-K mode) has no term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rl_latent.compute import SampleCompute


@dataclass
class Trajectory:
    # the inputs
    prompt_ids: list[list[int]]  # unpadded; each ends with <bot>
    questions: list[str]
    targets: list[str]  # gold answers ("" when unknown)
    # latent decisions, j = 0..J-1 (J = the longest sample's decisions)
    support_ids: Tensor  # [B, J, k] int64 (soft head; k = 0 for the hidden head)
    actions: Tensor  # [B, J, k] log-weights x = log y (soft) or [B, J, d] vectors z (hidden)
    latent_residual: Tensor | None  # [B, J, d] soft head's deterministic channel R(h) (None without it)
    latent_logp: Tensor  # [B, J]
    action_mask: Tensor  # [B, J] bool: decision j sampled an action
    stop_logp: Tensor  # [B, J]
    stop_mask: Tensor  # [B, J] bool: decision j sampled a stop/continue (hidden head)
    latent_steps: Tensor  # [B] int64: n, continued decisions
    # the answer
    answer_ids: Tensor  # [B, A] int64, padded with the pad id
    answer_logp: Tensor  # [B, A]
    answer_mask: Tensor  # [B, A] bool
    answers: list[str]  # decoded answer text
    # bookkeeping
    head: str  # "hidden" | "soft"
    policy: str  # latent policy name
    answer_temperature: float  # answer_logp is under softmax(logits / this); 0: greedy, under softmax(logits)
    compute: list[SampleCompute]
    weights_version: int = 0
    metadata: list[dict[str, Any]] = field(default_factory=list)
    probe: list[list[list[tuple[str, float]]]] = field(default_factory=list)  # [b][j] -> top tokens
    # System-1.5 exits sampled as actions (latent.learn_exits), per fed position z_1..z_n, <eot>, a_0..a_{A-2}
    exit_layers: Tensor | None = None  # [B, P] int64: the router layer the position exited at (n_layer: none)
    exit_logp: Tensor | None = None  # [B, P] log-prob of its Bernoulli exit decisions
    exit_mask: Tensor | None = None  # [B, P] bool
    exit_scale: tuple[float, float] = (0.0, 1.0)  # the exits were Bernoulli(sigmoid((z - c) / T)): (c, T)
    rewards: Tensor | None = None  # [B], set by rewards/
    reward_components: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def answer_actions(self) -> Tensor:
        """[B, A] bool: the answer tokens that were sampled (none when the answers were greedy)."""
        return self.answer_mask if self.answer_temperature > 0 else torch.zeros_like(self.answer_mask)

    def logp(self) -> Tensor:
        """``log pi(trajectory)`` per sample: latent actions + stop decisions + answer tokens (+ exits)."""
        total = (
            (self.latent_logp * self.action_mask).sum(-1)
            + (self.stop_logp * self.stop_mask).sum(-1)
            + (self.answer_logp * self.answer_actions).sum(-1)
        )
        if self.exit_logp is not None:
            total = total + (self.exit_logp * self.exit_mask).sum(-1)
        return total

    def select(self, idx: list[int]) -> Trajectory:
        """The samples at ``idx`` (tensors sliced, text and compute picked), e.g. a minibatch."""
        t = torch.as_tensor(idx, dtype=torch.long)
        pick = lambda xs: [xs[i] for i in idx] if xs else xs  # noqa: E731
        return Trajectory(
            prompt_ids=pick(self.prompt_ids),
            questions=pick(self.questions),
            targets=pick(self.targets),
            support_ids=self.support_ids[t],
            actions=self.actions[t],
            latent_residual=None if self.latent_residual is None else self.latent_residual[t],
            latent_logp=self.latent_logp[t],
            action_mask=self.action_mask[t],
            stop_logp=self.stop_logp[t],
            stop_mask=self.stop_mask[t],
            latent_steps=self.latent_steps[t],
            answer_ids=self.answer_ids[t],
            answer_logp=self.answer_logp[t],
            answer_mask=self.answer_mask[t],
            answers=pick(self.answers),
            head=self.head,
            policy=self.policy,
            answer_temperature=self.answer_temperature,
            compute=pick(self.compute),
            weights_version=self.weights_version,
            metadata=pick(self.metadata),
            probe=pick(self.probe),
            exit_layers=None if self.exit_layers is None else self.exit_layers[t],
            exit_logp=None if self.exit_logp is None else self.exit_logp[t],
            exit_mask=None if self.exit_mask is None else self.exit_mask[t],
            exit_scale=self.exit_scale,
            rewards=None if self.rewards is None else self.rewards[t],
            reward_components={k: v[t] for k, v in self.reward_components.items()},
        )

    @staticmethod
    def concat(parts: list[Trajectory]) -> Trajectory:
        """Samples of several trajectories in order (e.g. the shards of the rollout workers), padded to the
        longest latent phase and answer. Head, policy and answer temperature must agree."""
        if not parts:
            raise ValueError("Trajectory.concat needs at least one trajectory")
        first = parts[0]
        for p in parts[1:]:
            if (p.head, p.policy, p.answer_temperature, p.exit_scale) != (
                first.head,
                first.policy,
                first.answer_temperature,
                first.exit_scale,
            ):
                raise ValueError(
                    "Trajectory.concat: parts sampled with different heads/policies/temperatures/exit scales"
                )
        if len({p.exit_logp is None for p in parts}) > 1:
            raise ValueError("Trajectory.concat: some parts sampled their exits and some did not")
        J = max(p.latent_logp.shape[1] for p in parts)
        A = max(p.answer_ids.shape[1] for p in parts)
        P = max((p.exit_logp.shape[1] for p in parts if p.exit_logp is not None), default=0)

        def cat(name: str, width: int, dim: int = 1, value: float = 0) -> Tensor:
            xs = []
            for p in parts:
                x = getattr(p, name)
                pad = [0, 0] * (x.dim() - 1 - dim) + [0, width - x.shape[dim]]
                xs.append(torch.nn.functional.pad(x, pad, value=value))
            return torch.cat(xs)

        pads = [p.answer_ids[~p.answer_mask] for p in parts if (~p.answer_mask).any()]
        pad_id = int(pads[0][0]) if pads else 0  # whatever fills a masked answer slot
        join = lambda name: [x for p in parts for x in getattr(p, name)]  # noqa: E731
        rewards = [p.rewards for p in parts]
        return Trajectory(
            prompt_ids=join("prompt_ids"),
            questions=join("questions"),
            targets=join("targets"),
            support_ids=cat("support_ids", J),
            actions=cat("actions", J),
            latent_residual=None if first.latent_residual is None else cat("latent_residual", J),
            latent_logp=cat("latent_logp", J),
            action_mask=cat("action_mask", J),
            stop_logp=cat("stop_logp", J),
            stop_mask=cat("stop_mask", J),
            latent_steps=torch.cat([p.latent_steps for p in parts]),
            answer_ids=cat("answer_ids", A, value=pad_id),
            answer_logp=cat("answer_logp", A),
            answer_mask=cat("answer_mask", A),
            answers=join("answers"),
            head=first.head,
            policy=first.policy,
            answer_temperature=first.answer_temperature,
            compute=join("compute"),
            weights_version=min(p.weights_version for p in parts),
            metadata=join("metadata"),
            probe=join("probe") if all(p.probe for p in parts) else [],
            **(
                {}
                if first.exit_logp is None
                else {
                    "exit_layers": cat("exit_layers", P, value=first.exit_layers.max().item()),
                    "exit_logp": cat("exit_logp", P),
                    "exit_mask": cat("exit_mask", P),
                    "exit_scale": first.exit_scale,
                }
            ),
            rewards=None if any(r is None for r in rewards) else torch.cat(rewards),
            reward_components={
                k: torch.cat([p.reward_components[k] for p in parts]) for k in first.reward_components
            },
        )
