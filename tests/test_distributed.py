"""Data-parallel training under torchrun (gloo, two CPU processes) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def train(toy_npz: Path, run_dir: Path, *args, procs: int = 1, resume: bool = False, epochs: int = 1):
    """``rnnrbm train`` in a child process: plain, or under torchrun with ``procs`` processes."""
    common = ["--epochs", str(epochs), "--device", "cpu"]
    if resume:
        cli = ["train", "--resume", str(run_dir), *common]
    else:
        cli = ["train", "--data", str(toy_npz), "--n-hidden", "16", "--n-recurrent", "8", "--chunk", "12", "--batch",
               "4", "--optimizer", "adam", "--lr", "0.01", "--eval-every", "1", "--run-dir", str(run_dir), *args, *common]
    if procs == 1:
        command = [sys.executable, "-m", "rnnrbm_cli", *cli]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                   "-m", "rnnrbm_cli", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model_state"]


def test_two_processes_make_the_updates_of_one_across_a_resume(toy_npz, tmp_path):
    for procs in (1, 2):
        run_dir = tmp_path / f"p{procs}"
        train(toy_npz, run_dir, "--model", "rnn-nade", procs=procs)
        train(toy_npz, run_dir, procs=procs, resume=True, epochs=2)
    one, two = state(tmp_path / "p1"), state(tmp_path / "p2")
    assert torch.load(tmp_path / "p2" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-4, rtol=0, msg=name)
    # the run directory is the main process's alone: one line per epoch, one config
    lines = (tmp_path / "p2" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == sorted(p.name for p in (tmp_path / "p1").iterdir())


def test_the_rnn_rbm_trains_and_resumes_under_torchrun(toy_npz, tmp_path):
    """Its chains are random, so not equality: the same kind of model as one process makes."""
    import json

    for procs in (1, 2):
        run_dir = tmp_path / f"p{procs}"
        train(toy_npz, run_dir, "--k", "1", procs=procs)
        train(toy_npz, run_dir, procs=procs, resume=True, epochs=3)
    metrics = {p: [json.loads(x) for x in (tmp_path / f"p{p}" / "metrics.jsonl").read_text().splitlines()] for p in (1, 2)}
    assert [m["epoch"] for m in metrics[2]] == [1, 2, 3]
    last1, last2 = metrics[1][-1], metrics[2][-1]
    assert all(torch.isfinite(v).all() for v in state(tmp_path / "p2").values())
    # the validation monitor improves alike from where both started
    assert last2["valid_monitor"] > metrics[2][0]["valid_monitor"] - 0.5
    assert abs(last2["valid_monitor"] - last1["valid_monitor"]) < 3.0, (last1, last2)


LEAVE_SCRIPT = """
import os, sys
import torch
from rnnrbm_cli import distributed
from rnnrbm_cli.config import resolve_settings

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
distributed.join(torch.device("cpu"))
resolve_settings({"model_type": "rnn", "rnn": "gru"})  # builds nothing, but imports what a resume imports
distributed.leave()
print(before, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_leaving_the_group_stops_gloos_threads_before_the_interpreter_ends():
    """A resume resolves its settings inside the group; if the group then outlived leave(), a gloo
    thread could finish its last work during the interpreter's shutdown and abort the process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29000 + os.getpid() % 1000)}
    done = subprocess.run([sys.executable, "-c", LEAVE_SCRIPT], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    assert after <= before, done.stdout
