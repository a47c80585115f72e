"""The training loop: chunks, optimiser, epochs, checkpoints, metrics.

Nothing here is specific to the terminal: the loop reports through a ``Callbacks``
object and stops when ``StopFlag`` is raised (the CLI sets it from SIGINT/SIGTERM).
A run directory holds::

    config.json      the fully resolved model and training configuration
    command.txt      the command line that started the run (and each resume)
    metrics.jsonl    one JSON object per completed epoch
    checkpoint.pt    the latest state, written atomically every epoch and on interruption
    best.pt          the state with the best validation criterion so far
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.checkpoint import load_checkpoint, model_config_from, save_checkpoint
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.model import RNNRBM, ModelConfig, cpu_kernels_for


@dataclass(frozen=True)
class TrainConfig:
    # Registry name (prepared from its benchmark rolls) or a prepared .npz file.
    data: str = "nottingham"
    # Where the data came from when it is a registry name: "rolls" (the paper's
    # benchmark rolls) or "midi" (the source MIDI, sampled every dt seconds: the tutorial).
    source: str = "rolls"
    # Seconds per frame when source = "midi"; the tutorial's dt = 0.3.
    dt: float | None = None
    # Passes over the training split; the tutorial ran 200.
    epochs: int = 200
    # One seed for initialisation, shuffling and Gibbs sampling.
    seed: int = 1234
    # Gibbs steps of CD-k; the tutorial's k = 15.
    k: int = 15
    # Learning rate; the tutorial's plain SGD used 0.001.
    lr: float = 0.001
    # "sgd" (the tutorial) or "adam".
    optimizer: str = "sgd"
    # SGD momentum (Nesterov when > 0); the tutorial used none.
    momentum: float = 0.0
    # Sequences are cut into chunks of at most this many frames; the tutorial's batch_size = 100.
    chunk: int = 100
    # Chunks per update; 1 is the tutorial's scheme (one SGD step per chunk).
    batch: int = 1
    # Where the run lives; "" means runs/<data>-<timestamp>.
    run_dir: str = ""
    # auto, cpu or cuda.
    device: str = "auto"
    # Estimate the validation log-likelihood every N epochs (0: never).
    eval_every: int = 0
    # Validation frames (a fixed random subset) used by that estimate.
    eval_frames: int = 2000
    # AIS chains for that estimate.
    eval_chains: int = 100
    # AIS inverse temperatures for that estimate: 300 is ~0.01 nats from 1000 at a third
    # of the cost (README, Evaluation), and this runs during training.
    eval_betas: int = 300
    # How gradients are computed: "torch" (autograd, any device), "numba" (the compiled
    # CPU kernels of cpu_kernels.py, same mathematics, several times faster on a CPU) or
    # "auto" (numba on the CPU unless RNNRBM_NO_NUMBA is set, else torch). The two draw
    # different random numbers, so a seed reproduces a run only with the same backend.
    backend: str = "auto"

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 0,
            "k": self.k >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "chunk": self.chunk >= 1,
            "batch": self.batch >= 1,
            "eval_every": self.eval_every >= 0,
            "eval_frames": self.eval_frames >= 1,
            "eval_chains": self.eval_chains >= 1,
            "eval_betas": self.eval_betas >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise RnnrbmUsageError(f"{name} = {getattr(self, name)!r} is out of range.")
        if self.optimizer not in ("sgd", "adam"):
            raise RnnrbmUsageError(f"optimizer must be sgd or adam, not {self.optimizer!r}.")
        if self.source not in ("rolls", "midi"):
            raise RnnrbmUsageError(f"source must be rolls or midi, not {self.source!r}.")
        if self.backend not in ("auto", "torch", "numba"):
            raise RnnrbmUsageError(f"backend must be auto, torch or numba, not {self.backend!r}.")


# The tutorial's exact settings (deeplearning.net rnnrbm.py): Nottingham MIDI sampled
# every 0.3 s, 150 hidden / 100 recurrent units, plain SGD at 0.001, CD-15, chunks of 100
# frames, one chunk per update, sequences shuffled every epoch.
PRESETS: dict[str, dict[str, Any]] = {
    "tutorial": {
        "data": "nottingham", "source": "midi", "dt": 0.3, "n_hidden": 150, "n_recurrent": 100,
        "learn_u0": False, "optimizer": "sgd", "lr": 0.001, "momentum": 0.0, "k": 15,
        "chunk": 100, "batch": 1,
    },
}


def resolve_configs(values: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Split one flat mapping of settings into the two configs; unknown keys are errors.

    Types are checked: an int where a float is expected is accepted, nothing else is
    converted silently.
    """
    model_fields = {f.name: f for f in fields(ModelConfig)}
    train_fields = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(model_fields) - set(train_fields))
    if unknown:
        raise RnnrbmUsageError(f"unknown setting(s): {', '.join(unknown)}.")
    model_kw, train_kw = {}, {}
    for key, value in values.items():
        f = model_fields.get(key) or train_fields[key]
        _check_type(key, value, f.default)
        (model_kw if key in model_fields else train_kw)[key] = value
    try:
        return ModelConfig(**model_kw), TrainConfig(**train_kw)
    except ValueError as e:
        raise RnnrbmUsageError(f"{e}.") from None


def _check_type(key: str, value: Any, default: Any) -> None:
    if key == "dt":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise RnnrbmUsageError(f"setting {key} = {value!r} has the wrong type (expected {type(default).__name__}).")


# --- data ------------------------------------------------------------------------------


class ChunkedData:
    """A split's sequences as one frame tensor on the device, cut into chunks.

    frames : (N + 1, n_visible) float, all sequences concatenated, plus one zero row
    that padding indices point at. chunks : (C, 2) int64 (start, length) in frames.
    """

    def __init__(self, sequences: Sequence[np.ndarray], chunk: int, device: torch.device) -> None:
        if not sequences:
            raise RnnrbmError("the training data has no sequences.")
        rolls = np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences] + [np.zeros((1, sequences[0].shape[1]), np.float32)])
        self.frames = torch.from_numpy(rolls).to(device)
        self.pad_row = rolls.shape[0] - 1
        self.binary = bool(((rolls == 0) | (rolls == 1)).all())  # what the compiled kernels assume
        starts, lengths, seq_of_chunk = [], [], []
        offset = 0
        for i, s in enumerate(sequences):
            for j in range(0, len(s), chunk):
                starts.append(offset + j)
                lengths.append(min(chunk, len(s) - j))
                seq_of_chunk.append(i)
            offset += len(s)
        self.chunks = torch.tensor(list(zip(starts, lengths)), dtype=torch.int64)
        self.seq_of_chunk = torch.tensor(seq_of_chunk, dtype=torch.int64)
        self.n_sequences = len(sequences)
        self.n_frames = offset
        self.chunk = chunk
        self.device = device

    def batch(self, chunk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames (B, T, n_visible) and lengths (B,) (None when B = 1: nothing to mask)."""
        if len(chunk_ids) == 1:
            start, length = self.chunks[int(chunk_ids[0])].tolist()
            return self.frames[start : start + length].unsqueeze(0), None
        sel = self.chunks[chunk_ids]
        T = int(sel[:, 1].max())
        steps = torch.arange(T)
        idx = sel[:, :1] + steps[None, :]
        idx = torch.where(steps[None, :] < sel[:, 1:], idx, torch.full_like(idx, self.pad_row))
        return self.frames[idx.to(self.device)], sel[:, 1].to(self.device)

    def spans(self, chunk_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Where the chunks lie in ``frames``: starts and lengths, (B,) int64 numpy arrays
        (what the compiled CPU kernels take instead of a padded batch)."""
        sel = self.chunks.numpy()[chunk_ids.numpy()]
        return np.ascontiguousarray(sel[:, 0]), np.ascontiguousarray(sel[:, 1])

    def epoch_order(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """The chunk order of one epoch: sequences shuffled (the tutorial), their chunks in
        order; with several chunks per update the chunks are shuffled too, so that one
        update does not see one sequence only."""
        perm = torch.randperm(self.n_sequences, generator=generator)
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(self.n_sequences)
        # stable sort by the sequence's shuffled rank keeps chunks of a sequence in order
        order = torch.argsort(rank[self.seq_of_chunk], stable=True)
        if batch > 1:
            order = order[torch.randperm(len(order), generator=generator)]
        return order


# --- reporting -------------------------------------------------------------------------


class Callbacks:
    """What the loop tells the outside world; override what you need."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_epoch_start(self, epoch: int, n_updates: int, first_update: int) -> None: ...

    def on_update(self, epoch: int, update: int, n_updates: int) -> None: ...

    def on_epoch_end(self, metrics: dict[str, Any]) -> None: ...

    def on_message(self, text: str) -> None: ...


class StopFlag:
    """Set (e.g. from a signal handler) to ask the loop to checkpoint and stop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int) -> None:
        self.signum = signum


class TrainingInterrupted(Exception):
    def __init__(self, signum: int, run_dir: Path, epoch: int, update: int) -> None:
        super().__init__(f"stopped by signal {signum} in epoch {epoch} after update {update}")
        self.signum, self.run_dir, self.epoch, self.update = signum, run_dir, epoch, update


class TrainingDiverged(RnnrbmError):
    """The cost or a parameter became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    best_checkpoint: Path
    epochs: int
    metrics: dict[str, Any] = field(default_factory=dict)


# --- the run ---------------------------------------------------------------------------


def load_training_data(config: TrainConfig, cache_dir=None, mirror=None):
    """The prepared data (splits and metadata) a configuration trains on, and its path.

    A registry name means its benchmark rolls, or with ``source = "midi"`` its source
    MIDI sampled every ``dt`` seconds (the tutorial's data); either is fetched and
    prepared into the cache once, then reused.
    """
    from rnnrbm_cli.datasets import load_prepared, prepare, prepared_path, resolve_data

    if config.source == "midi" and not config.data.endswith(".npz"):
        dt = config.dt if config.dt is not None else 0.3
        path = prepared_path(config.data, "midi", dt=dt, transpose="none", cache_dir=cache_dir)
        if not path.is_file():
            prepare(config.data, source_kind="midi", dt=dt, transpose="none", out=path, cache_dir=cache_dir, mirror=mirror)
    else:
        path = resolve_data(config.data, cache_dir=cache_dir, mirror=mirror)
    return load_prepared(path), Path(path)


def default_run_dir(config: TrainConfig) -> Path:
    name = Path(config.data).stem if config.data.endswith(".npz") else config.data
    if config.source == "midi":
        name += "-midi"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Owns the model, optimiser, generators and run directory of one training run."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        device: torch.device,
        data,
        data_path: Path | None = None,
        callbacks: Callbacks | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        self.model_config, self.config, self.device = model_config, config, device
        self.callbacks = callbacks or Callbacks()
        self.stop = stop or StopFlag()
        self.data_meta = {k: v for k, v in data.meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
        if data_path is not None:
            self.data_meta["path"] = str(data_path)
        self.train_data = ChunkedData(data.splits["train"], config.chunk, device)
        valid = data.splits.get("valid") or []
        self.valid_data = ChunkedData(valid, config.chunk, device) if valid else None
        self.valid_sequences = valid
        torch.manual_seed(config.seed)  # the model's initialisation
        self.model = RNNRBM(model_config).to(device)
        self.optimizer = self._make_optimizer()
        self.kernels = self._compiled_kernels()
        self.shuffle_gen = torch.Generator().manual_seed(config.seed)
        self.gibbs_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.epoch = 0  # completed epochs
        self.progress: dict[str, Any] | None = None  # mid-epoch position
        self.best: dict[str, Any] | None = None
        self.last_metrics: dict[str, Any] = {}
        self.run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)

    def _compiled_kernels(self):
        """The cpu_kernels module when the backend resolves to numba (see TrainConfig), else None."""
        backend = self.config.backend
        binary = self.train_data.binary and (self.valid_data is None or self.valid_data.binary)
        if backend == "auto":
            return cpu_kernels_for(self.model) if binary else None
        if backend == "torch":
            return None
        problem = None
        if self.device.type != "cpu" or self.model.W.dtype != torch.float32:
            problem = f"it runs float32 models on the CPU only, not {self.model.W.dtype} on {self.device}"
        elif not binary:
            problem = "the data has values other than 0 and 1"
        else:
            try:
                from rnnrbm_cli import cpu_kernels
            except ImportError:
                problem = "numba is not installed (pip install numba)"
        if problem is not None:
            raise RnnrbmUsageError(f"backend numba cannot be used: {problem}; use backend torch or auto.")
        return cpu_kernels

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=c.lr)
        return torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)

    # -- checkpoints --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model_config": asdict(self.model_config),
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "train_config": asdict(self.config),
            "data": self.data_meta,
            "epoch": self.epoch,
            "optimizer_state": self.optimizer.state_dict(),
            "rng": {"shuffle": self.shuffle_gen.get_state(), "gibbs": self.gibbs_gen.get_state()},
            "progress": self.progress,
            "metrics": {"last": self.last_metrics, "best": self.best},
        }

    def load_state(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model_state"])
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.shuffle_gen.set_state(payload["rng"]["shuffle"])
        self.gibbs_gen.set_state(payload["rng"]["gibbs"].to("cpu"))
        self.epoch = int(payload["epoch"])
        self.progress = payload.get("progress")
        metrics = payload.get("metrics") or {}
        self.best = metrics.get("best")
        self.last_metrics = metrics.get("last") or {}

    def _params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def save(self, best: bool = False) -> Path:
        path = self.run_dir / "checkpoint.pt"
        save_checkpoint(path, self.state())
        if best:
            save_checkpoint(self.run_dir / "best.pt", self.state())
        return path

    # -- the loop -----------------------------------------------------------------------

    def start_run_dir(self, command: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = {"model": asdict(self.model_config), "train": asdict(self.config), "data": self.data_meta}
        with atomic_open(self.run_dir / "config.json", "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        self._append_command(command)

    def _append_command(self, command: str) -> None:
        with open(self.run_dir / "command.txt", "a") as f:
            f.write(command.rstrip("\n") + "\n")

    def train(self) -> TrainResult:
        c = self.config
        self.callbacks.on_start({
            "run_dir": str(self.run_dir), "device": str(self.device),
            "train_sequences": self.train_data.n_sequences, "train_frames": self.train_data.n_frames,
            "train_chunks": len(self.train_data.chunks), "epoch": self.epoch, "epochs": c.epochs,
        })
        if self.kernels is not None and self.kernels.compiled_before() is False:
            self.callbacks.on_message("Compiling the CPU kernels (once per machine, about a minute)...")
        while self.epoch < c.epochs:
            metrics = self._run_epoch(self.epoch + 1)
            self.epoch += 1
            self.progress = None
            is_best = self._update_best(metrics)
            self.last_metrics = metrics
            self.save(best=is_best)
            # metrics after the checkpoint: a crash in between costs a line, never a mismatch
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            self.callbacks.on_epoch_end(metrics)
        if not (self.run_dir / "best.pt").exists() and (self.run_dir / "checkpoint.pt").exists():
            save_checkpoint(self.run_dir / "best.pt", self.state())
        return TrainResult(
            run_dir=self.run_dir, checkpoint=self.run_dir / "checkpoint.pt",
            best_checkpoint=self.run_dir / "best.pt", epochs=self.epoch, metrics=self.last_metrics,
        )

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        c, data, model = self.config, self.train_data, self.model
        model.train()
        # running sums: tensors on the device for the torch path (no sync per update), floats for the kernels
        if self.progress is not None:  # resuming inside an epoch
            p = self.progress
            order, first = p["order"], int(p["update"])
            monitor_sum, cost_sum = float(p["monitor_sum"]), float(p["cost_sum"])
            seconds_before, frames_done = float(p["seconds"]), int(p["frames"])
        else:
            order, first = data.epoch_order(c.batch, self.shuffle_gen), 0
            monitor_sum, cost_sum = 0.0, 0.0
            seconds_before, frames_done = 0.0, 0
        if self.kernels is None:
            monitor_sum = torch.tensor(monitor_sum, device=self.device)
            cost_sum = torch.tensor(cost_sum, device=self.device)
        # plain SGD is applied inside the compiled update; other optimisers step after it
        fused_lr = c.lr if self.kernels is not None and c.optimizer == "sgd" and c.momentum == 0 else 0.0
        batches = order.split(c.batch)
        n_updates = len(batches)
        self.callbacks.on_epoch_start(epoch, n_updates, first)
        t0 = time.perf_counter()
        for u in range(first, n_updates):
            if self.kernels is not None:
                # the same gradient, written into .grad by compiled code (no autograd graph)
                starts, lengths = data.spans(batches[u])
                cost, monitor, n_frames = self.kernels.cd_gradients(
                    model, data.frames.numpy(), starts, lengths, c.k, self.gibbs_gen, lr=fused_lr
                )
                if not fused_lr:
                    self.optimizer.step()
            else:
                v, lengths = data.batch(batches[u])
                self.optimizer.zero_grad(set_to_none=True)
                res = model.cd_cost(v, lengths, c.k, self.gibbs_gen)
                res.cost.backward()
                self.optimizer.step()
                cost, monitor, n_frames = res.cost.detach(), res.monitor, res.n_frames
            monitor_sum += monitor
            cost_sum += cost
            frames_done += n_frames
            self.callbacks.on_update(epoch, u + 1, n_updates)
            if self.stop.signum is not None and u + 1 < n_updates:
                self._interrupt(epoch, u + 1, order, monitor_sum, cost_sum, seconds_before + time.perf_counter() - t0, frames_done)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = seconds_before + time.perf_counter() - t0
        train_monitor = float(monitor_sum) / n_updates
        train_cost = float(cost_sum) / n_updates
        if not (math.isfinite(train_cost) and math.isfinite(train_monitor) and self._params_finite()):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: the cost or a parameter is NaN or infinite; "
                f"the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}. Try a smaller --lr."
            )
        metrics = {
            "epoch": epoch,
            "train_monitor": train_monitor,
            "train_cost": train_cost,
            "valid_monitor": self.valid_monitor(),
            "seconds": seconds,
            "frames_per_second": frames_done / seconds if seconds > 0 else None,
            "updates": n_updates,
        }
        if c.eval_every and epoch % c.eval_every == 0 and self.valid_sequences:
            metrics.update(self.valid_log_likelihood())
        metrics["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if self.stop.signum is not None:  # a signal during the last update or validation
            self.epoch, self.progress = epoch, None
            self._update_best(metrics)
            self.last_metrics = metrics
            self.save(best=self.best is not None and self.best.get("epoch") == epoch)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            self.callbacks.on_epoch_end(metrics)
            raise TrainingInterrupted(self.stop.signum, self.run_dir, epoch, n_updates)
        return metrics

    def _interrupt(self, epoch, update, order, monitor_sum, cost_sum, seconds, frames) -> None:
        if not (self._params_finite() and math.isfinite(float(cost_sum))):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}; the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}."
            )
        self.progress = {
            "order": order, "update": update, "monitor_sum": float(monitor_sum),
            "cost_sum": float(cost_sum), "seconds": seconds, "frames": frames,
        }
        self.save()
        raise TrainingInterrupted(self.stop.signum, self.run_dir, epoch, update)

    def _update_best(self, metrics: dict[str, Any]) -> bool:
        """Is this epoch the best so far? By validation LL when it is measured (--eval-every),
        else by the validation monitor; with no validation data the latest is the best."""
        key = "valid_ll" if self.config.eval_every else "valid_monitor"
        value = metrics.get(key)
        if value is None:
            return self.best is None
        if self.best is None or value > self.best["value"]:
            self.best = {"metric": key, "value": value, "epoch": metrics["epoch"]}
            return True
        return False

    @torch.no_grad()
    def valid_monitor(self) -> float | None:
        """The monitor on the validation split, with a fixed seed so that epochs compare."""
        if self.valid_data is None:
            return None
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        if self.kernels is not None:
            starts, lengths = self.valid_data.spans(torch.arange(len(self.valid_data.chunks)))
            _, monitor, _ = self.kernels.cd_gradients(
                self.model, self.valid_data.frames.numpy(), starts, lengths, self.config.k, gen, want_grads=False
            )
            self.model.train()
            return monitor
        total, frames = torch.zeros((), device=self.device), 0
        for ids in torch.arange(len(self.valid_data.chunks)).split(256):
            v, lengths = self.valid_data.batch(ids)
            res = self.model.cd_cost(v, lengths, self.config.k, gen)
            total += res.monitor * res.n_frames
            frames += res.n_frames
        self.model.train()
        return float(total) / frames

    def valid_log_likelihood(self) -> dict[str, Any]:
        """AIS estimate of the validation log-likelihood on a fixed random frame subset."""
        from rnnrbm_cli.evaluate import log_likelihood

        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 3)
        res = log_likelihood(
            self.model, self.valid_sequences, chains=self.config.eval_chains, betas=self.config.eval_betas,
            max_frames=self.config.eval_frames, generator=gen,
        )
        self.model.train()
        return {"valid_ll": res.mean, "valid_ll_stderr": res.stderr}


def new_trainer(model_config, config, device, command="", callbacks=None, stop=None, cache_dir=None, mirror=None) -> Trainer:
    """A trainer for a fresh run, its run directory created."""
    data, path = load_training_data(config, cache_dir=cache_dir, mirror=mirror)
    trainer = Trainer(model_config, config, device, data, path, callbacks, stop)
    if (trainer.run_dir / "checkpoint.pt").exists():
        raise RnnrbmUsageError(
            f"{trainer.run_dir} already holds a run; resume it with --resume {trainer.run_dir} or choose another --run-dir."
        )
    trainer.start_run_dir(command)
    return trainer


def resume_trainer(run_dir, device, epochs=None, command="", callbacks=None, stop=None, cache_dir=None, mirror=None) -> Trainer:
    """A trainer that continues the run in ``run_dir`` from its latest checkpoint."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise RnnrbmError(f"{run_dir} has no checkpoint.pt to resume from.")
    payload = load_checkpoint(ckpt)
    model_config = model_config_from(payload)
    train_values = dict(payload["train_config"])
    train_values["run_dir"] = str(run_dir)
    if epochs is not None:
        train_values["epochs"] = epochs
    _, config = resolve_configs(train_values)
    data_path = payload.get("data", {}).get("path")
    if data_path and Path(data_path).is_file():
        from rnnrbm_cli.datasets import load_prepared

        data, path = load_prepared(data_path), Path(data_path)
    else:
        data, path = load_training_data(config, cache_dir=cache_dir, mirror=mirror)
    trainer = Trainer(model_config, config, device, data, path, callbacks, stop)
    trainer.load_state(payload)
    # Forget metric lines written after the checkpoint (a crash between the two writes).
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.exists():
        kept = [line for line in metrics_path.read_text().splitlines() if _line_epoch(line) is not None and _line_epoch(line) <= trainer.epoch]
        with atomic_open(metrics_path, "w") as f:
            f.write("".join(line + "\n" for line in kept))
    trainer._append_command(command)
    return trainer


def _line_epoch(line: str) -> int | None:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None
