"""Evaluation: left-padded batched generation equals one-at-a-time generation; metrics and compute fields."""

import pytest

from rl_latent.data.arith import ArithSpec, generate_arith
from rl_latent.data.format import prompt_text
from rl_latent.data.tokenizer import build_tokenizer
from rl_latent.evaluate import evaluate, generate_answers
from rl_latent.model import LatentReasoner


def _model(arch: str) -> LatentReasoner:
    return LatentReasoner.from_config(
        arch, build_tokenizer(max_number=40), n_layer=2, n_embd=32, n_head=2, seed=1
    )


def test_batched_generation_matches_single_generation():
    rows = generate_arith(6, seed=4, spec=ArithSpec(num_steps=4, min_steps=1, max_value=40))
    prompts = [prompt_text(r) for r in rows]
    assert len({len(p.split()) for p in prompts}) > 1  # prompts of different lengths: real left padding
    for arch in ("gpt2", "llama"):
        model = _model(arch).eval()
        batched, pos_b, lens_b, _ = generate_answers(model, prompts, max_new_tokens=12)
        for i, p in enumerate(prompts):
            single, pos_s, lens_s, _ = generate_answers(model, [p], max_new_tokens=12)
            assert single[0] == batched[i], (arch, i)
            assert pos_s[0] == pos_b[i] and lens_s[0] == lens_b[i]


def test_evaluate_reports_accuracy_pass_at_k_and_compute():
    rows = generate_arith(5, seed=2, spec=ArithSpec(num_steps=2, max_value=40))
    model = _model("gpt2")
    res = evaluate(model, rows, n_samples=3, ks=[1, 3], max_new_tokens=10, progress=False)
    m = res.metrics
    assert {"accuracy", "pass@1", "pass@3", "positions", "layer_evals", "flops", "wall_ms"} <= set(m)
    assert 1 <= m["positions"] <= 10 and m["layer_evals"] == m["positions"] * model.num_layers
    assert m["pass@3"] >= m["pass@1"] and len(res.records) == 5
    assert all(r["samples_correct"] in range(4) for r in res.records)


def test_latent_models_are_evaluated_through_the_sampler_with_the_probe():
    from rl_latent.config import LatentConfig
    from tests.rollouts.latent_fixtures import make_latent_model

    rows = generate_arith(6, seed=3, spec=ArithSpec(num_steps=3, min_steps=1, max_value=30))
    model = make_latent_model("soft")
    latent = LatentConfig(policy="gumbel", tau=0.5)
    res = evaluate(
        model, rows, n_samples=4, ks=[1, 4], max_new_tokens=4, progress=False, latent=latent, probe_k=3
    )
    m = res.metrics
    assert {"accuracy", "pass@1", "pass@4", "latent_steps", "positions"} <= set(m)
    assert 0 <= m["latent_steps"] <= 5 and m["positions"] >= m["latent_steps"] + 2
    for rec in res.records:
        assert rec["positions"] > rec["latent_steps"]  # + <eot> + answer tokens
        assert (
            len(rec["latent_top_tokens"]) == min(rec["latent_steps"] + 1, 5 + 1) or rec["latent_steps"] == 5
        )
        assert all(len(top) == 3 and 0 <= top[0][1] <= 1 for top in rec["latent_top_tokens"])
        assert rec["num_steps"] in (1, 2, 3)


def test_eval_cli_reads_any_split_of_a_generated_task_and_names_a_bad_one(tiny_latent_dirs, tmp_path, capsys):
    import json

    from rl_latent.cli import main

    args = ["eval", tiny_latent_dirs["soft"], "--task-seed", "7", "--max-problems", "5", "--wandb", "none"]
    main([*args, "--split", "train", "--out", str(tmp_path / "train"), "--show", "0"])
    assert "arith-d2-train (5 problems" in capsys.readouterr().out  # fresh problems from another task seed
    res = json.loads((tmp_path / "train" / "results.json").read_text())
    assert res["data"].endswith("-train") and 0.0 <= res["accuracy"] <= 1.0
    with pytest.raises(SystemExit, match="--split 'dev': the task has splits"):
        main([*args, "--split", "dev", "--out", str(tmp_path / "dev")])
