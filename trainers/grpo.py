"""GRPO over latent trajectories: group-normalised advantages, a clipped ratio per stochastic choice, k3 KL.

A trajectory's stochastic choices are its latent actions (Gumbel/Dirichlet log-weights or Gaussian vectors,
with exact log-densities), its stop decisions (hidden head), its answer tokens and, with
``latent.learn_exits``, each position's System-1.5 exit decisions (Bernoulli per router reached);
``log pi(trajectory)`` is their sum. Each choice is one loss position with its own ratio, and the loss is
averaged over the global count of positions in the minibatch (every rank's), as token-level GRPO/DAPO does
with tokens:

    A_i   = (r_i - mean_G r) / (std_G r + eps)            GRPO (Shao et al. 2024, DeepSeekMath, eq. 3)
    A_i   =  r_i - mean_G r                                Dr.GRPO (Liu et al. 2025): no std division
    A_i   = (E[max r_S | i in S] - E[max r_S]) / std(max r_S),  S a random k-subset of the group
                                                           pass@k training (Chen et al. 2025), rl.pass_k
    A_i  <- lambda A_i where A_i > 0                       W-REINFORCE (Zhu et al. 2025), rl.positive_weight
    r_i  <- r_i (1 - beta (G - rank_i) / G) where r_i > 0  unlikeliness reward (He et al. 2025):
                 rank_i = place by log pi, most likely 0   rl.unlikely_beta
    groups with A = 0 everywhere swapped for fresh ones      dynamic sampling (DAPO), rl.dynamic_sampling
    rho_t = exp(log pi(c_t) - log pi_old(c_t))
    L     = 1/N sum_{i,t} [ -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)
                             + beta KL_k3(pi || pi_ref)_t ]                (clip-higher: DAPO, Yu et al. 2025)

``pi_old`` is the rollout's own log-probs (the workers hold the same weights version, and the replay gap
``|replay - rollout|`` is logged every step). The driver loop is trainers/rl.py; the per-rank update is
trainers/learner.py; PPO (trainers/ppo.py) swaps the advantages for GAE over a value head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rollouts.replay import Replayed
from rollouts.trajectory import Trajectory


def group_advantages(
    rewards: Tensor,
    group_size: int,
    valid: Tensor | None = None,
    std_normalize: bool = True,
    eps: float = 1e-6,
    k: int = 1,
    positive_weight: float = 1.0,
) -> Tensor:
    """Per-sample advantages of groups of ``group_size`` consecutive samples (one prompt each).

    A_i = (r_i - mean_g) / (std_g + eps)  (GRPO), or r_i - mean_g  (Dr.GRPO, ``std_normalize=False``);
    mean/std over the group's valid samples (std unbiased=False); invalid samples get A = 0.
    With ``k > 1`` the rewards are those of ``pass_at_k_rewards`` (a group of k samples scores its best).
    ``positive_weight`` scales the positive advantages: W-REINFORCE (Zhu et al. 2025, "The Surprising
    Effectiveness of Negative Reinforcement in LLM Reasoning") learns mostly from the failures (0.1), which
    moves probability off wrong samples in proportion to the rest and so keeps the policy's diversity.
    """
    adv = _group_advantages(rewards, group_size, valid, std_normalize, eps, k)
    return torch.where(adv > 0, positive_weight * adv, adv)


def _group_advantages(
    rewards: Tensor, group_size: int, valid: Tensor | None, std_normalize: bool, eps: float, k: int
) -> Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.view(-1, group_size)
    if k > 1:
        adv = torch.zeros_like(r)
        for g in range(r.shape[0]):
            if v[g].sum() > k:  # with k valid samples or fewer every subset scores the same: A = 0
                val, mean, std = pass_at_k_rewards(r[g][v[g]], k)
                adv[g][v[g]] = (val - mean) / (std + eps) if std_normalize else val - mean
        return adv.view(-1)
    n = v.sum(-1, keepdim=True).clamp(min=1)
    mean = (r * v).sum(-1, keepdim=True) / n
    adv = r - mean
    if std_normalize:
        std = (((r - mean) ** 2 * v).sum(-1, keepdim=True) / n).sqrt()
        adv = adv / (std + eps)
    return torch.where(v, adv, 0.0).view(-1)


def unlikeliness_rewards(rewards: Tensor, logp: Tensor, group_size: int, beta: float) -> Tensor:
    """The unlikeliness reward (He et al. 2025, "Rewarding the Unlikely: Lifting GRPO Beyond Distribution
    Sharpening", arXiv 2506.02355, sec. 4): within each group of G samples, rank_i is sample i's place by
    the rollout's log pi(trajectory), most likely first (rank 0), and every positive reward becomes

        r_i <- r_i (1 - beta (G - rank_i) / G)

    so the group's most likely correct sample loses beta of its reward and the least likely beta / G.
    GRPO otherwise reinforces the correct samples the policy already prefers and sharpens onto them (rank
    bias), which raises pass@1 and lowers pass@k for large k. Ties keep sample order. Non-positive rewards
    (failures, skipped samples) are unchanged.
    """
    if rewards.numel() % group_size or logp.shape != rewards.shape:
        raise ValueError(f"{rewards.numel()} rewards, {logp.numel()} log-probs, groups of {group_size}")
    if beta == 0:
        return rewards
    r = rewards.float().view(-1, group_size)
    order = logp.float().view(-1, group_size).argsort(dim=-1, descending=True, stable=True)
    rank = order.argsort(-1).float()  # rank[i] = place of sample i in the descending order
    scaled = r * (1 - beta * (group_size - rank) / group_size)
    return torch.where(r > 0, scaled, r).view(-1)


def informative_groups(
    rewards: Tensor, group_size: int, valid: Tensor | None = None, tol: float = 1e-6
) -> Tensor:
    """[G] bool: the groups whose valid rewards differ, max_i r_i - min_i r_i > tol (at least two valid).

    A group of equal rewards has A_i = 0 for every sample under each advantage above, so it adds no policy
    gradient, only KL terms and loss positions that dilute the others: DAPO's dynamic sampling (Yu et al.
    2025, sec. 3.2) rolls out more prompts until the step is full of informative groups (rl.dynamic_sampling).
    """
    r = rewards.float().view(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.view(-1, group_size)
    hi = torch.where(v, r, -math.inf).max(-1).values
    lo = torch.where(v, r, math.inf).min(-1).values
    return (v.sum(-1) >= 2) & (hi - lo > tol)


def fill_groups(informative: Tensor, n: int) -> list[int]:
    """Indices of ``n`` groups for the update: the informative ones in rollout order, then (if too few were
    found) the first uninformative ones, so every step trains on the same number of groups."""
    idx = torch.arange(len(informative))
    order = torch.cat([idx[informative], idx[~informative]])
    return order[:n].tolist()


def pass_at_k_rewards(r: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pass@k training's rewards of one group of n samples (Chen et al. 2025, arXiv 2508.10751, sec. 3):
    a k-subset S of the group scores max_{j in S} r_j (for 0/1 rewards: whether S passes), and

        value_i = E_S[max r_S | i in S],   mean = E_S[max r_S],   std = sd_S(max r_S),

    S uniform over the C(n, k) subsets. With the other n - 1 rewards sorted, o_(1) <= ... <= o_(n-1), the
    best of the k - 1 others is o_(j) with probability C(j-1, k-2) / C(n-1, k-1), so
    value_i = sum_j max(r_i, o_(j)) C(j-1, k-2) / C(n-1, k-1); over all n sorted rewards the subset's best is
    r_(j) with probability C(j-1, k-1) / C(n, k). The values average to ``mean`` (each subset is counted
    once per member), so value - mean is a zero-mean advantage. Exact (no sampling of subsets), O(n^2).
    Returns (value [n], mean, std) in fp32.
    """
    n = r.numel()
    if not 1 <= k <= n:
        raise ValueError(f"pass@k rewards need 1 <= k <= group size; got k={k}, n={n}")
    r = r.float()
    if k == 1:
        return r, r.mean(), r.std(unbiased=False)
    # P(a k-subset's best is the j-th smallest of the n), and P(the best of k-1 others is the j-th of n-1)
    p_best = torch.tensor([math.comb(j - 1, k - 1) / math.comb(n, k) for j in range(1, n + 1)])
    w = torch.tensor([math.comb(j - 1, k - 2) / math.comb(n - 1, k - 1) for j in range(1, n)])
    srt = r.double().sort().values
    mean = (p_best * srt).sum()
    std = ((p_best * (srt - mean) ** 2).sum()).sqrt()
    others = torch.stack([torch.cat([r[:i], r[i + 1 :]]) for i in range(n)]).double().sort(-1).values
    value = (torch.maximum(r.double()[:, None], others) * w).sum(-1)
    return value.float(), mean.float(), std.float()


def positions(latent: Tensor, stop: Tensor, answer: Tensor, exits: Tensor | None = None) -> Tensor:
    """Per-choice tensors side by side: [B, J] latent, [B, J] stop, [B, A] answer (, [B, P] System-1.5 exit
    decisions when they are actions) -> [B, 2J + A (+ P)]."""
    return torch.cat([latent, stop, answer] + ([] if exits is None else [exits]), dim=-1)


def traj_positions(traj: Trajectory) -> tuple[Tensor, Tensor]:
    """(rollout log-probs, mask) of every stochastic choice, in ``positions`` order."""
    logp = positions(traj.latent_logp, traj.stop_logp, traj.answer_logp, traj.exit_logp)
    mask = positions(traj.action_mask, traj.stop_mask, traj.answer_actions, traj.exit_mask)
    return logp, mask


def replay_positions(new: Replayed) -> Tensor:
    return positions(new.latent_logp, new.stop_logp, new.answer_logp, new.exit_logp)


def clipped_surrogate(
    logp: Tensor, logp_old: Tensor, adv: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-position PPO-clip loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) (Schulman et al. 2017),
    with the ratio rho = exp(logp - logp_old). Returns (loss, rho, whether the clip was active)."""
    rho = torch.exp(logp - logp_old)
    unclipped = rho * adv
    clipped = rho.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), rho, clipped < unclipped


def k3_kl(logp: Tensor, logp_ref: Tensor, cap: float = 10.0) -> Tensor:
    """KL(pi || pi_ref) per position, k3 estimator at a sample from pi: min(exp(d) - d - 1, cap) with
    d = ref - logp (Schulman 2020, "Approximating KL divergence"): unbiased below the cap, always >= 0.

    exp(d) is unbounded where the policy has moved far below the reference at a sampled choice. A latent
    density or a System-1.5 exit can do that in one step (measured: a mean KL of 1092 and a gradient norm of
    3e5 at step 1 of GRPO with learned exits on a 12-layer model), and one such position then sets the
    whole clipped update. Positions above ``cap`` carry no KL gradient (the clamp verl and OpenRLHF apply)."""
    d = (logp_ref - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(max=cap)


class GRPO:
    """The algorithm object the learner calls: what the engine trains, per-step preparation, the loss."""

    name = "grpo"
    needs_hidden = False  # PPO's value head reads the replay's hidden states
    policy_prefix = ""  # where the policy's weights sit in the trained module's state dict

    def __init__(self, rl: Any):
        self.rl = rl

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the DeepSpeed engine trains (PPO adds a value head)."""
        return model

    def policy_of(self, module: torch.nn.Module) -> Any:
        return module

    @torch.no_grad()
    def prepare(
        self, module: torch.nn.Module, traj: Trajectory, adv: Tensor, policy: Any
    ) -> dict[str, Tensor]:
        """Per-sample tensors the loss needs, computed once per step before any update: [B, ...] each."""
        _, mask = traj_positions(traj)
        return {"adv": adv.float()[:, None].expand_as(mask).contiguous()}

    def loss(
        self,
        module: torch.nn.Module,
        traj: Trajectory,
        prep: dict[str, Tensor],
        new: Replayed,
        ref_logp: Tensor | None,
        n_global: float,
        world: int,
    ) -> tuple[Tensor, dict[str, float]]:
        """The minibatch's loss, scaled so DeepSpeed's mean over ranks gives the mean over N positions."""
        logp_old, mask = traj_positions(traj)
        device = new.latent_logp.device
        logp_old, mask, adv = logp_old.to(device), mask.to(device), prep["adv"].to(device)
        logp = replay_positions(new)
        pg, rho, clipped = clipped_surrogate(logp, logp_old, adv, self.rl.eps_low, self.rl.eps_high)
        per_pos = pg
        kl = torch.zeros_like(pg)
        if ref_logp is not None:
            kl = k3_kl(logp, ref_logp.to(device))
            per_pos = per_pos + self.rl.kl_beta * kl
        scale = world / max(n_global, 1.0)
        loss = (per_pos * mask).sum() * scale
        m = mask.float()
        n_local = m.sum().clamp(min=1)
        am = traj.action_mask.to(device).float()
        stats = {
            "pg_loss": float((pg * m).sum() / n_local),
            "kl": float((kl * m).sum() / n_local),
            "clipfrac": float((clipped.float() * m).sum() / n_local),
            "ratio": float((rho.detach() * m).sum() / n_local),
            "entropy": float((new.entropy.detach() * am).sum() / am.sum().clamp(min=1)),
        }
        return loss, stats


def run(cfg: Any, progress: bool = True) -> dict[str, Any]:
    from trainers.rl import run_rl

    return run_rl(cfg, GRPO, progress=progress)
