"""Evaluate a model on a data set: greedy accuracy, sampled pass@k, and per-sample compute.

A token-level model generates with its own `generate` (KV cache, left padding); a latent model (one with a
thought head) goes through the latent sampler (`rollouts.sampler.rollout`): greedy thoughts and answer for
accuracy, thoughts drawn from the configured latent policy for pass@k. Answers are parsed GSM8K-style and
compared numerically. Compute is counted per sample from what was actually generated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from rl_latent.compute import generation_compute, summarize
from rl_latent.data.format import prompt_text
from rl_latent.metrics import answers_match, extract_answer, mean_pass_at_k


@dataclass
class EvalResult:
    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.inference_mode()  # as the latent rollout: no autograd bookkeeping, so latencies compare like for like
def generate_answers(
    model: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[list[list[str]], list[list[int]], list[int], float]:
    """Generate `num_samples` continuations per prompt (greedy when num_samples == 1).

    Returns (texts[prompt][sample], generated positions[prompt][sample], prompt lengths, wall seconds).
    A position counts every generated token up to and including the end-of-sequence token.
    """
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    greedy = num_samples == 1
    t0 = time.perf_counter()
    out = model.lm.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
        num_return_sequences=num_samples,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    wall = time.perf_counter() - t0
    prompt_len = enc["input_ids"].shape[1]
    prompt_lens = enc["attention_mask"].sum(dim=1).tolist()  # without the left padding
    gen = out[:, prompt_len:].cpu()
    texts, positions = [], []
    for i in range(len(prompts)):
        row_t, row_p = [], []
        for j in range(num_samples):
            ids = gen[i * num_samples + j].tolist()
            n = len(ids)
            if tok.eos_token_id in ids:
                n = ids.index(tok.eos_token_id) + 1
            row_t.append(tok.decode(ids[:n], skip_special_tokens=True))
            row_p.append(n)
        texts.append(row_t)
        positions.append(row_p)
    return texts, positions, prompt_lens, wall


def evaluate(
    model: Any,
    dataset: Dataset,
    *,
    n_samples: int = 1,
    ks: list[int] | tuple[int, ...] = (1,),
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 96,
    batch_size: int = 256,
    max_problems: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    latent: Any = None,
    probe_k: int = 0,
) -> EvalResult:
    """Greedy accuracy and compute on every problem; with n_samples > 1, also the unbiased pass@k.

    ``latent`` (a `LatentConfig`) picks the latent policy used for pass@k samples of a latent model;
    ``probe_k`` keeps each latent step's top tokens in the records (the CODI probe)."""
    from rollouts.sampler import is_latent

    if is_latent(model):
        return _evaluate_latent(
            model, dataset, n_samples=n_samples, ks=ks, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, batch_size=batch_size, max_problems=max_problems,
            progress=progress, desc=desc, latent=latent, probe_k=probe_k,
        )  # fmt: skip
    model.eval()
    n = len(dataset) if max_problems is None else min(len(dataset), max_problems)
    rows = [dataset[i] for i in range(n)]
    lm_cfg = dict(
        n_layer=model.num_layers,
        n_params_non_embedding=model.n_params(non_embedding=True),
        d_model=model.hidden_size,
    )
    records: list[dict[str, Any]] = []
    computes = []
    correct_counts: list[int] = []
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    for idx in _batches(n, batch_size):
        batch = [rows[i] for i in idx]
        prompts = [prompt_text(r) for r in batch]
        texts, pos, plens, wall = generate_answers(model, prompts, max_new_tokens=max_new_tokens)
        for r, t, p, plen in zip(batch, texts, pos, plens):
            pred = extract_answer(t[0])
            ok = answers_match(pred, r["answer"])
            c = generation_compute(plen, p[0], wall_s=wall / len(batch), **lm_cfg)
            computes.append(c)
            records.append(
                dict(
                    question=r["question"],
                    target=r["answer"],
                    output=t[0],
                    pred=pred,
                    correct=ok,
                    positions=p[0],
                    layer_evals=c.layer_evals,
                    flops=c.flops,
                    num_steps=r.get("num_steps"),
                )
            )
        if n_samples > 1:
            texts, _, _, _ = generate_answers(
                model,
                prompts,
                max_new_tokens=max_new_tokens,
                num_samples=n_samples,
                temperature=temperature,
                top_p=top_p,
            )
            _score_samples(records[-len(batch) :], batch, texts, correct_counts)
        bar.update(len(batch))
    bar.close()
    return _result(records, computes, n_samples, correct_counts, ks)


def _score_samples(recs: list[dict], rows: list[dict], outputs: list[list[str]], counts: list[int]) -> None:
    """Count each problem's correct samples into its record and ``counts`` (the c of pass@k)."""
    for rec, r, outs in zip(recs, rows, outputs):
        rec["samples_correct"] = sum(answers_match(extract_answer(t), r["answer"]) for t in outs)
        counts.append(rec["samples_correct"])


def _result(records, computes, n_samples: int, correct_counts: list[int], ks) -> EvalResult:
    """Accuracy, mean compute and (with samples) the unbiased pass@k over every evaluated problem."""
    n = len(records)
    metrics: dict[str, float] = {"accuracy": sum(r["correct"] for r in records) / max(1, n), "n": float(n)}
    metrics.update(summarize(computes))
    if n_samples > 1:
        metrics.update(mean_pass_at_k([n_samples] * n, correct_counts, list(ks)))
    return EvalResult(metrics=metrics, records=records)


def sampling_policy(model: Any, latent: Any = None):
    """The latent policy for sampled evaluation: ``latent.policy`` when it applies to the model's head, else
    the head's default (soft: gumbel, hidden: gaussian)."""
    from rl_latent.config import LatentConfig
    from rollouts.sampler import HEAD_POLICIES, make_policy, thought_head

    latent = latent or LatentConfig()
    kind = thought_head(model).kind
    name = (
        latent.policy
        if latent.policy in HEAD_POLICIES[kind]
        else {"soft": "gumbel", "hidden": "gaussian"}[kind]
    )
    return make_policy(
        kind, name, tau=latent.tau, concentration=latent.concentration,
        dirichlet_floor=latent.dirichlet_floor, std=latent.std,
    )  # fmt: skip


@torch.no_grad()
def _evaluate_latent(
    model, dataset, *, n_samples, ks, temperature, top_p, max_new_tokens, batch_size, max_problems, progress,
    desc, latent, probe_k,
) -> EvalResult:  # fmt: skip
    from rollouts.sampler import rollout

    n = len(dataset) if max_problems is None else min(len(dataset), max_problems)
    rows = [dataset[i] for i in range(n)]
    records: list[dict[str, Any]] = []
    computes, correct_counts = [], []
    policy = sampling_policy(model, latent) if n_samples > 1 else None
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    for idx in _batches(n, batch_size):
        batch = [rows[i] for i in idx]
        qs = [r["question"] for r in batch]
        traj = rollout(model, qs, max_answer_tokens=max_new_tokens, probe_k=probe_k)
        for i, r in enumerate(batch):
            pred = extract_answer(traj.answers[i])
            c = traj.compute[i]
            computes.append(c)
            rec = dict(
                question=r["question"], target=r["answer"], output=traj.answers[i], pred=pred,
                correct=answers_match(pred, r["answer"]), positions=c.positions, latent_steps=c.latent_steps,
                layer_evals=c.layer_evals, flops=c.flops, num_steps=r.get("num_steps"),
            )  # fmt: skip
            if traj.probe:
                rec["latent_top_tokens"] = traj.probe[i][: c.latent_steps + 1]
            records.append(rec)
        if n_samples > 1:
            many = rollout(
                model, [q for q in qs for _ in range(n_samples)], policy=policy,
                max_answer_tokens=max_new_tokens,
                answer_temperature=temperature, top_p=top_p,
            )  # fmt: skip
            per_row = [many.answers[i * n_samples : (i + 1) * n_samples] for i in range(len(batch))]
            _score_samples(records[-len(batch) :], batch, per_row, correct_counts)
        bar.update(len(batch))
    bar.close()
    return _result(records, computes, n_samples, correct_counts, ks)
