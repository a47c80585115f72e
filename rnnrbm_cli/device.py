"""Choosing the torch device from a user's ``--device`` value."""

from __future__ import annotations

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
