"""The search space of a study: a TOML file of settings, flat or in a table per model, each a
range, a list of choices or a fixed value; the default is each model record's search_space."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnrbm_cli import models
from rnnrbm_cli.config import Settings, toml_value
from rnnrbm_cli.errors import RnnrbmUsageError

__all__ = ["Param", "Space", "default_space_text", "read_space", "FROM_FLAGS"]

# Keys the study sets itself, so a space may not name them.
FROM_FLAGS = {
    "data": "--data", "model_type": "--model", "epochs": "--epochs", "eval_every": "--eval-every",
    "device": "--device",
}
# Keys a space may fix but not search: trials that differ in them would not be compared on
# the same objective (another grid, other validation noise, another initialisation).
_FIXED_ONLY = {"n_visible", "source", "dt", "eval_frames", "eval_chains", "eval_betas", "seed", "backend"}

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
            lines += ["", f"# {rec.summary}", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in rec.search_space.items())]
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
        if key in FROM_FLAGS:
            raise RnnrbmUsageError(f"{where} sets {key}; give it to rnnrbm tune as {FROM_FLAGS[key]} instead.")
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
