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
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rnnrbm_cli import models
from rnnrbm_cli.config import Settings, read_settings_file, resolve_settings
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
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
    the exact validation monitor of a model with an exact likelihood, else the loop's
    annealed (or enumerated) estimate on a fixed validation subset."""
    return "valid_monitor" if models.record(model_type).exact else "valid_ll"


# Without --epochs / --eval-every: short trials, measured often enough to prune.
DEFAULT_EPOCHS = 20
DEFAULT_EVAL_EVERY = 2
# A worker whose trial has sent no heartbeat for this many intervals is taken for dead. Long
# enough for the longest compiled kernel call, during which the heartbeat thread cannot run.
GRACE_INTERVALS = 6

# Keys the study sets itself, so a space may not name them.
_FROM_FLAGS = {
    "data": "--data", "model_type": "--model", "epochs": "--epochs", "eval_every": "--eval-every",
    "device": "--device",
}
# Keys a space may fix but not search: trials that differ in them would not be compared on
# the same objective (another grid, other validation noise, another initialisation).
_FIXED_ONLY = {"n_visible", "source", "dt", "eval_frames", "eval_chains", "eval_betas", "seed", "backend"}
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# --- the search space ----------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (low, high; log scale or a step) or a list of choices.

    kind : "int", "float" or "categorical" (the Optuna distribution it is drawn from).
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def values_to_check(self) -> list[Any]:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class Space:
    """A search space: the searched settings, and the settings it fixes for every trial."""

    params: dict[str, Param]
    fixed: dict[str, Any]
    where: str

    def to_json(self) -> dict[str, Any]:
        return {"params": {k: p.to_json() for k, p in self.params.items()}, "fixed": dict(self.fixed)}


_SPACE_HEADER = """\
The default search space of `rnnrbm tune`, one table per model, from the models' records
(`rnnrbm tune --show-space` prints it; `--space FILE.toml` replaces it).

Any setting of `rnnrbm train` may appear, under the name it has in a --config file:
  lr = {low = 1e-4, high = 1e-2, log = true}   a range (log = true: drawn on a log scale)
  n_hidden = {low = 50, high = 300, step = 25} a range on a grid (integers for an integer setting)
  batch = {choices = [1, 8, 32]}               one of a list
  optimizer = "adam"                           a plain value fixes the setting for every trial
Keys outside the tables apply to every model. The study's own settings come from its flags
(--data, --model, --epochs, --eval-every, --device) and may not appear here."""


def default_space_text() -> str:
    """The default search space (TOML, one table per model: each record's search_space)."""
    lines = [f"# {line}" if line else "#" for line in _SPACE_HEADER.splitlines()]
    for name in models.model_types():
        rec = models.record(name)
        if rec.search_space:
            lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in rec.search_space.items())]
    return "\n".join(lines) + "\n"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _setting_type(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float) or default is None:  # None: an optional number (lr_rbm, dt)
        return "float"
    return "str"


def read_space(path: str | Path | None, model_type: str) -> Space:
    """The search space of ``model_type`` from a TOML file (None: the packaged default).

    The file holds settings flat, in a table per model (``[rnn]``), or both; a model's
    table adds to and overrides the flat keys. Every key must be a setting of
    ``config.Settings``; unknown keys, malformed or empty ranges are usage errors.
    """
    where = "the default search space" if path is None else str(path)
    try:
        if path is None:
            doc = tomllib.loads(default_space_text())
        else:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RnnrbmUsageError(f"{where} is not valid TOML: {e}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RnnrbmUsageError(f"cannot read {where}: {getattr(e, 'strerror', None) or e}.") from None
    known_models = models.model_types()
    if model_type not in known_models:
        raise RnnrbmUsageError(f"unknown model {model_type!r}; use one of {', '.join(known_models)}.")
    tables = {k for k, v in doc.items() if k in known_models and isinstance(v, dict)}
    entries = {k: v for k, v in doc.items() if k not in tables}
    entries.update(doc.get(model_type, {}))
    if not entries:
        has = f" (it has tables for {', '.join(sorted(tables))} only)" if tables else ""
        raise RnnrbmUsageError(f"{where} defines no search space for {model_type}{has}.")
    known = Settings().flat()
    params: dict[str, Param] = {}
    fixed: dict[str, Any] = {}
    for key, spec in entries.items():
        if key not in known:
            raise RnnrbmUsageError(f"unknown setting {key} in {where}; a search space names settings of rnnrbm train.")
        if key == "run_dir":
            raise RnnrbmUsageError(f"{where} sets run_dir; each trial has its own run directory in the study's folder.")
        if key in _FROM_FLAGS:
            raise RnnrbmUsageError(f"{where} sets {key}; give it to rnnrbm tune as {_FROM_FLAGS[key]} instead.")
        if isinstance(spec, dict):
            if key in _FIXED_ONLY:
                raise RnnrbmUsageError(
                    f"{where} searches {key}; it may only be fixed (key = value), since trials that differ in it "
                    "would not be compared on the same objective."
                )
            params[key] = _param(key, spec, _setting_type(known[key]), where)
        elif isinstance(spec, list):
            raise RnnrbmUsageError(f"{key} in {where} is a list; write {key} = {{choices = [...]}} to search it.")
        else:
            fixed[key] = spec
    if not params:
        raise RnnrbmUsageError(f"{where} searches nothing for {model_type}: give at least one range or list of choices.")
    return Space(params, fixed, where)


def _param(key: str, spec: dict[str, Any], setting_type: str, where: str) -> Param:
    fields_ = set(spec)
    name = f"{key} in {where}"
    if "choices" in fields_:
        if fields_ != {"choices"}:
            raise RnnrbmUsageError(f"{name} mixes choices with {', '.join(sorted(fields_ - {'choices'}))}; give one or the other.")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise RnnrbmUsageError(f"{name} has no choices; give a non-empty list such as choices = [1, 8, 32].")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)):
                raise RnnrbmUsageError(f"{name} has the choice {c!r}; choices are numbers, strings or booleans.")
        if len(set(map(repr, choices))) != len(choices):
            raise RnnrbmUsageError(f"{name} lists a choice twice.")
        return Param(key, "categorical", choices=tuple(choices))
    unknown = fields_ - {"low", "high", "log", "step"}
    if unknown:
        raise RnnrbmUsageError(f"{name} has unknown field(s) {', '.join(sorted(unknown))}; a range has low, high, log and step.")
    if not {"low", "high"} <= fields_:
        raise RnnrbmUsageError(f"{name} needs both low and high (or choices = [...]).")
    if setting_type in ("bool", "str"):
        raise RnnrbmUsageError(f"{name} is a range, but {key} is not a number; give {key} = {{choices = [...]}}.")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not (_is_number(low) and _is_number(high)):
        raise RnnrbmUsageError(f"{name} has low = {low!r} and high = {high!r}; both must be numbers.")
    if not isinstance(log, bool):
        raise RnnrbmUsageError(f"{name} has log = {log!r}; it is true or false.")
    if step is not None and not (_is_number(step) and step > 0):
        raise RnnrbmUsageError(f"{name} has step = {step!r}; it must be a positive number.")
    if not low < high:
        raise RnnrbmUsageError(f"{name} is an empty range (low = {low!r} is not below high = {high!r}).")
    if log and low <= 0:
        raise RnnrbmUsageError(f"{name} is on a log scale, so low must be positive, not {low!r}.")
    if log and step is not None:
        raise RnnrbmUsageError(f"{name} has both log and step; a log-scale range has no step.")
    ints = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    if setting_type == "int":
        if not ints:
            raise RnnrbmUsageError(f"{name} has a non-integer end or step, but {key} is an integer setting.")
        kind = "int"
    elif ints and setting_type == "float" and Settings().flat()[key] is None:
        kind = "int"  # an optional number with integer ends: "int when both ends are ints"
    else:
        kind = "float"
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    return Param(key, kind, low=low, high=high, log=log, step=step)


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
    values: dict[str, Any] = {"epochs": DEFAULT_EPOCHS, "eval_every": DEFAULT_EVAL_EVERY}
    if config_file is not None:
        values.update(read_settings_file(config_file))
    if space is not None:
        values.update(space.fixed)
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
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


# --- the storage -----------------------------------------------------------------------------


def storage_url(storage: str | None, study_dir: Path) -> str:
    """The SQLAlchemy URL of a study's storage: the SQLite file study_dir/study.db by
    default; ``postgresql://`` (and ``postgres://``) become ``postgresql+psycopg://``, the
    scheme SQLAlchemy needs for psycopg 3."""
    if storage is None:
        return f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"
    for scheme in ("postgresql://", "postgres://"):
        if storage.startswith(scheme):
            return "postgresql+psycopg://" + storage[len(scheme):]
    return storage


def display_url(url: str) -> str:
    """The URL without its password, for messages and JSON."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (not a URL at all: shown as given, it holds no password we can find)
        return url


def open_storage(url: str, heartbeat: int = 10, connect_timeout: int = 10):
    """An ``optuna.storages.RDBStorage`` with heartbeats every ``heartbeat`` seconds (a trial
    silent for ``GRACE_INTERVALS`` of them is failed by the next worker that looks).

    Errors are one sentence: a URL that is not one is a usage error (exit 2), a database
    that cannot be reached a runtime failure (exit 1) after at most ``connect_timeout`` s.
    """
    import optuna
    import sqlalchemy.exc

    shown = display_url(url)
    if url.startswith("sqlite:"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        path = url.split(":///", 1)[-1]
        if path and not path.startswith(":memory:"):
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RnnrbmError(f"cannot create the folder of {path}: {e.strerror or e}.") from None
    elif url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": connect_timeout}, "pool_pre_ping": True}
    else:
        engine_kwargs = {}
    last: Exception | None = None
    # Workers started together on a fresh database race to create its tables: the losers retry.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                    grace_period=GRACE_INTERVALS * heartbeat,
                )
        except ImportError:
            raise RnnrbmUsageError(f"the database driver for {shown} is not installed; use sqlite or postgresql.") from None
        except sqlalchemy.exc.ArgumentError as e:
            raise RnnrbmUsageError(f"--storage {shown} is not a database URL ({_first_line(e)}); "
                                   "use e.g. postgresql://USER@HOST/DB.") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            raise RnnrbmError(f"cannot reach the study storage {shown}: {_first_line(e)}.") from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            last = e
            time.sleep(0.5 + attempt)
    raise RnnrbmError(f"cannot open the study storage {shown}: {_first_line(last)}.")


def _first_line(e: BaseException | None) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return (text[0] if text else type(orig).__name__).rstrip(".")


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
            raise RnnrbmUsageError(f"cannot use study {name} in {shown}: {_first_line(e)}.") from None
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
                callbacks.on_message(f"trial {runner.number} was marked failed by another worker ({_first_line(e)}).")
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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):  # an inline table of bare keys (a search space's ranges)
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def toml_text(flat: Mapping[str, Any], header: str = "") -> str:
    """Flat settings as a TOML settings file by section (``config.read_settings_file``
    reads it back as the same values; None, meaning "not set", is left out)."""
    sections = resolve_settings({k: v for k, v in flat.items() if v is not None}).sections()
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in sections.items():
        given = {k: v for k, v in values.items() if k in flat and v is not None}
        if not given:
            continue
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in given.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


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
