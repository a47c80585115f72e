"""The Python API and the assembly: the one place that turns a data name or a checkpoint into
sequences, and hands them to the loop, the evaluation and the study (``import rnnrbm_cli``).

    >>> import rnnrbm_cli as rr
    >>> result = rr.train_model(data="nottingham", epochs=2, run_dir="runs/api")  # doctest: +SKIP
    >>> rr.sample_model(result.best_checkpoint, "song.mid", num=2, seed=1)  # doctest: +SKIP
    >>> rr.evaluate_model(result.best_checkpoint, split="valid", max_frames=200)["log_likelihood"]  # doctest: +SKIP

The commands are thin wrappers over these; they add only parsing and printing. (The names
end in _model so that they never clash with the package's modules train, sample, evaluate.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rnnrbm_cli.config import Settings, merge_settings, resolve_settings
from rnnrbm_cli.datasets import PreparedData, checkpoint_data, load_prepared, prepare, resolve_data
from rnnrbm_cli.sample import generate_rolls
from rnnrbm_cli.sample import sample as sample_model

__all__ = [
    "Settings", "resolve_settings", "prepare", "load_data", "load_model", "train_model", "sample_model", "generate",
    "evaluate_model", "report_run", "start_training", "resume_training", "tune_model",
]


# -- data: names and checkpoints -> prepared sequences ---------------------------------------


def load_data(
    data: str | os.PathLike, *, source: str | None = None, dt: float | None = None,
    cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
) -> PreparedData:
    """The prepared splits that ``data`` means (a registry name, a prepared .npz, or MIDI
    files prepared with the defaults), fetched and prepared on first use.

    ``.splits[split]`` is a list of (T, 88) uint8 piano-rolls; ``.meta`` says where they came from.
    """
    return load_prepared(resolve_data(data, source=source, dt=dt, cache_dir=cache_dir, mirror=mirror, progress=False))


def data_for_settings(settings: Settings, cache_dir=None, mirror=None) -> tuple[PreparedData, Path]:
    """The prepared data a run's settings name, and its file."""
    d = settings.data
    path = Path(resolve_data(d.data, source=d.source, dt=d.dt, cache_dir=cache_dir, mirror=mirror))
    return load_prepared(path), path


def data_for_checkpoint(payload: dict[str, Any], data=None, cache_dir=None, mirror=None) -> tuple[PreparedData, Path]:
    """``data`` if given, else the data a checkpoint was trained on (checked to be it), and its file."""
    path = Path(checkpoint_data(payload, data, cache_dir=cache_dir, mirror=mirror))
    return load_prepared(path), path


# -- models ------------------------------------------------------------------------------------


def load_model(checkpoint: str | os.PathLike, device: str = "cpu"):
    """The model in ``checkpoint`` (in eval mode on ``device``) and the checkpoint's payload."""
    import torch

    from rnnrbm_cli.checkpoint import load_model as _load
    from rnnrbm_cli.device import resolve_device

    return _load(checkpoint, resolve_device(device) if isinstance(device, str) else torch.device(device))


# -- training ------------------------------------------------------------------------------------


def _world(device, callbacks):
    """Under torchrun: this process's place in the job, its device, and its callbacks (only
    the main process reports); else (None, device, callbacks)."""
    from rnnrbm_cli import distributed

    if not distributed.under_torchrun():
        return None, device, callbacks
    world, device = distributed.join(device)
    return world, device, callbacks if world.main else None


def start_training(settings: Settings, device, command: str = "", callbacks=None, stop=None, cache_dir=None,
                   mirror=None):
    """A ``train.Trainer`` for a fresh run of ``settings`` on the data they name, its run
    directory created and locked (``rnnrbm train``). Under torchrun, this process's share of
    a data-parallel run (``distributed``)."""
    from rnnrbm_cli.train import new_trainer

    world, device, callbacks = _world(device, callbacks)
    data, path = data_for_settings(settings, cache_dir, mirror)
    return new_trainer(settings, device, data, path, command, callbacks, stop, world)


def resume_training(run_dir: str | os.PathLike, device, epochs: int | None = None, command: str = "", callbacks=None,
                    stop=None, cache_dir=None, mirror=None, patience: int | None = None):
    """A ``train.Trainer`` continuing the run in ``run_dir`` on the data it was trained on
    (``rnnrbm train --resume``); ``epochs`` and ``patience`` replace the run's when given
    (a run that stopped early goes on when the new patience exceeds its estimates since the best)."""
    from rnnrbm_cli.train import resume_trainer

    def data_for(payload):
        return data_for_checkpoint(payload, cache_dir=cache_dir, mirror=mirror)

    world, device, callbacks = _world(device, callbacks)
    return resume_trainer(run_dir, device, data_for, epochs, command, callbacks, stop, world, patience)


def train_model(
    settings: Settings | None = None, *, preset: str | None = None, config: str | os.PathLike | None = None,
    callbacks=None, cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
    command: str = "rnnrbm_cli.train_model()", **values: Any,
):
    """Train a model as ``rnnrbm train`` does and return its ``TrainResult`` (run_dir,
    checkpoint, best_checkpoint, epochs, metrics).

    Settings: a ``Settings`` (every setting, so nothing is left for a preset or file to
    give: both together are a usage error), or ``preset`` < ``config`` (TOML or a run's
    config.json); then keyword values over either, each a flat setting name (``lr=0.003``,
    ``n_hidden=200``, ``run_dir=...``).
    """
    from rnnrbm_cli.device import resolve_device
    from rnnrbm_cli.errors import RnnrbmUsageError

    if settings is not None:
        if preset is not None or config is not None:
            raise RnnrbmUsageError("give train_model either settings or a preset and config file, not both "
                                   "(settings hold every value, so the preset or file would be ignored).")
        settings = settings.with_values(**values)
    else:
        settings = merge_settings(preset, config, values)
    trainer = start_training(settings, resolve_device(settings.run.device), command, callbacks, None, cache_dir, mirror)
    return trainer.train()


# -- evaluation, generation, the study -----------------------------------------------------------


def evaluate_model(
    checkpoint: str | os.PathLike, *, data: str | os.PathLike | None = None, split: str = "test",
    device: str = "auto", cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
    seed: int = 0, **options: Any,
) -> dict:
    """LL and ACC of the model in ``checkpoint`` on a split of ``data`` (default: the data
    it was trained on); what ``rnnrbm evaluate`` prints. ``options``: those of
    ``evaluate.evaluate_split`` (chains, betas, samples, gibbs, max_frames, backend, method,
    progress, on_message). The dict also has split, checkpoint, data (the prepared file),
    seed and device."""
    from rnnrbm_cli.evaluate import evaluate_split
    from rnnrbm_cli.pianoroll import check_same_grid

    model, payload = load_model(checkpoint, device)
    prepared, path = data_for_checkpoint(payload, data, cache_dir, mirror)
    check_same_grid(str(path), prepared.meta, payload.get("data") if isinstance(payload.get("data"), dict) else {},
                    "evaluate on data prepared like the training data (the same --dt or --beat-division)")
    sequences = prepared.splits.get(split) or []
    result = evaluate_split(model, sequences, where=str(path), split=split, seed=seed, **options)
    dev = next(model.parameters()).device
    result.update(split=split, checkpoint=str(checkpoint), data=str(path), seed=seed, device=str(dev))
    return result


def generate(model, num: int = 1, steps: int = 200, *, k: int = 25, primer=None, seed: int = 0, backend: str = "auto",
             temperature: float = 1.0):
    """``num`` pieces of ``steps`` frames from a model (after a (T0, 88) 0/1 ``primer``) at
    ``temperature``: np.ndarray, shape=(num, T0 + steps, 88), dtype=uint8. The same seed
    gives the same rolls."""
    return generate_rolls(model, num, steps, k=k, primer=primer, seed=seed, backend=backend, temperature=temperature)


def report_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **options: Any):
    """Write one self-contained HTML report of a run (``rnnrbm report``): its settings,
    training curves, saved evaluations and ``samples`` pieces from best.pt, pictured and
    playable; returns ``report.ReportResult``. ``options``: those of ``report.report_run``
    (samples, steps, seed, k, device, backend, force)."""
    from rnnrbm_cli.report import report_run as _report

    return _report(run_dir, out, **options)


def tune_model(base: Settings, space, *, cache_dir=None, mirror=None, **options: Any):
    """A study of ``space`` around ``base`` (``tune.run_study``'s options) on the data base
    names, resolved once for every trial (``rnnrbm tune``)."""
    from rnnrbm_cli.tune import run_study

    data, path = data_for_settings(base, cache_dir, mirror)
    return run_study(base, space, data, path, **options)

