"""Experiment tracking: Weights & Biases (offline unless an API key is present) plus a local JSONL, and plots.

The JSONL is the source of truth that always exists (no account, no network, survives a W&B failure);
W&B mirrors the same scalars for dashboards. Keys are stable slash-separated strings: ``train/loss``,
``eval/<dataset>/accuracy``, ``eval/<dataset>/pass@8``, ``policy/kl``, ``timing/update``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Tracker", "read_jsonl", "plot_curves", "plot_bars", "resolve_mode", "MODES"]

MODES = ("auto", "offline", "online", "none")
_ENV_MODES = {
    "offline": "offline",
    "dryrun": "offline",
    "online": "online",
    "run": "online",
    "disabled": "none",
}


def resolve_mode(mode: str) -> str:
    """Turn a requested mode into "online", "offline" or "none".

    "auto": the ``WANDB_MODE`` environment variable when it is set (offline/online/disabled), else online
    when ``WANDB_API_KEY`` is set, else offline. Explicit modes are returned as they are.
    """
    if mode not in MODES:
        raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in _ENV_MODES:
            raise ValueError(f"WANDB_MODE={env!r} is not one of {sorted(_ENV_MODES)}")
        return _ENV_MODES[env]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _scalar(key: str, value: Any) -> float | int | bool | str | None:
    """A JSON-able scalar from a python/numpy/torch scalar; anything else is an error naming the key."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays, 1-element tensors
    if callable(item):
        try:
            out = item()
        except (ValueError, RuntimeError) as e:
            raise TypeError(f"metric {key!r} is not a scalar ({type(value).__name__}): {e}") from None
        if isinstance(out, (bool, int, float)):
            return out
    raise TypeError(f"metric {key!r} has non-scalar value of type {type(value).__name__}")


class Tracker:
    """Logs scalars to ``run_dir/metrics.jsonl`` always and to W&B unless mode is "none".

    W&B files go under ``run_dir/wandb/``. Start-up is kept fast and quiet: no console capture, no code,
    git or requirements capture, no system-metrics sampler. Use as a context manager, or call
    :meth:`finish`.
    """

    def __init__(
        self,
        run_dir: Path,
        project: str = "rl-latent",
        run_name: str | None = None,
        mode: str = "auto",
        config: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(mode)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"
        self._summary: dict[str, Any] = {}
        self._last_step: int | None = None
        self._finished = False
        self._run: Any = None
        if self.mode != "none":
            import wandb

            settings = wandb.Settings(
                console="off",
                save_code=False,
                disable_code=True,
                disable_git=True,
                disable_job_creation=True,
                x_save_requirements=False,
                x_disable_stats=True,
                x_disable_machine_info=True,
                silent=True,
            )
            self._run = wandb.init(
                project=project,
                name=run_name,
                dir=str(self.run_dir),
                mode=self.mode,
                config=dict(config) if config else None,
                settings=settings,
                reinit="create_new",
            )

    @property
    def wandb_run(self) -> Any:
        """The underlying ``wandb`` run (None in mode "none")."""
        return self._run

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalars at ``step`` (steps must not decrease: W&B silently drops out-of-order steps).

        Writes one JSON object ``{"step": step, "time": unix_seconds, **metrics}`` to metrics.jsonl.
        """
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__} {step!r}")
        if self._last_step is not None and step < self._last_step:
            raise ValueError(f"step {step} is before the last logged step {self._last_step}")
        row: dict[str, Any] = {}
        for k, v in metrics.items():
            if not isinstance(k, str):
                raise TypeError(f"metric keys must be str, got {k!r}")
            if k in ("step", "time"):
                raise ValueError(f"metric key {k!r} is reserved in metrics.jsonl")
            row[k] = _scalar(k, v)
        self._last_step = step
        line = json.dumps({"step": step, "time": time.time(), **row})
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self._run is not None:
            self._run.log(row, step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Set final/best values (merged with earlier calls), in W&B's run summary and ``summary.json``."""
        self._check_open()
        clean = {k: _scalar(k, v) for k, v in metrics.items()}
        self._summary.update(clean)
        tmp = self.summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.summary_path)
        if self._run is not None:
            self._run.summary.update(clean)

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (flushes its files). Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        if self._run is not None:
            self._run.finish(exit_code=exit_code)

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"Tracker for {self.run_dir} is already finished")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def read_jsonl(path: Path | str) -> list[dict]:
    """All rows of a JSONL file; a malformed line is an error naming the file and line number."""
    path = Path(path)
    rows: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _save(fig: Any, out_png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_png, dpi=100)


def plot_curves(records: list[dict], keys: list[str], out_png: Path, title: str) -> None:
    """One panel per key: its value against ``step`` over the records that hold it (e.g. metrics.jsonl).

    Uses matplotlib's object API with the Agg canvas, so it never touches pyplot's global backend.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not keys:
        raise ValueError("plot_curves needs at least one key")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        xs, ys = [], []
        for i, r in enumerate(records):
            if key in r and _is_number(r[key]):
                if "step" not in r:
                    raise ValueError(f"record {i} has {key!r} but no 'step'")
                xs.append(r["step"])
                ys.append(r[key])
        if not xs:
            raise ValueError(f"no record has a finite numeric value for key {key!r}")
        series[key] = (xs, ys)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        xs, ys = series[key]
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    _save(fig, out_png)


def plot_bars(results: dict[str, dict[str, float]], keys: list[str], out_png: Path, title: str) -> None:
    """Grouped bars: one group per metric key, one bar per method (``results[method][key]``), labelled.

    A method without a key gets no bar there (e.g. greedy decoding has no pass@8); a key no method has is
    an error.
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_bars needs at least one method")
    if not keys:
        raise ValueError("plot_bars needs at least one key")
    for key in keys:
        if not any(key in m for m in results.values()):
            raise ValueError(f"no method in results has key {key!r} (methods: {sorted(results)})")
    for method, vals in results.items():
        for key in keys:
            if key in vals and not _is_number(vals[key]):
                raise ValueError(f"results[{method!r}][{key!r}] = {vals[key]!r} is not a finite number")
    methods = list(results)
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(5.0, 1.2 * len(keys) * max(1, len(methods)) / 2 + 2), 4), layout="constrained")
    ax = fig.subplots()
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j, k in enumerate(keys) if k in results[method]]
        ys = [results[method][k] for k in keys if k in results[method]]
        bars = ax.bar(xs, ys, width=width, label=method)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out_png)
