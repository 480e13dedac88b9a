"""The rollout pool: N Ray actors (``RolloutWorker``) that shard each step's prompts between them.

    requests (question, target, seed, metadata) --shard--> worker 0 .. N-1 --concat--> one Trajectory

Weights: ``sync(snapshot_ref, version, checksum)`` hands every worker the same object-store reference; each
loads and verifies it. Faults: a worker that dies mid-call (SIGKILL, OOM, node loss) is replaced by a fresh
actor, which loads the current weights and re-runs the dead worker's whole shard. Because every sample has its
own seed the re-run gives exactly what the lost call would have, so each prompt is rolled out exactly once
per step (``restarts`` counts the replacements).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from rollouts.trajectory import Trajectory
from rollouts.worker import RolloutWorker

_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class Request:
    question: str
    target: str
    seed: int
    metadata: dict[str, Any]


def shard(n: int, parts: int) -> list[range]:
    """Contiguous, near-equal ranges covering 0..n-1 (the first ``n % parts`` get one more)."""
    size, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        out.append(range(start, stop))
        start = stop
    return out


class RolloutPool:
    def __init__(
        self,
        model_dir: str,
        workers: int = 1,
        cpus: float = 1.0,
        gpus: float = 0.0,
        max_restarts: int = 3,
    ):
        self.model_dir = model_dir
        self.cpus, self.gpus = cpus, gpus
        self.max_restarts = max_restarts
        self.restarts = 0
        self._snapshot: tuple[list, int, str] | None = None  # ([ref], version, checksum) of the last sync
        self._actor_cls = ray.remote(RolloutWorker)
        self.workers = [self._spawn(i) for i in range(workers)]
        ray.get(
            [w.pid.remote() for w in self.workers]
        )  # fail here, not on the first step, if they cannot start

    def _spawn(self, i: int) -> Any:
        threads = max(1, int(self.cpus))
        return self._actor_cls.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0).remote(
            self.model_dir, threads=threads, worker_id=i
        )

    @property
    def version(self) -> int:
        return self._snapshot[1] if self._snapshot else 0

    def sync(self, snapshot: list, version: int, checksum: str) -> float:
        """Every worker loads weights ``version`` from ``snapshot = [ObjectRef]``; returns seconds taken."""
        t0 = time.perf_counter()
        self._snapshot = (snapshot, version, checksum)
        self._call_all(lambda w: w.load_weights.remote(snapshot, version, checksum))
        return time.perf_counter() - t0

    def pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def rollout(
        self,
        requests: list[Request],
        *,
        policy: str,
        policy_kwargs: dict[str, float],
        answer_temperature: float,
        max_answer_tokens: int,
        learn_exits: bool = False,
        exit_temperature: float = 1.0,
    ) -> Trajectory:
        """Roll out every request once (sharded over the workers), concatenated in request order
        (``learn_exits``: System-1.5 exits are sampled actions at ``exit_temperature``, see
        ``rollouts.sampler.rollout``)."""
        if not requests:
            raise ValueError("RolloutPool.rollout: no requests")
        ranges = [r for r in shard(len(requests), len(self.workers)) if len(r)]

        def call(w: Any, r: range) -> Any:
            rows = [requests[i] for i in r]
            return w.rollout.remote(
                [x.question for x in rows],
                [x.target for x in rows],
                [x.seed for x in rows],
                [x.metadata for x in rows],
                policy,
                policy_kwargs,
                answer_temperature,
                max_answer_tokens,
                learn_exits,
                exit_temperature,
            )

        parts = self._call_sharded(ranges, call)
        return Trajectory.concat(parts)

    # ------------------------------------------------------------------ fault handling
    def _replace(self, i: int) -> None:
        """Worker ``i`` died: start a fresh actor in its place with the current weights."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(
                f"rollout workers died {self.restarts} times (max_restarts={self.max_restarts})"
            )
        try:
            ray.kill(self.workers[i])
        except Exception:  # already gone
            pass
        self.workers[i] = self._spawn(i)
        if self._snapshot is not None:
            ray.get(self.workers[i].load_weights.remote(*self._snapshot))

    def _call_sharded(self, ranges: list[range], call) -> list[Any]:
        """``call(worker_i, ranges[i])`` on every worker; a dead worker is replaced and its shard re-run."""
        out: list[Any] = [None] * len(ranges)
        pending = {call(self.workers[i], r): i for i, r in enumerate(ranges)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                out[i] = ray.get(done[0])
            except _DEAD:
                self._replace(i)
                pending[call(self.workers[i], ranges[i])] = i
        return out

    def _call_all(self, fn) -> list[Any]:
        ranges = [range(i, i + 1) for i in range(len(self.workers))]
        return self._call_sharded(ranges, lambda w, r: fn(w))

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:
                pass
        self.workers = []
