"""bench/shortcuts.py runs end to end (a few steps per method) and prints the JSON object of the issue."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {
    "accuracy",
    "positions",
    "layer_evals",
    "flops",
    "latency_b1_ms",
    "samples_per_s_b64",
    "train_seconds",
}


def test_shortcuts_bench_prints_one_json_object_and_a_plot(tmp_path):
    cmd = [
        sys.executable, str(REPO / "bench/shortcuts.py"), "--task-seed", "3", "--difficulty", "1",
        "--steps", "cot_sft=2,codi=2,system15=2", "--lams", "0.2,1.0", "--latency-problems", "2",
        "--latency-rounds", "2",
        "--rl-budget-s", "3",
        "--out", str(tmp_path / "bench"), "data.n_train=64", "data.n_valid=4", "data.n_test=8",
        "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "train.batch_size=8",
        "eval.max_new_tokens=24", "train.eval_every=0", "rl.prompts_per_step=2", "rl.group_size=2",
        "rl.workers=1", "rl.eval_problems=2", "rl.eval_n=8", "rl.minibatches=1",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    for method in ("cot_sft", "codi", "system15@0.2", "system15@1"):
        assert KEYS <= set(res[method]), method
        assert res[method]["steps"] == 2 and 0.0 <= res[method]["accuracy"] <= 1.0
    # lambda 1 never exits: the System-1.5 model is the frozen CODI model, exactly
    for key in ("accuracy", "positions", "layer_evals", "flops"):
        assert res["system15@1"][key] == res["codi"][key], key
    assert res["system15@0.2"]["layer_evals"] <= res["codi"]["layer_evals"]
    # the positions kept deep (the prompt's last, the critical ones) bound the saving exits elsewhere can give
    bound = res["codi_depth_bound"]
    assert bound["positions"] == pytest.approx(res["codi"]["positions"], abs=1e-3)
    assert 1.0 <= bound["deep_positions"] <= bound["positions"]
    saving = 1 - bound["deep_positions"] / bound["positions"]
    assert bound["max_saving_without_deep_exits"] == pytest.approx(saving, abs=1e-3)
    assert res["targets"]["max_saving_without_deep_exits"] == bound["max_saving_without_deep_exits"]
    # static depths: every generated position runs l blocks (the prompt's last position runs all 2)
    for li in (0, 1):
        r = res[f"system15_depth@{li}"]
        assert r["layer_evals"] == pytest.approx(2 + (r["positions"] - 1) * li, abs=0.01), li
    assert res["task"]["nl_cot"] is True and res["task"]["seed"] == 3
    best = res["targets"]["best"]
    if best:  # the latency target reads CoT-SFT and that setting timed in alternation
        alt = res["latency_alternated"]
        assert alt["setting"] == best and set(alt["latency_b1_ms"]) == {"cot_sft", best}
        assert all(len(v["runs"]) == 2 for v in alt["latency_b1_ms"].values())
        med = {k: v["median"] for k, v in alt["latency_b1_ms"].items()}
        assert alt["speedup"] == pytest.approx(med["cot_sft"] / med[best], abs=0.01)
        assert res["targets"]["latency_b1_speedup_vs_cot_sft"] == alt["speedup"]
        alone = res["cot_sft"]["latency_b1_ms"] / res[best]["latency_b1_ms"]
        assert res["targets"]["latency_b1_speedup_timed_alone"] == pytest.approx(alone, abs=0.01)
    for lam in ("0.2", "1"):  # GRPO with learned exits ran, then the same measurements
        assert KEYS <= set(res[f"system15_rl@{lam}"]) and res[f"system15_rl@{lam}"]["steps"] >= 1
    # RL learned the exits only: with none taken (lambda 1) it decodes exactly as the model it started from
    for key in ("accuracy", "positions", "layer_evals"):
        assert res["system15_rl@1"][key] == res["system15@1"][key], key
    assert set(res["targets"]["rl"]["vs_system15"]) == {"system15@0.2"}  # lambda 1 is no shortcut
    assert (tmp_path / "bench" / "accuracy_vs_compute.png").stat().st_size > 1000
    # bench/latency.py times the same three models in alternation, on the same task
    cmd = [
        sys.executable, str(REPO / "bench/latency.py"), "--run", str(tmp_path / "bench"), "--lam", "0.2",
        "--problems", "2", "--repeats", "3", "data.seed=3", "data.difficulty=1", "data.n_test=8",
        "eval.max_new_tokens=24",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lat = json.loads(out.stdout)
    med = {k: v["median"] for k, v in lat["latency_b1_ms"].items()}
    assert set(med) == {"cot_sft", "codi", "system15"} and lat["lam"] == 0.2
    assert all(len(v["runs"]) == 3 and min(v["runs"]) <= v["median"] <= max(v["runs"])
               for v in lat["latency_b1_ms"].values())  # fmt: skip
    for k in ("cot_sft", "codi"):
        assert lat["over_system15"][k] == pytest.approx(med[k] / med["system15"], abs=0.01)
    # bench/latency_ab.py times one model under two checkouts in turn (here the same one twice)
    cmd = [
        sys.executable, str(REPO / "bench/latency_ab.py"), "--b", str(REPO), "--run", str(tmp_path / "bench"),
        "--lam", "0.2", "--problems", "2", "--rounds", "3", "data.seed=3", "data.difficulty=1",
        "data.n_test=8", "eval.max_new_tokens=24",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ab = json.loads(out.stdout)
    assert len(ab["a"]["ms"]) == len(ab["b"]["ms"]) == 3 and ab["b_over_a"] > 0
    for key in ("accuracy", "layer_evals"):  # the same code decodes alike on both sides
        assert ab["a"][key] == ab["b"][key], key


def test_rl_target_ignores_a_dominated_lambda():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_shortcuts", REPO / "bench" / "shortcuts.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pt = lambda acc, evals: {"accuracy": acc, "layer_evals": evals}  # noqa: E731
    results = {
        "system15@0.5": pt(0.876, 23.8),
        "system15@0.7": pt(0.862, 24.6),  # beaten by lambda 0.5 on both counts
        "system15@1": pt(1.0, 35.7),
        "system15_rl@0.3": pt(0.880, 24.1),
    }
    out = bench.rl_targets(results)
    per = out["vs_system15"]
    assert per["system15@0.7"]["dominated_by"] == "system15@0.5"
    assert per["system15@0.7"]["layer_evals_saving"] == pytest.approx(1 - 24.1 / 24.6, abs=1e-4)
    assert "dominated_by" not in per["system15@0.5"] and "system15@1" not in per
    # RL saves only against the dominated point: not met
    assert out["best"] == "system15@0.5" and out["met"]["fewer_layer_evals_within_1pt"] is False
    results["system15_rl@0.2"] = pt(0.870, 23.0)  # within a point of lambda 0.5, with fewer evaluations
    out = bench.rl_targets(results)
    assert out["best"] == "system15@0.5" and out["met"]["fewer_layer_evals_within_1pt"] is True
