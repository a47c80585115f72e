"""The training loop: epochs, optimiser, checkpoints, metrics; it names no engine.

Each update is ``zero_grad -> objective.gradients -> optimizer.step`` whatever computes
the gradient (``engines.objective_for`` decides). Nothing here is specific to the
terminal: the loop reports through a ``Callbacks`` object and stops when ``StopFlag`` is
raised (the CLI sets it from SIGINT/SIGTERM). The run directory's files are ``rundir``'s.

    >>> from rnnrbm_cli.config import resolve_settings
    >>> trainer = new_trainer(resolve_settings({"epochs": 2}), torch.device("cpu"))  # doctest: +SKIP
    >>> trainer.train().best_checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnrbm_cli import rundir
from rnnrbm_cli.checkpoint import (
    build_model,
    load_checkpoint,
    save_checkpoint,
    state_problem,
)
from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.config import Settings, differences, read_settings_file, resolve_settings, settings_from_checkpoint
from rnnrbm_cli.distributed import DataParallel
from rnnrbm_cli.engines import objective_for, resolve_backend
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.prepared import is_prepared_path, prepared_sha256
from rnnrbm_cli.selection import ModelSelection, ParameterAverage
from rnnrbm_cli.stages import STAGE_NAMES, Stage, StagePlan, fine_tuning_optimizer, schedule, step_schedule

__all__ = ["Trainer", "TrainResult", "Callbacks", "CallbackList", "StopFlag", "TrainingInterrupted", "TrainingDiverged", "STAGE_NAMES", "RESUME_CHANGES",
           "new_trainer", "resume_trainer", "default_run_name"]

RUNS_DIR = "runs"  # where default run directories are made, relative to the working directory


# --- reporting -------------------------------------------------------------------------


class Callbacks:
    """What the loop tells the outside world; override what you need."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_stage(self, stage: str, epochs: int) -> None: ...

    def on_epoch_start(self, epoch: int, n_updates: int, first_update: int) -> None: ...

    def on_update(self, epoch: int, update: int, n_updates: int) -> None: ...

    def on_epoch_end(self, metrics: dict[str, Any]) -> None: ...

    def on_message(self, text: str) -> None: ...


class CallbackList(Callbacks):
    """Several callbacks heard as one, in order (the terminal's progress, TensorBoard, ...)."""

    def __init__(self, *callbacks) -> None:
        self.callbacks = [c for c in callbacks if c is not None]

    def on_start(self, info: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_start(info)

    def on_stage(self, stage: str, epochs: int) -> None:
        for c in self.callbacks:
            c.on_stage(stage, epochs)

    def on_epoch_start(self, epoch: int, n_updates: int, first_update: int) -> None:
        for c in self.callbacks:
            c.on_epoch_start(epoch, n_updates, first_update)

    def on_update(self, epoch: int, update: int, n_updates: int) -> None:
        for c in self.callbacks:
            c.on_update(epoch, update, n_updates)

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(metrics)

    def on_message(self, text: str) -> None:
        for c in self.callbacks:
            c.on_message(text)


class StopFlag:
    """Set (e.g. from a signal handler) to ask the loop to checkpoint and stop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int) -> None:
        self.signum = signum


class TrainingInterrupted(Exception):
    """A signal stopped the run; ``update`` is None when it came after the epoch's last update."""

    def __init__(self, signum: int, run_dir: Path, epoch: int, update: int | None) -> None:
        where = f"after update {update}" if update is not None else "at its end"
        super().__init__(f"stopped by signal {signum} in epoch {epoch} {where}")
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


def _data_meta(data, data_path: Path | None) -> dict[str, Any]:
    meta = {k: v for k, v in data.meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
    if data_path is not None:
        meta["path"] = str(data_path)
        try:
            meta["sha256"] = prepared_sha256(data_path)
        except RnnrbmError:
            pass
    return meta


def default_run_name(settings: Settings) -> str:
    d = settings.data
    name = Path(d.data).stem if is_prepared_path(d.data) else Path(d.data).name or "data"
    return name + ("-midi" if d.source == "midi" else "")


class Trainer:
    """Owns the model, optimisers, generators and run directory of one training run.

    settings : the run's Settings. device : where the model lives. data : the prepared
    data (``datasets.load_prepared``); data_path : its file, recorded in checkpoints.

    A run is up to three stages, one epoch counter across them: ``pretrain_rbm_epochs``
    of the RBM alone on shuffled frames, ``pretrain_rnn_epochs`` of the RNN alone, then
    ``epochs`` of the whole model. Every metrics line names its stage.
    """

    def __init__(
        self,
        settings: Settings,
        device: torch.device,
        data,
        data_path: Path | None = None,
        callbacks: Callbacks | None = None,
        stop: StopFlag | None = None,
        world=None,
    ) -> None:
        self.settings, self.device = settings, device
        # Under torchrun (distributed.World): every process trains its share of each batch, and
        # only the main one writes the run directory.
        self.world = world
        self.writes = world is None or world.main
        self.callbacks = callbacks or Callbacks()
        self.stop = stop or StopFlag()
        self.data_meta = _data_meta(data, data_path)
        o = settings.optim
        self.train_sequences = data.splits["train"]
        # data prepared in the mmap format stays on disk: chunks are read as they are used
        self.on_disk = getattr(data, "on_disk", {})
        self.train_data = ChunkedData(self.train_sequences, o.chunk, device, self.on_disk.get("train"))
        valid = data.splits.get("valid") or []
        self.valid_data = ChunkedData(valid, o.chunk, device, self.on_disk.get("valid")) if valid else None
        self.valid_sequences = valid
        seed = settings.run.seed
        # A local generator: building the model never touches torch's global seed.
        self.model = build_model(settings.model, torch.Generator().manual_seed(seed)).to(device)
        # Gradients live in tensors shaped like their parameters from the start: a gradient
        # autograd creates may have another memory layout, and a norm (clipping) summed in
        # another order would make a resumed run differ from an uninterrupted one in the last bit.
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        # each process's chains their own random stream (the main one's is a single process's)
        rank = world.rank if world is not None else 0
        self.gibbs_gen = torch.Generator(device=device).manual_seed(seed + 1 + 1_000_003 * rank)
        # --dropout's masks come from the chains' stream (saved in checkpoints: a resumed run
        # draws the same masks); the objectives read the rate to choose their engine
        if o.dropout:
            if not hasattr(self.model, "set_dropout"):
                raise RnnrbmUsageError(f"the {settings.model.model_type} model does not drop units; drop --dropout.")
            self.model.set_dropout(o.dropout, self.gibbs_gen)
        self.plan = StagePlan.of(o)
        self._check_stages()
        self.epoch = 0  # completed epochs, all stages
        self.progress: dict[str, Any] | None = None  # mid-epoch position
        self.selection = ModelSelection(by_ll=bool(settings.eval.eval_every and self.valid_sequences),
                                        patience=o.patience)
        self.last_metrics: dict[str, Any] = {}
        self.average = ParameterAverage(self.model, o.ema)  # --ema; fine-tuning only
        self.run_dir: Path | None = Path(settings.run.run_dir) if settings.run.run_dir else None
        self.lock: rundir.RunLock | None = None
        self.stage: Stage = self._stage(self.plan.stage_of(self.epoch))

    # -- stages ---------------------------------------------------------------------------

    def _check_stages(self) -> None:
        """Pretraining a model has no such stage for is a usage error, before anything is written."""
        from rnnrbm_cli.models import record

        rec = record(self.settings.model.model_type)
        flags = {"rbm": "--pretrain-rbm-epochs", "rnn": "--pretrain-rnn-epochs"}
        for name, epochs in self.plan.stages:
            if name in flags and epochs and name not in rec.pretraining:
                raise RnnrbmUsageError(f"the {rec.name} model has no {STAGE_NAMES[name]} stage; drop {flags[name]}.")

    @property
    def total_epochs(self) -> int:
        return self.plan.total_epochs

    @property
    def best(self) -> dict[str, Any] | None:
        return self.selection.best

    @property
    def objective(self):
        return self.stage.objective

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.stage.optimizer

    def _stage(self, name: str) -> Stage:
        stage = self._build_stage(name)
        if self.world is not None:  # the gradient of the whole batch, computed in shares
            stage.objective = DataParallel(stage.objective, stage.params, self.world)
        return stage

    def _frames_apart(self, split: str) -> ChunkedData | None:
        """Every frame of a split its own sequence of one frame (the RBM's pretraining)."""
        table = self.on_disk.get(split)
        if table is not None and len(table.rolls):  # the same, without a Python object per frame
            return ChunkedData(None, 1, self.device, table._replace(lengths=np.ones(len(table.rolls), np.int64)))
        sequences = self.train_sequences if split == "train" else self.valid_sequences
        if not sequences:
            return None
        return ChunkedData([f[None] for s in sequences for f in s], 1, self.device)

    def _build_stage(self, name: str) -> Stage:
        optim, model = self.settings.optim, self.model
        backend, parts = self.settings.run.backend, model.parameter_parts()
        if name == "rbm":
            # every frame its own sequence: chunks of one frame, shuffled, `chunk` per update
            data, valid = self._frames_apart("train"), self._frames_apart("valid")
            objective = objective_for(model, data, k=optim.k, backend=backend, generator=self.gibbs_gen, valid=valid)
            params = parts["frame"]
            optimizer = torch.optim.SGD(params, lr=optim.pretrain_rbm_lr, momentum=optim.momentum, nesterov=optim.momentum > 0)
            return Stage(name, objective, data, valid, optim.chunk, params, optimizer)
        if name == "rnn":
            objective = objective_for(model, self.train_data, k=optim.k, objective="rnn-prediction")
            params = parts["rnn"] + [model.bv]
            optimizer = torch.optim.Adam(params, lr=optim.pretrain_rnn_lr)
            return Stage(name, objective, self.train_data, self.valid_data, optim.batch, params, optimizer)
        objective = objective_for(model, self.train_data, k=optim.k, backend=self.fine_tuning_backend(),
                                  generator=self.gibbs_gen, valid=self.valid_data)
        optimizer = fine_tuning_optimizer(model, parts, optim)
        return Stage(name, objective, self.train_data, self.valid_data, optim.batch, list(model.parameters()), optimizer,
                     schedule(optimizer, optim))

    def fine_tuning_backend(self) -> str:
        """The engine seam's name for who computes fine-tuning, the stage most of a run spends
        in: ``_build_stage`` builds that stage on it, and the run's first line names it (RNN
        pretraining is always torch)."""
        binary = self.train_data.binary and (self.valid_data is None or self.valid_data.binary)
        return resolve_backend(self.settings.run.backend, self.model, binary=binary, training=True)

    # Fewer plain-SGD steps than this at the tutorial's rate leave the model below an
    # independent-notes baseline (measured on JSB chorales: 48,600 steps, -10.70 against -10.48).
    MIN_TUTORIAL_STEPS = 200_000

    def advice(self) -> str | None:
        """A sentence for the user when the settings are the tutorial's plain SGD and the data
        is too small for them to train the model within the epochs asked for."""
        optim = self.settings.optim
        if optim.optimizer != "sgd" or optim.lr > 0.001 or optim.momentum or optim.pretrain_rbm_epochs or optim.pretrain_rnn_epochs:
            return None
        per_epoch = -(-len(self.train_data.chunks) // optim.batch)
        steps = per_epoch * optim.epochs
        if steps >= self.MIN_TUTORIAL_STEPS:
            return None
        return (f"Note: {per_epoch:,} updates per epoch make {steps:,} plain SGD steps at lr {optim.lr:g}, too few for these "
                f"settings to learn this data (a model of independent notes does better); --preset paper trains it "
                "properly.")

    # -- checkpoints --------------------------------------------------------------------

    def state(self, averaged: bool = False) -> dict[str, Any]:
        """What a checkpoint holds; ``averaged``: the model is the averaged one (best.pt), when
        there is an average."""
        model_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        ema_state = self.average.state()
        if ema_state is not None and averaged:
            model_state.update(ema_state)
        return {
            "model_type": self.settings.model.model_type,
            "model_config": asdict(self.settings.model),
            "model_state": model_state,
            "ema_state": ema_state,
            "settings": self.settings.sections(),
            "data": self.data_meta,
            "epoch": self.epoch,
            "stage": self.stage.name,
            "optimizer_state": self.stage.optimizer.state_dict(),
            "scheduler_state": self.stage.scheduler.state_dict() if self.stage.scheduler is not None else None,
            "rng": {"shuffle": self.shuffle_gen.get_state(), "gibbs": self.gibbs_gen.get_state()},
            "progress": self.progress,
            "metrics": self.selection.state(self.last_metrics),
        }

    def load_state(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model_state"])
        self.shuffle_gen.set_state(payload["rng"]["shuffle"])
        self.gibbs_gen.set_state(payload["rng"]["gibbs"].to("cpu"))
        if self.world is not None and not self.world.main:  # the checkpoint holds the main process's stream
            self.gibbs_gen.manual_seed(self.settings.run.seed + 1 + 1_000_003 * self.world.rank + 7919 * int(payload["epoch"]))
        self.epoch = int(payload["epoch"])
        self.progress = payload.get("progress")
        saved_stage = payload.get("stage", "fine")
        # the optimiser state belongs to the stage the checkpoint was written in
        self.stage = self._stage(saved_stage)
        self.stage.optimizer.load_state_dict(payload["optimizer_state"])
        if self.stage.scheduler is not None and payload.get("scheduler_state") is not None:
            self.stage.scheduler.load_state_dict(payload["scheduler_state"])
        metrics = payload.get("metrics") or {}
        self.selection.load(metrics)
        self.last_metrics = metrics.get("last") or {}
        ema_state = payload.get("ema_state")
        if ema_state is not None:
            problem = state_problem(dict(self.model.named_parameters()), ema_state, key="ema_state")
            if problem:
                raise RnnrbmError(f"the checkpoint's ema_state does not fit the model: {problem}.")
        self.average.load(ema_state, self.device)

    def _params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def save(self, best: bool = False) -> Path:
        path = self.run_dir / "checkpoint.pt"
        if not self.writes:
            return path
        save_checkpoint(path, self.state())
        if best:
            save_checkpoint(self.run_dir / "best.pt", self.state(averaged=True))
        return path

    # -- the loop -----------------------------------------------------------------------

    def start_run_dir(self, command: str) -> None:
        """Create the run directory (a new one unless settings name it) and its config.json and command.txt."""
        if self.run_dir is None:
            self.run_dir = rundir.new_run_dir(RUNS_DIR, default_run_name(self.settings))
            self.settings = replace(self.settings, run=replace(self.settings.run, run_dir=str(self.run_dir)))
        if not self.writes:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RnnrbmError(f"cannot create {self.run_dir}: {e.strerror or e}.") from None
        rundir.write_config(self.run_dir, self.settings.sections())
        rundir.append_command(self.run_dir, command)

    def release(self) -> None:
        """Give up the run directory's lock (the end of the process does it too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def train(self) -> TrainResult:
        try:
            return self._train()
        finally:
            self.release()

    def _train(self) -> TrainResult:
        self.callbacks.on_start({
            "run_dir": str(self.run_dir), "device": str(self.device), "backend": self.fine_tuning_backend(),
            "train_sequences": self.train_data.n_sequences, "train_frames": self.train_data.n_frames,
            "train_chunks": len(self.train_data.chunks), "epoch": self.epoch, "epochs": self.total_epochs,
            "stages": [list(stage) for stage in self.plan.stages],  # [name, epochs], in order
        })
        advice = self.advice()
        if advice is not None and self.epoch == 0:
            self.callbacks.on_message(advice)
        if not self.valid_sequences:
            self.callbacks.on_message(
                f"Note: {self.data_meta.get('path', 'the data')} has no validation sequences, so no model is selected: nothing is estimated "
                "on validation, best.pt is the latest epoch and training never stops early."
            )
        announced = None
        while self.epoch < self.total_epochs and not self.selection.stopped_early:
            name = self.plan.stage_of(self.epoch)
            if name != self.stage.name:
                self.stage = self._stage(name)
            if announced != name:
                announced = name
                self.callbacks.on_stage(name, self.plan.epochs_of(name))
                message = self.objective.compile_message()
                if message is not None:
                    self.callbacks.on_message(message)
                    self.objective.warm_up()  # compile now, so that the epoch's time is training only
            metrics = self._run_epoch(self.epoch + 1)
            self.epoch += 1
            self.progress = None
            is_best = self.selection.update(metrics)
            self.last_metrics = metrics
            self.save(best=is_best)
            # metrics after the checkpoint: a crash in between costs a line, never a mismatch
            if self.writes:
                rundir.append_metrics(self.run_dir, metrics)
            self.callbacks.on_epoch_end(metrics)
            if self.selection.stopped_early:
                self.callbacks.on_message(
                    f"Stopped early: validation LL has not improved for {self.settings.optim.patience} estimates; "
                    f"best.pt is epoch {self.best['epoch']}."
                )
        if not (self.run_dir / "checkpoint.pt").exists():  # --epochs 0: the initial model
            self.save()
        if self.writes and not (self.run_dir / "best.pt").exists():
            save_checkpoint(self.run_dir / "best.pt", self.state(averaged=True))
        return TrainResult(
            run_dir=self.run_dir, checkpoint=self.run_dir / "checkpoint.pt",
            best_checkpoint=self.run_dir / "best.pt", epochs=self.epoch, metrics=self.last_metrics,
        )

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        optim, stage, model = self.settings.optim, self.stage, self.model
        data, objective, optimizer = stage.data, stage.objective, stage.optimizer
        model.train()
        if self.progress is not None:  # resuming inside an epoch
            saved = self.progress
            order, first = saved["order"], int(saved["update"])
            monitor_sum, cost_sum = float(saved["monitor_sum"]), float(saved["cost_sum"])
            seconds_before, frames_done = float(saved["seconds"]), int(saved["frames"])
            shifts = saved["shifts"].numpy() if saved.get("shifts") is not None else None
        else:
            order, first = data.epoch_order(stage.batch, self.shuffle_gen), 0
            monitor_sum, cost_sum = 0.0, 0.0
            seconds_before, frames_done = 0.0, 0
            shifts = self._draw_shifts(data)
        data.transpose(shifts)
        batches = order.split(stage.batch)
        n_updates = len(batches)
        averaging = stage.name == "fine" and optim.ema > 0
        if averaging:
            self.average.start()
        self.callbacks.on_epoch_start(epoch, n_updates, first)
        t0 = time.perf_counter()
        for update in range(first, n_updates):
            optimizer.zero_grad(set_to_none=False)
            stats = objective.gradients(batches[update])
            if optim.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(stage.params, optim.clip_grad)
            optimizer.step()
            if averaging:
                self.average.update()
            # sums stay tensors on the device: no synchronisation per update
            monitor_sum = monitor_sum + stats.monitor
            cost_sum = cost_sum + stats.cost
            frames_done += stats.n_frames
            self.callbacks.on_update(epoch, update + 1, n_updates)
            self._agree_on_signals()
            if self.stop.signum is not None and update + 1 < n_updates:
                self._interrupt(epoch, update + 1, order, monitor_sum, cost_sum, seconds_before + time.perf_counter() - t0,
                                frames_done, shifts)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = seconds_before + time.perf_counter() - t0
        train_monitor = float(monitor_sum) / n_updates
        train_cost = float(cost_sum) / n_updates
        if not (math.isfinite(train_cost) and math.isfinite(train_monitor) and self._params_finite()):
            raise TrainingDiverged(f"training diverged in epoch {epoch}: the cost or a parameter is NaN or infinite; {self._kept()} Try a smaller --lr.")
        metrics = {
            "epoch": epoch,
            "stage": stage.name,
            "train_monitor": train_monitor,
            "train_cost": train_cost,
            "valid_monitor": self.valid_monitor(),
            "seconds": seconds,
            "frames_per_second": frames_done / seconds if seconds > 0 else None,
            "updates": n_updates,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if shifts is not None:
            metrics["transpose_notes_dropped"] = data.notes_dropped
        if stage.name == "fine":
            self._validate(epoch, metrics)
        metrics["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._agree_on_signals()
        if self.stop.signum is not None:  # a signal during the last update or validation
            self.epoch, self.progress = epoch, None
            self.selection.update(metrics)
            self.last_metrics = metrics
            self.save(best=self.best is not None and self.best.get("epoch") == epoch)
            if self.writes:
                rundir.append_metrics(self.run_dir, metrics)
            self.callbacks.on_epoch_end(metrics)
            raise TrainingInterrupted(self.stop.signum, self.run_dir, epoch, None)
        return metrics

    def _agree_on_signals(self) -> None:
        """Under torchrun, a signal any process received stops every process at the same update."""
        if self.world is not None:
            self.stop.signum = self.world.agree_signal(self.stop.signum)

    def _validate(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Validation LL when due (every eval_every fine-tuning epochs, and the last), then
        the schedule and early stopping."""
        e = self.settings.eval
        n = self.plan.fine_epoch(epoch)
        due = e.eval_every and self.valid_sequences and (n % e.eval_every == 0 or epoch == self.total_epochs)
        if due:
            metrics.update(self.valid_log_likelihood())
            self.selection.estimated(metrics)
        step_schedule(self.stage.scheduler, metrics["valid_ll"] if due else None)

    def _kept(self) -> str:
        if (self.run_dir / "checkpoint.pt").exists():
            return f"the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}."
        return "no checkpoint had been written yet."

    def _draw_shifts(self, data: ChunkedData) -> np.ndarray | None:
        """--augment-transpose K: each sequence's shift for this epoch, uniform in [-K, K], from
        the shuffling stream (nothing drawn without augmentation, so such runs are unchanged)."""
        K = self.settings.optim.augment_transpose
        if not K:
            return None
        return torch.randint(-K, K + 1, (data.n_sequences,), generator=self.shuffle_gen).numpy()

    def _interrupt(self, epoch, update, order, monitor_sum, cost_sum, seconds, frames, shifts=None) -> None:
        if not (self._params_finite() and math.isfinite(float(cost_sum))):
            raise TrainingDiverged(f"training diverged in epoch {epoch}; {self._kept()}")
        self.progress = {
            "order": order, "update": update, "monitor_sum": float(monitor_sum),
            "cost_sum": float(cost_sum), "seconds": seconds, "frames": frames,
            "shifts": None if shifts is None else torch.from_numpy(shifts),  # a tensor: checkpoints hold no arrays
        }
        self.save()
        raise TrainingInterrupted(self.stop.signum, self.run_dir, epoch, update)

    @torch.no_grad()
    def valid_monitor(self) -> float | None:
        """The stage's monitor on the validation split, with a fixed seed so that epochs compare."""
        if self.stage.valid is None:
            return None
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.settings.run.seed + 2)
        try:
            with self.average.averaged():
                return self.objective.monitor(self.stage.valid, gen)
        finally:
            self.model.train()

    def valid_log_likelihood(self) -> dict[str, Any]:
        """Validation log-likelihood on a fixed random frame subset (AIS, or exact)."""
        from rnnrbm_cli.evaluate import exact_likelihood, log_likelihood

        e = self.settings.eval
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.settings.run.seed + 3)
        t0 = time.perf_counter()
        with self.average.averaged():
            res = log_likelihood(
                self.model, self.valid_sequences, chains=e.eval_chains, betas=e.eval_betas, method=e.eval_method,
                # an exact likelihood is cheap: all validation frames then
                max_frames=None if exact_likelihood(self.model) else e.eval_frames, generator=gen,
                backend=self.settings.run.backend,
            )
        self.model.train()
        return {"valid_ll": res.mean, "valid_ll_stderr": res.stderr, "valid_ll_method": res.method,
                "valid_ll_seconds": time.perf_counter() - t0}


def new_trainer(settings: Settings, device, data, data_path, command="", callbacks=None, stop=None,
                world=None) -> Trainer:
    """A trainer for a fresh run on ``data`` (prepared, from ``data_path``): its run directory
    created and locked (by the main process under torchrun). ``api.start_training`` resolves
    the data a setting names."""
    trainer = Trainer(settings, device, data, data_path, callbacks, stop, world)
    problem = None
    if trainer.writes:
        try:
            _own_run_dir(trainer, command)
        except RnnrbmError as e:
            problem = e
    _agree_on_start(trainer, problem)
    return trainer


def _own_run_dir(trainer: Trainer, command: str) -> None:
    if trainer.run_dir is None:
        trainer.start_run_dir(command)
        trainer.lock = rundir.RunLock(trainer.run_dir, command)
        return
    trainer.lock = rundir.RunLock(trainer.run_dir, command)
    if (trainer.run_dir / "checkpoint.pt").exists():
        trainer.release()
        raise RnnrbmUsageError(
            f"{trainer.run_dir} already holds a run; resume it with --resume {trainer.run_dir} or choose another --run-dir."
        )
    trainer.start_run_dir(command)


def _agree_on_start(trainer: Trainer, problem: RnnrbmError | None) -> None:
    """Raise ``problem``; under torchrun, on every process if the main one has one, and take
    the main process's run directory."""
    if trainer.world is not None:
        if not trainer.world.agree(problem is None):
            trainer.release()
            if problem is not None:
                raise problem
            raise RnnrbmError("the main process of the job could not start the run (it says why); no process trained.")
        trainer.run_dir = Path(trainer.world.broadcast(str(trainer.run_dir)))
    elif problem is not None:
        raise problem


def _check_config_file(run_dir: Path, settings: Settings, changed: Iterable[str]) -> None:
    """A run resumes with its checkpoint's settings; a config.json that says otherwise (a
    hand edit) would be ignored silently and then misdescribe the run, so it is refused,
    naming the keys. (The ``changed`` ones, of RESUME_CHANGES, may differ: the values given
    are then written to config.json too.)"""
    path = run_dir / rundir.CONFIG_FILE
    if not path.is_file():
        return
    try:
        written = resolve_settings({**read_settings_file(path), "run_dir": str(run_dir)})
    except RnnrbmUsageError as e:
        raise RnnrbmUsageError(f"{str(e).rstrip('.')} (in {path}, which --resume checks against checkpoint.pt).") from None
    diff = differences(written, settings)
    for key in changed:
        diff.pop(key, None)
    if diff:
        keys = ", ".join(f"{k} ({a!r} there, {b!r} in checkpoint.pt)" for k, (a, b) in diff.items())
        raise RnnrbmUsageError(
            f"{path} differs from the run's checkpoint in {keys}; --resume continues a run with its own settings, "
            f"so undo the edit, or train a new run from it with --config {path} --run-dir NEW_DIR."
        )


# The settings a resumed run may change: both only say when it stops, so a run resumed with
# new values trains as one started with them would have (until the old ones would stop it).
RESUME_CHANGES = ("epochs", "patience")


def resume_trainer(run_dir, device, data_for, epochs=None, command="", callbacks=None, stop=None, world=None,
                   patience=None) -> Trainer:
    """A trainer that continues the run in ``run_dir`` from its latest checkpoint (locked by
    the main process under torchrun); ``epochs`` and ``patience`` (RESUME_CHANGES), when
    given, replace the run's.

    data_for : payload -> (prepared data, its path): the data the checkpoint was trained on
    (``api.resume_training`` hands the resolver in; the loop knows no data names).
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise RnnrbmError(f"{run_dir} has no checkpoint.pt to resume from.")
    main = world is None or world.main
    lock, problem = None, None
    try:
        lock = rundir.RunLock(run_dir, command) if main else None
    except RnnrbmError as e:
        problem = e
    if world is not None and not world.agree(problem is None):
        raise problem or RnnrbmError("the main process of the job could not lock the run (it says why); no process trained.")
    if problem is not None:
        raise problem
    try:
        payload = load_checkpoint(ckpt)
        settings = settings_from_checkpoint(payload).with_values(run_dir=str(run_dir))
        changes = {k: v for k, v in zip(RESUME_CHANGES, (epochs, patience)) if v is not None}
        _check_config_file(run_dir, settings, changes)
        settings = settings.with_values(**changes)
        data, path = data_for(payload)
        trainer = Trainer(settings, device, data, path, callbacks, stop, world)
        trainer.load_state(payload)
        if main:
            rundir.trim_metrics(run_dir, trainer.epoch)
            rundir.append_command(run_dir, command)
            if changes:
                rundir.write_config(run_dir, settings.sections())  # so that config.json keeps describing the run
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.lock = lock
    return trainer
