"""PPO over latent trajectories: a value head over the latent and answer positions, GAE, clipped objectives.

A sample is a sequence of decision times t = (latent decision 0 .. n, answer token 0 .. A-1); the reward
arrives at its last time. With V_t = v(h_t), the value head over the last hidden state at that position:

    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = sum_l (gamma lam)^l delta_{t+l}   GAE (Schulman et al. 2016)
    R_t     = A_t + V_t                    (the value target)
    L       = L_clip(rho_t, A_t) + vf_coef * 1/2 max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2)

with L_clip the clipped surrogate of trainers/grpo.py (PPO, Schulman et al. 2017), applied to every stochastic
choice at time t (a decision's latent action and stop share its advantage). Advantages are whitened over
the rank's valid times. The value head trains with the policy in one DeepSpeed engine; workers only ever
receive the policy's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rollouts.replay import Replayed, replay
from rollouts.trajectory import Trajectory
from trainers.grpo import GRPO


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE over [B, T] times, skipping masked-out times (they carry neither value nor reward).

    Returns (advantages, returns), 0 at masked times. The value after a sample's last valid time is 0."""
    B, T = rewards.shape
    adv = torch.zeros_like(values)
    last = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_v = torch.zeros_like(last)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        g = delta + gamma * lam * last
        adv[:, t] = torch.where(m, g, 0.0)
        last = torch.where(m, g, last)
        next_v = torch.where(m, values[:, t], next_v)
    return adv, torch.where(mask, adv + values, 0.0)


def value_loss(v: Tensor, v_old: Tensor, ret: Tensor, clip: float) -> Tensor:
    """Per-time 1/2 max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2) (PPO2's clipped value loss)."""
    loss = (v - ret) ** 2
    if clip > 0:
        v_clipped = v_old + (v - v_old).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clipped - ret) ** 2)
    return 0.5 * loss


def time_mask(traj: Trajectory) -> Tensor:
    """[B, J + A]: which decision times (latent decisions, then answer tokens) the sample has."""
    return torch.cat([traj.action_mask | traj.stop_mask, traj.answer_mask], dim=-1)


def terminal_rewards(traj: Trajectory, mask: Tensor) -> Tensor:
    """[B, J + A] zeros with each sample's reward at its last valid time."""
    r = torch.zeros(mask.shape, dtype=torch.float32)
    idx = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask, idx, -1).max(-1).values.clamp(min=0)
    r[torch.arange(mask.shape[0]), last] = traj.rewards.float()
    return r


class ActorCritic(nn.Module):
    """The policy (a LatentReasoner) plus a scalar value head on its last hidden state."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value = nn.Linear(policy.hidden_size, 1)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def values(self, new: Replayed) -> Tensor:
        h = torch.cat([new.dec_hidden, new.ans_hidden], dim=1)
        return self.value(h.float())[..., 0]

    def save_pretrained(self, path: str | Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """The policy as an HF model dir, the value head beside it (checkpoints keep both)."""
        state = state_dict if state_dict is not None else self.state_dict()
        self.policy.save_pretrained(path, {k[7:]: v for k, v in state.items() if k.startswith("policy.")})
        torch.save({k: v for k, v in state.items() if k.startswith("value.")}, Path(path) / "value_head.pt")


class PPO(GRPO):
    name = "ppo"
    needs_hidden = True
    policy_prefix = "policy."

    def wrap(self, model: nn.Module) -> nn.Module:
        return ActorCritic(model)

    def policy_of(self, module: nn.Module) -> Any:
        return module.policy

    @torch.no_grad()
    def prepare(self, module: nn.Module, traj: Trajectory, adv: Tensor, policy: Any) -> dict[str, Tensor]:
        """V_old from one no-grad replay, then GAE; each choice gets its time's (whitened) advantage."""
        if traj.exit_logp is not None:
            raise NotImplementedError(
                "PPO does not support latent.learn_exits yet (its value head has no exit positions): use GRPO"
            )
        new = replay(module.policy, traj, policy, hidden=True)
        v_old = module.values(new).cpu()
        tmask = time_mask(traj)
        a, ret = gae(terminal_rewards(traj, tmask), v_old, tmask, self.rl.gamma, self.rl.lam)
        valid = a[tmask]
        if valid.numel() > 1:
            a = torch.where(tmask, (a - valid.mean()) / (valid.std() + 1e-6), 0.0)
        J = traj.action_mask.shape[1]
        per_choice = torch.cat([a[:, :J], a[:, :J], a[:, J:]], dim=-1)  # latent, stop, answer positions
        return {"adv": per_choice, "v_old": v_old, "ret": ret, "tmask": tmask}

    def loss(self, module, traj, prep, new, ref_logp, n_global, world):  # noqa: D401 (same contract as GRPO)
        loss, stats = super().loss(module, traj, prep, new, ref_logp, n_global, world)
        device = loss.device
        v = module.values(new)
        tmask = prep["tmask"].to(device)
        vl = value_loss(v, prep["v_old"].to(device), prep["ret"].to(device), self.rl.vf_clip)
        n = tmask.float().sum().clamp(min=1)
        loss = loss + self.rl.vf_coef * (vl * tmask).sum() / n
        stats["value_loss"] = float((vl * tmask).sum() / n)
        return loss, stats


def run(cfg: Any, progress: bool = True) -> dict[str, Any]:
    from trainers.rl import run_rl

    return run_rl(cfg, PPO, progress=progress)
