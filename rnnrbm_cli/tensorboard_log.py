"""Training seen in TensorBoard: a ``train.Callbacks`` that writes event files.

Per epoch, scalars tagged by stage (``rbm/``, ``rnn/``, ``fine/``): train_monitor,
valid_monitor, valid_ll (and its stderr) when measured, lr and seconds; every
:data:`SAMPLE_EVERY` epochs (and the first and last) a piano-roll of one short piece sampled
from the epoch's ``checkpoint.pt`` (``samples/piano_roll``). It only reads what the loop
writes: the loop knows nothing of it, and a run with it has the same settings, metrics and
checkpoints as one without. It needs the optional ``tensorboard`` package
(``pip install 'rnnrbm[tensorboard]'``).

    >>> from rnnrbm_cli.train import CallbackList
    >>> callbacks = CallbackList(TensorBoardCallbacks())  # doctest: +SKIP
    >>> rr.train_model(data="nottingham", epochs=10, callbacks=callbacks)  # doctest: +SKIP
    $ tensorboard --logdir runs/nottingham-20261124-120000/tensorboard
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rnnrbm_cli.errors import RnnrbmUsageError
from rnnrbm_cli.train import Callbacks

LOG_DIR = "tensorboard"  # the default, inside the run directory
SAMPLE_EVERY = 5  # epochs between pictures of a sample: one generate call of SAMPLE_STEPS frames, about a second
SAMPLE_STEPS = 64  # frames of that sample
SAMPLE_K = 25  # its Gibbs steps per frame (sample's default), for a model sampled by Gibbs chains
SAMPLE_SEED = 0  # the same seed every time: the pictures differ only by what the model learnt
IMAGE_SIZE = (800, 300)  # pixels
SCALARS = ("train_monitor", "valid_monitor", "valid_ll", "valid_ll_stderr", "lr", "seconds")
INSTALL = "pip install 'rnnrbm[tensorboard]'"


def tensorboard_problem() -> str | None:
    """Why TensorBoard event files cannot be written here, or None if they can."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return f"--tensorboard needs the tensorboard package, which is not installed; {INSTALL}"
    return None


class TensorBoardCallbacks(Callbacks):
    """Writes a run's epochs as TensorBoard events in ``log_dir`` (default RUN_DIR/tensorboard).

    Raises RnnrbmUsageError at once when tensorboard is not installed, before any training.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, sample_every: int = SAMPLE_EVERY,
                 sample_steps: int = SAMPLE_STEPS) -> None:
        problem = tensorboard_problem()
        if problem is not None:
            raise RnnrbmUsageError(problem + ".")
        self.log_dir = Path(log_dir) if log_dir else None
        self.sample_every, self.sample_steps = sample_every, sample_steps
        self.run_dir: Path | None = None
        self.epochs = 0
        self.writer = None

    def on_start(self, info: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(info["run_dir"])
        self.epochs = int(info["epochs"])
        if self.log_dir is None:
            self.log_dir = self.run_dir / LOG_DIR
        # A resumed run drops the events written after its checkpoint, as metrics.jsonl does.
        purge = int(info["epoch"]) + 1 if info.get("epoch") else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step, stage = int(metrics["epoch"]), metrics.get("stage", "fine")
        for key in SCALARS:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{stage}/{key}", value, step)
        if step == 1 or step % self.sample_every == 0 or step == self.epochs:
            image = self._sample_picture(step)
            if image is not None:
                self.writer.add_image("samples/piano_roll", image, step, dataformats="HWC")
        self.writer.flush()

    def _sample_picture(self, epoch: int):
        """A piano-roll of one piece from the checkpoint the loop has just written:
        np.ndarray, shape=(height, width, 3), dtype=uint8; None if there is none to draw."""
        import numpy as np
        import torch

        from rnnrbm_cli.checkpoint import load_model
        from rnnrbm_cli.models import record_of
        from rnnrbm_cli.pianoroll import N_KEYS
        from rnnrbm_cli.plot import roll_figure
        from rnnrbm_cli.sample import generate_rolls, output_dt

        checkpoint = self.run_dir / "checkpoint.pt"
        if not checkpoint.is_file():
            return None
        # Building and sampling a model must not move the run's own random streams.
        with torch.random.fork_rng(devices=[]):
            model, payload = load_model(checkpoint, "cpu")
            if model.config.n_visible != N_KEYS:
                return None  # not a piano-roll
            roll = generate_rolls(model, 1, self.sample_steps, k=SAMPLE_K, seed=SAMPLE_SEED, backend="torch")[0]
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        chains = f", k={SAMPLE_K}" if record_of(model).uses_gibbs else ""
        fig = roll_figure(roll, frame_length=output_dt(data), title=f"epoch {epoch}: a sample of {self.sample_steps} frames{chains}",
                          width=IMAGE_SIZE[0], height=IMAGE_SIZE[1])
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
