"""The train command and its progress display (train.py underneath)."""

from __future__ import annotations

import sys

import click

from rnnrbm_cli.choices import RNN_KINDS
from rnnrbm_cli.cli import (
    _BACKENDS, _EVAL_METHODS, MODEL_HELP, SEED, FloatRange, ModelChoice, cli,
    err_console, print_json,
)


# == train ================================================================================


@cli.command()
@click.option("--data", help="Registry name, prepared .npz, or a MIDI folder/zip (prepared first).  [default: nottingham]")
@click.option("--source", type=click.Choice(["rolls", "midi"]), help="For a registry name: the benchmark rolls or the source MIDI.  [default: rolls]")
@click.option("--dt", type=FloatRange(min=0, min_open=True), help="Seconds per frame with --source midi.  [default: 0.3]")
@click.option("--epochs", type=click.IntRange(min=0), help="Fine-tuning passes over the training split, after any pretraining (the total, also with --resume).  [default: 200]")
@click.option("--device", help="auto, cpu or cuda.  [default: auto]")
@click.option("--seed", type=SEED, help="Seed for initialisation, shuffling and sampling.  [default: 1234]")
@click.option("--model", "model_type", type=ModelChoice(), help=MODEL_HELP)
@click.option("--rnn", type=click.Choice(RNN_KINDS), help="The recurrence (the compiled CPU kernels: tanh for the RNN-RBM, any for the RNN-NADE).  [default: tanh]")
@click.option("--n-hidden", type=click.IntRange(min=1), help="RBM (or NADE) hidden units.  [default: 150]")
@click.option("--n-recurrent", type=click.IntRange(min=1), help="RNN units.  [default: 100]")
@click.option("--learn-u0/--no-learn-u0", default=None, help="Learn the initial RNN state (the paper) instead of u(0) = 0.")
@click.option("--k", type=click.IntRange(min=1), help="Gibbs steps of CD-k.  [default: 15]")
@click.option("--lr", type=FloatRange(min=0, min_open=True), help="Learning rate.  [default: 0.001]")
@click.option("--lr-rbm", type=FloatRange(min=0, min_open=True), help="Learning rate of the RBM (NADE) part: W, bv, bh.  [default: --lr]")
@click.option("--lr-rnn", type=FloatRange(min=0, min_open=True), help="Learning rate of the RNN part: recurrence, Wuv, Wuh, u0.  [default: --lr]")
@click.option("--lr-schedule", type=click.Choice(["constant", "exp", "plateau"]), help="constant; exp: x lr-decay every epoch; plateau: x lr-decay when validation LL stalls.  [default: constant]")
@click.option("--lr-decay", type=FloatRange(0, 1, min_open=True), help="Factor of the exp and plateau schedules.  [default: 0.5]")
@click.option("--lr-patience", type=click.IntRange(min=0), help="Plateau schedule: decay when more than N estimates have not improved.  [default: 2]")
@click.option("--clip-grad", type=FloatRange(min=0), help="Clip the gradient's norm to this (0 = never).  [default: 0]")
@click.option("--ema", type=FloatRange(0, 1, max_open=True), help="Average the fine-tuned parameters exponentially with this decay per update (e.g. 0.9999); validation and best.pt use the average (0 = none).  [default: 0]")
@click.option("--dropout", type=FloatRange(0, 1, max_open=True), help="Drop this share of the recurrence's inputs and outputs at random in training (the RNN-NADE: on the torch engine).  [default: 0]")
@click.option("--weight-decay", type=FloatRange(min=0), help="Weight decay (L2 with SGD, decoupled AdamW with Adam).  [default: 0]")
@click.option("--augment-transpose", type=click.IntRange(0, 127), metavar="K", help="Shift each training sequence by a random number of semitones in [-K, K] every epoch (notes off the keyboard dropped and counted).  [default: 0]")
@click.option("--patience", type=click.IntRange(min=0), help="Stop when validation LL has not improved for N estimates (0 = never; with --resume, a run that stopped early goes on when N is larger).  [default: 10]")
@click.option("--pretrain-rbm-epochs", type=click.IntRange(min=0), help="First train the RBM alone on shuffled frames for N epochs.  [default: 0]")
@click.option("--pretrain-rbm-lr", type=FloatRange(min=0, min_open=True), help="SGD learning rate of RBM pretraining.  [default: 0.01]")
@click.option("--pretrain-rnn-epochs", type=click.IntRange(min=0), help="Then train the RNN alone (cross-entropy prediction of each frame) for N epochs.  [default: 0]")
@click.option("--pretrain-rnn-lr", type=FloatRange(min=0, min_open=True), help="Adam learning rate of RNN pretraining.  [default: 0.003]")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), help="Optimiser.  [default: sgd]")
@click.option("--momentum", type=FloatRange(0, 1, max_open=True), help="Nesterov momentum for SGD.  [default: 0]")
@click.option("--chunk", type=click.IntRange(min=1), help="Frames per chunk.  [default: 100]")
@click.option("--batch", type=click.IntRange(min=1), help="Chunks per update (1 = the tutorial).  [default: 1]")
@click.option("--eval-every", type=click.IntRange(min=0), help="Estimate validation LL every N epochs and after the last; best.pt and early stopping follow it (0 = never).  [default: 5]")
@click.option("--eval-frames", type=click.IntRange(min=1), help="Validation frames for that estimate (a fixed subset).  [default: 500]")
@click.option("--eval-chains", type=click.IntRange(min=1), help="AIS chains for that estimate.  [default: 50]")
@click.option("--eval-betas", type=click.IntRange(min=1), help="AIS inverse temperatures for that estimate.  [default: 100]")
@click.option("--eval-method", type=click.Choice(_EVAL_METHODS), help="How that estimate anneals: ais (forward, errs high when too short) or raise (reverse from the frames, errs low).  [default: ais]")
@click.option("--backend", type=click.Choice(_BACKENDS), help="Who computes: auto (the compiled CPU kernels on CPU, torch on CUDA), torch or numba.  [default: auto]")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory.  [default: a new runs/<data>-<timestamp>]")
@click.option("--preset", type=click.Choice(["tutorial", "paper"]), help="Start from a named set of settings: tutorial (the 2012 tutorial exactly) or paper (the best recipe found on validation, for the chosen --model and --data); flags and --config override it.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="TOML file of settings, or a run's config.json (flags override it).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--mirror", help="Local folder or URL to fetch data from first.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Download and prepared-data cache.")
@click.option("--tensorboard", is_flag=False, flag_value="", metavar="[DIR]",
              help="Also write TensorBoard event files (scalars per epoch by stage, a sampled piano-roll every 5 epochs) to DIR.  [default DIR: RUN_DIR/tensorboard; needs pip install 'rnnrbm[tensorboard]']")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.pass_context
def train(ctx, preset, config_file, resume, mirror, cache_dir, tensorboard, as_json, **flags):
    """Train an RNN-RBM (or RNN-NADE) and write a run directory.

    The run directory holds config.json, command.txt, metrics.jsonl, checkpoint.pt
    (latest) and best.pt. Ctrl+C checkpoints and tells you how to resume.

    \b
    Example:
      rnnrbm train --epochs 200 --device cuda
      rnnrbm train --preset tutorial --epochs 10
      rnnrbm train --resume runs/nottingham-20261124-120000 --epochs 300
      rnnrbm train --resume runs/nottingham-20261124-120000 --patience 20
    """
    import signal

    from rnnrbm_cli.config import merge_settings
    from rnnrbm_cli.device import resolve_device
    from rnnrbm_cli.api import resume_training, start_training
    from rnnrbm_cli.tensorboard_log import TensorBoardCallbacks
    from rnnrbm_cli.train import CallbackList, StopFlag, TrainingInterrupted

    given = {k: v for k, v in flags.items() if v is not None}
    command = " ".join(["rnnrbm", *[_shell_quote(a) for a in sys.argv[1:]]])
    if resume:
        from rnnrbm_cli.train import RESUME_CHANGES

        extra = sorted(set(given) - {*RESUME_CHANGES, "device"}) + (["preset"] if preset else []) + (["config"] if config_file else [])
        if extra:
            allowed = ", ".join(f"--{k}" for k in (*RESUME_CHANGES, "device"))
            raise click.UsageError(f"--resume continues a run with its own settings; only {allowed} may be given (not {', '.join('--' + e.replace('_', '-') for e in extra)}).")
    else:
        settings = merge_settings(preset, config_file, given)
        from rnnrbm_cli.models import record

        if "k" in given and not record(settings.model.model_type).uses_gibbs:  # said, not taken as used
            err_console.print(f"The {settings.model.model_type} model has no Gibbs chain; --k is not used.")
    device = resolve_device(given.get("device") or ("auto" if resume else settings.run.device))

    stop = StopFlag()
    callbacks = _TrainProgress()
    # Not a setting: it watches the run (config.json and the checkpoints are the same without it).
    board = TensorBoardCallbacks(tensorboard or None) if tensorboard is not None else None
    heard = CallbackList(callbacks, board) if board is not None else callbacks
    old = {s: signal.signal(s, lambda signum, frame: stop.set(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if resume:
            trainer = resume_training(resume, device, given.get("epochs"), command, heard, stop, cache_dir, mirror,
                                      patience=given.get("patience"))
        else:
            trainer = start_training(settings, device, command, heard, stop, cache_dir, mirror)
        result = trainer.train()
    except TrainingInterrupted as e:
        callbacks.close()
        where = f"in epoch {e.epoch} after update {e.update}" if e.update is not None else f"at the end of epoch {e.epoch}"
        if trainer.world is None or trainer.world.main:
            err_console.print(f"Interrupted {where}; checkpoint written. Resume with: rnnrbm train --resume {e.run_dir}")
        sys.exit(128 + e.signum)
    finally:
        callbacks.close()
        if board is not None:
            board.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    if trainer.world is not None and not trainer.world.main:
        return  # under torchrun the main process prints the result
    if as_json:
        print_json({
            "run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint),
            "best_checkpoint": str(result.best_checkpoint), "epochs": result.epochs, "metrics": result.metrics,
        })
    else:
        click.echo(str(result.checkpoint))


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# Who fine-tunes, as the run's first line says it: the engine decides the speed (the NADE's
# kernels drop no units, so its --dropout run trains on torch, several times slower on a CPU).
_ENGINES = {"numba": "compiled kernels", "torch": "torch engine"}


class _TrainProgress:
    """Draws the training loop's events: a tqdm bar per epoch (on a terminal) and one line
    per epoch, which ends with the time the whole run has left (every stage), so that a log
    says it too."""

    def __init__(self, clock=None) -> None:
        import time

        self.bar = None
        self.epochs = 0
        self.stage = "training"
        self.clock = clock or time.monotonic
        self.eta = RunEta([])
        self.epoch_started = None

    def on_start(self, info) -> None:
        self.epochs = info["epochs"]
        self.eta = RunEta(info.get("stages") or [["fine", info["epochs"]]])
        err_console.print(
            f"Run directory: {info['run_dir']}  (device {info['device']}, {_ENGINES.get(info.get('backend'), 'torch')}, "
            f"{info['train_sequences']:,} sequence{'s' if info['train_sequences'] != 1 else ''}, "
            f"{info['train_frames']:,} frames, {info['train_chunks']:,} chunk{'s' if info['train_chunks'] != 1 else ''})"
        )

    def on_stage(self, stage, epochs) -> None:
        from rnnrbm_cli.train import STAGE_NAMES

        self.stage = STAGE_NAMES.get(stage, stage)
        if stage != "fine":
            err_console.print(f"{self.stage}: {epochs} epoch{'s' if epochs != 1 else ''}")

    def on_epoch_start(self, epoch, n_updates, first_update) -> None:
        from tqdm import tqdm

        self.close()
        self.epoch_started = self.clock()
        self.bar = tqdm(total=n_updates, initial=first_update, desc=f"{self.stage}, epoch {epoch}/{self.epochs}", unit="upd",
                        leave=False, file=sys.stderr, dynamic_ncols=True, disable=None)

    def on_update(self, epoch, update, n_updates) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, m) -> None:
        self.close()
        stage = "" if m.get("stage", "fine") == "fine" else f"[{m['stage']}] "
        parts = [f"{stage}epoch {m['epoch']:>4}/{self.epochs}", f"train monitor {m['train_monitor']:8.3f}"]
        if m.get("valid_monitor") is not None:
            parts.append(f"valid monitor {m['valid_monitor']:8.3f}")
        if m.get("valid_ll") is not None:
            parts.append(f"valid LL {m['valid_ll']:7.3f} ± {m['valid_ll_stderr']:.3f}")
        parts.append(f"{m['seconds']:7.1f} s")
        if m.get("frames_per_second"):
            parts.append(f"{m['frames_per_second']:10,.0f} frames/s")
        if self.epoch_started is not None:  # the epoch's wall time: validation and checkpoint included
            self.eta.done(m.get("stage", "fine"), m["epoch"], self.clock() - self.epoch_started)
            self.epoch_started = None
        left = self.eta.left(m["epoch"])
        if left is not None:
            parts.append(f"ETA {_short_duration(left)}")
        err_console.print("  ".join(parts))

    def on_message(self, text) -> None:
        err_console.print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunEta:
    """The time a run has left, estimated from the epochs done and their seconds.

    ``stages`` is the plan, [[name, epochs], ...] in order, on one epoch counter. An epoch
    left in a stage is expected to last as long as that stage's epochs have on average; in
    a stage not yet begun, as long as every epoch so far. It assumes the run goes to its last
    epoch: early stopping can only end it sooner.
    """

    def __init__(self, stages) -> None:
        self.stages = [(name, int(n)) for name, n in stages]
        self.seconds: dict[str, list[float]] = {}

    def done(self, stage: str, epoch: int, seconds: float) -> None:
        self.seconds.setdefault(stage, []).append(seconds)

    def left(self, epoch: int) -> float | None:
        """Seconds left after ``epoch`` epochs (counted from the run's start); None when
        nothing is left or nothing has been timed yet."""
        every = [s for seconds in self.seconds.values() for s in seconds]
        if not every:
            return None
        overall = sum(every) / len(every)
        total, first = 0.0, 0
        for name, n in self.stages:
            remaining = max(0, min(n, first + n - epoch))
            if remaining:
                timed = self.seconds.get(name)
                total += remaining * (sum(timed) / len(timed) if timed else overall)
            first += n
        return total if total > 0 else None


def _short_duration(seconds: float) -> str:
    """45 s, 12 min, 1 h 05 min: as a person says a time left."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"
