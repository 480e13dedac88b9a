"""Batched latent rollouts with a KV cache, and their replay in one forward pass.

    rollout:  prompt <bot> | z_1 .. z_n | <eot> | a_0 .. <eos>        (one position per forward call)
    replay:   the same sequence rebuilt from the stored actions, one forward, new log-probs at the stored ids

Rows advance in lock-step, one position per call: a row may be thinking while its neighbour is already
answering; a finished row feeds masked pads. Each row's computation sees only its own positions (the
attention mask and mask-derived position ids), so a problem gets the same thoughts and answer whatever it is
batched with. With ``generators`` (one ``torch.Generator`` per row) its random draws are also its own, which
makes a batch of 64 reproduce 64 batches of 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rl_latent.compute import generation_compute
from rl_latent.data.format import prompt_text
from rl_latent.model.heads import HEAD_NAME
from rl_latent.model.shortcuts import (
    SHORTCUT_NAME,
    has_shortcuts,
    shortcut_flops,
    shortcut_forward,
    shortcut_lambda,
    shortcut_step,
)
from rl_latent.policy import LatentPolicy, get_policy
from rollouts.trajectory import Trajectory

HEAD_POLICIES = {"hidden": ("vanilla", "gaussian"), "soft": ("vanilla", "gumbel", "dirichlet")}
LATENT_DEFAULTS = {"fixed_steps": 0, "max_steps": 8}


def thought_head(model: Any) -> Any:
    if HEAD_NAME not in model.heads:
        raise ValueError("this model has no thought head: train it with a CODI stage (codi, codi_soft, ...)")
    return model.heads[HEAD_NAME]


def is_latent(model: Any) -> bool:
    return HEAD_NAME in getattr(model, "heads", {})


def latent_settings(model: Any) -> dict[str, Any]:
    """The latent-phase settings a model was distilled with (``latent_extra["latent"]``)."""
    return {**LATENT_DEFAULTS, **model.latent_extra.get("latent", {})}


def make_policy(head_kind: str, name: str = "vanilla", **kwargs: float) -> LatentPolicy:
    """The latent policy ``name`` for a head, with only the keyword arguments that policy takes."""
    if name not in HEAD_POLICIES[head_kind]:
        raise ValueError(
            f"policy {name!r} does not apply to the {head_kind} head; use {HEAD_POLICIES[head_kind]}"
        )
    if name == "dirichlet" and "dirichlet_floor" in kwargs:
        kwargs = {**kwargs, "floor": kwargs["dirichlet_floor"]}
    allowed = {
        "gumbel": ("tau",),
        "dirichlet": ("concentration", "floor"),
        "gaussian": ("std",),
        "vanilla": (),
    }
    return get_policy(name, **{k: v for k, v in kwargs.items() if k in allowed[name]})


def encode_prompts(model: Any, questions: list[str]) -> list[list[int]]:
    """Question text -> token ids ending with ``<bot>`` (the latent phase opens right after the question)."""
    ids = model.tokenizer(questions, add_special_tokens=False)["input_ids"]
    return [list(x) + [model.bot_id] for x in ids]


def _left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :] = torch.tensor(r)
        mask[i, n - len(r) :] = 1
    return ids, mask


def _gumbel_argmax(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """An exact categorical sample ``argmax(logits + g)`` (-inf entries are never picked)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1 - 1e-7)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


def _top_p_mask(logits: Tensor, top_p: float) -> Tensor:
    """Logits outside the nucleus set to -inf (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_l, order = torch.sort(logits, descending=True, dim=-1)
    cum = torch.softmax(sorted_l, dim=-1).cumsum(-1)
    drop = cum - torch.softmax(sorted_l, dim=-1) > top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@torch.no_grad()
def rollout(
    model: Any,
    questions: list[str],
    *,
    policy: LatentPolicy | None = None,
    targets: list[str] | None = None,
    fixed_steps: int | None = None,
    max_steps: int | None = None,
    max_answer_tokens: int = 16,
    answer_temperature: float = 0.0,
    top_p: float = 1.0,
    generators: list[torch.Generator] | None = None,
    generator: torch.Generator | None = None,
    weights_version: int = 0,
    probe_k: int = 0,
    metadata: list[dict[str, Any]] | None = None,
    lam: float | None = None,
    learn_exits: bool = False,
) -> Trajectory:
    """Roll out ``questions`` (raw question text) through the latent phase and the answer.

    ``policy`` defaults to the deterministic one (greedy thoughts); ``answer_temperature = 0``
    answers greedily. ``fixed_steps``/``max_steps`` default to the model's distillation settings.
    ``generators`` (one per row) makes every row's randomness its own; else ``generator`` (or torch's global
    one) is shared by the batch. ``probe_k > 0`` records each decision's top tokens under the LM head (the
    CODI probe). Every step is batched over the rows in the same phase; only per-row random draws loop.
    A model with System-1.5 shortcuts exits positions early where its routers pass ``lam`` (default: the
    threshold it was trained with, ``latent_extra["shortcut"]["lam"]``); compute counts the blocks run.
    ``learn_exits`` samples the exits instead (Bernoulli(w) per router: the RL action of latent.learn_exits)
    and stores each position's exit layer and log-prob in the trajectory.
    """
    head = thought_head(model)
    settings = latent_settings(model)
    fixed = settings["fixed_steps"] if fixed_steps is None else fixed_steps
    cap = fixed if fixed > 0 else (settings["max_steps"] if max_steps is None else max_steps)
    policy = policy or make_policy(head.kind, "vanilla")
    if policy.name not in HEAD_POLICIES[head.kind]:
        raise ValueError(f"policy {policy.name!r} does not apply to the {head.kind} head")
    if generators is not None and len(generators) != len(questions):
        raise ValueError(f"{len(generators)} generators for {len(questions)} questions")
    tok = model.tokenizer
    device = model.device
    emb = model.lm.get_input_embeddings()
    eos = tok.eos_token_id
    B = len(questions)

    model.eval()
    t0 = time.perf_counter()
    prompt_ids = encode_prompts(model, [prompt_text({"question": q}) for q in questions])
    ids, mask = _left_pad(prompt_ids, tok.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
    cache = out.past_key_values
    logits, h = out.logits[:, -1].float(), out.hidden_states[-1][:, -1]
    sample_exits = learn_exits and has_shortcuts(model)
    lam = shortcut_lambda(model, lam)
    shortcuts = sample_exits or lam is not None
    prev = [hs[:, -1] for hs in out.hidden_states[:-1]] + [None] if shortcuts else None
    layers_run: list[list[int]] = [[model.num_layers] for _ in range(B)]  # the prompt's last position: full
    exit_record: list[list[tuple[int, float]]] = [[] for _ in range(B)]  # per fed position: (layer, log-prob)

    phase = torch.zeros(B, dtype=torch.long, device=device)  # 0 thinking, 1 answering, 2 done
    n_dec = torch.zeros(B, dtype=torch.long, device=device)
    n_lat = torch.zeros(B, dtype=torch.long, device=device)
    n_ans = torch.zeros(B, dtype=torch.long, device=device)
    decisions: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []  # (rows, decision index, batched record)
    answers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (rows, position, token, log-prob)
    probe: list[list[list[tuple[str, float]]]] = [[] for _ in range(B)]
    for _ in range(cap + 1 + max_answer_tokens):
        think = (phase == 0).nonzero()[:, 0]
        speak = (phase == 1).nonzero()[:, 0]
        nxt = emb.weight[tok.pad_token_id].expand(B, -1).clone()
        live = (phase < 2).long()[:, None]
        if len(think):
            if probe_k:
                top = torch.softmax(logits[think], -1).topk(probe_k, dim=-1)
                for i, b in enumerate(think.tolist()):
                    pairs = zip(top.indices[i].tolist(), top.values[i].tolist())
                    probe[b].append([(tok.decode([t]), round(p, 4)) for t, p in pairs])
            gens = None if generators is None else [generators[b] for b in think.tolist()]
            d = _decide(
                model, head, policy, logits[think], h[think], n_dec[think], fixed, cap, gens, generator
            )
            decisions.append((think, n_dec[think].clone(), d))
            go = ~d["stop"]
            nxt[think[go]] = d["z"][go].to(nxt.dtype)
            nxt[think[d["stop"]]] = emb.weight[model.eot_id]
            n_lat[think[go]] += 1
            n_dec[think] += 1
            phase[think[d["stop"]]] = 1
        if len(speak):
            gens = None if generators is None else [generators[b] for b in speak.tolist()]
            t, lp = _answer_tokens(logits[speak], answer_temperature, top_p, gens, generator)
            answers.append((speak, n_ans[speak].clone(), t, lp))
            nxt[speak] = emb.weight[t]
            n_ans[speak] += 1
            finished = (t == eos) | (n_ans[speak] >= max_answer_tokens)
            phase[speak[finished]] = 2
        if bool((phase == 2).all()):
            break
        mask = torch.cat([mask, live], dim=1)
        if not shortcuts:
            out = model(
                inputs_embeds=nxt[:, None], attention_mask=mask, past_key_values=cache, use_cache=True,
                output_hidden_states=True,
            )  # fmt: skip
            cache = out.past_key_values
            logits, h = out.logits[:, -1].float(), out.hidden_states[-1][:, -1]
            continue
        # System-1.5: the position runs until its router says exit; thoughts may reuse the previous state
        latent_in = torch.zeros(B, dtype=torch.bool, device=device)
        if len(think):
            latent_in[think[~d["stop"]]] = True
        u = None
        if sample_exits:  # every row draws one uniform per router at every position (fixed RNG use)
            n_r = len(model.heads[SHORTCUT_NAME].layers)
            (u,) = _per_row(
                lambda p, g, n=n_r: (torch.rand(p.shape[0], n, generator=g, device=p.device),), nxt,
                generators, generator,
            )  # fmt: skip
        so = shortcut_step(model, nxt[:, None], mask, cache, prev=prev, latent=latent_in, lam=lam, uniforms=u)
        prev = so.states
        logits, h = so.logits.float(), so.hidden
        for b in (phase < 2).nonzero()[:, 0].tolist():
            layers_run[b].append(int(so.blocks_run[b]))
            exit_record[b].append((int(so.exit_layer[b]), float(so.exit_logp[b])))
    wall = time.perf_counter() - t0
    return _pack(
        model, head, policy, prompt_ids, questions, targets, decisions, answers, probe, n_dec, n_lat, n_ans,
        answer_temperature, wall, weights_version, metadata, layers_run if shortcuts else None,
        exit_record if sample_exits else None,
    )  # fmt: skip


def _per_row(fn, params: Tensor, gens: list[torch.Generator] | None, generator: torch.Generator | None):
    """``fn(params, generator)`` batched, or row by row with each row's own generator (batch invariance)."""
    if gens is None:
        return fn(params, generator)
    outs = [fn(params[i : i + 1], g) for i, g in enumerate(gens)]
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _decide(
    model: Any, head: Any, policy: LatentPolicy, logits: Tensor, h: Tensor, j: Tensor, fixed: int, cap: int,
    gens: list[torch.Generator] | None, generator: torch.Generator | None,
) -> dict[str, Tensor]:  # fmt: skip
    """Decision j of each thinking row: stop (next input <eot>) or continue with a thought ``z``."""
    R = logits.shape[0]
    forced = j >= cap  # the cap (or the K of fixed-K mode): a forced stop, no log-prob term
    adaptive = fixed == 0
    zeros = torch.zeros(R, device=logits.device)
    if head.kind == "soft":
        ids, sub = head.support(logits)
        x, lp = _per_row(lambda p, g: policy.sample(p, generator=g), sub, gens, generator)
        said_eot = ids.gather(-1, x.argmax(-1, keepdim=True))[:, 0] == model.eot_id
        stop = forced | (said_eot if adaptive else torch.zeros_like(forced))
        z = head.embed(x, ids, model.lm.get_input_embeddings(), head.residual_of(h))
        sampled = ~forced & (not policy.deterministic)
        return {"stop": stop, "z": z, "ids": ids, "action": x, "logp": torch.where(sampled, lp, 0.0),
                "sampled": sampled, "stop_logp": zeros, "stop_sampled": torch.zeros_like(forced),
                "residual": head.residual_of(h)}  # fmt: skip
    # hidden head: the stop is a Bernoulli(p(<eot>)) decision under the LM head, then z ~ policy(P(h))
    stop, stop_logp, stop_sampled = forced.clone(), zeros, torch.zeros_like(forced)
    if adaptive:
        log_p = torch.log_softmax(logits, -1)[:, model.eot_id]
        if policy.deterministic:
            stop = forced | (log_p.exp() > 0.5)
        else:
            (u,) = _per_row(
                lambda p, g: (torch.rand(p.shape[0], generator=g, device=p.device),), log_p, gens, generator
            )
            said = u < log_p.exp()
            stop = forced | said
            stop_sampled = ~forced
            log_not = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
            stop_logp = torch.where(stop_sampled, torch.where(said, log_p, log_not), 0.0)
    mu = head.mean(h).float()
    if policy.deterministic:
        z, lp = mu, zeros
    else:
        z, lp = _per_row(lambda p, g: policy.sample(p, generator=g), mu, gens, generator)
    sampled = ~stop & (not policy.deterministic)
    return {"stop": stop, "z": z, "action": z, "logp": torch.where(sampled, lp, 0.0), "sampled": sampled,
            "stop_logp": stop_logp, "stop_sampled": stop_sampled}  # fmt: skip


def _answer_tokens(
    logits: Tensor, temperature: float, top_p: float, gens: list[torch.Generator] | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Greedy (temperature 0) or tempered, nucleus-truncated samples; log-probs under softmax(logits / T)."""
    if temperature <= 0:
        t = logits.argmax(-1)
        return t, torch.log_softmax(logits, -1).gather(-1, t[:, None])[:, 0]
    scaled = logits / temperature
    (t,) = _per_row(lambda p, g: (_gumbel_argmax(_top_p_mask(p, top_p), g),), scaled, gens, generator)
    return t, torch.log_softmax(scaled, -1).gather(-1, t[:, None])[:, 0]


def _pack(
    model, head, policy, prompt_ids, questions, targets, decisions, answers, probe, n_dec, n_lat, n_ans,
    temperature, wall, version, meta, layers_run=None, exit_record=None,
) -> Trajectory:  # fmt: skip
    B = len(prompt_ids)
    J, A = max(1, int(n_dec.max())), max(1, int(n_ans.max()))
    k = head.k if head.kind == "soft" else 0
    width = k if head.kind == "soft" else model.hidden_size
    support = torch.zeros(B, J, k, dtype=torch.long)
    actions = torch.zeros(B, J, width)
    residual = torch.zeros(B, J, model.hidden_size) if getattr(head, "residual", False) else None
    latent_logp, stop_logp = torch.zeros(B, J), torch.zeros(B, J)
    action_mask = torch.zeros(B, J, dtype=torch.bool)
    stop_mask = torch.zeros(B, J, dtype=torch.bool)
    for rows, j, d in decisions:
        rows, j = rows.cpu(), j.cpu()
        keep = d["sampled"].cpu() | ~d["stop"].cpu()  # an action that was sampled or fed
        if head.kind == "soft":
            support[rows[keep], j[keep], : d["ids"].shape[-1]] = d["ids"][keep.to(d["ids"].device)].cpu()
        a = d["action"].float().cpu()
        actions[rows[keep], j[keep], : a.shape[-1]] = a[keep]
        if residual is not None:
            residual[rows[keep], j[keep]] = d["residual"].float().cpu()[keep]
        action_mask[rows, j] = d["sampled"].cpu()
        latent_logp[rows, j] = d["logp"].float().cpu()
        stop_mask[rows, j] = d["stop_sampled"].cpu()
        stop_logp[rows, j] = d["stop_logp"].float().cpu()
    pad = model.tokenizer.pad_token_id
    answer_ids = torch.full((B, A), pad, dtype=torch.long)
    answer_logp = torch.zeros(B, A)
    answer_mask = torch.zeros(B, A, dtype=torch.bool)
    for rows, i, t, lp in answers:
        rows, i = rows.cpu(), i.cpu()
        answer_ids[rows, i], answer_logp[rows, i], answer_mask[rows, i] = t.cpu(), lp.float().cpu(), True
    eos = model.tokenizer.eos_token_id
    texts = [
        model.tokenizer.decode(
            [t for t in answer_ids[b, : int(n_ans[b])].tolist() if t != eos], skip_special_tokens=True
        )
        for b in range(B)
    ]
    lm_shape = dict(
        n_layer=model.num_layers,
        n_params_non_embedding=model.n_params(non_embedding=True),
        d_model=model.hidden_size,
    )
    compute = [
        generation_compute(
            len(p),
            1 + int(a),
            latent_steps=int(n),
            wall_s=wall / B,
            layers_per_position=None if layers_run is None else layers_run[b][: 1 + int(a) + int(n)],
            extra_flops=0.0
            if layers_run is None
            else shortcut_flops(model, layers_run[b][: 1 + int(a) + int(n)]),
            **lm_shape,
        )  # fmt: skip
        for b, (p, a, n) in enumerate(zip(prompt_ids, n_ans.tolist(), n_lat.tolist()))
    ]
    exits = {}
    if exit_record is not None:  # fed positions z_1..z_n, <eot>, a_0..a_{A-2}: n + A of them per row
        P = max(1, max(len(r) for r in exit_record))
        exits = {
            "exit_layers": torch.full((B, P), model.num_layers, dtype=torch.long),
            "exit_logp": torch.zeros(B, P),
            "exit_mask": torch.zeros(B, P, dtype=torch.bool),
        }
        for b, rec in enumerate(exit_record):
            rec = rec[: int(n_lat[b]) + int(n_ans[b])]
            if rec:
                exits["exit_layers"][b, : len(rec)] = torch.tensor([r[0] for r in rec])
                exits["exit_logp"][b, : len(rec)] = torch.tensor([r[1] for r in rec])
                exits["exit_mask"][b, : len(rec)] = True
    return Trajectory(
        **exits,
        prompt_ids=prompt_ids,
        questions=list(questions),
        targets=list(targets) if targets is not None else [""] * B,
        support_ids=support,
        actions=actions,
        latent_residual=residual,
        latent_logp=latent_logp,
        action_mask=action_mask,
        stop_logp=stop_logp,
        stop_mask=stop_mask,
        latent_steps=n_lat.cpu(),
        answer_ids=answer_ids,
        answer_logp=answer_logp,
        answer_mask=answer_mask,
        answers=[x.strip() for x in texts],
        head=head.kind,
        policy=policy.name,
        answer_temperature=temperature if temperature > 0 else 1.0,
        compute=compute,
        weights_version=version,
        metadata=list(meta) if meta is not None else [{} for _ in range(B)],
        probe=probe if any(probe) else [],
    )


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
            + (self.answer_logp * traj.answer_mask).sum(-1)
        )
        if self.exit_logp is not None:
            total = total + (self.exit_logp * traj.exit_mask.to(self.exit_logp.device)).sum(-1)
        return total


def replay(model: Any, traj: Trajectory, policy: LatentPolicy, hidden: bool = False) -> Replayed:
    """Recompute every log-prob of ``traj`` under the current weights in one forward pass.

    Each latent input is rebuilt as a fixed function of the stored action (soft: ``z = sum_i y_i E[S_i]``;
    hidden: the stored ``z``), detached, so gradients flow only through the log-probs at the stored choices
    (the score-function estimator of GRPO/PPO). Runs with gradients unless called under ``torch.no_grad``.
    ``hidden=True`` also returns the last hidden state at every decision and answer position (PPO's values).
    """
    head = thought_head(model)
    emb = model.lm.get_input_embeddings()
    device = model.device
    B, J = traj.latent_logp.shape
    n_lat = traj.latent_steps.tolist()
    seqs, dec_pos, ans_pos = [], [], []
    with torch.no_grad():
        for b in range(B):
            parts = [emb(torch.tensor(traj.prompt_ids[b], device=device))]
            n = n_lat[b]
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
            tail = torch.tensor(
                [model.eot_id] + traj.answer_ids[b, : max(0, a_len - 1)].tolist(), device=device
            )
            parts.append(emb(tail))
            seqs.append(torch.cat(parts))
            p = len(traj.prompt_ids[b])
            dec_pos.append([p - 1 + j for j in range(J)])  # <bot>, then latent position j
            ans_pos.append([p + n + i for i in range(traj.answer_ids.shape[1])])  # <eot>, then a_0..
    L = max(s.shape[0] for s in seqs)
    x = torch.zeros(B, L, emb.weight.shape[1], dtype=emb.weight.dtype, device=device)
    mask = torch.zeros(B, L, dtype=torch.long, device=device)
    for b, s in enumerate(seqs):
        x[b, : s.shape[0]], mask[b, : s.shape[0]] = s, 1
    exit_logp = None
    if traj.exit_logp is not None:  # System-1.5 exits were actions: replay with the stored exit layers
        out, exit_logp = _replay_exits(model, traj, x, mask, n_lat)
    else:
        out = model(
            inputs_embeds=x, attention_mask=mask, output_hidden_states=hidden or head.kind == "hidden"
        )
    logits = out.logits.float()
    bidx = torch.arange(B, device=device)[:, None]
    dpos = torch.tensor(dec_pos, device=device).clamp(max=L - 1)
    apos = torch.tensor(ans_pos, device=device).clamp(max=L - 1)
    dec_logits = logits[bidx, dpos]  # [B, J, V]
    ans_logp = torch.log_softmax(logits[bidx, apos] / traj.answer_temperature, -1)
    answer_logp = ans_logp.gather(-1, traj.answer_ids.to(device)[..., None])[..., 0]
    if head.kind == "soft":
        sub = dec_logits.gather(-1, traj.support_ids.to(device)) / head.temperature
        latent_logp = policy.log_prob(sub, traj.actions.to(device))
        entropy = policy.entropy(sub)
        stop_logp = torch.zeros_like(latent_logp)
    else:
        mu = head.mean(out.hidden_states[-1][bidx, dpos]).float()
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
        dec_hidden=out.hidden_states[-1][bidx, dpos] if hidden else None,
        ans_hidden=out.hidden_states[-1][bidx, apos] if hidden else None,
    )


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
    logits, hid, logp = shortcut_forward(model, x, mask, exits.to(dev), latent.to(dev))
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


__all__ = ["Replayed", "encode_prompts", "is_latent", "logprob_gap", "make_policy", "replay", "rollout"]
