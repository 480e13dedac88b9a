"""System-1.5 shortcuts: nothing exits -> the full model exactly; an exit hands its exit state to the top and
deeper blocks cache keys and values of its state at the exit layer; soft and hard agree at saturated
routers; compute counts what ran; checkpoints round-trip."""

import pytest
import torch

from rl_latent.model import LatentReasoner
from rl_latent.model.shortcut_decode import _fp32, shortcut_step
from rl_latent.model.shortcuts import SHORTCUT_NAME, Shortcuts, exit_scale
from rollouts.sampler import rollout
from rollouts.trajectory import Trajectory
from tests.rollouts.latent_fixtures import QUESTIONS, make_latent_model

ARCHS = ["llama", "gpt2"]


def with_shortcuts(
    arch: str,
    layers=(0, 1),
    router_bias: float | None = None,
    step_positions: str = "latent",
    router_latent: bool = False,
    router_prev: bool = False,
) -> LatentReasoner:
    model = make_latent_model(arch=arch)
    sc = Shortcuts(
        model.hidden_size, model.num_layers, list(layers), rank=8, router_hidden=8,
        step_positions=step_positions, router_latent=router_latent, router_prev=router_prev,
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in sc.parameters():  # trained-looking weights: adapters and step adapters are not identities
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if router_bias is not None:
            for r in sc.routers.values():
                r.net[-1].weight.zero_()
                r.net[-1].bias.fill_(router_bias)
    model.heads[SHORTCUT_NAME] = sc
    return model.eval()


def _prefill(model, text="a = 3 , b = a + 4 . what is b ?"):
    ids = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"] + [model.bot_id]])
    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
    return out, mask


def _next_position(model):
    """A prefilled prompt's cache, a second cache of the same prompt, the prompt's last states (``prev``), one
    new input and the attention mask that includes it."""
    out, mask = _prefill(model)
    other = _prefill(model)[0].past_key_values
    prev = [h[:, -1] for h in out.hidden_states[:-1]] + [None]
    x = torch.randn(1, 1, model.hidden_size)
    return out.past_key_values, other, prev, x, torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_nothing_exits_equals_the_full_model_exactly(arch):
    model = with_shortcuts(arch)
    ref, mask = _prefill(model)
    mine, _ = _prefill(model)
    ref_cache, my_cache = ref.past_key_values, mine.past_key_values
    prev = [h[:, -1] for h in mine.hidden_states[:-1]] + [None]
    x = torch.randn(1, 1, model.hidden_size, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
        full = model(inputs_embeds=x, attention_mask=mask, past_key_values=ref_cache, use_cache=True,
                     output_hidden_states=True)  # fmt: skip
        so = shortcut_step(model, x, mask, my_cache, prev=prev, latent=torch.tensor([True]), lam=1.0)
        assert torch.equal(so.logits, full.logits[:, -1])
        assert torch.equal(so.hidden, full.hidden_states[-1][:, -1])
        assert int(so.blocks_run[0]) == model.num_layers and int(so.exit_layer[0]) == model.num_layers
        prev = so.states
        x = model.embed(full.logits[:, -1:].argmax(-1))
    for layer in range(model.num_layers):
        assert torch.equal(ref_cache.layers[layer].keys, my_cache.layers[layer].keys)


@pytest.mark.parametrize("arch", ARCHS)
def test_routers_that_never_fire_give_the_full_models_rollout(arch):
    model = with_shortcuts(arch, router_bias=-30.0)
    ref = make_latent_model(arch=arch)
    plain = rollout(ref, QUESTIONS, max_answer_tokens=6)
    model.latent_extra["shortcut"] = {"lam": 0.5}
    mine = rollout(model, QUESTIONS, max_answer_tokens=6)
    assert mine.answers == plain.answers
    assert torch.equal(mine.actions, plain.actions) and torch.equal(mine.answer_logp, plain.answer_logp)
    assert [c.layer_evals for c in mine.compute] == [c.layer_evals for c in plain.compute]


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_an_exit_copies_its_state_up_and_soft_matches_hard_at_saturated_routers(arch):
    fire = with_shortcuts(arch, layers=(1,), router_bias=30.0)  # every position exits at layer 1
    cache, soft_cache, prev, x, mask = _next_position(fire)
    latent = torch.tensor([True])
    hard = shortcut_step(fire, x, mask, cache, prev=prev, latent=latent, lam=0.5)
    soft = shortcut_step(fire, x, mask, soft_cache, prev=prev, latent=latent)
    s = fire.heads[SHORTCUT_NAME].exit_state(1, hard.states[1], prev[1], latent)
    assert int(hard.blocks_run[0]) == 1 and int(hard.exit_layer[0]) == 1
    torch.testing.assert_close(hard.top, s)  # the exit state, copied to the top
    torch.testing.assert_close(hard.hidden, fire.adapter.final_norm(s))
    torch.testing.assert_close(soft.logits, hard.logits, atol=1e-5, rtol=0)
    assert float(soft.expected_layers[0]) == pytest.approx(1.0, abs=1e-6)
    for layer in range(fire.num_layers):  # every layer cached this position (deeper ones from the copy)
        assert cache.layers[layer].keys.shape[-2] == mask.shape[1]
        torch.testing.assert_close(cache.layers[layer].keys, soft_cache.layers[layer].keys, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_deeper_blocks_cache_the_state_at_the_exit_layer_not_the_exit_state(arch):
    fire = with_shortcuts(arch, layers=(0,), router_bias=30.0)  # every position exits before block 0
    cache, ref_cache, prev, x, mask = _next_position(fire)
    hard = shortcut_step(fire, x, mask, cache, prev=prev, latent=torch.tensor([True]), lam=0.5)
    assert int(hard.blocks_run[0]) == 0 and int(hard.exit_layer[0]) == 0
    # what every block would cache for the position's state entering block 0 (not for its exit state)
    pos = fire.position_ids_from_mask(mask)[:, -1:]
    x0, ctx = fire.adapter.begin(x, mask, pos, ref_cache, True)
    for layer in range(fire.num_layers):
        fire.adapter.run_layer(layer, x0, ctx)  # it caches keys/values of its input
        torch.testing.assert_close(cache.layers[layer].keys, ref_cache.layers[layer].keys)
        torch.testing.assert_close(cache.layers[layer].values, ref_cache.layers[layer].values)
    assert not torch.allclose(hard.top, x0[:, 0])  # the LM head reads the exit state, a different one


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_one_row_decides_as_a_batch_does_and_its_deferred_copies_are_made_before_a_block_reads_them(arch):
    model = with_shortcuts(arch, router_bias=0.0, step_positions="all", router_latent=True, router_prev=True)
    L, R = model.num_layers, 2
    g = torch.Generator().manual_seed(0)
    seen = set()
    for trial in range(12):
        one, _, prev, x, mask = _next_position(model)
        two = _prefill(model)[0].past_key_values
        two.reorder_cache(torch.tensor([0, 0]))  # the same row twice: the batched path
        h, latent = torch.randn(1, model.hidden_size, generator=g), torch.tensor([trial % 2 == 0])
        u = torch.rand(1, R, generator=g)
        kw = dict(latent=latent, context=h, lam=0.5, uniforms=u if trial % 3 else None)
        deferred: list = []
        a = shortcut_step(model, x, mask, one, prev=prev, deferred=deferred, **kw)
        dup = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
        b = shortcut_step(
            model, dup(x), dup(mask), two, prev=[dup(p) for p in prev], latent=dup(latent), context=dup(h),
            lam=0.5, uniforms=dup(kw["uniforms"]),
        )  # fmt: skip
        layer = int(a.exit_layer[0])
        seen.add(layer)
        assert layer == int(b.exit_layer[0]) == int(b.exit_layer[1])
        torch.testing.assert_close(a.exit_logp, b.exit_logp[:1], atol=1e-6, rtol=0)
        torch.testing.assert_close(a.logits, b.logits[:1], atol=1e-5, rtol=0)
        for sa, sb in zip(a.states, b.states, strict=True):
            torch.testing.assert_close(sa, sb[:1], atol=1e-5, rtol=0)
        # an exit's copies wait in `deferred`; the next position to run a block makes them first
        assert len(deferred) == (layer < L)
        lengths = [one.layers[i].keys.shape[-2] for i in range(L)]
        assert lengths == [mask.shape[1] - (i >= layer) for i in range(L)]
        mask2 = torch.cat([mask, mask[:, :1]], 1)
        y = torch.randn(1, 1, model.hidden_size, generator=g)
        c = shortcut_step(model, y, mask2, one, prev=a.states, context=a.hidden, lam=1.0, deferred=deferred)
        d = shortcut_step(model, dup(y), dup(mask2), two, prev=b.states, context=b.hidden, lam=1.0)
        assert deferred == [] and int(c.exit_layer[0]) == L
        torch.testing.assert_close(c.logits, d.logits[:1], atol=1e-5, rtol=0)
        for i in range(L):
            torch.testing.assert_close(one.layers[i].keys, two.layers[i].keys[:1], atol=1e-5, rtol=0)
    assert len(seen) == R + 1  # exits at 0, at 1 and none were all compared


def test_compute_counts_the_blocks_run_and_batching_changes_nothing():
    model = with_shortcuts("llama", layers=(1,), router_bias=30.0)
    L = model.num_layers
    out = rollout(model, QUESTIONS, max_answer_tokens=6, lam=0.5)
    full = rollout(model, QUESTIONS, max_answer_tokens=6, lam=1.0)
    for c, f in zip(out.compute, full.compute):  # (exits change the outputs, so the lengths may differ)
        assert c.layer_evals == L + (c.positions - 1) * 1  # the prompt's last position runs in full
        assert f.layer_evals == f.positions * L
        assert c.flops / c.positions < f.flops / f.positions
    one = [rollout(model, [q], max_answer_tokens=6, lam=0.5) for q in QUESTIONS]
    assert [o.answers[0] for o in one] == out.answers
    assert [o.compute[0].layer_evals for o in one] == [c.layer_evals for c in out.compute]


@torch.no_grad()
def test_a_static_depth_exits_every_position_at_that_layer_whatever_the_routers_say():
    never = with_shortcuts("llama", layers=(0, 1), router_bias=-30.0)  # its routers never fire
    L = never.num_layers
    static = rollout(never, QUESTIONS, max_answer_tokens=6, exit_at=1)
    for c in static.compute:
        assert c.layer_evals == L + (c.positions - 1) * 1
    # the same decode as routers that fire at layer 1 and nowhere else
    fire = with_shortcuts("llama", layers=(0, 1), router_bias=-30.0)
    fire.heads[SHORTCUT_NAME].routers["1"].net[-1].bias.fill_(30.0)
    routed = rollout(fire, QUESTIONS, max_answer_tokens=6, lam=0.5)
    assert static.answers == routed.answers
    assert [c.layer_evals for c in static.compute] == [c.layer_evals for c in routed.compute]
    # the routed decode ran both routers at every generated position after the prompt's; the static one none
    router = fire.heads[SHORTCUT_NAME].flops()["router"]
    for s, r in zip(static.compute, routed.compute):
        assert r.flops - s.flops == pytest.approx(router * 2 * (r.positions - 1))
    never.latent_extra["shortcut"] = {"lam": 0.5, "exit_at": 1}  # the model's own setting is read too
    assert rollout(never, QUESTIONS, max_answer_tokens=6).answers == static.answers
    with pytest.raises(ValueError, match=r"exit_at=2: .* router layers \[0, 1\]"):
        rollout(never, QUESTIONS, max_answer_tokens=6, exit_at=2)


@pytest.mark.parametrize("step_positions,new_routers", [("latent", False), ("all", True)])
def test_checkpoint_round_trip_keeps_shortcuts_and_lambda(tmp_path, step_positions, new_routers):
    model = with_shortcuts(
        "llama", step_positions=step_positions, router_latent=new_routers, router_prev=new_routers
    )
    model.latent_extra["shortcut"] = {"lam": 0.3}
    model.save_pretrained(tmp_path / "m")
    back = LatentReasoner.from_pretrained(tmp_path / "m")
    assert back.latent_extra["shortcut"]["lam"] == 0.3
    assert back.heads[SHORTCUT_NAME].step_positions == step_positions
    router = back.heads[SHORTCUT_NAME].routers["0"]  # new routers: a thought bias, the previous state read
    assert (router.latent_bias is not None) == new_routers and (router.prev is not None) == new_routers
    a, b = rollout(model, QUESTIONS, max_answer_tokens=6), rollout(back, QUESTIONS, max_answer_tokens=6)
    assert a.answers == b.answers and [c.layer_evals for c in a.compute] == [c.layer_evals for c in b.compute]
    assert any(
        c.layer_evals < c.positions * model.num_layers for c in a.compute
    )  # lambda 0.3 exits somewhere


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_tempered_exits_are_bernoulli_of_the_centred_logit_and_their_mode_is_the_greedy_decode(arch):
    """q = sigmoid((z - logit(lambda)) / T) at each router reached: frequencies (Monte Carlo, 4000 rows) and
    log-probs (closed form) of exiting at router 0, at router 1 and not at all, batched and one row alone."""
    z = 0.4  # every router's logit (no offsets, zero last layer): w = 0.599
    model = with_shortcuts(arch, router_bias=z)
    assert exit_scale(0.5) == (0.0, 1.0)  # Bernoulli(w)
    for lam in (0.5, 0.7):  # the mode exits exactly where the greedy decode (w > lambda) does
        c, T = exit_scale(lam, 0.3)
        assert (torch.sigmoid(torch.tensor((z - c) / T)) > 0.5) == (torch.sigmoid(torch.tensor(z)) > lam)
    c, T = exit_scale(0.7, 0.5)
    q = torch.sigmoid(torch.tensor((z - c) / T))
    want = {0: (q, q.log()), 1: ((1 - q) * q, (1 - q).log() + q.log()), 2: ((1 - q) ** 2, 2 * (1 - q).log())}
    N = 4000
    cache, _, prev, x, mask = _next_position(model)
    cache.reorder_cache(torch.zeros(N, dtype=torch.long))
    u = torch.rand(N, 2, generator=torch.Generator().manual_seed(0))
    rep = lambda t: t.expand(N, *t.shape[1:])  # noqa: E731
    out = shortcut_step(model, rep(x), rep(mask), cache, prev=[None if p is None else rep(p) for p in prev],
                        uniforms=u, scale=(c, T))  # fmt: skip
    for layer, (p, lp) in want.items():
        at = out.exit_layer == layer
        assert abs(at.float().mean() - p) < 4 * (p * (1 - p) / N) ** 0.5
        torch.testing.assert_close(out.exit_logp[at], lp.expand(int(at.sum())), atol=1e-6, rtol=0)
    for i in range(6):  # one row decides in Python: the same draws give the same exits and log-probs
        one, _, prev1, _, _ = _next_position(model)
        o = shortcut_step(model, x, mask, one, prev=prev1, uniforms=u[i : i + 1], scale=(c, T))
        assert int(o.exit_layer[0]) == int(out.exit_layer[i])
        torch.testing.assert_close(o.exit_logp, out.exit_logp[i : i + 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "arch,step_positions,new_routers,tempered",
    [("llama", "latent", False, False), ("gpt2", "latent", False, False), ("llama", "all", True, True)],
)
@torch.no_grad()
def test_sampled_exits_replay_within_1e4_and_are_part_of_the_trajectory(
    arch, step_positions, new_routers, tempered
):
    from rollouts.replay import logprob_gap, replay
    from rollouts.sampler import make_policy

    # w ~ 1/2: exits at every layer get sampled
    model = with_shortcuts(
        arch, router_bias=0.0, step_positions=step_positions, router_latent=new_routers,
        router_prev=new_routers,
    )  # fmt: skip
    policy = make_policy("soft", "gumbel", tau=0.5)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(QUESTIONS))]  # noqa: E731
    kw = dict(policy=policy, max_answer_tokens=6, answer_temperature=1.0, learn_exits=True)
    if tempered:  # centred on lambda 0.55, at temperature 0.5: the replay reads the scale off the trajectory
        kw.update(lam=0.55, exit_temperature=0.5)
    traj = rollout(model, QUESTIONS, generators=gens(), **kw)
    assert traj.exit_scale == (exit_scale(0.55, 0.5) if tempered else (0.0, 1.0))
    n_fed = traj.latent_steps + traj.answer_mask.sum(1)  # z_1..z_n, <eot>, a_0..a_{A-2}
    assert torch.equal(traj.exit_mask.sum(1), n_fed)
    assert len(set(traj.exit_layers[traj.exit_mask].tolist())) == model.num_layers + 1  # 0, 1 and none
    assert bool((traj.exit_logp[traj.exit_mask] < 0).all())
    new = replay(model, traj, policy)
    assert logprob_gap(traj, new) <= 1e-4
    parts = [traj.select([0]), traj.select(list(range(1, len(traj))))]  # minibatches and worker shards
    joined = Trajectory.concat(parts)
    assert joined.exit_scale == traj.exit_scale and logprob_gap(joined, replay(model, joined, policy)) <= 1e-4
    parts[0].exit_scale = (0.3, 2.0)
    with pytest.raises(ValueError, match="exit scales"):
        Trajectory.concat(parts)
    torch.testing.assert_close(new.total(traj), traj.logp(), atol=1e-4, rtol=0)
    assert bool((traj.logp() < (traj.logp() - (traj.exit_logp * traj.exit_mask).sum(-1)) + 1e-6).all())
    traj.exit_logp, traj.exit_mask, traj.exit_layers = None, None, None  # replay as if nothing had exited
    assert logprob_gap(traj, replay(model, traj, policy)) > 1e-2
    again = rollout(model, QUESTIONS, generators=gens(), **kw)
    one = [rollout(model, [q], generators=[g], **kw) for q, g in zip(QUESTIONS, gens())]
    for b, o in enumerate(one):  # each row's exits come from its own generator: batching changes nothing
        n = int(n_fed[b])
        assert o.exit_layers[0, :n].tolist() == again.exit_layers[b, :n].tolist()


@torch.no_grad()
def test_step_positions_all_gives_every_row_the_step_term_and_latent_only_latent_rows():
    sc = Shortcuts(16, 2, [0, 1], rank=4, router_hidden=4, step_positions="all")
    torch.nn.init.normal_(sc.step_adapters["0"].up.weight)
    x, prev = torch.randn(3, 16), torch.randn(3, 16)
    latent = torch.tensor([True, False, False])
    alone = sc.adapters["0"](x)
    assert not torch.allclose(sc.exit_state(0, x, prev, latent)[1:], alone[1:])  # answer rows read prev too
    sc.step_positions = "latent"
    got = sc.exit_state(0, x, prev, latent)
    assert torch.equal(got[1:], alone[1:]) and not torch.allclose(got[:1], alone[:1])
    with pytest.raises(ValueError, match="step_positions='some'"):
        Shortcuts(16, 2, [0, 1], step_positions="some")


def test_the_latent_bias_moves_only_thought_rows():
    sc = Shortcuts(16, 2, [0, 1], rank=4, router_hidden=4, router_latent=True)
    with torch.no_grad():
        sc.routers["0"].latent_bias.fill_(2.5)
        sc.routers["1"].latent_bias.fill_(-1.0)
    x, latent = torch.randn(3, 16), torch.tensor([True, False, True])
    off = sc.offsets(latent, None)  # [rows, routers]
    torch.testing.assert_close(off, torch.tensor([[2.5, -1.0], [0.0, 0.0], [2.5, -1.0]]))
    r = sc.routers["0"]
    torch.testing.assert_close(r(x, off[:, 0]) - r(x), off[:, 0])
    plain = Shortcuts(16, 2, [0, 1], router_latent=False)
    assert plain.routers["0"].latent_bias is None and plain.offsets(latent, None) is None  # latent ignored


def test_a_router_reading_the_previous_position_moves_with_its_context_only():
    sc = Shortcuts(16, 2, [0, 1], rank=4, router_hidden=4, router_prev=True)
    x, h = torch.randn(3, 16), torch.randn(3, 16)
    assert torch.equal(sc.offsets(None, h), torch.zeros(3, 2))  # v starts at 0: a new router ignores it
    with torch.no_grad():
        sc.routers["1"].prev.weight.fill_(0.5)
    off = sc.offsets(None, h)
    torch.testing.assert_close(off[:, 1], 0.5 * sc.context(h).sum(-1))
    assert torch.equal(off[:, 0], torch.zeros(3))
    r = sc.routers["1"]
    torch.testing.assert_close(r(x, off[:, 1]) - r(x), off[:, 1])
    sc = Shortcuts(16, 2, [0, 1], router_prev=True)
    h = torch.randn(3, 16) * 7 + 2
    c = sc.context(h)  # layer-normed without weights: the scale of the final state does not matter
    torch.testing.assert_close(c, sc.context(3 * h + 1), atol=1e-5, rtol=0)
    assert Shortcuts(16, 2, [0, 1]).context(h) is None and sc.context(None) is None


def test_the_one_row_threshold_rounds_lambda_to_fp32_as_torch_does():
    rng = torch.Generator().manual_seed(0)
    values = torch.rand(2000, generator=rng, dtype=torch.float64).tolist() + [0.7, 0.1, 1 / 3, 0.5, 1e-6]
    assert all(_fp32(v) == float(torch.tensor(v, dtype=torch.float32)) for v in values)
