"""System-1.5 stage 2 (Wang et al., 2025): a frozen CODI model learns where each position may leave the stack.

The backbone and thought head are frozen; only routers and adapters (``rl_latent.model.shortcuts``) train.
Every step:

    teacher:  greedy rollout of the frozen full path (thoughts + answer), then one forward over it for the
              target state h* and logits at every generated position
    student:  the same inputs, one position at a time through the soft shortcut recurrence
    loss  =   match  sum_l SmoothL1(norm(s_l), h*) / std(h*)            every exit state aims at the top
                                                                    (adapters only: s_l of sg(p_l))
            + final  [SmoothL1(norm(x_L), h*) / std(h*) + KL(p* || p)]   the blended output
            + nll    CE(p, next answer token)                           the answer
            + router BCE(w_l, exp(-KL(p* || p_l) / (kl_scale c)))          exit where the exit agrees
            + compute (c) sum_l c_l / L                                 expected blocks run

``c`` is 1 for non-critical positions and ``shortcut.critical`` for critical ones, so critical positions pay
less for depth and need a closer exit before their router says go. Critical positions (``criticality``): a
latent decision that says the result of a step other steps depend on (or the last one), and, with
``shortcut.critical_answer``, the position that emits the first answer token (off by default: with the step
shortcut at every position it reads the last thought's state, and the discount only kept it deep).
Non-critical: the stop decision, filler latent steps, answer tokens. Without a step DAG every step counts
as critical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rl_latent.config import ConfigError
from rl_latent.model.heads import HEAD_NAME
from rl_latent.model.shortcut_decode import shortcut_step
from rl_latent.model.shortcuts import SHORTCUT_NAME, Shortcuts
from rollouts.replay import replay_inputs
from rollouts.sampler import latent_settings, rollout
from trainers.common import categorical_kl, train_only_head
from trainers.recipe import Recipe, run_recipe_class


def criticality(
    n_latent: int,
    n_answer: int,
    dag: list[list[int]] | None,
    lead: int = 0,
    per_step: int = 1,
    answer: bool = True,
):
    """Critical flags of the ``n_latent + n_answer`` generated positions (inputs z_1..z_n, <eot>, a_0..).

    Position i < n feeds z_{i+1}; its output makes latent decision i+1: the stop when i+1 == n, else the
    result of CoT step (i+1 - lead) / per_step when it is the last of its group. A step is critical when a
    later step reads it or it is the last one (``dag[s]`` lists step s's parents). Position n feeds <eot>
    and emits the first answer token (critical when ``answer``); later answer positions are not.
    """
    if dag is None:
        critical_steps = None
    else:
        children = {p for parents in dag for p in parents}
        critical_steps = {s for s in range(len(dag)) if s in children or s == len(dag) - 1}
    flags = []
    for i in range(n_latent):
        j = i + 1
        k = j - lead
        if j == n_latent or k < 0 or k % per_step != per_step - 1:
            flags.append(False)
        else:
            step = k // per_step
            flags.append(critical_steps is None or step in critical_steps)
    flags += [answer] + [False] * max(0, n_answer - 1)
    return flags


def shortcut_losses(model: Any, traj: Any, cfg: Any, dags: list[Any]) -> dict[str, torch.Tensor]:
    """Every stage-2 term on one batch of teacher rollouts; ``loss`` is their weighted sum."""
    sc_cfg, device = cfg.shortcut, model.device
    sc = model.heads[SHORTCUT_NAME]
    ad, emb, L = model.adapter, model.lm.get_input_embeddings(), model.num_layers
    pad = model.tokenizer.pad_token_id
    settings = latent_settings(model)
    with torch.no_grad():
        # the full path over prompt + generated inputs, right-padded: its state and logits at each input
        x, m, seqs = replay_inputs(model, traj)
        ns = traj.latent_steps.tolist()
        B, T, width = len(seqs), max(s.shape[0] for s in seqs), x.shape[1]
        out = model(inputs_embeds=x, attention_mask=m, output_hidden_states=True)
        idx = torch.tensor(
            [[min(len(p) + t, width - 1) for t in range(T)] for p in traj.prompt_ids], device=device
        )
        rows = torch.arange(B, device=device)[:, None]
        t_hidden, t_logp = (
            out.hidden_states[-1][rows, idx],
            torch.log_softmax(out.logits[rows, idx].float(), -1),
        )
        active = torch.tensor([[t < s.shape[0] for t in range(T)] for s in seqs], device=device)
        latent_in = torch.tensor([[t < n for t in range(T)] for n in ns], device=device)
        crit = torch.tensor(
            [
                (
                    criticality(
                        n,
                        s.shape[0] - n + 1,
                        dag,
                        settings.get("lead_steps", 0),
                        settings.get("steps_per_cot_step", 1),
                        sc_cfg.critical_answer,
                    )
                    + [False] * T
                )[:T]  # fmt: skip
                for n, s, dag in zip(ns, seqs, dags)
            ],
            device=device,
        )
        # the next answer token each position emits (IGNORE-like -1 for latent positions)
        target = torch.full((B, T), -100, dtype=torch.long, device=device)
        for b, n in enumerate(ns):
            a = traj.answer_ids[b, : int(traj.answer_mask[b].sum())].to(device)
            target[b, n : n + a.shape[0]] = a
        # the student's prompt, left-padded, through the frozen model (full depth)
        pids = traj.prompt_ids
        plen = max(len(p) for p in pids)
        ids = torch.tensor([[pad] * (plen - len(p)) + p for p in pids], device=device)
        mask = torch.tensor([[0] * (plen - len(p)) + [1] * len(p) for p in pids], device=device)
        pre = model(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
    cache = pre.past_key_values
    prev = [h[:, -1] for h in pre.hidden_states[:-1]] + [None]
    prev_hidden = pre.hidden_states[-1][:, -1]  # the routers' context: the previous position's final state
    weight = torch.where(crit, sc_cfg.critical, 1.0)
    sums = {k: torch.zeros((), device=device) for k in ("match", "final", "nll", "router", "compute")}
    stats = {"w_mean": 0.0, "layers": 0.0}
    count = active.sum().clamp(min=1)
    n_nll = (target != -100).sum().clamp(min=1)
    for t in range(T):
        a = active[:, t]
        inp = torch.stack([s[t] if t < s.shape[0] else emb.weight[pad] for s in seqs])[:, None]
        mask = torch.cat([mask, a[:, None].long()], dim=1)
        so = shortcut_step(model, inp, mask, cache, prev=prev, latent=latent_in[:, t], context=prev_hidden)
        th, tlp, af = t_hidden[:, t], t_logp[:, t], a.float()
        std = th.std(-1).clamp(min=1e-6)
        for li in so.exits:
            # match trains the adapters alone: p_l depends on the routers only through the exited mass the
            # soft recurrence mixes into the path's block inputs (for deeper blocks' keys and values), so
            # its gradient would tell a router not to exit because deeper exits, which a hard exit never
            # reaches, get worse inputs (docs/decisions.md, session 19)
            e = ad.final_norm(sc.exit_state(li, so.paths[li].detach(), prev[li].detach(), latent_in[:, t]))
            sums["match"] = (
                sums["match"] + ((F.smooth_l1_loss(e, th, reduction="none").mean(-1) / std) * af).sum()
            )
            with torch.no_grad():
                kl = categorical_kl(tlp, torch.log_softmax(ad.lm_head(e).float(), -1))
                scale = sc_cfg.kl_scale * torch.where(crit[:, t], sc_cfg.critical, 1.0)
                goal = torch.exp(-kl.clamp(min=0) / scale).nan_to_num(0.0).clamp(0.0, 1.0)
            w = so.w[li].float().clamp(1e-6, 1 - 1e-6)
            sums["router"] = sums["router"] + (F.binary_cross_entropy(w, goal, reduction="none") * af).sum()
            stats["w_mean"] += float((w.detach() * af).sum()) / (len(so.exits) * float(count))
        lp = torch.log_softmax(so.logits.float(), -1)
        kl_out = categorical_kl(tlp, lp)
        fin = F.smooth_l1_loss(so.hidden, th, reduction="none").mean(-1) / std + kl_out
        sums["final"] = sums["final"] + (fin * af).sum()
        has = target[:, t] != -100
        if bool(has.any()):
            sums["nll"] = sums["nll"] + F.cross_entropy(lp[has], target[has, t], reduction="sum")
        sums["compute"] = sums["compute"] + (so.expected_layers / L * weight[:, t] * af).sum()
        stats["layers"] += float((so.expected_layers.detach() * af).sum()) / float(count)
        prev = so.states  # the next position's step term reads this one's states
        prev_hidden = so.hidden.detach()  # ... and its routers this one's output (a feature, not a path)
    terms = {k: v / (n_nll if k == "nll" else count) for k, v in sums.items()}
    for k in ("match", "router"):
        terms[k] = terms[k] / len(sc.layers)
    terms["loss"] = sum(getattr(sc_cfg, k) * terms[k] for k in ("match", "final", "nll", "router", "compute"))
    terms["expected_layers"] = torch.tensor(stats["layers"])
    terms["router_w"] = torch.tensor(stats["w_mean"])
    return terms


class ShortcutRecipe(Recipe):
    name = "system15"

    def prepare(self) -> str:
        cfg, model = self.cfg, self.model
        if HEAD_NAME not in model.heads:
            raise ConfigError(
                "the shortcut recipe (system15) starts from a latent model: set train.init_from to a CODI "
                "stage's model (codi_soft, codi_hidden, ...)"
            )
        sc_cfg = cfg.shortcut
        layers = sc_cfg.layers or list(range(model.num_layers))
        if SHORTCUT_NAME not in model.heads:
            model.heads[SHORTCUT_NAME] = Shortcuts(
                model.hidden_size, model.num_layers, layers, rank=sc_cfg.rank,
                router_hidden=sc_cfg.router_hidden, step=sc_cfg.step, step_positions=sc_cfg.step_positions,
                router_latent=sc_cfg.router_latent, router_prev=sc_cfg.router_prev,
            ).to(model.device)  # fmt: skip
        n_train = train_only_head(model, SHORTCUT_NAME)
        model.latent_extra["shortcut"] = {"lam": sc_cfg.lam}
        self.rows = list(self.splits["train"])
        return (
            f"{len(self.rows)} train rows, backbone frozen, routers + adapters at layers {layers} "
            f"({n_train / 1e3:.1f}K params), lambda {sc_cfg.lam}"
        )

    def train_step(self) -> dict[str, float]:
        def terms_of(idx: list[int]) -> dict[str, torch.Tensor]:
            rows = [self.rows[i] for i in idx]
            with torch.no_grad():  # the frozen full path's greedy thoughts and answer (lam = 1: no shortcuts)
                traj = rollout(
                    self.model, [r["question"] for r in rows], max_answer_tokens=self.cfg.eval.max_new_tokens,
                    lam=1.0,
                )  # fmt: skip
            return shortcut_losses(self.model, traj, self.cfg, [r.get("dag") for r in rows])

        return self.accumulate(len(self.rows), terms_of)


def run(cfg: Any, progress: bool = True) -> dict[str, Any]:
    return run_recipe_class(ShortcutRecipe, cfg, progress)
