"""The latent sampler and its replay: exact log-probs for every policy, batch invariance, gradients."""

import pytest
import torch

from rollouts.replay import logprob_gap, replay
from rollouts.sampler import make_policy, rollout

CASES = [
    ("soft", "vanilla"),
    ("soft", "gumbel"),
    ("soft+residual", "gumbel"),
    ("soft", "dirichlet"),
    ("hidden", "vanilla"),
    ("hidden", "gaussian"),
]
KW = {"tau": 0.5, "concentration": 5.0, "dirichlet_floor": 0.05, "std": 0.3}


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


@pytest.mark.parametrize("head,policy_name", CASES)
@pytest.mark.parametrize("fixed_steps", [0, 3])
def test_replay_reproduces_rollout_logprobs(latent_model, questions, head, policy_name, fixed_steps):
    head, _, residual = head.partition("+")
    model = latent_model(head, fixed_steps=fixed_steps, residual=bool(residual))
    policy = make_policy(head, policy_name, **KW)
    qs = questions * 4
    traj = rollout(
        model, qs, policy=policy, answer_temperature=1.0, max_answer_tokens=5, generators=_gens(len(qs))
    )
    with torch.no_grad():
        new = replay(model, traj, policy)
    assert logprob_gap(traj, new) <= 1e-4
    assert torch.allclose(new.total(traj), traj.logp(), atol=1e-4)
    steps = traj.latent_steps.tolist()
    if fixed_steps:
        assert set(steps) == {fixed_steps}
    else:
        assert max(steps) <= 5
        if residual:
            assert traj.latent_residual is not None and traj.latent_residual.abs().sum() > 0
        if not policy.deterministic:  # 16 sampled rollouts stop at different steps
            assert len(set(steps)) > 1, f"expected varied latent lengths, got {steps}"
    if not policy.deterministic:
        assert traj.action_mask.any() or traj.stop_mask.any()
        assert traj.logp().abs().sum() > 0
    # positions = latent steps + <eot> + answer tokens
    for c, n, a in zip(traj.compute, steps, traj.answer_mask.sum(1).tolist()):
        assert c.latent_steps == n and c.positions == n + 1 + a


@pytest.mark.parametrize(
    "head,policy_name", [("soft", "gumbel"), ("soft", "dirichlet"), ("hidden", "gaussian")]
)
def test_batch_of_64_equals_64_batches_of_1(latent_model, questions, head, policy_name):
    model = latent_model(head)
    policy = make_policy(head, policy_name, **KW)
    qs = (questions * 16)[:64]
    big = rollout(
        model, qs, policy=policy, answer_temperature=1.0, max_answer_tokens=4, generators=_gens(64, 7)
    )
    gens = _gens(64, 7)
    for i in range(64):
        one = rollout(
            model, [qs[i]], policy=policy, answer_temperature=1.0, max_answer_tokens=4, generators=[gens[i]]
        )
        assert one.latent_steps.item() == big.latent_steps[i].item()
        assert one.answers[0] == big.answers[i]
        n_ans = int(one.answer_mask.sum())
        assert one.answer_ids[0, :n_ans].tolist() == big.answer_ids[i, :n_ans].tolist()
        assert torch.allclose(one.logp(), big.logp()[i : i + 1], atol=1e-4)


def test_greedy_rollout_is_deterministic_and_batch_invariant(latent_model, questions):
    model = latent_model("soft")
    a = rollout(model, questions)
    b = rollout(model, questions[::-1])
    assert a.answers == b.answers[::-1]
    assert a.latent_steps.tolist() == b.latent_steps.flip(0).tolist()
    assert not a.action_mask.any() and (a.logp() <= 0).all()


def test_replay_has_gradients(latent_model, questions):
    model = latent_model("soft")
    policy = make_policy("soft", "gumbel", tau=0.5)
    traj = rollout(
        model, questions, policy=policy, answer_temperature=1.0, max_answer_tokens=4, generators=_gens(4)
    )
    tensors = [v for v in vars(traj).values() if isinstance(v, torch.Tensor)]
    assert tensors and not any(t.is_inference() for t in tensors)  # decoded under inference_mode, packed out
    new = replay(model, traj, policy)
    new.total(traj).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_probe_records_top_tokens(latent_model, questions):
    model = latent_model("soft")
    traj = rollout(model, questions[:2], probe_k=3)
    assert len(traj.probe) == 2
    for b in range(2):
        assert len(traj.probe[b]) == traj.latent_steps[b].item() + 1 or traj.latent_steps[b].item() == 5
        assert all(len(step) == 3 for step in traj.probe[b])


def test_policy_must_fit_head(latent_model):
    with pytest.raises(ValueError, match="hidden head"):
        make_policy("hidden", "gumbel")


def test_prefill_runs_each_distinct_prompt_once(latent_model, questions):
    """A GRPO group repeats its prompt: the prefill runs the distinct prompts only, and every row gets
    what its own forward gives (cache, last logits, every layer's last state)."""
    from rl_latent.data.format import prompt_text
    from rollouts.sampler import encode_prompts, left_pad, prefill

    model = latent_model("soft")
    qs = [questions[i % 3] for i in (0, 1, 2, 0, 0, 2, 1, 2)]
    ids, mask = left_pad(
        encode_prompts(model, [prompt_text({"question": q}) for q in qs]), model.tokenizer.pad_token_id
    )
    rows = []
    hook = model.lm.register_forward_pre_hook(
        lambda m, a, kw: rows.append(len(kw["input_ids"])), with_kwargs=True
    )
    cache, logits, states = prefill(model, ids, mask)
    hook.remove()
    assert rows == [3]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
    assert torch.allclose(logits, full.logits[:, -1].float(), atol=1e-5)
    for s, hs in zip(states, full.hidden_states):
        assert torch.allclose(s, hs[:, -1], atol=1e-5)
    for a, b in zip(cache.layers, full.past_key_values.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)


def test_greedy_answers_are_not_actions(latent_model, questions):
    """rl.answer_temperature = 0: the answer is a function of the thoughts, so only the latent actions count
    in log pi(trajectory) and in GRPO's positions; the stored greedy log-probs still replay exactly."""
    from trainers.grpo import traj_positions

    model = latent_model("soft")
    policy = make_policy("soft", "gumbel", **KW)
    qs = questions * 2
    traj = rollout(model, qs, policy=policy, answer_temperature=0.0, max_answer_tokens=5, generators=_gens(8))
    assert traj.answer_temperature == 0.0 and traj.answer_mask.any() and not traj.answer_actions.any()
    assert torch.allclose(traj.logp(), (traj.latent_logp * traj.action_mask).sum(-1))
    _, mask = traj_positions(traj)
    J = traj.latent_logp.shape[1]
    assert not mask[:, 2 * J :].any() and mask[:, :J].any()
    with torch.no_grad():
        new = replay(model, traj, policy)
    assert logprob_gap(traj, new) <= 1e-4  # answers included: log-probs under softmax(logits)
    assert torch.allclose(new.total(traj), traj.logp(), atol=1e-4)
    sampled = rollout(
        model, qs, policy=policy, answer_temperature=1.0, max_answer_tokens=5, generators=_gens(8)
    )
    assert torch.equal(sampled.answer_actions, sampled.answer_mask)
