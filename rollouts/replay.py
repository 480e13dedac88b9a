"""Replay: a trajectory's log-probs recomputed under the current weights (prompts, then generated inputs).

    replay:   prompt <bot> z_1 .. z_n <eot> a_0 .. a_{A-2}, rebuilt from the stored actions; the prompts
              (each distinct one once) then every row's fed inputs on their KV cache; the new log-probs at
              the stored choices (latent actions, stop decisions, answer tokens and, when they were
              actions, System-1.5 exits, replayed in one full-sequence shortcut forward)

Replay must reproduce the rollout's log-probs (same weights) to within 1e-4; ``logprob_gap`` measures it and
the trainer logs it every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rl_latent.model.shortcut_decode import shortcut_forward
from rl_latent.policy import LatentPolicy
from rollouts.sampler import left_pad, prefill, thought_head
from rollouts.trajectory import Trajectory


@dataclass
class Replayed:
    """New log-probs of a trajectory's stored choices under the current weights (same shapes as stored)."""

    latent_logp: Tensor  # [B, J]
    stop_logp: Tensor  # [B, J]
    answer_logp: Tensor  # [B, A]
    entropy: Tensor  # [B, J] latent-policy entropy at each decision (0 where no action)
    dec_hidden: Tensor | None = None  # [B, J, d] last hidden state at each decision (replay(hidden=True))
    ans_hidden: Tensor | None = None  # [B, A, d] ... and at each answer position
    exit_logp: Tensor | None = None  # [B, P] System-1.5 exit decisions, when they were sampled

    def total(self, traj: Trajectory) -> Tensor:
        total = (
            (self.latent_logp * traj.action_mask).sum(-1)
            + (self.stop_logp * traj.stop_mask).sum(-1)
            + (self.answer_logp * traj.answer_actions.to(self.answer_logp.device)).sum(-1)
        )
        if self.exit_logp is not None:
            total = total + (self.exit_logp * traj.exit_mask.to(self.exit_logp.device)).sum(-1)
        return total


def fed_inputs(model: Any, traj: Trajectory) -> list[Tensor]:
    """Each row's generated inputs as embeddings [P_b, d]: ``z_1..z_n`` rebuilt from the stored actions (soft:
    ``sum_i y_i E[S_i]``; hidden: the stored ``z``), then ``<eot> a_0..a_{A-2}``. No gradients."""
    head = thought_head(model)
    emb = model.lm.get_input_embeddings()
    device = model.device
    out = []
    with torch.no_grad():
        for b in range(len(traj)):
            n, parts = int(traj.latent_steps[b]), []
            if n:
                if head.kind == "soft":
                    res = None if traj.latent_residual is None else traj.latent_residual[b, :n].to(device)
                    z = head.embed(
                        traj.actions[b, :n].to(device), traj.support_ids[b, :n].to(device), emb, res
                    )
                else:
                    z = traj.actions[b, :n].to(device, emb.weight.dtype)
                parts.append(z.to(emb.weight.dtype))
            a_len = int(traj.answer_mask[b].sum())
            tail = [model.eot_id] + traj.answer_ids[b, : max(0, a_len - 1)].tolist()
            parts.append(emb(torch.tensor(tail, device=device)))
            out.append(torch.cat(parts))
    return out


def replay_inputs(model: Any, traj: Trajectory) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The whole sequences ``prompt <bot> z_1..z_n <eot> a_0..a_{A-2}`` right-padded: embeddings [B, L, d],
    attention mask [B, L], and each row's generated inputs (:func:`fed_inputs`)."""
    emb = model.lm.get_input_embeddings()
    device = model.device
    fed = fed_inputs(model, traj)
    with torch.no_grad():
        seqs = [torch.cat([emb(torch.tensor(p, device=device)), f]) for p, f in zip(traj.prompt_ids, fed)]
    x, mask = _right_pad(seqs)
    return x, mask, fed


def _right_pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Embedding rows [L_b, d] right-padded with zeros: [B, L, d] and the attention mask [B, L]."""
    L = max(s.shape[0] for s in seqs)
    x = seqs[0].new_zeros(len(seqs), L, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), L, dtype=torch.long, device=seqs[0].device)
    for b, s in enumerate(seqs):
        x[b, : s.shape[0]], mask[b, : s.shape[0]] = s, 1
    return x, mask


def replay(model: Any, traj: Trajectory, policy: LatentPolicy, hidden: bool = False) -> Replayed:
    """Recompute every log-prob of ``traj`` under the current weights (see the module docstring).

    Each latent input is rebuilt as a fixed function of the stored action (soft: ``z = sum_i y_i E[S_i]``;
    hidden: the stored ``z``), detached, so gradients flow only through the log-probs at the stored choices
    (the score-function estimator of GRPO/PPO). Runs with gradients unless called under ``torch.no_grad``.
    ``hidden=True`` also returns the last hidden state at every decision and answer position (PPO's values).
    """
    head = thought_head(model)
    device = model.device
    B, J = traj.latent_logp.shape
    n_lat = traj.latent_steps.tolist()
    A = traj.answer_ids.shape[1]
    exit_logp = None
    if traj.exit_logp is not None:  # System-1.5 exits were actions: replay with the stored exit layers
        x, mask, _ = replay_inputs(model, traj)
        out, exit_logp = _replay_exits(model, traj, x, mask, n_lat)
        # column c of the outputs is sequence position p_len - 1 + c: <bot> at 0, fed input k at k + 1
        cols = [torch.arange(len(p) - 1, x.shape[1], device=device) for p in traj.prompt_ids]
        c = max(len(k) for k in cols)
        cols = torch.stack([torch.cat([k, k[-1:].expand(c - len(k))]) for k in cols])
        rows = torch.arange(B, device=device)[:, None]
        logits, last = out.logits[rows, cols].float(), out.hidden_states[-1][rows, cols]
    else:
        logits, last = _shared_prefix_forward(model, traj)
    L = logits.shape[1]
    bidx = torch.arange(B, device=device)[:, None]
    dpos = torch.arange(J, device=device)[None].expand(B, J).clamp(max=L - 1)  # <bot>, then latent j
    apos = (torch.tensor(n_lat, device=device)[:, None] + 1 + torch.arange(A, device=device)).clamp(max=L - 1)
    dec_logits = logits[bidx, dpos]  # [B, J, V]
    ans_logp = torch.log_softmax(logits[bidx, apos] / (traj.answer_temperature or 1.0), -1)
    answer_logp = ans_logp.gather(-1, traj.answer_ids.to(device)[..., None])[..., 0]
    if head.kind == "soft":
        sub = dec_logits.gather(-1, traj.support_ids.to(device)) / head.temperature
        latent_logp = policy.log_prob(sub, traj.actions.to(device))
        entropy = policy.entropy(sub)
        stop_logp = torch.zeros_like(latent_logp)
    else:
        mu = head.mean(last[bidx, dpos]).float()
        latent_logp = policy.log_prob(mu, traj.actions.to(device))
        entropy = policy.entropy(mu)
        log_p = torch.log_softmax(dec_logits, -1)[..., model.eot_id]
        stopped = torch.zeros(B, J, dtype=torch.bool, device=device)
        stopped[torch.arange(B), torch.tensor(n_lat, device=device).clamp(max=J - 1)] = True
        log_not = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
        stop_logp = torch.where(stopped, log_p, log_not)
    am = traj.action_mask.to(device)
    return Replayed(
        latent_logp=torch.where(am, latent_logp, 0.0),
        stop_logp=torch.where(traj.stop_mask.to(device), stop_logp, 0.0),
        answer_logp=torch.where(traj.answer_mask.to(device), answer_logp, 0.0),
        entropy=torch.where(am, entropy, 0.0),
        exit_logp=None if exit_logp is None else torch.where(traj.exit_mask.to(device), exit_logp, 0.0),
        dec_hidden=last[bidx, dpos] if hidden else None,
        ans_hidden=last[bidx, apos] if hidden else None,
    )


def _shared_prefix_forward(model: Any, traj: Trajectory) -> tuple[Tensor, Tensor]:
    """Logits [B, 1 + F, V] (fp32) and last hidden states [B, 1 + F, d] at ``<bot>`` (column 0) and at each
    fed input (column k + 1 for fed input k), computed as the rollout did: the left-padded prompts first
    (each distinct prompt once, its KV cache shared by its group's rows, see ``rollouts.sampler.prefill``),
    then every row's fed inputs, right-padded, on that cache. A group of G samples pays for its prompt once,
    forward and backward."""
    device = model.device
    ids, pmask = (t.to(device) for t in left_pad(traj.prompt_ids, model.tokenizer.pad_token_id))
    cache, bot_logits, states = prefill(model, ids, pmask)
    x, fmask = _right_pad(fed_inputs(model, traj))
    out = model(
        inputs_embeds=x, attention_mask=torch.cat([pmask, fmask], 1), past_key_values=cache, use_cache=True,
        output_hidden_states=True,
    )  # fmt: skip
    logits = torch.cat([bot_logits[:, None], out.logits.float()], 1)
    return logits, torch.cat([states[-1][:, None], out.hidden_states[-1]], 1)


def _replay_exits(model: Any, traj: Trajectory, x: Tensor, mask: Tensor, n_lat: list[int]):
    """The replay forward with each fed position's stored exit layer (prompt positions run in full); returns
    an HF-like output (logits, hidden_states[-1]) and the exit log-probs at the fed positions [B, P]."""
    from types import SimpleNamespace

    B, T = mask.shape
    P = traj.exit_logp.shape[1]
    p_len = torch.tensor([len(p) for p in traj.prompt_ids])
    idx = (p_len[:, None] + torch.arange(P)[None]).clamp(max=T - 1)  # fed position k sits at p_len + k
    rows = torch.arange(B)[:, None]
    exits = torch.full((B, T), model.num_layers, dtype=torch.long)
    stored = torch.where(traj.exit_mask, traj.exit_layers, model.num_layers)
    exits[rows.expand_as(idx)[traj.exit_mask], idx[traj.exit_mask]] = stored[traj.exit_mask]
    latent = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(n_lat):
        latent[b, len(traj.prompt_ids[b]) : len(traj.prompt_ids[b]) + n] = True
    dev = x.device
    logits, hid, logp = shortcut_forward(model, x, mask, exits.to(dev), latent.to(dev), traj.exit_scale)
    out = SimpleNamespace(logits=logits, hidden_states=(hid,))
    return out, logp[rows.to(dev), idx.to(dev)]


def logprob_gap(traj: Trajectory, new: Replayed) -> float:
    """max |replayed - rollout| over every stored log-prob (logged as policy/logprob_gap)."""
    gaps = [
        ((new.latent_logp.detach().cpu() - traj.latent_logp) * traj.action_mask).abs().max(),
        ((new.stop_logp.detach().cpu() - traj.stop_logp) * traj.stop_mask).abs().max(),
        ((new.answer_logp.detach().cpu() - traj.answer_logp) * traj.answer_mask).abs().max(),
    ]
    if traj.exit_logp is not None and new.exit_logp is not None:
        gaps.append(((new.exit_logp.detach().cpu() - traj.exit_logp) * traj.exit_mask).abs().max())
    return float(torch.stack(gaps).max())


__all__ = ["Replayed", "fed_inputs", "logprob_gap", "replay", "replay_inputs"]
