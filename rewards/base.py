"""The reward interface: what a reward sees (Sample), how it is named (registry, dotted path, entry point),
weighted (RewardSpec) and run over a batch with errors that name the reward and the sample (score).

A reward is ``fn(samples: list[Sample], **kwargs)`` returning one float per sample (list/tuple, 1-D tensor
or numpy array) or a dict of named components, each one float per sample.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rl_latent.compute import SampleCompute

ENTRY_POINT_GROUP = "rl_latent.rewards"
REGISTRY: dict[str, Callable] = {}


@dataclass(frozen=True)
class Sample:
    """What a reward sees about one finished sample."""

    question: str
    answer: str  # decoded answer text
    target: str  # gold answer ("" if unknown)
    latent_steps: int
    compute: SampleCompute
    metadata: dict = field(default_factory=dict)  # free-form, e.g. {"prompt_index": 3}


def groups(samples: list[Sample]) -> list[list[int]]:
    """The indices of each prompt's samples: ``metadata["group"]`` when the trainer sets it, else the question
    text (GRPO's group; rewards that compare a sample with its siblings use this)."""
    out: dict[object, list[int]] = {}
    for i, s in enumerate(samples):
        out.setdefault(s.metadata.get("group", ("question", s.question)), []).append(i)
    return list(out.values())


def samples_of(traj: Any) -> list[Sample]:
    """The samples of a :class:`rollouts.trajectory.Trajectory` (empty metadata -> ``{}`` for each)."""
    n = len(traj.questions)
    steps = [int(s) for s in torch.as_tensor(traj.latent_steps).reshape(-1).tolist()]
    metadata = traj.metadata or [{} for _ in range(n)]
    lengths = {"answers": len(traj.answers), "targets": len(traj.targets), "latent_steps": len(steps)}
    lengths |= {"compute": len(traj.compute), "metadata": len(metadata)}
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise ValueError(f"trajectory has {n} questions but {bad}")
    return [
        Sample(traj.questions[i], traj.answers[i], traj.targets[i], steps[i], traj.compute[i], metadata[i])
        for i in range(n)
    ]


class RewardError(RuntimeError):
    """A reward failed; the message names the reward and, where one is to blame, the sample."""


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` loadable as ``name``. A name already registered is a ValueError."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"reward name must be a non-empty string without ':', got {name!r}")

    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"reward {name!r} is already registered (by {REGISTRY[name]!r})")
        REGISTRY[name] = fn
        return fn

    return deco


def _import_path(spec: str, module: str, attr: str) -> Any:
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError:
        raise
    except Exception as e:  # the module exists but fails to import
        raise ImportError(f"reward {spec!r}: importing {module!r} raised {e!r}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"reward {spec!r}: module {module!r} has no attribute {attr!r}") from None
    return obj


def _resolve(spec: str) -> tuple[Callable, str]:
    """(callable, short name) for ``spec``: registry name, then dotted path, then entry point."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"reward spec must be a non-empty string, got {spec!r}")
    if spec in REGISTRY:
        return REGISTRY[spec], spec
    fn, short, missing = None, spec, ""
    if ":" in spec or "." in spec:
        module, attr = spec.split(":", 1) if ":" in spec else spec.rsplit(".", 1)
        try:
            fn, short = _import_path(spec, module, attr), attr.rsplit(".", 1)[-1]
        except ModuleNotFoundError as e:
            # the path names no module at all: without ':' the spec may still be an entry point's name
            own = bool(e.name) and (module == e.name or module.startswith(e.name + "."))
            if ":" in spec or not own:
                raise ImportError(f"reward {spec!r}: cannot import {module!r}: {e!r}") from e
            missing = f" (no module {e.name!r})"
    if fn is None:
        eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if spec not in eps:
            close = difflib.get_close_matches(spec, sorted(REGISTRY) + sorted(eps), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown reward {spec!r}{missing}: not a registered name {sorted(REGISTRY)}, an importable "
                f"'pkg.mod:attr' path, or an entry point in group {ENTRY_POINT_GROUP!r} {sorted(eps)}{hint}"
            )
        try:
            fn = eps[spec].load()
        except Exception as e:
            raise ImportError(f"reward {spec!r}: loading entry point {eps[spec].value!r} raised {e!r}") from e
    if not callable(fn):
        raise TypeError(f"reward {spec!r} resolved to {type(fn).__name__} {fn!r}, which is not callable")
    return fn, short


def load_reward(spec: str) -> Callable:
    """The reward named by ``spec``: a registry name, ``pkg.mod:attr``/``pkg.mod.attr``, or an entry point."""
    return _resolve(spec)[0]


@dataclass
class RewardSpec:
    """One reward in the config: ``name`` (any spec :func:`load_reward` takes), weight, keyword arguments."""

    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, item: str | dict | RewardSpec) -> RewardSpec:
        """``"correct"`` or ``{"name": "compute", "weight": 0.1, "kwargs": {"budget": 4}}``."""
        if isinstance(item, RewardSpec):
            return item
        if isinstance(item, str) and item:
            return cls(name=item)
        if not isinstance(item, dict):
            raise ValueError(f"reward config item must be a name or a dict, got {item!r}")
        unknown = set(item) - {"name", "weight", "kwargs"}
        if unknown:
            raise ValueError(f"reward config item {item!r} has unknown keys {sorted(unknown)}")
        name, weight, kwargs = item.get("name"), item.get("weight", 1.0), item.get("kwargs") or {}
        if not isinstance(name, str) or not name:
            raise ValueError(f"reward config item {item!r} needs a non-empty string 'name'")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise ValueError(f"reward config item {item!r}: 'weight' must be a finite number")
        if not isinstance(kwargs, dict):
            raise ValueError(f"reward config item {item!r}: 'kwargs' must be a dict")
        return cls(name=name, weight=float(weight), kwargs=dict(kwargs))


@dataclass
class Scored:
    """The rewards of a batch (see :func:`score`)."""

    total: torch.Tensor  # [B] float32: sum over components of weight * value (0 where not valid)
    components: dict[str, torch.Tensor]  # name -> [B] float32, unweighted (0 where not valid)
    valid: torch.Tensor  # [B] bool: False where a reward failed on the sample (on_error="skip")
    errors: list[str]  # one line per skipped sample

    def select(self, idx: list[int]) -> Scored:
        """These samples' scores, in this order (the errors stay: they were logged for every sample)."""
        t = torch.as_tensor(idx, dtype=torch.long)
        return Scored(
            self.total[t], {k: v[t] for k, v in self.components.items()}, self.valid[t], self.errors
        )

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        """Several batches' scores in order (the rounds of dynamic sampling); components must agree."""
        keys = list(parts[0].components)
        if any(list(p.components) != keys for p in parts):
            raise ValueError("Scored.concat: batches scored with different reward components")
        return Scored(
            torch.cat([p.total for p in parts]),
            {k: torch.cat([p.components[k] for p in parts]) for k in keys},
            torch.cat([p.valid for p in parts]),
            [e for p in parts for e in p.errors],
        )


def _where(i: int, s: Sample) -> str:
    q = s.question if len(s.question) <= 40 else s.question[:40] + "..."
    return f"sample {i} (question: {q!r})"


def _values(spec: str, out: Any, n: int) -> dict[str | None, list[float]]:
    """A reward's return value as {component or None: n floats}; a malformed value is a RewardError."""
    if isinstance(out, dict):
        if not out:
            raise RewardError(f"reward {spec!r} returned an empty dict")
        bad = [k for k in out if not isinstance(k, str) or not k]
        if bad:
            raise RewardError(f"reward {spec!r} returned a dict key {bad[0]!r}; keys must be non-empty str")
        return {k: _values(spec, v, n)[None] for k, v in out.items()}
    if isinstance(out, torch.Tensor | np.ndarray):
        if out.ndim != 1:
            raise RewardError(f"reward {spec!r} returned a {out.ndim}-D array of shape {tuple(out.shape)}")
        out = out.tolist()
    if not isinstance(out, list | tuple):
        raise RewardError(f"reward {spec!r} returned {type(out).__name__}, expected a list of floats or dict")
    if len(out) != n:
        raise RewardError(f"reward {spec!r} returned {len(out)} values for {n} samples")
    out = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in out]
    for i, v in enumerate(out):
        if not isinstance(v, numbers.Real):
            raise RewardError(f"reward {spec!r} returned non-numeric {v!r} for sample {i}")
    return {None: [float(v) for v in out]}


def _run(spec: RewardSpec, fn: Callable, samples: list[Sample], raise_: bool):
    """Values of one reward, and {sample index: reason} for the samples it failed on (skip mode)."""
    try:
        out = fn(samples, **spec.kwargs)
    except Exception as e:
        return _run_each(spec, fn, samples, raise_, e)
    return _values(spec.name, out, len(samples)), {}


def _run_each(spec: RewardSpec, fn: Callable, samples: list[Sample], raise_: bool, batch_err: Exception):
    """After the batch call raised: call the reward sample by sample to find the samples to blame."""
    per: list[dict | None] = []
    failed: dict[int, str] = {}
    for i, s in enumerate(samples):
        try:
            out = fn([s], **spec.kwargs)
        except Exception as e:
            reason = f"reward {spec.name!r} raised {e!r} on {_where(i, s)}"
            if raise_:
                raise RewardError(reason) from e
            per.append(None)
            failed[i] = reason
            continue
        per.append(_values(spec.name, out, 1))
    if not failed:
        raise RewardError(
            f"reward {spec.name!r} raised {batch_err!r} on the batch of {len(samples)} but on no one sample"
        ) from batch_err
    ok = [p for p in per if p is not None]
    if not ok:  # failed on every sample: its components are unknown, report it under its name
        return {None: [math.nan] * len(samples)}, failed
    if any(p.keys() != ok[0].keys() for p in ok):
        raise RewardError(f"reward {spec.name!r} returned different components for different samples")
    return {k: [math.nan if p is None else p[k][0] for p in per] for k in ok[0]}, failed


def score(samples: list[Sample], specs: list[RewardSpec], on_error: str = "raise") -> Scored:
    """Run every reward in ``specs`` over ``samples`` and combine: total = sum_r weight_r * value_r.

    A reward that raises on the batch is re-run sample by sample to find the culprits; a sample on which a
    reward raises or returns NaN/inf is a :class:`RewardError` naming the reward and the sample
    (``on_error="raise"``), or is marked invalid with every component and the total 0 (``"skip"``).
    A malformed return value (wrong count, non-numeric, bad dict) is always an error: it is a bug in the
    reward, not in a sample. Component keys: the reward's short name (the attribute's name for a dotted
    path), or ``"<short name>/<component>"`` for a dict. An empty batch scores to empty tensors, no call.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    specs = [RewardSpec.from_config(s) for s in specs]
    if not specs:
        raise ValueError("score needs at least one reward spec")
    n = len(samples)
    if n == 0:
        return Scored(torch.zeros(0), {}, torch.zeros(0, dtype=torch.bool), [])
    resolved = []
    for spec in specs:
        fn, short = _resolve(spec.name)
        if short in [r[2] for r in resolved]:
            raise ValueError(f"two rewards are both named {short!r}; their components would collide")
        try:
            inspect.signature(fn).bind(samples, **spec.kwargs)
        except TypeError as e:
            raise ValueError(f"reward {spec.name!r} does not accept kwargs {spec.kwargs}: {e}") from None
        except ValueError:  # no signature to check (some builtins)
            pass
        resolved.append((spec, fn, short))
    values: dict[str, tuple[float, list[float]]] = {}
    failed: dict[int, list[str]] = {}
    for spec, fn, short in resolved:
        vals, bad = _run(spec, fn, samples, on_error == "raise")
        for i, reason in bad.items():
            failed.setdefault(i, []).append(reason)
        for comp, vs in vals.items():
            key = short if comp is None else f"{short}/{comp}"
            if key in values:
                raise ValueError(f"two rewards produce component {key!r}; give them distinct names")
            for i, v in enumerate(vs):
                if i not in bad and not math.isfinite(v):
                    reason = f"reward {spec.name!r} returned {v} for {key!r} on {_where(i, samples[i])}"
                    if on_error == "raise":
                        raise RewardError(reason)
                    failed.setdefault(i, []).append(reason)
            values[key] = (spec.weight, vs)
    valid = torch.tensor([i not in failed for i in range(n)], dtype=torch.bool)
    components = {k: torch.tensor(vs, dtype=torch.float64).where(valid, 0.0) for k, (_, vs) in values.items()}
    total = torch.zeros(n, dtype=torch.float64)
    for k, (w, _) in values.items():
        total += w * components[k]
    errors = ["; ".join(failed[i]) for i in sorted(failed)]
    return Scored(total.float(), {k: v.float() for k, v in components.items()}, valid, errors)
