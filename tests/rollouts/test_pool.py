"""The Ray rollout pool: sharding is invisible, weights arrive versioned and checked, a dead worker loses
nothing."""

import os
import signal
import threading
import time

import pytest
import torch

from rl_latent.model import LatentReasoner
from rollouts.pool import Request, RolloutPool, shard
from rollouts.sampler import make_policy, rollout
from rollouts.worker import to_numpy_state, weights_checksum
from tests.rollouts.latent_fixtures import QUESTIONS

SAMPLING = dict(policy="gumbel", policy_kwargs={"tau": 0.5}, answer_temperature=1.0, max_answer_tokens=6)


def _requests(n: int) -> list[Request]:
    return [Request(QUESTIONS[i % len(QUESTIONS)], "7", 1000 + i, {"i": i}) for i in range(n)]


def _local(model_dir: str, reqs: list[Request]):
    model = LatentReasoner.from_pretrained(model_dir)
    gens = [torch.Generator().manual_seed(r.seed) for r in reqs]
    return rollout(
        model, [r.question for r in reqs], policy=make_policy("soft", "gumbel", tau=0.5), generators=gens,
        answer_temperature=1.0, max_answer_tokens=6, targets=[r.target for r in reqs],
    )  # fmt: skip


def _same(a, b) -> None:
    assert a.answers == b.answers
    assert torch.equal(a.latent_steps, b.latent_steps)
    # summed log-probs reach ~60, where one fp32 ulp is 4e-6: a worker's shard and the local batch round
    # their matmuls differently (batch composition), so allow a few ulps relative to the size
    torch.testing.assert_close(a.logp(), b.logp(), atol=1e-5, rtol=1e-6)


def test_shard_covers_everything_once():
    parts = shard(10, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert [i for p in parts for i in p] == list(range(10))


def test_two_workers_give_what_one_process_gives(ray_local, tiny_latent_dirs):
    reqs = _requests(10)
    pool = RolloutPool(tiny_latent_dirs["soft"], workers=2)
    try:
        traj = pool.rollout(reqs, **SAMPLING)
    finally:
        pool.shutdown()
    _same(traj, _local(tiny_latent_dirs["soft"], reqs))
    assert [m["i"] for m in traj.metadata] == list(range(10))  # request order kept across shards


def test_weights_sync_is_versioned_and_checked(ray_local, tiny_latent_dirs):
    model = LatentReasoner.from_pretrained(tiny_latent_dirs["soft"])
    g = torch.Generator().manual_seed(0)  # the same moved weights every run
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    state = to_numpy_state(model.state_dict())
    pool = RolloutPool(tiny_latent_dirs["soft"], workers=2)
    try:
        ref = [ray_local.put(state)]
        with pytest.raises(Exception, match="hash to .* published deadbeef"):
            pool.sync(ref, 1, "deadbeef")
        pool.sync(ref, 2, weights_checksum(state))
        reqs = _requests(6)
        traj = pool.rollout(reqs, **SAMPLING)
    finally:
        pool.shutdown()
    assert traj.weights_version == 2
    model.save_pretrained(tiny_latent_dirs["soft"] + "-moved")
    _same(traj, _local(tiny_latent_dirs["soft"] + "-moved", reqs))


def test_a_killed_worker_is_replaced_and_its_shard_rerun(ray_local, tiny_latent_dirs):
    reqs = _requests(12)
    expect = _local(tiny_latent_dirs["soft"], reqs)
    # up to 6 kills: a kill that lands after a call is replaced by the next one (restarts count both)
    pool = RolloutPool(tiny_latent_dirs["soft"], workers=2, max_restarts=10)
    try:
        os.kill(pool.pids()[0], signal.SIGKILL)  # dead before the call
        time.sleep(0.5)
        _same(pool.rollout(reqs, **SAMPLING), expect)
        assert pool.restarts == 1

        n, hit = 400, False  # killed while it rolls out; on a fast machine the batch doubles until it is
        for _ in range(5):
            before = pool.restarts
            victim = pool.pids()[1]
            threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
            traj = pool.rollout(_requests(n), **SAMPLING)
            if pool.restarts == before + 1:
                hit = True
                break
            time.sleep(0.5)  # the kill landed after the call: the next call replaces the worker
            _same(pool.rollout(reqs, **SAMPLING), expect)
            n *= 2
        assert hit, "the worker always finished before the kill"
        assert len(traj) == n and [m["i"] for m in traj.metadata] == list(range(n))
        _same(traj.select(list(range(12))), expect)  # the same seeds give the same samples
    finally:
        pool.shutdown()


def test_checksum_sees_every_byte():
    state = {"a": torch.zeros(3), "b": torch.ones(2)}
    c = weights_checksum(state)
    state["b"][1] = 1.0000001
    assert weights_checksum(state) != c
    assert weights_checksum({"b": torch.ones(2), "a": torch.zeros(3)}) == c  # order-free
