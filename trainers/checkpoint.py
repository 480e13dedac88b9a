"""Atomic training checkpoints and exact resume for every recipe.

Layout of ``run_dir/checkpoints/``::

    step-000123/
        deepspeed/            engine.save_checkpoint: weights, optimizer, LR scheduler (per-rank shards)
        model/                model.save_pretrained (full weights, gathered under ZeRO-3), if the model has it
        trainer_state.json    step, weights version, data position, whatever the trainer passed in ``state``
        rng/rank-00000.pt     python / numpy / torch CPU / CUDA RNG states, one file per rank
    latest                    text file naming the newest complete step dir

A checkpoint is written into a hidden temp dir beside its final place and moved there with ``os.replace``;
only then is ``latest`` rewritten (itself through a temp file + ``os.replace``). A crash at any point leaves
the previous checkpoint and pointer intact, and temp dirs are never read. All ranks must call
``save_checkpoint`` / ``load_checkpoint`` (DeepSpeed's save/load and the ZeRO-3 gather are collective);
rank 0 writes everything except each rank's own DeepSpeed shards and RNG file. Multi-node runs need
``run_dir`` on a shared filesystem, as DeepSpeed's own checkpoints do.
"""

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.engine import gathered_state_dict, unwrap

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
DS_TAG = "deepspeed"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _step_of(path: Path) -> int | None:
    """The step number of a ``step-000123`` dir name, or None for anything else."""
    suffix = path.name[len(STEP_PREFIX) :]
    return int(suffix) if path.name.startswith(STEP_PREFIX) and suffix.isdigit() else None


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` all at once: write a sibling temp file, fsync, ``os.replace``."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, sampling, shuffles) in this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``; a CUDA state is restored only where CUDA exists."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _json_state(step: int, state: dict[str, Any], engine: Any, world_size: int) -> str:
    """trainer_state.json text; names the offending key when ``state`` is not JSON-serialisable."""
    full = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "global_steps": int(engine.global_steps),
        "world_size": world_size,
        "saved_at": time.time(),
    }
    for key, value in state.items():
        try:
            json.dumps(value)
        except TypeError as err:
            raise TypeError(f"save_checkpoint: state[{key!r}] is not JSON-serialisable ({err})") from err
        full[key] = value
    full.setdefault("weights_version", int(engine.global_steps))
    full.setdefault("data_position", None)
    return json.dumps(full, indent=2, sort_keys=True) + "\n"


def save_checkpoint(
    engine: Any, model: torch.nn.Module, run_dir: Path, step: int, state: dict[str, Any], keep: int = 3
) -> Path:
    """Write ``run_dir/checkpoints/step-{step:06d}`` atomically, point ``latest`` at it, prune to ``keep``.

    ``state`` holds the trainer's own JSON-serialisable resume info (data position, weights version, ...);
    it comes back from ``load_checkpoint``. ``keep`` < 1 keeps every checkpoint. Collective: call on all
    ranks. Returns the final checkpoint dir.
    """
    rank, world_size = _rank_world()
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"{STEP_PREFIX}{step:06d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    text = _json_state(step, state, engine, world_size)  # fail before writing anything

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a crash while writing this same step
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()

    engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank-{rank:05d}.pt")
    weights = gathered_state_dict(engine) if hasattr(unwrap(model), "save_pretrained") else None
    if rank == 0:
        if weights is not None:
            unwrap(model).save_pretrained(tmp / "model", state_dict=weights)
        (tmp / STATE_FILE).write_text(text)
    _barrier()

    if rank == 0:
        if final.exists():  # re-saving a step (e.g. after a resume): move the old copy aside first
            old = root / f"{TMP_PREFIX}old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        _write_atomic(root / LATEST, final.name + "\n")
        _prune(root, keep, protect=final.name)
    _barrier()
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (never ``protect``) and stale temp dirs."""
    for path in root.iterdir():
        if path.name.startswith(TMP_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    if keep < 1:
        return
    steps = sorted((p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None), key=_step_of)
    for path in steps[:-keep]:
        if path.name != protect:
            shutil.rmtree(path)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint dirs under ``run_dir/checkpoints``, oldest first (temp dirs excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names; if that is missing or stale, the newest complete one; else None.

    Only dirs that reached their final ``step-*`` name count, so a half-written (temp) dir is never returned.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _step_of(target) is not None and (target / STATE_FILE).is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(engine: Any, ckpt_dir: Path) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG states; return the trainer state dict.

    Collective: call on all ranks, with an engine built exactly as for the saved run (same model, ZeRO
    stage and world size, since the DeepSpeed shards are per rank).
    """
    ckpt_dir = Path(ckpt_dir)
    state_file = ckpt_dir / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a complete checkpoint: {STATE_FILE} is missing")
    state = json.loads(state_file.read_text())
    rank, world_size = _rank_world()
    if state.get("world_size", world_size) != world_size:
        raise ValueError(
            f"{ckpt_dir} was saved with world_size={state['world_size']}, this run has {world_size}: "
            "DeepSpeed's per-rank optimizer shards cannot be loaded across world sizes"
        )
    load_path, _ = engine.load_checkpoint(
        str(ckpt_dir), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint under {ckpt_dir / DS_TAG}")
    rng_file = ckpt_dir / "rng" / f"rank-{rank:05d}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: cannot restore rank {rank}'s RNG states")
    set_rng_state(torch.load(rng_file, weights_only=False))
    return state
