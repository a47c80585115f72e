"""Hyperparameter search on Optuna: a study of ordinary training runs.

Each trial is a training run (``train.new_trainer``) in its own locked run directory,
``runs/tune-<study>/trial-<n>/``, with settings drawn by Optuna from a search space. The
objective is the validation log-likelihood per frame, reported every ``eval_every``
fine-tuning epochs so that a pruner stops poor trials early: for the RNN-RBM the training
loop's AIS (or exact, n_hidden <= 20) estimate on a fixed validation subset
(``valid_ll``), for the RNN-NADE its validation monitor, which is the exact
log-likelihood of the whole validation split (``valid_monitor``). A trial's value is the
best it reported, the epoch its best.pt holds. The test split is never read.

The study lives in an Optuna RDB storage: by default the SQLite file
``runs/tune-<study>/study.db``; with a PostgreSQL URL any number of workers, on one machine
or many, share one study. ``trials`` counts finished trials (complete or pruned) over the
whole study, whoever ran them: a worker starts no trial once they, with the trials running
elsewhere, make up the total (the role of ``optuna.study.MaxTrialsCallback``, checked
before a trial starts rather than after one ends). A trial that fails (Ctrl+C, an error,
a worker killed: its heartbeat stops and another worker marks it failed) does not count,
so running the same command again continues the study.

    >>> space = read_space(None, "rnn")              # the packaged default  # doctest: +SKIP
    >>> base = base_settings(flags={"data": "nottingham", "epochs": 20}, space=space)  # doctest: +SKIP
    >>> result = rnnrbm_cli.api.tune_model(base, space, trials=50)   # doctest: +SKIP
    >>> result.best.value, result.best_toml          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rnnrbm_cli import models
from rnnrbm_cli.config import Settings, merged_values, read_settings_file, resolve_settings, toml_text
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.tune_space import Param, Space, default_space_text, read_space
from rnnrbm_cli.tune_storage import display_url, first_line, open_storage, storage_url
from rnnrbm_cli.train import (
    RUNS_DIR,
    Callbacks,
    StopFlag,
    TrainingDiverged,
    TrainingInterrupted,
    default_run_name,
)

__all__ = [
    "PRUNERS", "objective_key", "Param", "TuneCallbacks", "TrialSummary", "StudyResult",
    "default_space_text", "read_space", "model_and_data", "base_settings", "storage_url", "open_storage", "run_study",
    "summarise_study", "write_best_toml", "toml_text",
]

PRUNERS = ("median", "halving", "none")


def objective_key(model_type: str) -> str:
    """The metric a model's trials are judged by, log-likelihood per frame in nats either way:
    for a model with an exact likelihood its validation monitor (exact, on the validation
    split cut into training chunks: each chunk's RNN starts afresh), else the loop's annealed
    (or enumerated) estimate on a fixed validation subset."""
    return "valid_monitor" if models.record(model_type).exact else "valid_ll"


# Without --epochs / --eval-every: short trials, measured often enough to prune.
DEFAULT_EPOCHS = 20
DEFAULT_EVAL_EVERY = 2

_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def model_and_data(config_file: str | Path | None, model_type: str | None, data: str | None) -> tuple[str, str | None]:
    """The model and data of a study: the flags', else the config file's, else the default model and none."""
    values = read_settings_file(config_file) if config_file is not None else {}
    return model_type or values.get("model_type") or models.DEFAULT_MODEL_TYPE, data or values.get("data")


def base_settings(config_file: str | Path | None = None, flags: Mapping[str, Any] | None = None, space: Space | None = None) -> Settings:
    """The settings every trial starts from, before the searched ones are drawn:

        tune's defaults (epochs 20, eval_every 2) < config file < the space's fixed values < flags

    A data file's path is made absolute, so that best.toml works from any folder. Every
    searched value (each end of a range, each choice) is checked against these settings,
    so that a bad space fails here, before any trial starts.
    """
    values = merged_values(None, config_file, flags, defaults={"epochs": DEFAULT_EPOCHS, "eval_every": DEFAULT_EVAL_EVERY},
                           over_file=space.fixed if space is not None else None)
    values.pop("run_dir", None)
    data = values.get("data")
    if isinstance(data, str) and data and Path(data).expanduser().exists():
        values["data"] = str(Path(data).expanduser().resolve())
    try:
        settings = resolve_settings(values)
    except RnnrbmUsageError as e:
        where = f" (with the fixed values of {space.where})" if space is not None and space.fixed else ""
        raise RnnrbmUsageError(f"{str(e).rstrip('.')}{where}.") from None
    e = settings.eval
    if settings.optim.epochs < 1:
        raise RnnrbmUsageError("a study needs --epochs of at least 1.")
    if e.eval_every < 1:
        raise RnnrbmUsageError("a study needs --eval-every of at least 1: trials are judged by validation log-likelihood.")
    if settings.optim.epochs < e.eval_every:
        raise RnnrbmUsageError(
            f"--epochs {settings.optim.epochs} is shorter than --eval-every {e.eval_every}; a trial would never be measured."
        )
    if space is not None:
        for p in space.params.values():
            for v in p.values_to_check():
                try:
                    settings.with_values(**{p.key: v})
                except RnnrbmUsageError as err:
                    raise RnnrbmUsageError(
                        f"{p.key} in {space.where} allows {p.key} = {v!r}, which is not a valid setting "
                        f"({str(err).rstrip('.')})."
                    ) from None
    return settings


# --- reporting -------------------------------------------------------------------------------


class TuneCallbacks:
    """What a study tells the outside world; override what you need."""

    def on_study(self, info: dict[str, Any]) -> None: ...

    def on_trial_start(self, number: int, params: dict[str, Any], run_dir: Path) -> None: ...

    def on_epoch_end(self, number: int, metrics: dict[str, Any]) -> None: ...

    def on_trial_end(self, number: int, state: str, value: float | None, note: str) -> None: ...

    def on_wait(self, running: int) -> None: ...

    def on_message(self, text: str) -> None: ...


@dataclass
class TrialSummary:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None  # its best validation LL (COMPLETE), the last reported (PRUNED)
    params: dict[str, Any]
    run_dir: str | None
    epochs: int | None  # the last fine-tuning epoch it reported
    note: str  # "diverged", "interrupted", "cancelled", "no heartbeat", "error: ..." or ""
    settings: dict[str, Any] | None = None  # the trial's full flat settings

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "value": self.value, "params": self.params,
                "run_dir": self.run_dir, "epochs": self.epochs, "note": self.note}


@dataclass
class StudyResult:
    study: str
    storage: str  # the storage URL, without password
    study_dir: Path
    counts: dict[str, int]  # complete, pruned, failed, running, cancelled
    best: TrialSummary | None
    top: list[TrialSummary]  # the best complete trials, best first
    best_toml: Path | None
    stopped: str  # "trials" (the total is reached), "timeout" or "interrupted"
    signum: int | None = None  # the signal that interrupted it
    trials: int = 0  # the total asked for
    ran: list[int] = field(default_factory=list)  # numbers of the trials this call ran

    def to_json(self) -> dict[str, Any]:
        b = self.best
        return {
            "study": self.study, "storage": self.storage, "study_dir": str(self.study_dir),
            "best_value": b.value if b else None, "best_trial": b.number if b else None,
            "best_params": b.params if b else None, "best_settings": b.settings if b else None,
            "run_dir": b.run_dir if b else None, "best_toml": str(self.best_toml) if self.best_toml else None,
            "trials": self.counts, "trials_wanted": self.trials, "ran": self.ran, "stopped": self.stopped,
            "top": [t.to_json() for t in self.top],
        }


class _TrialReporter(Callbacks):
    """Reports a trial's validation LL to Optuna at each fine-tuning epoch the loop measured,
    and stops the run (raising ``optuna.TrialPruned`` out of the loop, which releases the
    run directory's lock on its way) when the pruner says so."""

    def __init__(self, trial, key: str, eval_every: int, epochs: int, callbacks: TuneCallbacks) -> None:
        self.trial, self.key, self.eval_every, self.epochs = trial, key, eval_every, epochs
        self.callbacks = callbacks
        self.fine_epochs = 0
        self.best: float | None = None
        self.last_step: int | None = None

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        import optuna

        self.callbacks.on_epoch_end(self.trial.number, metrics)
        if metrics.get("stage", "fine") != "fine":
            return  # pretraining: the model is not whole yet
        self.fine_epochs += 1
        step = self.fine_epochs  # fine-tuning epochs: trials with other pretraining compare
        due = step % self.eval_every == 0 or step == self.epochs or "valid_ll" in metrics
        value = metrics.get(self.key)
        if not due or value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            raise TrainingDiverged(f"the validation log-likelihood of epoch {metrics.get('epoch')} is {value}")
        self.best = value if self.best is None else max(self.best, value)
        self.last_step = step
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {step} epochs at valid LL {value:.4f}")

    def on_message(self, text: str) -> None:
        self.callbacks.on_message(text)


class _Cancelled(Exception):
    """Another worker took the study's last trial at the same moment: this one never runs."""


# --- the study -------------------------------------------------------------------------------


def _pruner(pruner):
    import optuna

    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise RnnrbmUsageError(f"unknown pruner {pruner!r}; use one of {', '.join(PRUNERS)}.")


def _identity(base: Settings, space: Space) -> dict[str, Any]:
    """What a study compares and must keep: the data, the model and the space. (Paths
    differ between machines, so a data file counts by its name.)"""
    data = base.data.data
    name = Path(data).name if Path(data).exists() or data.endswith(".npz") else data
    return {"data": name, "source": base.data.source, "model_type": base.model.model_type, "space": space.to_json()}


def _note(t) -> str:
    a = t.user_attrs
    for key in ("cancelled", "diverged", "interrupted", "error"):
        if key in a:
            return key if key != "error" else f"error: {a[key]}"
    if t.state.name == "FAIL":
        return "no heartbeat (worker lost)" if "run_dir" in a else "failed"
    return ""


def _summary(t) -> TrialSummary:
    value = t.value if t.value is not None else (t.intermediate_values[t.last_step] if t.last_step is not None else None)
    return TrialSummary(
        number=t.number, state=t.state.name, value=value, params=dict(t.params), run_dir=t.user_attrs.get("run_dir"),
        epochs=t.last_step, note=_note(t), settings=t.user_attrs.get("settings"),
    )


def _counts(trials) -> dict[str, int]:
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "cancelled": 0}
    for t in trials:
        s = t.state.name
        if s == "COMPLETE":
            out["complete"] += 1
        elif s == "PRUNED":
            out["pruned"] += 1
        elif s == "RUNNING":
            out["running"] += 1
        elif s == "FAIL":
            out["cancelled" if "cancelled" in t.user_attrs else "failed"] += 1
    return out


def summarise_study(study, top: int = 5) -> tuple[dict[str, int], TrialSummary | None, list[TrialSummary]]:
    """Trial counts, the best complete trial and the ``top`` best complete trials of a study."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state.name == "COMPLETE" and t.value is not None),
                      key=lambda t: (-t.value, t.number))
    ranked = [_summary(t) for t in complete[:top]]
    return _counts(trials), (ranked[0] if ranked else None), ranked


def run_study(
    base: Settings,
    space: Space,
    data,
    data_path: Path,
    *,
    trials: int = 20,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    pruner: Any = "median",
    heartbeat: int = 10,
    runs_dir: str | Path = RUNS_DIR,
    command: str = "rnnrbm tune",
    callbacks: TuneCallbacks | None = None,
    stop: StopFlag | None = None,
) -> StudyResult:
    """Run trials of a study until it has ``trials`` finished ones (complete or pruned, by
    any worker), ``timeout`` seconds have passed since the call (no trial starts after it;
    the running one ends), or ``stop`` is set (the running trial is checkpointed and marked failed).

    base : every trial's settings before the searched ones (``base_settings``).
    space : the search space (``read_space``). data, data_path : the prepared data that
    base names, and its file (``api.tune_model`` resolves them, once for all trials). storage : a database URL (None: the SQLite
    file ``runs_dir/tune-<study>/study.db``). pruner : "median", "halving", "none" or an
    ``optuna.pruners.BasePruner``. heartbeat : seconds between a running trial's heartbeats.

    Writes ``best.toml`` (the best trial's full settings, which ``rnnrbm train --config``
    takes) in the study's folder. Raises RnnrbmUsageError / RnnrbmError, before any trial
    starts, for settings, data or storage that cannot work.
    """
    import optuna

    from rnnrbm_cli.device import resolve_device

    started = time.monotonic()
    callbacks = callbacks or TuneCallbacks()
    stop = stop or StopFlag()
    if trials < 1:
        raise RnnrbmUsageError("--trials must be at least 1.")
    if heartbeat < 1:
        raise RnnrbmUsageError("--heartbeat must be at least 1 second.")
    model_type = base.model.model_type
    key = objective_key(model_type)
    name = study_name or f"{default_run_name(base)}-{model_type}"
    if not _STUDY_NAME.fullmatch(name):
        raise RnnrbmUsageError(f"study name {name!r} may hold only letters, digits, '.', '_' and '-' (up to 100).")
    study_dir = Path(runs_dir) / f"tune-{name}"
    device = resolve_device(base.run.device)

    # The data was resolved once, before any trial (api.tune_model): a missing split fails here, not in trial 0.
    if not data.splits.get("valid"):
        raise RnnrbmUsageError(f"{base.data.data} has no validation sequences; a study judges trials by validation log-likelihood.")

    url = storage_url(storage, study_dir)
    shown = display_url(url)
    rdb = open_storage(url, heartbeat=heartbeat)
    try:
        try:
            study = optuna.create_study(
                storage=rdb, study_name=name, direction="maximize", pruner=_pruner(pruner), load_if_exists=True,
            )
        except (ValueError, TypeError) as e:
            raise RnnrbmUsageError(f"cannot use study {name} in {shown}: {first_line(e)}.") from None
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise RnnrbmUsageError(f"study {name} in {shown} minimises its objective; rnnrbm tune maximises log-likelihood, so choose another --study.")
        _check_identity(study, _identity(base, space), name, shown, study_dir)
        return _run(study, base, space, key, device, trials, timeout, started, name, shown, study_dir, heartbeat,
                    command, callbacks, stop, data, data_path)
    finally:
        rdb.engine.dispose()  # close the pool's connections now, not at interpreter exit


def _check_identity(study, identity: dict[str, Any], name: str, shown: str, study_dir: Path) -> None:
    attrs = study.user_attrs
    if "rnnrbm" not in attrs:
        if not study.get_trials(deepcopy=False) and study_dir.is_dir() and any(study_dir.glob("trial-*")):
            raise RnnrbmUsageError(
                f"{study_dir} holds trial folders of an earlier study, but study {name} in {shown} is new; "
                "remove them or choose another --study."
            )
        study.set_user_attr("rnnrbm", identity)
        return
    old = attrs["rnnrbm"]
    for k in ("data", "source", "model_type", "space"):
        if old.get(k) != identity[k]:
            what = "search space" if k == "space" else k
            raise RnnrbmUsageError(
                f"study {name} in {shown} was started with another {what} ({json.dumps(old.get(k))}, not "
                f"{json.dumps(identity[k])}); give the same one to continue it, or choose another --study."
            )


class _TrialRunner:
    """Optuna's objective: one trial as an ordinary training run. ``number`` and ``raised``
    say which trial the latest ``study.optimize`` call ran and what it raised (reset by ``begin``)."""

    def __init__(self, study, base: Settings, space: Space, key: str, device, n_trials: int, name: str,
                 study_dir: Path, command: str, callbacks: TuneCallbacks, stop: StopFlag, data, data_path) -> None:
        self.study, self.base, self.space, self.key, self.device = study, base, space, key, device
        self.n_trials, self.name, self.study_dir, self.command = n_trials, name, study_dir, command
        self.callbacks, self.stop, self.data, self.data_path = callbacks, stop, data, data_path
        self.host = socket.gethostname()
        self.begin()

    def begin(self) -> None:
        self.number: int | None = None
        self.raised: BaseException | None = None

    def __call__(self, trial) -> float:
        self.number = trial.number
        try:
            return self._run_trial(trial)
        except BaseException as e:
            self.raised = e
            raise

    def _run_trial(self, trial) -> float:
        import optuna

        from rnnrbm_cli.train import new_trainer

        # Cancel if, counting the trials started before this one, the total is already met.
        others = [t for t in self.study.get_trials(deepcopy=False) if t.number != trial.number]
        earlier = sum(t.state.name == "RUNNING" and t.number < trial.number for t in others)
        counts = _counts(others)
        if counts["complete"] + counts["pruned"] + earlier >= self.n_trials:
            trial.set_user_attr("cancelled", "another worker started the study's last trial at the same moment")
            raise _Cancelled()
        values = {p.key: p.suggest(trial) for p in self.space.params.values()}
        run_dir = self.study_dir / f"trial-{trial.number}"
        settings = self.base.with_values(**values, run_dir=str(run_dir))
        flat = {k: v for k, v in settings.flat().items() if k != "run_dir"}
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("settings", flat)
        self.callbacks.on_trial_start(trial.number, values, run_dir)
        reporter = _TrialReporter(trial, self.key, self.base.eval.eval_every, self.base.optim.epochs, self.callbacks)
        try:
            trainer = new_trainer(settings, self.device, self.data, self.data_path,
                                  f"{self.command}  # study {self.name}, trial {trial.number}", reporter, self.stop)
            trainer.train()
        except TrainingDiverged as e:
            _note_on(trial, "diverged", str(e))
            raise optuna.TrialPruned(f"diverged: {e}") from None
        except TrainingInterrupted as e:
            _note_on(trial, "interrupted", f"signal {e.signum} in epoch {e.epoch}")
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:
            _note_on(trial, "error", str(e) if isinstance(e, RnnrbmError) else f"{type(e).__name__}: {e}")
            raise
        if reporter.best is None:
            raise RnnrbmError(f"trial {trial.number} reported no validation log-likelihood; see {run_dir}/metrics.jsonl.")
        return reporter.best


def _run(study, base, space, key, device, n_trials, timeout, started, name, shown, study_dir, heartbeat, command,
         callbacks, stop, data, data_path) -> StudyResult:
    import optuna

    counts = _counts(study.get_trials(deepcopy=False))
    callbacks.on_study({"study": name, "storage": shown, "study_dir": str(study_dir), "trials": n_trials,
                        "counts": counts, "objective": key})
    runner = _TrialRunner(study, base, space, key, device, n_trials, name, study_dir, command, callbacks, stop, data,
                          data_path)
    ran: list[int] = []
    stopped = "trials"
    waiting = False
    try:
        while True:
            if stop.signum is not None:
                stopped = "interrupted"
                break
            if timeout is not None and time.monotonic() - started >= timeout:
                stopped = "timeout"
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            counts = _counts(study.get_trials(deepcopy=False))
            done = counts["complete"] + counts["pruned"]
            if done >= n_trials:
                break
            if done + counts["running"] >= n_trials:  # the rest is running elsewhere: wait for it
                if not waiting:
                    callbacks.on_wait(counts["running"])
                    waiting = True
                _sleep(heartbeat, stop, started, timeout)
                continue
            waiting = False
            runner.begin()
            try:
                study.optimize(runner, n_trials=1, catch=())
            except _Cancelled:
                continue
            except TrainingInterrupted as e:
                stopped = "interrupted"
                stop.set(e.signum)
                ran.append(runner.number)
                callbacks.on_trial_end(runner.number, "FAIL", None, "interrupted")
                break
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as e:
                # Another worker took this live trial for dead (no heartbeat within the grace
                # period) and failed it, so that reporting or telling it failed: go on.
                own = isinstance(e, ValueError) and runner.raised is e  # the objective's own error
                if own or runner.number is None or _trial(study, runner.number).state.name != "FAIL":
                    raise
                ran.append(runner.number)
                callbacks.on_message(f"trial {runner.number} was marked failed by another worker ({first_line(e)}).")
                continue
            ran.append(runner.number)
            summary = _summary(_trial(study, runner.number))
            callbacks.on_trial_end(runner.number, summary.state, summary.value, summary.note)
    finally:
        counts, best, top = summarise_study(study)
        best_toml = None
        if best is not None and best.settings:
            best_toml = write_best_toml(study_dir / "best.toml", best, name)
    return StudyResult(
        study=name, storage=shown, study_dir=study_dir, counts=counts, best=best, top=top, best_toml=best_toml,
        stopped=stopped, signum=stop.signum if stopped == "interrupted" else None, trials=n_trials, ran=ran,
    )


def _note_on(trial, key: str, text: str) -> None:
    """Say on a trial why it ended (unless another worker has already failed it)."""
    import optuna

    try:
        trial.set_user_attr(key, text)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _trial(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _sleep(seconds: float, stop: StopFlag, started: float, timeout: float | None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and stop.signum is None:
        if timeout is not None and time.monotonic() - started >= timeout:
            return
        time.sleep(0.1)


# --- best.toml -------------------------------------------------------------------------------


def write_best_toml(path: str | Path, best: TrialSummary, study: str) -> Path:
    """The best trial's settings (all of them, data included) as a file for ``--config``, written atomically."""
    from rnnrbm_cli._io import atomic_open

    path = Path(path)
    header = (
        f"The best trial of study {study}: trial {best.number}, validation LL {best.value:.4f} nats per frame\n"
        f"(its run: {best.run_dir}). Written by rnnrbm tune; train with it:\n"
        f"  rnnrbm train --config {path}"
    )
    text = toml_text(best.settings or {}, header)
    try:
        with atomic_open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from None
    return path
