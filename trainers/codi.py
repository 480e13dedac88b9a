"""CODI: self-distil chain-of-thought into continuous thoughts (Shen et al., EMNLP 2025), and its step-aligned
soft variant. One model plays teacher and student in every batch:

    teacher:  question <<step 1>> .. <<step n-1>> The answer is: N <eos>   CE on all after the question
    student:  question <bot> z_1 .. z_K <eot> N <eos>                       CE after <eot>
    KD:       at the token that emits the first answer token (found by tokenizing: ":" for GPT-2, the lone " "
              for Llama-3/Qwen tokenizers, <eot> for our student text), every layer's hidden state of the
              student matches the teacher's (stop-gradient) under smooth-L1 / the teacher's per-layer std
    loss  =   student_CE + beta KD + gamma teacher_CE + stop_weight stop + align align_CE
              + exit_weight exit   (LayerSkip's early-exit loss toward the last layer, ``exit_loss``)

``z_{t+1}`` comes from the thought head on the output at the previous position (``<bot>`` for z_1): hidden
``P(h)`` or soft ``sum_i p_i E[S_i]`` over the LM head's top-k, and gradients flow through every step (the
latent steps run one position at a time on a KV cache). Adaptive length: the LM head at decision j (outputs
at ``<bot>``, z_1, ..) is trained to say ``<eot>`` exactly at j = K = steps_per_cot_step x (CoT steps), a
binary cross-entropy on p(<eot>) (``stop``); ``latent.pad_steps`` = N adds 0..N thoughts (uniform, fixed per
row) repeating the final result: a model that overthinks, so a compute reward has thoughts to cut.
Step-aligned (``align > 0``, soft head): the last decision of each group of steps_per_cot_step is trained
with cross-entropy against that CoT step's result, so a soft thought is a distribution over candidate
intermediate values; the gold result's embedding is fed at first and mixed linearly into the soft thought
over ``gold_anneal_steps``. Left-padded batches get mask-derived positions, and negative answers are kept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rl_latent.config import Config, ConfigError
from rl_latent.data.format import ANSWER_PREFIX, cot_text, prompt_text
from rl_latent.model.heads import HEAD_NAME, build_head
from rollouts.sampler import left_pad
from trainers.common import IGNORE, categorical_kl, collate
from trainers.recipe import Recipe, run_recipe_class


# ------------------------------------------------------------------------------------------------- encoding
def answer_emit_index(tokenizer: Any, text: str, answer: str) -> tuple[list[int], int]:
    """Token ids of ``text`` (which ends with ``answer``) and the index of the token that *emits* the first
    answer token, i.e. the one just before the first token overlapping the answer's characters. -1 means the
    answer starts at the first token (the emitting token is whatever precedes ``text``)."""
    start = text.rstrip().rfind(answer.strip())
    if start < 0:
        raise ValueError(f"answer {answer!r} not found at the end of {text!r}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for i, (_, end) in enumerate(enc["offset_mapping"]):
        if end > start:
            return list(enc["input_ids"]), i - 1
    raise ValueError(f"no token of {text!r} covers the answer {answer!r}")


@dataclass
class CodiRow:
    teacher_ids: list[int]
    teacher_labels: list[int]
    t_emit: int  # teacher position whose output is the first answer token
    prompt_ids: list[int]  # question + <bot>
    k: int  # target number of latent steps
    results: list[int]  # token of each step's result (decision j's align target), [] when unused
    suffix_ids: list[int]  # <eot> + answer + <eos>
    s_emit: int  # index in the suffix whose output is the first answer token


def encode_codi(rows: Any, model: Any, cfg: Config) -> tuple[list[CodiRow], int]:
    """Every training row as teacher and student sequences; rows longer than ``data.max_len`` are dropped."""
    tok, lc, cc = model.tokenizer, cfg.latent, cfg.codi
    out, dropped = [], 0
    rng = random.Random(cfg.train.seed)  # latent.pad_steps: each row's own number of wasted thoughts
    for r in rows:
        answer = r["answer"].strip()  # a negative answer ("-3") is kept: the sign is part of the answer text
        steps = list(r["steps"])
        if cc.teacher_drop_last and len(steps) > 1:
            steps = steps[:-1]
        q_ids = tok(prompt_text(r), add_special_tokens=False)["input_ids"]
        cot = cot_text({"steps": steps})
        t_text = f" {cot} {ANSWER_PREFIX} {answer}" if cot else f" {ANSWER_PREFIX} {answer}"
        t_ids, t_idx = answer_emit_index(tok, t_text, answer)
        s_text = f" {ANSWER_PREFIX} {answer}" if lc.answer_prefix else f" {answer}"
        s_ids, s_idx = answer_emit_index(tok, s_text, answer)
        n_steps = int(r.get("num_steps") or len(r["steps"]))
        pad = rng.randint(0, lc.pad_steps) if lc.pad_steps and lc.fixed_steps == 0 else 0
        adaptive_k = lc.lead_steps + n_steps * lc.steps_per_cot_step + pad
        k = lc.fixed_steps if lc.fixed_steps > 0 else min(lc.max_steps, max(1, adaptive_k))
        results = []
        if cc.align > 0:
            # lead steps are free; then, with m latent steps per CoT step, the last of each group of m says
            # that step's result (fixed-K mode: thought j says step j+1's result)
            m = 1 if lc.fixed_steps > 0 else lc.steps_per_cot_step
            results = [IGNORE] * (0 if lc.fixed_steps > 0 else lc.lead_steps)
            for v in r["step_results"]:
                results += [IGNORE] * (m - 1) + [tok(f" {v}", add_special_tokens=False)["input_ids"][0]]
            results = (results + results[-1:] * pad)[:k]  # padding thoughts say the final result again
        teacher = q_ids + t_ids + [tok.eos_token_id]
        if len(teacher) > cfg.data.max_len:
            dropped += 1
            continue
        out.append(
            CodiRow(
                teacher_ids=teacher,
                teacher_labels=[IGNORE] * len(q_ids) + t_ids + [tok.eos_token_id],
                t_emit=len(q_ids) + t_idx,
                prompt_ids=q_ids + [model.bot_id],
                k=k,
                results=results,
                suffix_ids=[model.eot_id] + s_ids + [tok.eos_token_id],
                s_emit=1 + s_idx,
            )
        )
    return out, dropped


# ---------------------------------------------------------------------------------------------------- losses
def kd_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """CODI's distillation: mean over layers l of SmoothL1(s_l, sg(t_l)) / std(t_l), on [B, d] states at the
    answer-emitting token (Shen et al. 2025, eq. 3 and the official code's per-layer std normalisation)."""
    terms = [
        F.smooth_l1_loss(s, t.detach()) / t.detach().std().clamp(min=1e-6) for s, t in zip(student, teacher)
    ]
    return torch.stack(terms).mean()


def stop_loss(dec_logits: torch.Tensor, k: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Binary cross-entropy of ``p(<eot>)`` at decisions j = 0..k (target 1 at j = k, 0 before); [B, J, V]."""
    log_p = torch.log_softmax(dec_logits.float(), -1)[..., eot_id]
    j = torch.arange(dec_logits.shape[1], device=k.device)[None]
    stop, valid = (j == k[:, None]).float(), (j <= k[:, None]).float()
    log_not = torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))
    nll = -(stop * log_p + (1 - stop) * log_not)
    return (nll * valid).sum() / valid.sum()


def exit_loss(
    states: torch.Tensor, final_logits: torch.Tensor, valid: torch.Tensor, norm: Any, head: Any
) -> torch.Tensor:
    """LayerSkip's early-exit loss (Elhoushi et al., 2024) with the model's own last layer as the target:

        sum_l e_l KL(sg(p_L) || p_l) / sum_l e_l,   p_l = softmax(head(norm(h_l))),  e_l = l  (l = 1..L-1)

    averaged over the ``valid`` positions. ``states`` [N, L-1, d] is the stack's state after l = 1..L-1
    blocks (the input a System-1.5 exit at layer l reads); ``final_logits`` [N, V] come from all L. It
    teaches the stack to say early what it says at the top, so System-1.5's exits (stage 2,
    trainers/shortcut.py) have a layer worth leaving at; the last layer's distribution is detached: it is the
    target, never pulled toward the layers below."""
    target = torch.log_softmax(final_logits.detach().float(), -1)[:, None]  # [N, 1, V]
    logp = torch.log_softmax(head(norm(states)).float(), -1)  # [N, L-1, V]
    kl = categorical_kl(target, logp)  # [N, L-1]
    e = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=kl.dtype)
    per_pos = (kl * e).sum(-1) / e.sum()
    w = valid.to(kl.dtype)
    return (per_pos * w).sum() / w.sum().clamp(min=1)


def student_forward(
    model: Any, rows: list[CodiRow], gold_mix: float, want_hidden: bool, want_layers: bool = False
) -> dict[str, Any]:
    """The student's pass: prompt, then K_max latent steps one position at a time (rows past their K feed a
    masked pad), then ``<eot> answer <eos>`` teacher-forced. Returns the suffix output, the decision logits
    [B, K_max + 1, V] and per-row K; ``want_layers``: also ``layer_states``, every block's output below the
    last at each latent step [B, K_max, L - 1, d] (the early-exit loss reads them)."""
    head = model.heads[HEAD_NAME]
    emb = model.lm.get_input_embeddings()
    pad = model.tokenizer.pad_token_id
    device = model.device
    ids, mask = (t.to(device) for t in left_pad([r.prompt_ids for r in rows], pad))
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
    cache, dec = out.past_key_values, [out.logits[:, -1]]
    h = out.hidden_states[-1][:, -1]
    k = torch.tensor([r.k for r in rows], device=device)
    layer_states = []
    for t in range(int(k.max())):
        logits = dec[-1]
        if head.kind == "soft":
            ids_t, sub = head.support(logits)
            z = head.embed(torch.log_softmax(sub, -1), ids_t, emb)  # vanilla soft: y = p
        else:
            z = head.mean(h)
        if gold_mix > 0 and rows[0].results:
            tgt = [r.results[t] if t < len(r.results) else IGNORE for r in rows]
            gold = torch.tensor([pad if g == IGNORE else g for g in tgt], device=device)
            has = torch.tensor([g != IGNORE for g in tgt], device=device)[:, None]
            z = torch.where(has, gold_mix * emb(gold) + (1 - gold_mix) * z, z)
        if head.kind == "soft" and head.residual:
            z = z + head.residual_of(h)
        active = k > t
        z = torch.where(active[:, None], z, emb.weight[pad].expand_as(z))
        mask = torch.cat([mask, active[:, None].long()], dim=1)
        out = model(
            inputs_embeds=z[:, None].to(emb.weight.dtype), attention_mask=mask, past_key_values=cache,
            use_cache=True, output_hidden_states=True,
        )  # fmt: skip
        cache, h = out.past_key_values, out.hidden_states[-1][:, -1]
        dec.append(out.logits[:, -1])
        if want_layers:
            layer_states.append(torch.stack([hs[:, -1] for hs in out.hidden_states[1:-1]], 1))
    n = max(len(r.suffix_ids) for r in rows)
    suffix = torch.tensor([r.suffix_ids + [pad] * (n - len(r.suffix_ids)) for r in rows], device=device)
    smask = torch.tensor(
        [[1] * len(r.suffix_ids) + [0] * (n - len(r.suffix_ids)) for r in rows], device=device
    )
    out = model(
        input_ids=suffix, attention_mask=torch.cat([mask, smask], 1), past_key_values=cache,
        output_hidden_states=want_hidden,
    )  # fmt: skip
    res = {"out": out, "suffix": suffix, "smask": smask, "dec_logits": torch.stack(dec, 1), "k": k}
    if want_layers and layer_states:
        res["layer_states"] = torch.stack(layer_states, 1)
    return res


def codi_losses(model: Any, rows: list[CodiRow], cfg: Config, gold_mix: float) -> dict[str, torch.Tensor]:
    """Every term of the CODI objective on one micro-batch; ``loss`` is their weighted sum."""
    cc, device = cfg.codi, model.device
    pad = model.tokenizer.pad_token_id
    b = torch.arange(len(rows), device=device)
    terms: dict[str, torch.Tensor] = {}
    exits = cc.exit_weight > 0
    st = student_forward(model, rows, gold_mix, want_hidden=cc.beta > 0 or exits, want_layers=exits)
    labels = st["suffix"][:, 1:].masked_fill(st["smask"][:, 1:] == 0, IGNORE)
    s_logits = st["out"].logits[:, :-1].float()
    terms["student_ce"] = F.cross_entropy(s_logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    loss = terms["student_ce"]
    if cc.beta > 0 or cc.gamma > 0:
        tb = collate([r.teacher_ids for r in rows], [r.teacher_labels for r in rows], pad)
        tb = {key: v.to(device) for key, v in tb.items()}
        with torch.set_grad_enabled(cc.gamma > 0 and torch.is_grad_enabled()):
            t_out = model(
                input_ids=tb["input_ids"],
                attention_mask=tb["attention_mask"],
                output_hidden_states=cc.beta > 0,
            )
        t_logits = t_out.logits[:, :-1].float()
        terms["teacher_ce"] = F.cross_entropy(
            t_logits.flatten(0, 1), tb["labels"][:, 1:].flatten(), ignore_index=IGNORE
        )
        loss = loss + cc.gamma * terms["teacher_ce"]
        if cc.beta > 0:
            t_pos = torch.tensor([r.t_emit for r in rows], device=device)
            s_pos = torch.tensor([r.s_emit for r in rows], device=device)
            teacher = [hs[b, t_pos] for hs in t_out.hidden_states[1:]]
            student = [hs[b, s_pos] for hs in st["out"].hidden_states[1:]]
            terms["kd"] = kd_loss(student, teacher)
            loss = loss + cc.beta * terms["kd"]
    if cfg.latent.fixed_steps == 0 and cc.stop_weight > 0:
        terms["stop"] = stop_loss(st["dec_logits"], st["k"], model.eot_id)
        loss = loss + cc.stop_weight * terms["stop"]
    if exits:
        # every generated position: latent decisions 1..K (the outputs of z_1..z_K) and the answer tokens
        hs = st["out"].hidden_states
        states = [torch.stack([h[:, :-1] for h in hs[1:-1]], 2).flatten(0, 1)]
        finals, valid = [st["out"].logits[:, :-1].flatten(0, 1)], [st["smask"][:, 1:].bool().flatten()]
        if "layer_states" in st:
            K = st["layer_states"].shape[1]
            states.append(st["layer_states"].flatten(0, 1))
            finals.append(st["dec_logits"][:, 1 : K + 1].flatten(0, 1))
            valid.append((torch.arange(K, device=device)[None] < st["k"][:, None]).flatten())
        terms["exit"] = exit_loss(
            torch.cat(states),
            torch.cat(finals),
            torch.cat(valid),
            model.adapter.final_norm,
            model.adapter.lm_head,
        )
        loss = loss + cc.exit_weight * terms["exit"]
    if cc.align > 0 and rows[0].results:
        J = st["dec_logits"].shape[1]
        target = torch.tensor(
            [(r.results + [IGNORE] * J)[:J] for r in rows], device=device
        )  # decision j -> result of step j+1
        terms["align"] = F.cross_entropy(
            st["dec_logits"].float().flatten(0, 1), target.flatten(), ignore_index=IGNORE
        )
        loss = loss + cc.align * terms["align"]
    terms["loss"] = loss
    return terms


# ---------------------------------------------------------------------------------------------------- recipe
def _apply_lora(model: Any, r: int, alpha: int) -> None:
    """LoRA adapters on every linear layer of the LM (peft); <bot>/<eot> embeddings stay trainable, heads are
    trained fully. ``LatentReasoner.save_pretrained`` merges the adapters into the exported weights."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules="all-linear",
        trainable_token_indices=[model.bot_id, model.eot_id],
    )
    model.lm = get_peft_model(model.lm, lora)


class CodiRecipe(Recipe):
    name = "codi"

    def prepare(self) -> str:
        cfg, lc, model = self.cfg, self.cfg.latent, self.model
        if HEAD_NAME in model.heads and model.heads[HEAD_NAME].kind != lc.head:
            raise ConfigError(
                f"train.init_from has a {model.heads[HEAD_NAME].kind} thought head but latent.head={lc.head}"
            )
        if HEAD_NAME not in model.heads:
            head = build_head(
                lc.head, model.hidden_size, k=lc.support_k, temperature=lc.temperature, project=lc.project,
                residual=lc.residual,
            )  # fmt: skip
            model.heads[HEAD_NAME] = head.to(model.device)
        model.latent_extra["latent"] = {
            "head": lc.head,
            "fixed_steps": lc.fixed_steps,
            "max_steps": lc.max_steps,
            "steps_per_cot_step": lc.steps_per_cot_step,
            "lead_steps": lc.lead_steps,
            "answer_prefix": lc.answer_prefix,
        }
        if cfg.codi.lora_r > 0:
            _apply_lora(model, cfg.codi.lora_r, cfg.codi.lora_alpha)
        self.rows, dropped = encode_codi(self.splits["train"], model, cfg)
        if not self.rows:
            raise ValueError(f"no training row fits data.max_len={cfg.data.max_len}")
        self.name = f"codi[{lc.head}{', aligned' if cfg.codi.align > 0 else ''}]"
        mode = f"K={lc.fixed_steps}" if lc.fixed_steps else f"adaptive K<={lc.max_steps}"
        return f"{len(self.rows)} train rows ({dropped} over max_len), {lc.head} head, {mode}"

    def gold_mix(self) -> float:
        n = self.cfg.codi.gold_anneal_steps
        return max(0.0, 1.0 - self.step / n) if n > 0 and self.cfg.codi.align > 0 else 0.0

    def train_step(self) -> dict[str, float]:
        mix = self.gold_mix()
        terms = self.accumulate(
            len(self.rows), lambda idx: codi_losses(self.model, [self.rows[i] for i in idx], self.cfg, mix)
        )
        return {**terms, "gold_mix": mix}


def run(cfg: Config, progress: bool = True) -> dict[str, Any]:
    return run_recipe_class(CodiRecipe, cfg, progress)
