"""`ray start --head` + `ray job submit -- rl-latent train ...` on loopback, as the README documents it."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_listeners() -> list[str]:
    """Local addresses of every listening socket owned by a Ray server process on this machine."""
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status != psutil.CONN_LISTEN or c.pid is None:
            continue
        try:
            name = psutil.Process(c.pid).name()
        except psutil.Error:
            continue
        if name.startswith(("gcs_server", "raylet")):
            out.append(c.laddr.ip)
    return out


def test_ray_local_listens_on_loopback_only(ray_local):
    node = ray_local.nodes()[0]
    assert node["NodeManagerAddress"] == "127.0.0.1"
    ips = _ray_listeners()
    assert ips and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in ips), ips


def test_ray_job_submit_runs_the_training_entry_point(tiny_latent_dirs, tmp_path):
    port, dash = _free_port(), _free_port()
    # Every fixed default port too: the session's own local Ray already holds the agents' defaults (52365...).
    ports = [f"--{name}-port={_free_port()}" for name in ("dashboard-agent-listen", "dashboard-agent-grpc",
             "metrics-export", "runtime-env-agent", "ray-client-server")]  # fmt: skip
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only (README: "Ray on a cluster")
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `rl-latent` (a venv's bin)
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
         *ports],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path / "job"
    try:
        cmd = [
            str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
            "--working-dir", str(REPO), "--", "rl-latent", "train", "configs/grpo-quickstart.yaml",
            f"train.init_from={tiny_latent_dirs['soft']}",
            f"train.output_dir={out}", "train.max_steps=2", "rl.prompts_per_step=2", "rl.group_size=2",
            "rl.minibatches=1", "rl.eval_problems=2", "rl.eval_n=8", "data.n_train=32", "data.n_valid=4",
            "data.n_test=4", "eval.max_new_tokens=4", "tracking.wandb=offline",
        ]  # fmt: skip
        deadline = time.time() + 120
        not_up_yet = ("ConnectionError", "No available agent", "try again later")
        while True:  # the job API and its agent come up a few seconds after the head starts
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
            log = res.stdout + res.stderr
            if res.returncode == 0 or time.time() > deadline or not any(s in log for s in not_up_yet):
                break
            time.sleep(2)
        assert res.returncode == 0, log[-3000:]
        assert "succeeded" in log
        assert '"weights_version": 2' in log  # the job printed the run's summary
        assert (out / "model" / "model.safetensors").is_file()
        assert (out / "pass_at_k.png").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its own processes, and only those
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
