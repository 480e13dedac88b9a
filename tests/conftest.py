"""Test-wide settings: no hub lookups, W&B offline, and paths to the shared real data."""

import os
from pathlib import Path

import pytest

# Set before any test imports transformers/wandb: a hub lookup otherwise spends 20-50 s failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# The real GSM8K / iCoT files live beside the checkout (never committed here).
SHARED_DATA = Path(os.environ.get("RL_LATENT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: a missing one is a failure
            pytest.fail(f"shared data not found at {SHARED_DATA}")
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, bound to loopback (4 logical CPUs: workers and ranks are light here)."""
    import ray

    from trainers.rl import init_ray

    init_ray(None, 4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_latent_dirs(tmp_path_factory):
    """Saved tiny latent models (soft and hidden heads) that Ray workers and trainer ranks load by path."""
    from tests.rollouts.latent_fixtures import make_latent_model

    root = tmp_path_factory.mktemp("latent_models")
    out = {}
    for head in ("soft", "hidden"):
        make_latent_model(head).save_pretrained(root / head)
        out[head] = str(root / head)
    # a System-1.5 model: the soft one with routers and adapters at both layers, routers near w = 1/2
    import torch

    from rl_latent.model.shortcuts import SHORTCUT_NAME, Shortcuts

    model = make_latent_model("soft")
    sc = Shortcuts(model.hidden_size, model.num_layers, [0, 1], rank=8, router_hidden=8)
    for r in sc.routers.values():
        torch.nn.init.zeros_(r.net[-1].bias)
    model.heads[SHORTCUT_NAME] = sc
    model.latent_extra["shortcut"] = {"lam": 0.5}
    model.save_pretrained(root / "system15")
    out["system15"] = str(root / "system15")
    return out
