"""Checkpoints: written atomically, loaded without running code.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(..., weights_only=True)``; a file that would need anything else (a pickled
class, a function call) is refused before any of its code can run.

Keys (``FORMAT`` = "rnnrbm-checkpoint", version 2):

    format, version      identify the file
    model_type           which model (a type of ``models.model_types()``; its record gives
                         the class and config)
    model_config         dict: the model's config fields
    model_state          the model's state dict (tensors); in a best.pt of a run with
                         --ema, the averaged parameters
    ema_state            dict: the averaged parameters by name (--ema), or None / absent
    settings             dict: the run's settings by section (config.Settings.sections())
    data                 dict: the prepared data's metadata (dataset, grid, dt, beat_division, ...)
    epoch                completed epochs
    optimizer_state      the optimiser's state dict
    rng                  generator states (uint8 tensors)
    progress             mid-epoch position (None at an epoch boundary)
    metrics              the last epoch's metrics, and the best so far

Version 1 files are read as version 2 after ``_upgrade_v1`` fills what they may lack (the
model_type of files written before there were two models, in the file and in its
model_config, and ``settings`` from the flat ``train_config`` of the oldest files).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from rnnrbm_cli import models
from rnnrbm_cli._io import atomic_path
from rnnrbm_cli.errors import RnnrbmError

FORMAT = "rnnrbm-checkpoint"
VERSION = 2


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and plain values) atomically to ``path``.

    A failed write (a full disk, a read-only or missing folder) is one RnnrbmError
    sentence; the file that was at ``path`` is left as it was and no partial file remains.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as e:
        raise RnnrbmError(f"cannot write checkpoint {path} ({e.strerror or e}); {_kept(path)}") from None
    except RuntimeError as e:  # torch's zip writer: "[enforce fail at inline_container.cc:...] ... file write failed"
        detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", " ".join(str(e).split())) or type(e).__name__
        raise RnnrbmError(f"cannot write checkpoint {path} ({detail}{_free_space(path)}); {_kept(path)}") from None


def _kept(path: Path) -> str:
    if path.is_file():
        return f"the previous {path.name} is kept unchanged."
    return "nothing was written."


def _free_space(path: Path) -> str:
    """"; N MiB free on that disk", since torch's writer does not say why a write failed
    (the partial file is gone by now, so this is what was free before the write)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f"; {free / 2**20:,.0f} MiB free on that disk" if free >= 2**20 else f"; {free:,} bytes free on that disk"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; any problem is one RnnrbmError sentence.

    Missing, truncated, foreign and unsafe files are told apart in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise RnnrbmError(f"checkpoint {path} does not exist.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:  # permissions, a failing disk: the file may be fine
        raise RnnrbmError(f"cannot read checkpoint {path}: {e.strerror or e}.") from None
    except MemoryError:
        raise RnnrbmError(f"cannot read checkpoint {path}: not enough memory to load it.") from None
    except pickle.UnpicklingError:
        # weights_only refuses any global it does not know: this is where a crafted
        # file that would run code ends up, before its code runs (and some corrupt ones).
        raise RnnrbmError(
            f"refusing to load {path}: it is corrupt or holds objects other than tensors and plain "
            f"values (which could run code when loaded); an rnnrbm checkpoint never does."
        ) from None
    except Exception as e:  # torch raises many kinds on garbage (IndexError on a text file, ...)
        raise RnnrbmError(
            f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint ({type(e).__name__})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RnnrbmError(f"{path} is not an rnnrbm checkpoint (a PyTorch file, but not one this tool wrote).")
    if payload.get("version") == 1:
        payload = _upgrade_v1(payload)
    if payload.get("version") != VERSION:
        raise RnnrbmError(f"{path} is an rnnrbm checkpoint of version {payload.get('version')!r}; this rnnrbm reads "
                          f"versions 1 to {VERSION}.")
    for key in ("model_config", "model_state"):
        if key not in payload:
            raise RnnrbmError(f"{path} is an incomplete rnnrbm checkpoint: it has no {key!r}.")
    return payload


def _upgrade_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint as version 2: the files of before the RNN-NADE hold the
    tutorial's model, named nowhere; the oldest keep their settings flat in train_config."""
    out = {**payload, "version": VERSION}
    out.setdefault("model_type", models.DEFAULT_MODEL_TYPE)
    raw = out.get("model_config")
    if isinstance(raw, dict) and "model_type" not in raw:
        out["model_config"] = {**raw, "model_type": out["model_type"]}
    if not isinstance(out.get("settings"), dict) and isinstance(out.get("train_config"), dict):
        from rnnrbm_cli.config import by_section

        out["settings"] = by_section(out.pop("train_config"))
    return out


def model_type_of(payload: dict[str, Any]) -> str:
    """The checkpoint's model_type (the file's, else its model_config's); unknown ones are errors."""
    raw = payload.get("model_config")
    model_type = payload.get("model_type", raw.get("model_type") if isinstance(raw, dict) else None)
    if not isinstance(model_type, str):
        model_type = repr(model_type)
    if model_type not in models.model_types():
        raise RnnrbmError(f"the checkpoint holds a {model_type!r} model, which this rnnrbm does not know "
                          f"({', '.join(models.model_types())}).")
    return model_type


def model_config_from(payload: dict[str, Any]):
    """Rebuild the model config a checkpoint stores; unknown keys or wrong types are errors."""
    config_cls = models.record(model_type_of(payload)).config_class
    raw = payload["model_config"]
    known = {f.name for f in fields(config_cls)}
    if not isinstance(raw, dict) or set(raw) - known:
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else raw
        raise RnnrbmError(f"the checkpoint's model_config has unknown keys: {unknown}.")
    try:
        return config_cls(**raw)
    except (TypeError, ValueError) as e:
        raise RnnrbmError(f"the checkpoint's model_config is invalid: {e}.") from None


def state_problem(expected: dict[str, torch.Tensor], state: Any, key: str = "model_state", shown: int = 4) -> str | None:
    """What is wrong with a stored state dict, the useful part first: names missing,
    unexpected or not tensors, and shapes that differ (at most ``shown`` of each); None if nothing."""
    if not isinstance(state, dict):
        return f"{key} is a {type(state).__name__}, not a dict of tensors"

    def names(items: list[str]) -> str:
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = sorted(str(k) for k in state if k not in expected)
    foreign = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    shapes = [
        f"{k} is {tuple(state[k].shape)} where the config needs {tuple(v.shape)}"
        for k, v in expected.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape
    ]
    if missing:
        problems.append(f"missing {names(missing)}")
    if unexpected:
        problems.append(f"unexpected {names(unexpected)}")
    if foreign:
        problems.append(f"not tensors: {names(foreign)}")
    if shapes:
        problems.append(names(shapes))
    return "; ".join(problems) or None


def build_model(config, generator: torch.Generator | None = None) -> torch.nn.Module:
    """A fresh model of ``config.model_type``, initialised from ``generator``."""
    return models.record(config.model_type).model_class(config, generator=generator)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint, in eval mode on ``device``.

    Returns the model and the whole payload (for its data grid, epoch, metrics). Weights
    that do not fit the config, or that are NaN or infinite, are refused in one sentence.
    """
    payload = load_checkpoint(path, map_location="cpu")
    config = model_config_from(payload)
    if config.model_type != model_type_of(payload):
        raise RnnrbmError(f"{path} is inconsistent: its model_type is {model_type_of(payload)!r} but its model_config says {config.model_type!r}.")
    model = build_model(config)
    problem = state_problem(model.state_dict(), payload["model_state"])
    if problem is None:
        try:
            model.load_state_dict(payload["model_state"])
        except (RuntimeError, TypeError, AttributeError, ValueError) as e:
            problem = " ".join(str(e).replace("Error(s) in loading state_dict for", "").split())[:300]
    if problem is not None:
        raise RnnrbmError(f"{path}: the stored weights do not fit the stored model config ({problem}).") from None
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise RnnrbmError(f"{path} holds NaN or infinite weights ({', '.join(bad)}); it cannot be used, take an earlier checkpoint.")
    return model.to(device).eval(), payload
