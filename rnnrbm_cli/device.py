"""Choosing the torch device from a user's ``--device`` value."""

from __future__ import annotations

import os
import sys

import torch

from rnnrbm_cli.errors import RnnrbmUsageError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without CUDA is a usage error."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RnnrbmUsageError("--device cuda was asked for, but this machine has no CUDA device; use --device cpu.")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise RnnrbmUsageError(f"unknown device {name!r}; use auto, cpu or cuda.")


def set_threads(n: int) -> None:
    """CPU threads for torch and the compiled kernels in this process and the processes it
    starts (``rnnrbm --threads N``; torch's default is one per core). Small recurrent models
    train faster on fewer: their products are too small to share (benchmarks/threads.py)."""
    if n < 1:
        raise RnnrbmUsageError(f"--threads must be 1 or more, not {n}.")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(n)  # read by child processes and by numba when it is first imported
    torch.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is not None:  # already imported: its pool is sized; use at most n of it
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
