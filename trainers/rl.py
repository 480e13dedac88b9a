"""The RL loop (GRPO and PPO share it): Ray rollout workers, rewards, a DeepSpeed trainer group, tracking.

    loop:
      prompts (a seeded order of the train split) -> RolloutPool (Ray actors, weights v) -> Trajectory
      rewards/ -> total + named components per sample (a failing reward stops the run or skips the sample)
      advantages: group-normalised (GRPO) here; PPO's GAE is computed on the ranks, which hold the value head
      TrainerRank actors (one DeepSpeed group): replay, clipped loss, epochs x minibatches optimizer steps
      publish weights v+1 (object store, checksummed) -> every worker loads them; log; evaluate; checkpoint

Every random draw of a rollout comes from a per-sample seed derived from (train.seed, step, prompt, sample),
and the data order is a pure function of the step, so a run resumed from a checkpoint takes exactly the
steps an uninterrupted run takes. Keys: ``train/*``, ``policy/*``, ``timing/*``, ``rollout/*``,
``eval/<dataset>/{accuracy,pass@k,latent_steps,layer_evals}``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rl_latent.config import Config, ConfigError, dump, to_dict
from rl_latent.data.build import dataset_name, load_splits
from rl_latent.metrics import answers_match, extract_answer, mean_pass_at_k
from rl_latent.model.shortcuts import SHORTCUT_NAME
from rl_latent.tracking import Tracker, plot_curves, read_jsonl
from rollouts.pool import Request, RolloutPool
from rollouts.trajectory import Trajectory
from trainers.common import batch_indices, resumable_checkpoint, run_dir
from trainers.grpo import fill_groups, group_advantages, informative_groups, unlikeliness_rewards

TIMING_KEYS = ("rollout", "reward", "update", "sync")


def sample_seed(*parts: int) -> int:
    """A 62-bit seed from integers (a fixed polynomial hash: stable across processes and Python runs)."""
    h = 1469598103934665603
    for p in parts:
        h = (h * 1099511628211 + int(p) + 0x9E3779B9) % (1 << 62)
    return h


def eval_requests(rows: list[dict], n: int, seed: int) -> list[Request]:
    """n requests per held-out row, sample k of problem p seeded by (seed, -1, p, k): the same draws at every
    evaluation of a run (and of every run with the same ``rl.eval_seed``), so pass@k moves with the weights
    only, not with the noise."""
    return [
        Request(r["question"], str(r["answer"]), sample_seed(seed, -1, p, k), {})
        for p, r in enumerate(rows)
        for k in range(n)
    ]


def loopback_only() -> None:
    """Make every Ray process this one starts advertise and listen on 127.0.0.1 only.

    Ray turns ``--node-ip-address=127.0.0.1`` into the machine's routable address and binds its servers on
    every interface, except where it thinks clusters are unsupported; this flag (read by Ray at import and by
    the processes it spawns) puts a Linux node in that loopback-only mode."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def round_size(n: int, found: int, rolled: int) -> int:
    """Prompts to roll out in a round of dynamic sampling: all ``n`` first (and while none was informative),
    then the ``n - found`` still missing over the informative share seen so far, plus one, at most ``n``."""
    if found == 0:
        return n
    return min(n, math.ceil((n - found) * rolled / found) + 1)


def init_ray(address: str | None, cpus_needed: float) -> None:
    """Join the cluster at ``address`` / $RAY_ADDRESS, else start a local one bound to loopback."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    loopback_only()
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, int(cpus_needed + 0.999)),
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )


class RLRun:
    """setup / train / cleanup of one RL run (torchtune-style recipe), for an algorithm class (GRPO, PPO)."""

    def __init__(self, cfg: Config, algo_cls: type, progress: bool = True):
        self.cfg, self.algo_cls, self.progress = cfg, algo_cls, progress

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import ray

        from trainers.learner import TrainerRank, free_port, node_address

        cfg, rl = self.cfg, self.cfg.rl
        self.dir = run_dir(cfg)
        ckpt = resumable_checkpoint(cfg, self.dir)
        model_dir = cfg.train.init_from or cfg.model.name_or_path
        if not model_dir:
            raise ValueError(
                f"{cfg.train.recipe}: RL starts from a latent model: set train.init_from to a CODI model dir "
                "(e.g. runs/quickstart/codi_soft/model)"
            )
        needs = [k for k, on in (("latent.learn_exits", cfg.latent.learn_exits),
                                 (f"rl.trainable={rl.trainable}", rl.trainable != "all")) if on]  # fmt: skip
        if needs:
            meta = Path(model_dir) / "latent_config.json"
            heads = json.loads(meta.read_text()).get("heads", {}) if meta.is_file() else {}
            if SHORTCUT_NAME not in heads:
                raise ConfigError(
                    f"{needs[0]}: {model_dir} has no System-1.5 shortcuts (routers and adapters) to train; "
                    "start from a system15 stage's model (e.g. runs/quickstart/system15/model)"
                )
        dump(cfg, self.dir / "config.yaml")
        self.splits = load_splits(cfg.data)
        self.data_name = dataset_name(cfg.data)
        from rewards import RewardSpec

        self.reward_specs = [RewardSpec.from_config(r) for r in rl.rewards]
        init_ray(rl.ray_address, rl.workers * rl.worker_cpus + rl.trainer_ranks * rl.trainer_cpus)
        self.pool = RolloutPool(model_dir, rl.workers, rl.worker_cpus, rl.worker_gpus)
        master = (node_address(), free_port())
        actor = ray.remote(TrainerRank)
        self.ranks = [
            actor.options(num_cpus=rl.trainer_cpus, num_gpus=rl.trainer_gpus).remote(
                cfg, self.algo_cls, model_dir, r, rl.trainer_ranks, master
            )
            for r in range(rl.trainer_ranks)
        ]
        ray.get([r.ready.remote() for r in self.ranks])
        self.tracker = Tracker(
            self.dir,
            project=cfg.tracking.project,
            run_name=cfg.tracking.run_name or self.dir.name,
            mode=cfg.tracking.wandb,
            config=to_dict(cfg),
        )
        self.step, self.version, self.train_seconds = 0, 0, 0.0
        if ckpt is not None:
            states = ray.get([r.load.remote(str(ckpt)) for r in self.ranks])
            self.step, self.version = states[0]["step"], states[0]["weights_version"]
            self.train_seconds = states[0]["train_seconds"]
            self._say(f"resumed from {ckpt} at step {self.step} (weights v{self.version})")
        self.sync_s = self._push_weights()
        lc = cfg.latent
        self.policy_kwargs = dict(
            tau=lc.tau, concentration=lc.concentration, dirichlet_floor=lc.dirichlet_floor, std=lc.std
        )
        self._say(
            f"{self.algo_cls.name}: {self.data_name}, {rl.prompts_per_step} prompts x {rl.group_size} samples"
            f" per step, {rl.workers} rollout worker(s), {rl.trainer_ranks} trainer rank(s), "
            f"policy {lc.policy}, rewards {[s.name for s in self.reward_specs]}"
        )

    def _push_weights(self) -> float:
        """Trainer rank 0 puts the weights into the object store once; every worker loads them."""
        import ray

        t0 = time.perf_counter()
        out = ray.get([r.publish.remote() for r in self.ranks])[0]
        snapshot, checksum = out
        self.pool.sync(snapshot, self.version, checksum)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ one step
    def requests(self, step: int, round_: int = 0, n: int | None = None) -> list[Request]:
        """The step's ``n`` (default ``prompts_per_step``) prompts, ``group_size`` samples each, with their
        seeds. Round r > 0 (dynamic sampling) draws from a permutation of its own: a function of (step, round,
        n) only, so a resumed run reads the same prompts."""
        rl, train, seed0 = self.cfg.rl, self.splits["train"], self.cfg.train.seed
        n = rl.prompts_per_step if n is None else n
        idx = batch_indices(len(train), n, seed0 + 7919 * round_, step)
        reqs = []
        for p, i in enumerate(idx, start=round_ * rl.prompts_per_step):
            row = train[i]
            for g in range(rl.group_size):
                seed = sample_seed(seed0, step, p, g)
                reqs.append(Request(row["question"], str(row["answer"]), seed, {"row": i, "group": p}))
        return reqs

    def collect(self, t: dict[str, float]) -> tuple[Trajectory, Any, dict[str, float]]:
        """Roll out and score the step's groups.

        With ``rl.dynamic_sampling = R``, up to R more rounds of fresh prompts run until ``prompts_per_step``
        groups have rewards that differ; the step keeps those (then, if too few were found, uniform ones: see
        ``fill_groups``), each round sized by ``round_size``. Returns the kept samples, their scores, and
        statistics over everything rolled out (there, accuracy is the policy's, not the filtered batch's)."""
        from rewards import samples_of, score
        from rewards.base import Scored

        cfg, rl = self.cfg, self.cfg.rl
        N = rl.prompts_per_step
        parts, scores, infos, found, rolled = [], [], [], 0, 0
        t["rollout"] = t["reward"] = 0.0
        for r in range(1 + rl.dynamic_sampling):
            n = round_size(N, found, rolled)
            rolled += n
            t0 = time.perf_counter()
            traj = self.pool.rollout(
                self.requests(self.step, r, n), policy=cfg.latent.policy, policy_kwargs=self.policy_kwargs,
                answer_temperature=rl.answer_temperature, max_answer_tokens=cfg.eval.max_new_tokens,
                learn_exits=cfg.latent.learn_exits, exit_temperature=cfg.latent.exit_temperature,
            )  # fmt: skip
            t1 = time.perf_counter()
            scored = score(samples_of(traj), self.reward_specs, on_error=rl.on_reward_error)
            parts.append(traj)
            scores.append(scored)
            t["rollout"] += t1 - t0
            t["reward"] += time.perf_counter() - t1
            infos.append(informative_groups(scored.total, rl.group_size, scored.valid))
            found += int(infos[-1].sum())
            if found >= N:
                break
        traj = parts[0] if len(parts) == 1 else Trajectory.concat(parts)
        scored = scores[0] if len(scores) == 1 else Scored.concat(scores)
        correct = [answers_match(extract_answer(a), g) for a, g in zip(traj.answers, traj.targets)]
        info = torch.cat(infos)
        stats = {
            "train/accuracy": sum(correct) / len(correct),
            "train/informative_groups": float(info[:N].float().mean()),
            "rollout/rounds": float(len(parts)),
        }
        if len(parts) > 1:
            G = rl.group_size
            idx = [g * G + i for g in fill_groups(info, N) for i in range(G)]
            traj = traj.select(idx)
            scored = scored.select(idx)
        return traj, scored, stats

    def rl_step(self) -> dict[str, float]:
        import ray

        rl = self.cfg.rl
        t: dict[str, float] = {}
        traj, scored, collected = self.collect(t)
        traj.rewards, traj.reward_components = scored.total, scored.components
        for line in scored.errors:
            self._say(f"step {self.step}: skipped {line}")
        t0 = time.perf_counter()
        rewards = unlikeliness_rewards(scored.total, traj.logp(), rl.group_size, rl.unlikely_beta)
        adv = group_advantages(
            rewards,
            rl.group_size,
            scored.valid,
            std_normalize=not rl.dr_grpo,
            k=rl.pass_k,
            positive_weight=rl.positive_weight,
        )
        t["reward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        per_rank = len(traj) // rl.trainer_ranks
        futures = []
        for r, actor in enumerate(self.ranks):
            idx = list(range(r * per_rank, (r + 1) * per_rank))
            sub = traj.select(idx)
            sub.action_mask &= scored.valid[idx, None]  # a skipped sample contributes no loss position
            sub.stop_mask &= scored.valid[idx, None]
            sub.answer_mask &= scored.valid[idx, None]
            futures.append(actor.update.remote(sub, adv[idx], self.step))
        stats = ray.get(futures)
        t["update"] = time.perf_counter() - t0
        self.version += 1
        t["sync"] = self._push_weights()
        out = {f"train/{k}": float(v.mean()) for k, v in scored.components.items()}
        out.update(collected)
        out.update({
            "train/reward": float(scored.total[scored.valid].mean()) if scored.valid.any() else 0.0,
            "train/latent_steps": float(traj.latent_steps.float().mean()),
            "train/answer_tokens": float(traj.answer_mask.sum(-1).float().mean()),
            "train/skipped": float((~scored.valid).sum()),
            "train/lr": stats[0]["lr"],
            "rollout/staleness": float(self.version - 1 - traj.weights_version),
            "rollout/restarts": float(self.pool.restarts),
        })  # fmt: skip
        for k in ("kl", "clipfrac", "entropy", "logprob_gap", "ratio"):
            agg = max if k == "logprob_gap" else (lambda xs: sum(xs) / len(xs))
            out[f"policy/{k}"] = agg([s[k] for s in stats])
        for k in ("loss", "pg_loss", "grad_norm", "value_loss"):
            if k in stats[0]:
                out[f"train/{k}"] = sum(s[k] for s in stats) / len(stats)
        out.update({f"timing/{k}": v for k, v in t.items()})
        return out

    # ------------------------------------------------------------------ evaluation through the pool
    def evaluate(self, split: str | None = None) -> dict[str, float]:
        """Greedy accuracy, unbiased pass@k (n samples of the training policy), latent steps, layer evals."""
        cfg, rl = self.cfg, self.cfg.rl
        rows = self.splits[split or cfg.eval.split]
        rows = [rows[i] for i in range(min(len(rows), rl.eval_problems))]
        greedy = self.pool.rollout(
            [Request(r["question"], str(r["answer"]), 0, {}) for r in rows], policy="vanilla",
            policy_kwargs={}, answer_temperature=0.0, max_answer_tokens=cfg.eval.max_new_tokens,
        )  # fmt: skip
        reqs = eval_requests(rows, rl.eval_n, cfg.train.seed if rl.eval_seed is None else rl.eval_seed)
        sampled = self.pool.rollout(
            reqs, policy=cfg.latent.policy, policy_kwargs=self.policy_kwargs,
            answer_temperature=rl.answer_temperature, max_answer_tokens=cfg.eval.max_new_tokens,
            learn_exits=cfg.latent.learn_exits, exit_temperature=cfg.latent.exit_temperature,
        )  # fmt: skip
        ok = [answers_match(extract_answer(a), r.target) for a, r in zip(sampled.answers, reqs)]
        counts = [sum(ok[p * rl.eval_n : (p + 1) * rl.eval_n]) for p in range(len(rows))]
        res = mean_pass_at_k([rl.eval_n] * len(rows), counts, rl.eval_ks)
        res["accuracy"] = sum(
            answers_match(extract_answer(a), str(r["answer"])) for a, r in zip(greedy.answers, rows)
        ) / len(rows)
        res["latent_steps"] = sum(c.latent_steps for c in sampled.compute) / len(sampled.compute)
        res["layer_evals"] = sum(c.layer_evals for c in sampled.compute) / len(sampled.compute)
        res["greedy_latent_steps"] = float(greedy.latent_steps.float().mean())
        res["positions"] = sum(c.positions for c in greedy.compute) / len(greedy.compute)
        return res

    def _eval_and_log(self) -> dict[str, float]:
        t0 = time.perf_counter()
        res = self.evaluate()
        self.tracker.log({f"eval/{self.data_name}/{k}": v for k, v in res.items()}, step=self.step)
        ks = " ".join(f"pass@{k} {res[f'pass@{k}']:.3f}" for k in self.cfg.rl.eval_ks)
        self._say(
            f"step {self.step}: eval accuracy {res['accuracy']:.3f}, {ks}, "
            f"{res['latent_steps']:.2f} latent steps ({time.perf_counter() - t0:.0f}s)"
        )
        return res

    # ------------------------------------------------------------------ train
    def train(self) -> None:

        tc, rl = self.cfg.train, self.cfg.rl
        self.first_eval = self._eval_and_log() if self.step == 0 else None
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.algo_cls.name, disable=not self.progress)
        saved = self.step
        while self.step < tc.max_steps:
            if tc.time_budget_s and self.train_seconds >= tc.time_budget_s:
                self._say(f"time budget {tc.time_budget_s:.0f}s reached at step {self.step}")
                break
            t0 = time.perf_counter()
            scalars = self.rl_step()
            self.step += 1
            self.train_seconds += time.perf_counter() - t0
            scalars["train/seconds"] = self.train_seconds
            self.tracker.log(scalars, step=self.step)
            bar.update(1)
            bar.set_postfix(
                reward=f"{scalars['train/reward']:.3f}", acc=f"{scalars['train/accuracy']:.2f}",
                steps=f"{scalars['train/latent_steps']:.2f}", gap=f"{scalars['policy/logprob_gap']:.1e}",
            )  # fmt: skip
            if rl.eval_every and self.step % rl.eval_every == 0 and self.step < tc.max_steps:
                self._eval_and_log()
            if tc.save_every and self.step % tc.save_every == 0:
                self._save()
                saved = self.step
        bar.close()
        if saved != self.step:
            self._save()

    def _save(self) -> None:
        import ray

        state = {
            "weights_version": self.version,
            "data_position": self.step * self.cfg.rl.prompts_per_step,
            "train_seconds": self.train_seconds,
        }
        ray.get(
            [
                r.save.remote(str(self.dir), self.step, state, self.cfg.train.keep_checkpoints)
                for r in self.ranks
            ]
        )

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> dict[str, Any]:
        import ray

        final = self._eval_and_log()
        model_dir = self.dir / "model"
        ray.get([r.export.remote(str(model_dir)) for r in self.ranks])
        ks = [f"eval/{self.data_name}/pass@{k}" for k in self.cfg.rl.eval_ks]
        records = read_jsonl(self.tracker.metrics_path)
        plot_curves(records, ks, self.dir / "pass_at_k.png", title=f"{self.algo_cls.name}: pass@k vs step")
        summary = {
            "accuracy": final["accuracy"],
            "positions": final["positions"],
            **{f"pass@{k}": final[f"pass@{k}"] for k in self.cfg.rl.eval_ks},
            "latent_steps": final["latent_steps"],
            "greedy_latent_steps": final["greedy_latent_steps"],
            "layer_evals": final["layer_evals"],
            "train_seconds": round(self.train_seconds, 1),
            "steps": self.step,
            "weights_version": self.version,
            "model_dir": str(model_dir),
            "plot": str(self.dir / "pass_at_k.png"),
        }
        if self.first_eval is not None:
            keys = [
                "accuracy",
                "latent_steps",
                "greedy_latent_steps",
                *(f"pass@{k}" for k in self.cfg.rl.eval_ks),
            ]
            summary.update({f"start/{k}": self.first_eval[k] for k in keys})
        self.tracker.summary(summary)
        self.tracker.finish()
        self.shutdown()
        self._say(self._readable(summary))
        return summary

    def _readable(self, s: dict[str, Any]) -> str:
        """The run in a few lines: start -> end for each metric, then where things are."""
        lines = [f"{self.algo_cls.name}: {s['steps']} steps in {s['train_seconds']:.0f} s"]
        for k in ["accuracy", *(f"pass@{k}" for k in self.cfg.rl.eval_ks), "latent_steps"]:
            start = f"{s[f'start/{k}']:.3f} -> " if f"start/{k}" in s else ""
            lines.append(f"  {k:<13}{start}{s[k]:.3f}")
        lines.append(
            f"  model {s['model_dir']}, pass@k curve {s['plot']}, scalars {self.tracker.metrics_path}"
        )
        return "\n".join(lines)

    def shutdown(self) -> None:
        import ray

        self.pool.shutdown()
        for r in self.ranks:
            ray.kill(r)
        self.ranks = []

    def _say(self, msg: str) -> None:
        if self.progress:
            tqdm.write(msg)


def run_rl(cfg: Config, algo_cls: type, progress: bool = True) -> dict[str, Any]:
    run = RLRun(cfg, algo_cls, progress=progress)
    run.setup()
    try:
        run.train()
        return run.cleanup()
    except BaseException:
        run.tracker.finish(exit_code=1)
        run.shutdown()
        raise


__all__ = ["RLRun", "run_rl", "sample_seed", "eval_requests", "init_ray", "TIMING_KEYS"]
