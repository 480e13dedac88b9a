"""A trainer rank: one Ray actor holding one rank of the DeepSpeed process group.

The driver (trainers/rl.py) starts ``trainer_ranks`` of these; rank 0 picks a free port and every rank joins
the group through the usual RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT variables, so ZeRO 0-3 and gradient
all-reduce are plain DeepSpeed. Each step a rank receives its share of the step's trajectories (whole groups)
with their advantages and runs ``epochs x minibatches`` optimizer steps: replay, loss, backward, step.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from rl_latent.config import Config
from rollouts.replay import logprob_gap, replay
from rollouts.sampler import make_policy
from rollouts.trajectory import Trajectory
from rollouts.worker import to_numpy_state, weights_checksum
from trainers.grpo import replay_positions, traj_positions


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_address() -> str:
    """The address other ranks reach this one at: loopback when the whole group is on one node."""
    import ray

    return "127.0.0.1" if len(ray.nodes()) <= 1 else ray.util.get_node_ip_address()


class TrainerRank:
    def __init__(self, cfg: Config, algo_cls: type, model_dir: str, rank: int, world: int, master: tuple):
        # Ray gives each rank its own GPU (CUDA_VISIBLE_DEVICES), so the local rank is always 0.
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR=master[0],
            MASTER_PORT=str(master[1]),
        )  # fmt: skip
        torch.set_num_threads(max(1, int(cfg.rl.trainer_cpus)))
        from rl_latent.model import LatentReasoner
        from rl_latent.model.shortcuts import SHORTCUT_NAME
        from trainers.common import engine_from_config, seed_everything, train_only_head

        seed_everything(cfg.train.seed)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.algo = algo_cls(cfg.rl)
        policy = LatentReasoner.from_pretrained(model_dir)
        if cfg.rl.trainable != "all":  # frozen backbone: only the routers (and adapters) learn
            train_only_head(policy, SHORTCUT_NAME, "routers" if cfg.rl.trainable == "routers" else None)
        self.ref = None
        if cfg.rl.kl_beta > 0:  # the frozen reference: the policy as the run started
            self.ref = copy.deepcopy(policy).eval().requires_grad_(False)
        self.module = self.algo.wrap(policy)
        rl = cfg.rl
        self.engine = engine_from_config(
            self.module,
            cfg,
            total_steps=cfg.train.max_steps * rl.epochs * rl.minibatches,  # one per minibatch
            micro_batch_size=max(1, rl.prompts_per_step * rl.group_size // (rl.minibatches * world)),
            grad_accum=1,  # every minibatch is one optimizer step
        )
        if self.ref is not None:
            self.ref.to(self.engine.device)
        lc = cfg.latent
        head = self.policy.heads["thought"].kind
        self.latent_policy = make_policy(
            head, lc.policy, tau=lc.tau, concentration=lc.concentration, dirichlet_floor=lc.dirichlet_floor,
            std=lc.std,
        )  # fmt: skip

    @property
    def policy(self) -> Any:
        from trainers.engine import unwrap

        return self.algo.policy_of(unwrap(self.engine))

    def ready(self) -> int:
        return self.rank

    # ------------------------------------------------------------------ one RL step
    def update(self, traj: Trajectory, adv: torch.Tensor, step: int) -> dict[str, float]:
        """``epochs x minibatches`` optimizer steps on this rank's share; returns mean scalars."""
        rl = self.cfg.rl
        t0 = time.perf_counter()
        self.module.train()
        prep = self.algo.prepare(self.module, traj, adv, self.latent_policy)
        ref_pos = None
        if self.ref is not None:
            with torch.no_grad():
                ref_pos = replay_positions(replay(self.ref, traj, self.latent_policy)).cpu()
        groups = len(traj) // rl.group_size
        per_mb = groups // rl.minibatches
        stats: list[dict[str, float]] = []
        gap = 0.0
        for epoch in range(rl.epochs):
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 101 + epoch)
            order = torch.randperm(groups, generator=g)
            for m in range(rl.minibatches):
                picked = order[m * per_mb : (m + 1) * per_mb].tolist()
                idx = [gi * rl.group_size + k for gi in picked for k in range(rl.group_size)]
                mb = traj.select(idx)
                new = replay(self.policy, mb, self.latent_policy, hidden=self.algo.needs_hidden)
                if epoch == 0 and m == 0:  # before any update: replay must reproduce the rollout
                    gap = logprob_gap(mb, new)
                n_global = self._all_sum(float(self._count(mb)))
                mb_prep = {k: v[idx] for k, v in prep.items()}
                loss, s = self.algo.loss(
                    self.module, mb, mb_prep, new, None if ref_pos is None else ref_pos[idx], n_global,
                    self.world,
                )  # fmt: skip
                self.engine.backward(loss)
                norm = self._grad_norm()
                self.engine.step()
                s["loss"] = float(loss) / self.world
                s["grad_norm"] = float(self.engine.get_global_grad_norm() or norm)  # ZeRO's, else ours
                stats.append(s)
        out = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        out.update(logprob_gap=gap, lr=self.engine.get_lr()[0], update_s=time.perf_counter() - t0)
        return out

    def _grad_norm(self) -> float:
        """Pre-clip gradient norm of this rank's (already all-reduced) gradients; 0 where ZeRO moved them."""
        grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    @staticmethod
    def _count(traj: Trajectory) -> int:
        """Loss positions of ``traj``: every stochastic choice (trainers/grpo.py ``traj_positions``)."""
        return int(traj_positions(traj)[1].sum())

    def _all_sum(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t)

    # ------------------------------------------------------------------ weights, checkpoints
    def publish(self) -> tuple[list, str] | None:
        """Full policy weights into the object store (collective under ZeRO-3): ``([ref], checksum)`` on
        rank 0, None elsewhere. The list keeps Ray from resolving the ref when it is passed on."""
        import ray

        state = self._policy_state()
        if self.rank != 0:
            return None
        arrays = to_numpy_state(state)
        return [ray.put(arrays)], weights_checksum(arrays)

    def save(self, run_dir: str, step: int, state: dict[str, Any], keep: int) -> str:
        from trainers.checkpoint import save_checkpoint

        return str(save_checkpoint(self.engine, self.module, Path(run_dir), step, state, keep=keep))

    def load(self, ckpt: str) -> dict[str, Any]:
        from trainers.checkpoint import load_checkpoint

        return load_checkpoint(self.engine, Path(ckpt))

    def export(self, path: str) -> str:
        """The trained policy as an HF model dir (rank 0 writes; collective under ZeRO-3)."""
        state = self._policy_state()
        if self.rank == 0:
            self.policy.save_pretrained(path, state_dict=state)
        return path

    def _policy_state(self) -> dict[str, torch.Tensor]:
        """The full state dict (gathered: collective under ZeRO-3), the policy's keys only, unprefixed."""
        from trainers.engine import gathered_state_dict

        state = gathered_state_dict(self.engine)
        prefix = self.algo.policy_prefix
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
