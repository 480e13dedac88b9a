"""The reward interface: samples_of, registry and loading (name, dotted path, entry point), RewardSpec and
score (weights, components, and an error naming the reward and the sample for each way a reward fails)."""

import math
import sys

import numpy as np
import pytest
import torch

import rewards.base as base
from rewards import RewardError, RewardSpec, Sample, load_reward, register, samples_of, score
from rewards.answer import correct
from rewards.base import Scored
from rl_latent.compute import SampleCompute
from rollouts.trajectory import Trajectory


def _sc(steps: int = 0) -> SampleCompute:
    return SampleCompute(positions=steps + 2, latent_steps=steps, layer_evals=4 * steps, flops=1.0, wall_s=0)


QUESTIONS = ["q0", "q1", "Tom has 3 apples and buys 4 more. How many apples does Tom have?", "q3"]
SAMPLES = [Sample(q, f"The answer is {i}", str(i), i, _sc(i), {"i": i}) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """A private copy of the registry per test, so that test rewards never leak."""
    reg = dict(base.REGISTRY)
    monkeypatch.setattr(base, "REGISTRY", reg)
    return reg


def _traj(metadata):
    B, J = 2, 1
    return Trajectory(
        prompt_ids=[[1, 2], [3]],
        questions=["a?", "b?"],
        targets=["1", ""],
        support_ids=torch.zeros(B, J, 0, dtype=torch.long),
        actions=torch.zeros(B, J, 4),
        latent_residual=None,
        latent_logp=torch.zeros(B, J),
        action_mask=torch.ones(B, J, dtype=torch.bool),
        stop_logp=torch.zeros(B, J),
        stop_mask=torch.ones(B, J, dtype=torch.bool),
        latent_steps=torch.tensor([1, 0]),
        answer_ids=torch.zeros(B, 2, dtype=torch.long),
        answer_logp=torch.zeros(B, 2),
        answer_mask=torch.ones(B, 2, dtype=torch.bool),
        answers=["The answer is 1", "no"],
        head="hidden",
        policy="gaussian",
        answer_temperature=1.0,
        compute=[_sc(1), _sc(0)],
        metadata=metadata,
    )


def test_samples_of_a_trajectory():
    s = samples_of(_traj([]))
    assert s[0] == Sample("a?", "The answer is 1", "1", 1, _sc(1), {})
    assert s[1].metadata == {} and s[1].latent_steps == 0 and type(s[1].latent_steps) is int
    assert [x.metadata for x in samples_of(_traj([{"k": 1}, {"k": 2}]))] == [{"k": 1}, {"k": 2}]
    assert correct(s) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"2 questions but \{'metadata': 1\}"):
        samples_of(_traj([{"k": 1}]))


def test_register_and_duplicates(registry):
    @register("double_steps")
    def double_steps(samples):
        return [2.0 * s.latent_steps for s in samples]

    assert load_reward("double_steps") is double_steps and registry["double_steps"] is double_steps
    with pytest.raises(ValueError, match="'double_steps' is already registered"):
        register("double_steps")(lambda samples: [])
    with pytest.raises(ValueError, match="'correct' is already registered"):
        register("correct")(lambda samples: [])


def _write(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_load_by_dotted_path(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, "rw_dotted", "def fn(samples):\n    return [7.0] * len(samples)\n")
    fn = load_reward("rw_dotted:fn")
    assert fn(SAMPLES[:2]) == [7.0, 7.0]
    assert load_reward("rw_dotted.fn") is fn
    out = score(SAMPLES[:2], [RewardSpec("rw_dotted:fn", weight=2.0)])
    assert list(out.components) == ["fn"] and out.total.tolist() == [14.0, 14.0]


def test_load_errors_name_the_spec(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, "rw_broken", "raise RuntimeError('broken at import')\n")
    with pytest.raises(ImportError, match=r"reward 'rw_broken:fn'.*RuntimeError\('broken at import'\)"):
        load_reward("rw_broken:fn")
    _write(tmp_path, monkeypatch, "rw_attrs", "x = 3\n")
    with pytest.raises(ImportError, match="'rw_attrs:nope': module 'rw_attrs' has no attribute 'nope'"):
        load_reward("rw_attrs:nope")
    with pytest.raises(TypeError, match="reward 'rw_attrs:x' resolved to int 3, which is not callable"):
        load_reward("rw_attrs:x")
    with pytest.raises(ImportError, match="reward 'no_such_mod_xyz:fn': cannot import 'no_such_mod_xyz'"):
        load_reward("no_such_mod_xyz:fn")
    # a module that exists but lacks a dependency is an import error, not an unknown name
    _write(tmp_path, monkeypatch, "rw_dep", "import no_such_dep_xyz\n\ndef fn(samples):\n    return []\n")
    with pytest.raises(ImportError, match="reward 'rw_dep.fn': cannot import 'rw_dep'.*'no_such_dep_xyz'"):
        load_reward("rw_dep.fn")


def test_load_by_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "fakepkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rl_latent.rewards]\nmy_reward = rw_fakemod:fn\n")
    _write(tmp_path, monkeypatch, "rw_fakemod", "def fn(samples):\n    return [0.5] * len(samples)\n")
    fn = load_reward("my_reward")
    assert fn.__module__ == "rw_fakemod" and fn(SAMPLES[:3]) == [0.5, 0.5, 0.5]
    assert score(SAMPLES[:1], [RewardSpec("my_reward")]).components == {"my_reward": torch.tensor([0.5])}
    with pytest.raises(ValueError, match=r"did you mean 'my_reward'\?") as e:
        load_reward("my_rewrd")
    assert "'my_reward'" in str(e.value) and "'correct'" in str(e.value)


def test_unknown_reward_suggests_a_close_name():
    with pytest.raises(ValueError, match=r"unknown reward 'corect'.*did you mean 'correct'\?"):
        load_reward("corect")
    with pytest.raises(ValueError, match=r"unknown reward 'no_such_pkg.fn' \(no module 'no_such_pkg'\)"):
        load_reward("no_such_pkg.fn")


def test_reward_spec_from_config():
    assert RewardSpec.from_config("correct") == RewardSpec("correct", 1.0, {})
    item = {"name": "compute", "weight": 0.1, "kwargs": {"budget": 4}}
    assert RewardSpec.from_config(item) == RewardSpec("compute", 0.1, {"budget": 4})
    assert RewardSpec.from_config({"name": "format"}) == RewardSpec("format")
    with pytest.raises(ValueError, match=r"\{'name': 'correct', 'wieght': 2\} has unknown keys \['wieght'\]"):
        RewardSpec.from_config({"name": "correct", "wieght": 2})
    with pytest.raises(ValueError, match="needs a non-empty string 'name'"):
        RewardSpec.from_config({"weight": 1.0})
    with pytest.raises(ValueError, match="'weight' must be a finite number"):
        RewardSpec.from_config({"name": "correct", "weight": "high"})
    with pytest.raises(ValueError, match="must be a name or a dict"):
        RewardSpec.from_config(3)


def test_score_weights_and_components(registry):
    registry["steps"] = lambda samples: torch.tensor([float(s.latent_steps) for s in samples])
    registry["parts"] = lambda samples: {"a": [1.0] * len(samples), "b": np.arange(len(samples)) * 0.5}
    specs = [RewardSpec("correct", 2.0), RewardSpec("steps", -0.25), RewardSpec("parts", 0.5)]
    out = score(SAMPLES, specs)
    assert set(out.components) == {"correct", "steps", "parts/a", "parts/b"}
    assert out.components["steps"].tolist() == [0.0, 1.0, 2.0, 3.0]  # unweighted
    assert out.components["parts/b"].tolist() == [0.0, 0.5, 1.0, 1.5]
    # 2 * 1 - 0.25 * i + 0.5 * (1 + 0.5 i)
    assert out.total.tolist() == [2.5, 2.5, 2.5, 2.5]
    assert out.total.dtype == torch.float32 and out.valid.tolist() == [True] * 4 and out.errors == []


def _boom(samples):
    for s in samples:
        if s.latent_steps in (2, 3):
            raise ValueError(f"cannot score {s.target}")
    return [1.0] * len(samples)


def test_raising_reward_names_reward_and_sample(registry):
    registry["boom"] = _boom
    with pytest.raises(RewardError) as e:
        score(SAMPLES, [RewardSpec("boom")])
    msg = str(e.value)
    assert "reward 'boom' raised ValueError('cannot score 2') on sample 2" in msg
    assert "(question: 'Tom has 3 apples and buys 4 more. How ma...')" in msg
    assert isinstance(e.value.__cause__, ValueError)


def test_raising_reward_skip_marks_only_bad_samples(registry):
    registry["boom"] = _boom
    out = score(SAMPLES, [RewardSpec("boom"), RewardSpec("correct", 3.0)], on_error="skip")
    assert out.valid.tolist() == [True, True, False, False]
    assert out.components["boom"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert out.components["correct"].tolist() == [1.0, 1.0, 0.0, 0.0]  # zeroed where invalid
    assert out.total.tolist() == [4.0, 4.0, 0.0, 0.0]
    assert len(out.errors) == 2
    assert out.errors[1] == "reward 'boom' raised ValueError('cannot score 3') on sample 3 (question: 'q3')"


def test_skip_with_a_dict_reward_and_one_failing_everywhere(registry):
    def parts(samples):
        if any(s.latent_steps == 1 for s in samples):
            raise KeyError("k")
        return {"a": [1.0] * len(samples), "b": [float(s.latent_steps) for s in samples]}

    registry["parts"] = parts
    out = score(SAMPLES, [RewardSpec("parts", 2.0)], on_error="skip")
    assert out.valid.tolist() == [True, False, True, True]
    assert out.components["parts/b"].tolist() == [0.0, 0.0, 2.0, 3.0]
    assert out.total.tolist() == [2.0, 0.0, 6.0, 8.0]
    assert out.errors == ["reward 'parts' raised KeyError('k') on sample 1 (question: 'q1')"]
    registry["never"] = lambda samples: 1 / 0
    out = score(SAMPLES, [RewardSpec("never"), RewardSpec("correct")], on_error="skip")
    assert out.valid.tolist() == [False] * 4 and out.total.tolist() == [0.0] * 4
    assert out.components["never"].tolist() == [0.0] * 4 and len(out.errors) == 4
    assert out.errors[0].startswith("reward 'never' raised ZeroDivisionError(")


def test_scores_of_several_batches_concat_and_select(registry):
    registry["boom"] = _boom
    a = score(SAMPLES, [RewardSpec("boom"), RewardSpec("correct", 3.0)], on_error="skip")
    b = score(SAMPLES[:2], [RewardSpec("boom"), RewardSpec("correct", 3.0)], on_error="skip")
    both = Scored.concat([a, b])
    assert both.total.tolist() == [4.0, 4.0, 0.0, 0.0, 4.0, 4.0]
    assert both.valid.tolist() == [True, True, False, False, True, True]
    assert len(both.errors) == 2
    pick = both.select([5, 2])
    assert pick.total.tolist() == [4.0, 0.0] and pick.valid.tolist() == [True, False]
    assert pick.components["boom"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="different reward components"):
        Scored.concat([a, score(SAMPLES, [RewardSpec("correct")])])


def test_nan_reward(registry):
    registry["nan"] = lambda samples: [math.nan if s.latent_steps == 1 else 1.0 for s in samples]
    with pytest.raises(RewardError, match=r"'nan' returned nan for 'nan' on sample 1 \(question: 'q1'"):
        score(SAMPLES, [RewardSpec("nan")])
    registry["inf"] = lambda samples: {"x": [1.0, 2.0, 3.0, math.inf]}
    with pytest.raises(RewardError, match=r"reward 'inf' returned inf for 'inf/x' on sample 3"):
        score(SAMPLES, [RewardSpec("inf")])
    out = score(SAMPLES, [RewardSpec("nan"), RewardSpec("inf")], on_error="skip")
    assert out.valid.tolist() == [True, False, True, False]
    assert out.total.tolist() == [2.0, 0.0, 4.0, 0.0]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize(
    ("ret", "message"),
    [
        ([1.0, 2.0, 3.0], "reward 'bad' returned 3 values for 4 samples"),
        ({"a": [1.0] * 4, "b": [1.0] * 3}, "reward 'bad' returned 3 values for 4 samples"),
        ([1.0, "2", 3.0, 4.0], "reward 'bad' returned non-numeric '2' for sample 1"),
        (torch.zeros(4, 1), r"reward 'bad' returned a 2-D array of shape \(4, 1\)"),
        (None, "reward 'bad' returned NoneType, expected a list of floats or dict"),
        ({}, "reward 'bad' returned an empty dict"),
    ],
)
def test_malformed_return_is_always_an_error(registry, ret, message, on_error):
    registry["bad"] = lambda samples: ret
    with pytest.raises(RewardError, match=message):
        score(SAMPLES, [RewardSpec("bad")], on_error=on_error)


def test_score_argument_errors(registry):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        score(SAMPLES, [RewardSpec("correct")], on_error="ignore")
    with pytest.raises(ValueError, match=r"reward 'correct' does not accept kwargs \{'budget': 3\}"):
        score(SAMPLES, [RewardSpec("correct", kwargs={"budget": 3})])
    with pytest.raises(ValueError, match="two rewards are both named 'correct'"):
        score(SAMPLES, [RewardSpec("correct"), RewardSpec("correct", 2.0)])
    with pytest.raises(ValueError, match="at least one reward spec"):
        score(SAMPLES, [])
    registry["batch_only"] = lambda samples: [1.0] if len(samples) == 1 else 1 / 0
    with pytest.raises(RewardError, match="ZeroDivisionError.*on the batch of 4 but on no one sample"):
        score(SAMPLES, [RewardSpec("batch_only")], on_error="skip")
    empty = score([], [RewardSpec("correct")])
    assert empty.total.shape == (0,) and empty.valid.shape == (0,) and empty.components == {}
