"""bench/depth_probe.py: the logit-lens exits and single-block skips of a causal LM on CoT text, checked on a
model whose last block is made the identity (so leaving it out, or exiting before it, changes nothing)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from rl_latent.config import load_config
from rl_latent.data.build import load_splits
from tests.rollouts.latent_fixtures import make_latent_model

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("depth_probe", REPO / "bench" / "depth_probe.py")
depth_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(depth_probe)


def _rows(n: int = 6) -> list[dict]:
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["data.nl_cot=true", "data.n_train=8"])
    return list(load_splits(cfg.data)["test"].select(range(n)))


def test_identity_block_is_free_to_skip_or_exit_before():
    model = make_latent_model("soft")  # 2 Llama blocks
    last = model.adapter.layers[1]
    with torch.no_grad():  # the block adds attn + MLP outputs to the residual: zero both projections out
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    res = depth_probe.probe(model, _rows(), max_len=64)
    assert res["n_layer"] == 2 and res["tokens_scored"] > 0
    assert [e["blocks"] for e in res["exit"]] == [1] and [s["block"] for s in res["skip"]] == [0, 1]
    # exiting after block 0 is the full model: block 1 adds nothing before the final norm
    assert res["exit"][0]["agree"] == 1.0 and abs(res["exit"][0]["ce"] - res["ce_full"]) < 1e-3
    assert res["skip"][1]["agree"] == 1.0 and abs(res["skip"][1]["ce"] - res["ce_full"]) < 1e-3
    # block 0 does work: leaving it out changes the model (and the blocks are put back afterwards)
    assert res["skip"][0]["ce"] != res["ce_full"]
    assert len(model.adapter.layers) == 2
    again = depth_probe.probe(model, _rows(), max_len=64, skip=False)
    assert again["ce_full"] == res["ce_full"] and again["skip"] == []


def test_entry_point_prints_json(tiny_latent_dirs):
    cmd = [sys.executable, str(REPO / "bench/depth_probe.py"), "--model", tiny_latent_dirs["soft"],
           "--problems", "3", "--max-len", "48"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["problems"] == 3 and res["n_layer"] == 2 and len(res["skip"]) == 2
    assert all(0.0 <= e["agree"] <= 1.0 for e in res["exit"] + res["skip"])


def test_decode_skips_an_identity_block_for_free():
    from datasets import Dataset

    model = make_latent_model("soft")
    with torch.no_grad():
        model.adapter.layers[1].self_attn.o_proj.weight.zero_()
        model.adapter.layers[1].mlp.down_proj.weight.zero_()
    rows = _rows(8)
    data = Dataset.from_list(rows)
    res = depth_probe.decode_skips(model, data, problems=8, max_new_tokens=8)
    assert [s["block"] for s in res["skip"]] == [0, 1]
    assert res["skip"][1]["accuracy"] == res["accuracy"] and res["skip"][1]["same_output"] == 1.0
    assert 0.0 <= res["skip"][0]["same_output"] <= 1.0
    # the patch is undone: the model decodes as before
    assert depth_probe.decode_skips(model, data, 8, 8)["accuracy"] == res["accuracy"]
    assert "forward" not in vars(model.adapter.layers[0])
