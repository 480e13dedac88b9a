"""A tiny latent model with a thought head, its eot/eos rows nudged so that random weights still stop at
varied lengths (a fresh model never says <eot> otherwise, and every rollout would hit the cap)."""

import torch

from rl_latent.data.tokenizer import build_tokenizer
from rl_latent.model import LatentReasoner
from rl_latent.model.heads import HEAD_NAME, build_head


def make_latent_model(
    head: str = "soft", arch: str = "llama", seed: int = 0, fixed_steps: int = 0, residual: bool = False
):
    tok = build_tokenizer(max_number=30)
    model = LatentReasoner.from_config(
        arch, tok, n_layer=2, n_embd=32, n_head=2, max_positions=128, seed=seed
    )
    model.heads[HEAD_NAME] = build_head(head, model.hidden_size, k=6, residual=residual)
    if residual:  # a trained residual channel is not zero
        torch.nn.init.normal_(model.heads[HEAD_NAME].res[2].weight, std=0.01)
    model.latent_extra["latent"] = {"head": head, "fixed_steps": fixed_steps, "max_steps": 5}
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        out = model.lm.get_output_embeddings().weight
        for tid in (model.eot_id, model.tokenizer.eos_token_id):
            out[tid] = torch.randn(out.shape[1], generator=g) * 0.4
        # a broad LM-head distribution, so eot is often in the top-k and sometimes first
        out.mul_(3.0)
    return model.eval()


QUESTIONS = [
    "a = 3 , b = a + 4 . what is b ?",
    "x = 7 , y = x - 2 , z = y + 5 . what is z ?",
    "k = 1 . what is k ?",
    "p = 9 , q = p - 8 , r = q + 6 , s = r - 1 , t = s + 2 . what is t ?",
]
