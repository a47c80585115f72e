"""The tune command: a hyperparameter search on Optuna (tune.py underneath)."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from rnnrbm_cli.cli import _BACKENDS, SEED, FloatRange, ModelChoice, cli, err_console, models, print_json
from rnnrbm_cli.errors import RnnrbmUsageError

_PRUNERS = ("median", "halving", "none")  # tune.PRUNERS
_DEFAULT_EPOCHS, _DEFAULT_EVAL_EVERY = 20, 2  # tune.DEFAULT_EPOCHS, tune.DEFAULT_EVAL_EVERY


@cli.command("tune")
@click.option("--data", help="Registry name, prepared .npz, or a MIDI folder/zip (prepared first).  [default: --config's]")
@click.option("--model", "model_type", type=ModelChoice(),
              help=f"The model every trial trains.  [default: --config's, else {models.DEFAULT_MODEL_TYPE}]")
@click.option("--trials", type=click.IntRange(1, 1_000_000), default=20, show_default=True,
              help="Finished trials (complete or pruned) the study should have in total, over all workers and runs.")
@click.option("--timeout", type=FloatRange(min=0, min_open=True), help="Start no trial after this many seconds (the running one ends).")
@click.option("--study", "study_name", help="Study name.  [default: <data>-<model>]")
@click.option("--storage", help="Database URL shared by workers, e.g. postgresql://USER@HOST/DB.  [default: runs/tune-<study>/study.db, SQLite]")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), help="TOML search space, replacing the default (see --show-space).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="TOML settings (or a run's config.json) every trial starts from.")
@click.option("--epochs", type=click.IntRange(min=1), help=f"Fine-tuning epochs per trial.  [default: {_DEFAULT_EPOCHS}]")
@click.option("--eval-every", type=click.IntRange(min=1), help=f"Report validation LL to the pruner every N epochs.  [default: {_DEFAULT_EVAL_EVERY}]")
@click.option("--pruner", type=click.Choice(_PRUNERS), default="median", show_default=True,
              help="Stop poor trials early: median (below the median of earlier trials at the same epoch) or successive halving.")
@click.option("--device", help="auto, cpu or cuda.  [default: auto]")
@click.option("--backend", type=click.Choice(_BACKENDS), help="Who computes: auto, torch or numba.  [default: auto]")
@click.option("--seed", type=SEED, help="Seed of every trial's initialisation, shuffling and sampling.  [default: 1234]")
@click.option("--heartbeat", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds between a running trial's heartbeats; one silent for 6 of them is failed as lost.")
@click.option("--mirror", help="Local folder or URL to fetch data from first.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Download and prepared-data cache.")
@click.option("--show-space", is_flag=True, help="Print the default search space (TOML) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end: the best trial and the trial counts.")
def tune_cmd(data, model_type, trials, timeout, study_name, storage, space_file, config_file, epochs, eval_every, pruner,
             device, backend, seed, heartbeat, mirror, cache_dir, show_space, as_json):
    """Search hyperparameters with Optuna: each trial is a training run, judged by validation LL.

    Each trial trains in its own run directory, runs/tune-<study>/trial-<n>/, with
    settings drawn from the search space, and reports its validation log-likelihood
    every --eval-every epochs; the pruner stops poor trials early. The study is kept in
    runs/tune-<study>/study.db (SQLite) or in a --storage database shared by workers on
    any number of machines; the same command continues it until --trials have finished.
    At the end (and on Ctrl+C, which marks the running trial failed) it prints the best
    trials and writes best.toml, which `rnnrbm train --config` takes as it is.

    \b
    Example:
      rnnrbm tune --data nottingham --trials 50 --epochs 20
      rnnrbm tune --data nottingham --storage postgresql://me@dbhost/optuna --study notts
      rnnrbm train --config runs/tune-notts/best.toml --epochs 200
    """
    if show_space:
        from rnnrbm_cli.tune import default_space_text

        click.echo(default_space_text(), nl=False)
        return
    import signal

    import optuna

    from rnnrbm_cli.train import StopFlag
    from rnnrbm_cli.api import tune_model
    from rnnrbm_cli.tune import base_settings, model_and_data, read_space

    model_type, data = model_and_data(config_file, model_type, data)
    if not data:
        raise RnnrbmUsageError("give the data to tune on with --data NAME_OR_NPZ.")
    space = read_space(space_file, model_type)
    flags = {"data": data, "model_type": model_type, "epochs": epochs, "eval_every": eval_every, "device": device,
             "backend": backend, "seed": seed}
    base = base_settings(config_file, flags, space)
    command = " ".join(["rnnrbm", *[_shell_quote(a) for a in sys.argv[1:]]])

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happens to each trial
    stop = StopFlag()
    progress = _TuneProgress(base.optim.epochs)
    old = {s: signal.signal(s, lambda signum, frame: stop.set(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = tune_model(
            base, space, trials=trials, timeout=timeout, study_name=study_name, storage=storage, pruner=pruner,
            heartbeat=heartbeat, command=command, callbacks=progress, stop=stop, cache_dir=cache_dir, mirror=mirror,
        )
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    _print_summary(result)
    if as_json:
        print_json(result.to_json())
    if result.stopped == "interrupted":
        sys.exit(128 + (result.signum or signal.SIGINT))


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _short(path: str | None) -> str:
    """A path under the working directory relative to it (trials record absolute paths)."""
    import os

    if not path:
        return ""
    cwd = os.getcwd()
    return os.path.relpath(path, cwd) if path.startswith(cwd + os.sep) else path


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class _TuneProgress:
    """One line per trial start and end, and one per measured epoch, on stderr."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.key = "valid_ll"

    def on_study(self, info) -> None:
        self.key = info["objective"]
        c = info["counts"]
        done = c["complete"] + c["pruned"]
        err_console.print(
            f"Study {escape(info['study'])} in {escape(info['storage'])}: {done} of {info['trials']} trials finished"
            + (f", {c['running']} running" if c["running"] else "") + (f", {c['failed']} failed" if c["failed"] else "")
            + f"; trials in {escape(info['study_dir'])}/"
        )

    def on_trial_start(self, number, params, run_dir) -> None:
        values = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        err_console.print(f"trial {number}: {escape(values)}  ({escape(str(run_dir))})")

    def on_epoch_end(self, number, m) -> None:
        if "valid_ll" in m and m.get(self.key) is not None:  # the epochs the loop measures
            err_console.print(f"  trial {number} epoch {m['epoch']}: valid LL {m[self.key]:.4f}")

    def on_trial_end(self, number, state, value, note) -> None:
        if state == "COMPLETE":
            err_console.print(f"trial {number} complete: valid LL {value:.4f}")
        elif state == "PRUNED":
            why = "diverged" if note == "diverged" else f"valid LL {value:.4f}" if value is not None else ""
            err_console.print(f"trial {number} pruned" + (f" ({why})" if why else ""))
        else:
            err_console.print(f"trial {number} failed" + (f" ({escape(note)})" if note else ""))

    def on_wait(self, running) -> None:
        err_console.print(f"Waiting for {running} trial{'s' if running != 1 else ''} running elsewhere to finish the study.")

    def on_message(self, text) -> None:
        err_console.print(escape(text), soft_wrap=True)


def _print_summary(r) -> None:
    from rich.table import Table

    c = r.counts
    how = {"trials": "finished", "timeout": "stopped by --timeout", "interrupted": "interrupted"}[r.stopped]
    counts = f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed" + (
        f", {c['running']} running" if c["running"] else "")
    err_console.print(f"Study {escape(r.study)} {how}: {counts} (of {r.trials} wanted).")
    if r.top:
        keys = list(dict.fromkeys(k for t in r.top for k in t.params))
        table = Table(title=f"Best trials of {escape(r.study)}", title_justify="left")
        table.add_column("trial", justify="right")
        table.add_column("valid LL", justify="right")
        for k in keys:
            table.add_column(k, justify="right")
        table.add_column("run directory", overflow="fold")
        for t in r.top:
            table.add_row(str(t.number), f"{t.value:.4f}", *[_fmt(t.params.get(k, "")) for k in keys], escape(_short(t.run_dir)))
        err_console.print(table)
    if r.best_toml is not None:
        err_console.print(f"Best settings: {escape(str(r.best_toml))}  (rnnrbm train --config {escape(str(r.best_toml))})")
    else:
        err_console.print("No trial has completed yet, so there is no best.toml.")
    if r.stopped == "interrupted":
        err_console.print("The running trial is marked failed; run the same command again to continue the study.")
