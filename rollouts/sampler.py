"""Batched latent rollouts with a KV cache (their replay, in one forward pass, is rollouts/replay.py).

    rollout:  prompt <bot> | z_1 .. z_n | <eot> | a_0 .. <eos>        (one position per forward call)

Rows advance in lock-step, one position per call: a row may be thinking while its neighbour is already
answering; a finished row feeds masked pads. Each row's computation sees only its own positions (the
attention mask and mask-derived position ids), so a problem gets the same thoughts and answer whatever it is
batched with. With ``generators`` (one ``torch.Generator`` per row) its random draws are also its own, which
makes a batch of 64 reproduce 64 batches of 1.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from rl_latent.compute import generation_compute
from rl_latent.data.format import prompt_text
from rl_latent.model.heads import HEAD_NAME
from rl_latent.model.shortcut_decode import shortcut_step
from rl_latent.model.shortcuts import (
    SHORTCUT_NAME,
    exit_scale,
    has_shortcuts,
    shortcut_exit_at,
    shortcut_flops,
    shortcut_lambda,
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
    allowed = {"gumbel": ("tau",), "dirichlet": ("concentration", "floor"), "gaussian": ("std",),
               "vanilla": ()}  # fmt: skip
    return get_policy(name, **{k: v for k, v in kwargs.items() if k in allowed[name]})


def encode_prompts(model: Any, questions: list[str]) -> list[list[int]]:
    """Question text -> token ids ending with ``<bot>`` (the latent phase opens right after the question)."""
    ids = model.tokenizer(questions, add_special_tokens=False)["input_ids"]
    return [list(x) + [model.bot_id] for x in ids]


def left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token rows left-padded with ``pad``: ids and attention mask [B, max len] (positions come from the
    mask, so every row's last token sits in the last column)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :] = torch.tensor(r)
        mask[i, n - len(r) :] = 1
    return ids, mask


def _token_uniforms(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """The uniforms of ``_gumbel_argmax``, clamped so ``log(-log u)`` is finite."""
    return torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1 - 1e-7)


def _gumbel_argmax(logits: Tensor, u: Tensor) -> Tensor:
    """An exact categorical sample ``argmax(logits + g)``, ``g = -log(-log u)`` (-inf entries never win)."""
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


def _top_p_mask(logits: Tensor, top_p: float) -> Tensor:
    """Logits outside the nucleus set to -inf (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_l, order = torch.sort(logits, descending=True, dim=-1)
    cum = torch.softmax(sorted_l, dim=-1).cumsum(-1)
    drop = cum - torch.softmax(sorted_l, dim=-1) > top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@torch.inference_mode()  # no autograd bookkeeping at all: at batch 1 it is ~5% of a decode (see _pack)
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
    exit_temperature: float = 1.0,
    exit_at: int | None = None,
) -> Trajectory:
    """Roll out ``questions`` (raw question text) through the latent phase and the answer.

    ``policy`` defaults to the deterministic one (greedy thoughts); ``answer_temperature = 0``
    answers greedily. ``fixed_steps``/``max_steps`` default to the model's distillation settings.
    ``generators`` (one per row) makes every row's randomness its own; else ``generator`` (or torch's global
    one) is shared by the batch. ``probe_k > 0`` records each decision's top tokens under the LM head (the
    CODI probe). Every step is batched over the rows in the same phase; only per-row random draws loop.
    A model with System-1.5 shortcuts exits positions early where its routers pass ``lam`` (default: the
    threshold it was trained with, ``latent_extra["shortcut"]["lam"]``); compute counts the blocks run.
    ``learn_exits`` samples the exits instead (the RL action of latent.learn_exits: Bernoulli(sigmoid((z -
    logit(lam)) / exit_temperature)) per router, whose mode is the greedy decode at ``lam``; Bernoulli(w) at
    lam 0.5 and temperature 1) and stores each position's exit layer and log-prob in the trajectory.
    ``exit_at`` (default: the model's ``latent_extra["shortcut"]["exit_at"]``, normally unset) exits every
    position at that router layer instead (a static depth).
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

    if model.training:  # eval() walks every module: ~1 ms, a twentieth of a batch-1 decode
        model.eval()
    t0 = time.perf_counter()
    prompt_ids = encode_prompts(model, [prompt_text({"question": q}) for q in questions])
    ids, mask = left_pad(prompt_ids, tok.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    cache, logits, states = prefill(model, ids, mask)
    h = states[-1]
    sample_exits = learn_exits and has_shortcuts(model)
    lam = shortcut_lambda(model, lam)
    depth = None if sample_exits else shortcut_exit_at(model, exit_at)
    static = None if depth is None else torch.full((B,), depth, dtype=torch.long, device=device)
    lam = lam if depth is None else None  # a static depth overrides the routers
    scale = exit_scale(lam, exit_temperature) if sample_exits else (0.0, 1.0)
    shortcuts = sample_exits or lam is not None or static is not None
    prev = states[:-1] + [None] if shortcuts else None
    # the next position's index per row, kept here (shortcut_step would derive it from the growing mask) and
    # no mask for it at all while no row has padding (one unpadded prompt: every position attends to all)
    pos = model.position_ids_from_mask(mask)[:, -1:] if shortcuts else None
    unpadded = shortcuts and bool(mask.all())
    deferred: list = []  # exited positions' key/value copies, made once a later position runs a block
    layers_run: list[list[int]] = [[model.num_layers] for _ in range(B)]  # the prompt's last position: full
    exit_record: list[list[tuple[int, float]]] = [[] for _ in range(B)]  # per fed position: (layer, log-prob)

    # the rows' bookkeeping is in Python: at batch 1 each tensor op on it costs about what a router does
    phase = [0] * B  # 0 thinking, 1 answering, 2 done
    n_dec, n_lat, n_ans = [0] * B, [0] * B, [0] * B
    decisions: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []  # (rows, decision index, batched record)
    answers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (rows, position, token, log-prob)
    probe: list[list[list[tuple[str, float]]]] = [[] for _ in range(B)]
    every = list(range(B))
    live_col = torch.ones(B, 1, dtype=mask.dtype, device=device)
    for _ in range(cap + 1 + max_answer_tokens):
        think = [b for b in every if phase[b] == 0]
        speak = [b for b in every if phase[b] == 1]
        live = [int(p < 2) for p in phase]
        inputs: list[tuple[list[int], Tensor]] = []  # (rows, their next inputs)
        latent_rows: list[int] = []
        if think:
            rows = _index(think, B, device)
            if probe_k:
                top = torch.softmax(_take(logits, rows), -1).topk(probe_k, dim=-1)
                for i, b in enumerate(think):
                    pairs = zip(top.indices[i].tolist(), top.values[i].tolist())
                    probe[b].append([(tok.decode([t]), round(p, 4)) for t, p in pairs])
            gens = None if generators is None else [generators[b] for b in think]
            j = torch.tensor([n_dec[b] for b in think], device=device)
            d = _decide(
                model, head, policy, _take(logits, rows), _take(h, rows), j, fixed, cap, gens, generator
            )
            decisions.append((torch.tensor(think), j, d))
            stops = d["stop"].tolist()
            latent_rows = [b for b, stop in zip(think, stops) if not stop]
            if latent_rows:
                inputs.append((latent_rows, d["z"] if len(latent_rows) == len(think) else d["z"][~d["stop"]]))
            if len(latent_rows) < len(think):
                inputs.append(([b for b, stop in zip(think, stops) if stop], emb.weight[model.eot_id]))
            for b, stop in zip(think, stops):
                n_dec[b] += 1
                n_lat[b] += not stop
                phase[b] = 1 if stop else 0
        if speak:
            rows = _index(speak, B, device)
            gens = None if generators is None else [generators[b] for b in speak]
            t, lp = _answer_tokens(_take(logits, rows), answer_temperature, top_p, gens, generator)
            answers.append((torch.tensor(speak), torch.tensor([n_ans[b] for b in speak]), t, lp))
            inputs.append((speak, emb.weight[t]))
            for b, tb in zip(speak, t.tolist()):
                n_ans[b] += 1
                if tb == eos or n_ans[b] >= max_answer_tokens:
                    phase[b] = 2
        if all(p == 2 for p in phase):
            break
        nxt = _assemble(inputs, B, emb.weight[tok.pad_token_id], device)
        mask = torch.cat([mask, live_col if all(live) else torch.tensor(live, device=device)[:, None]], dim=1)
        if not shortcuts:
            out = model(
                inputs_embeds=nxt[:, None], attention_mask=mask, past_key_values=cache, use_cache=True,
                output_hidden_states=True,
            )  # fmt: skip
            cache = out.past_key_values
            logits, h = out.logits[:, -1].float(), out.hidden_states[-1][:, -1]
            continue
        # System-1.5: the position runs until its router says exit; thoughts may reuse the previous state
        thought = set(latent_rows)
        latent_in = torch.tensor([b in thought for b in every], device=device)
        u = None
        if sample_exits:  # every row draws one uniform per router at every position (fixed RNG use)
            n_r = len(model.heads[SHORTCUT_NAME].layers)
            (u,) = _per_row(
                lambda p, g, n=n_r: (torch.rand(p.shape[0], n, generator=g, device=p.device),), nxt,
                generators, generator,
            )  # fmt: skip
        pos = pos + (1 if all(live) else torch.tensor(live, device=device)[:, None])  # a finished row stays
        so = shortcut_step(
            model, nxt[:, None], None if unpadded and all(live) else mask, cache, prev=prev, latent=latent_in,
            context=h, lam=lam, exits=static, uniforms=u, scale=scale, deferred=deferred, position_ids=pos,
        )  # fmt: skip
        prev = so.states
        logits, h = so.logits.float(), so.hidden
        layers, logps = so.exit_layer.tolist(), so.exit_logp.tolist()  # exit layer l: blocks 0..l-1 ran
        for b in every:
            if phase[b] < 2:
                layers_run[b].append(layers[b])
                exit_record[b].append((layers[b], logps[b]))
    wall = time.perf_counter() - t0
    with torch.inference_mode(False):  # the trajectory's tensors are ordinary ones: the trainer replays them
        return _pack(
            model, head, policy, prompt_ids, questions, targets, decisions, answers, probe,
            torch.tensor(n_dec), torch.tensor(n_lat), torch.tensor(n_ans), answer_temperature, wall,
            weights_version, metadata, layers_run if shortcuts else None,
            exit_record if sample_exits else None, routed=static is None, scale=scale,
        )  # fmt: skip


def _index(rows: list[int], B: int, device: Any) -> Tensor | None:
    """``rows`` as an index tensor, or None when they are all ``B`` rows in order (nothing to select)."""
    return None if len(rows) == B else torch.tensor(rows, device=device)


def _take(t: Tensor, rows: Tensor | None) -> Tensor:
    return t if rows is None else t[rows]


def _assemble(inputs: list[tuple[list[int], Tensor]], B: int, pad: Tensor, device: Any) -> Tensor:
    """The next inputs [B, d]: each group's rows get its tensor ([rows, d], or one [d] for all of them), the
    rows in no group (finished) the pad embedding."""
    if len(inputs) == 1 and len(inputs[0][0]) == B:  # one group holds every row, in order
        return inputs[0][1].expand(B, -1).to(pad.dtype)
    nxt = pad.expand(B, -1).clone()
    for rows, x in inputs:
        nxt[torch.tensor(rows, device=device)] = x.to(pad.dtype)
    return nxt


def prefill(model: Any, ids: Tensor, mask: Tensor) -> tuple[Any, Tensor, list[Tensor]]:
    """The prompts' forward: (KV cache, last-position logits in fp32, last-position state of every layer).

    A GRPO group repeats each prompt ``group_size`` times: each distinct (padded) prompt runs once and its
    rows share the result, which is the same computation a row does on its own (row-wise ops only). The
    sharing is an index, so under autograd (the replay) each row's gradient flows back to its prompt."""
    uniq, inv = torch.unique(ids, dim=0, return_inverse=True)
    shared = len(uniq) < len(ids)
    if shared:
        first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
        first = first.scatter_reduce(0, inv, torch.arange(len(ids), device=ids.device), "amin")
        ids, mask = ids[first], mask[first]
    out = model(
        input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True, logits_to_keep=1
    )  # fmt: skip
    cache, logits = out.past_key_values, out.logits[:, -1].float()
    states = [hs[:, -1] for hs in out.hidden_states]
    if shared:
        cache.reorder_cache(inv)
        logits, states = logits[inv], [s[inv] for s in states]
    return cache, logits, states


def _per_row(fn, params: Tensor, gens: list[torch.Generator] | None, generator: torch.Generator | None):
    """``fn(params, generator)`` batched, or row by row with each row's own generator (batch invariance)."""
    if gens is None:
        return fn(params, generator)
    outs = [fn(params[i : i + 1], g) for i, g in enumerate(gens)]
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _policy_sample(
    policy: LatentPolicy,
    params: Tensor,
    gens: list[torch.Generator] | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """``policy.sample`` over a batch. With per-row generators only the draws loop over rows (each row's
    noise from its own generator, the same numbers a one-row batch draws); the transform runs batched."""
    if gens is None or not policy.fixed_noise:
        return _per_row(lambda p, g: policy.sample(p, generator=g), params, gens, generator)
    (noise,) = _per_row(lambda p, g: (policy.noise(p, g),), params, gens, generator)
    return policy.sample(params, noise=noise)


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
        x, lp = _policy_sample(policy, sub, gens, generator)
        said_eot = ids.gather(-1, x.argmax(-1, keepdim=True))[:, 0] == model.eot_id
        stop = forced | (said_eot if adaptive else torch.zeros_like(forced))
        residual = head.residual_of(h)
        z = head.embed(x, ids, model.lm.get_input_embeddings(), residual)
        sampled = ~forced & (not policy.deterministic)
        return {"stop": stop, "z": z, "ids": ids, "action": x, "logp": torch.where(sampled, lp, 0.0),
                "sampled": sampled, "stop_logp": zeros, "stop_sampled": torch.zeros_like(forced),
                "residual": residual}  # fmt: skip
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
        z, lp = _policy_sample(policy, mu, gens, generator)
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
    (u,) = _per_row(lambda p, g: (_token_uniforms(p, g),), scaled, gens, generator)
    t = _gumbel_argmax(_top_p_mask(scaled, top_p), u)
    return t, torch.log_softmax(scaled, -1).gather(-1, t[:, None])[:, 0]


def _pack(
    model, head, policy, prompt_ids, questions, targets, decisions, answers, probe, n_dec, n_lat, n_ans,
    temperature, wall, version, meta, layers_run=None, exit_record=None, routed=True, scale=(0.0, 1.0),
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
            else shortcut_flops(model, layers_run[b][1 : 1 + int(a) + int(n)], routed),  # [0] ran no router
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
            "exit_scale": scale,
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
        latent_steps=n_lat.cpu().clone(),  # a copy made here is an ordinary tensor, not an inference one
        answer_ids=answer_ids,
        answer_logp=answer_logp,
        answer_mask=answer_mask,
        answers=[x.strip() for x in texts],
        head=head.kind,
        policy=policy.name,
        answer_temperature=max(float(temperature), 0.0),
        compute=compute,
        weights_version=version,
        metadata=list(meta) if meta is not None else [{} for _ in range(B)],
        probe=probe if any(probe) else [],
    )


__all__ = ["encode_prompts", "is_latent", "latent_settings", "make_policy", "rollout", "thought_head"]
