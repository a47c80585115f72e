"""The Python API: what each command does, as a plain function (``import rnnrbm_cli``).

    >>> import rnnrbm_cli as rr
    >>> result = rr.train_model(data="nottingham", epochs=2, run_dir="runs/api")  # doctest: +SKIP
    >>> rr.sample_model(result.best_checkpoint, "song.mid", num=2, seed=1)  # doctest: +SKIP
    >>> rr.evaluate_model(result.best_checkpoint, split="valid", max_frames=200)["log_likelihood"]  # doctest: +SKIP

The commands are thin wrappers over these; they add only parsing and printing. (The names
end in _model so that they never clash with the package's modules train, sample, evaluate.)
"""

from __future__ import annotations

import os
from typing import Any

from rnnrbm_cli.config import Settings, merge_settings, resolve_settings
from rnnrbm_cli.datasets import PreparedData, load_prepared, prepare, resolve_data
from rnnrbm_cli.evaluate import evaluate_checkpoint as evaluate_model
from rnnrbm_cli.sample import generate_rolls
from rnnrbm_cli.sample import sample as sample_model

__all__ = [
    "Settings", "resolve_settings", "prepare", "load_data", "load_model", "train_model", "sample_model", "generate",
    "evaluate_model",
]


def load_data(
    data: str | os.PathLike, *, source: str | None = None, dt: float | None = None,
    cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
) -> PreparedData:
    """The prepared splits that ``data`` means (a registry name, a prepared .npz, or MIDI
    files prepared with the defaults), fetched and prepared on first use.

    ``.splits[split]`` is a list of (T, 88) uint8 piano-rolls; ``.meta`` says where they came from.
    """
    return load_prepared(resolve_data(data, source=source, dt=dt, cache_dir=cache_dir, mirror=mirror, progress=False))


def load_model(checkpoint: str | os.PathLike, device: str = "cpu"):
    """The model in ``checkpoint`` (in eval mode on ``device``) and the checkpoint's payload."""
    from rnnrbm_cli.checkpoint import load_model as _load
    from rnnrbm_cli.device import resolve_device

    return _load(checkpoint, resolve_device(device))


def train_model(
    settings: Settings | None = None, *, preset: str | None = None, config: str | os.PathLike | None = None,
    callbacks=None, cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
    command: str = "rnnrbm_cli.train_model()", **values: Any,
):
    """Train a model as ``rnnrbm train`` does and return its ``TrainResult`` (run_dir,
    checkpoint, best_checkpoint, epochs, metrics).

    Settings: a ``Settings``, or ``preset`` < ``config`` (TOML or a run's config.json) <
    keyword values, each a flat setting name (``lr=0.003``, ``n_hidden=200``, ``run_dir=...``).
    """
    import torch  # noqa: F401  (the loop needs it; imported here to keep `import rnnrbm_cli` light)

    from rnnrbm_cli.device import resolve_device
    from rnnrbm_cli.train import new_trainer

    if settings is None:
        settings = merge_settings(preset, config, values)
    elif preset or config or values:
        settings = merge_settings(None, None, {**settings.flat(), **values})
    trainer = new_trainer(settings, resolve_device(settings.run.device), command, callbacks, None, cache_dir, mirror)
    return trainer.train()


def generate(model, num: int = 1, steps: int = 200, *, k: int = 25, primer=None, seed: int = 0, backend: str = "auto"):
    """``num`` pieces of ``steps`` frames from a model (after a (T0, 88) 0/1 ``primer``):
    np.ndarray, shape=(num, T0 + steps, 88), dtype=uint8. The same seed gives the same rolls."""
    return generate_rolls(model, num, steps, k=k, primer=primer, seed=seed, backend=backend)
