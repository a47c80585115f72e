"""Settings of a training run: one dataclass per concern, presets, and the one merge

    defaults < preset < --config file (TOML, or a run's config.json) < command-line flags.

A settings file may name keys flat (``lr = 0.003``) or by section (``[optim]`` then
``lr = 0.003``); every key belongs to exactly one section, so both read the same. Unknown
keys and wrong types are usage errors (exit 2), never silently ignored. A run writes its
settings by section to ``config.json``, which ``--config`` takes back as it is.

    >>> s = resolve_settings({"lr": 0.003, "n_hidden": 200})
    >>> s.optim.lr, s.model.n_hidden
    (0.003, 200)
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from rnnrbm_cli import models
from rnnrbm_cli.choices import BACKENDS, EVAL_METHODS, MAX_SEED
from rnnrbm_cli.errors import RnnrbmUsageError
from rnnrbm_cli.models.base import ModelConfig
from rnnrbm_cli.pianoroll import check_dt

__all__ = [
    "ModelConfig", "DataConfig", "OptimConfig", "EvalConfig", "RunConfig", "Settings", "PRESETS", "preset_values", "toml_text",
    "resolve_settings", "merge_settings", "read_settings_file", "settings_from_checkpoint",
]


# The largest values the settings take: far beyond any useful run, small enough that what
# they size fits in memory and in torch's 64-bit counters, so that a typo (n_hidden =
# 2000000000) is one sentence before any work instead of an allocation failure after it.
MAX_EPOCHS = 1_000_000  # any count of epochs or estimates: epochs, pretraining, patience, eval_every
MAX_K = 10_000  # Gibbs steps of CD-k (the tutorial's 15)
MAX_CHUNK = 100_000  # frames per chunk: pianoroll.MAX_FRAMES, so no sequence is longer
MAX_BATCH = 10_000  # chunks per update
MAX_TRANSPOSE = 127  # semitones of --augment-transpose: a MIDI note's whole range
MAX_BATCH_CELLS = 2**28  # batch x chunk x n_visible of one update: 1 GiB as float32 (as sample.MAX_CELLS)
MAX_EVAL_FRAMES = 10_000_000  # validation frames of an estimate
MAX_EVAL_CHAINS = 10_000  # AIS chains (the paper's 100)
MAX_EVAL_BETAS = 1_000_000  # AIS inverse temperatures (the paper's evaluation used 1000s)
MAX_UNITS = 2**31 - 1  # n_visible, n_hidden, n_recurrent, each
MAX_PARAMETERS = 2**31  # a model's parameters (8 GiB as float32)
# Training holds each parameter four times (float32 weights, gradient, two Adam moments): a
# model of more than this share of the machine's memory is refused too.
TRAIN_BYTES_PER_PARAMETER = 16


@dataclass(frozen=True)
class DataConfig:
    # Registry name (its benchmark rolls, or its MIDI with source = "midi"), a prepared
    # .npz, or a folder/zip of MIDI files (prepared with the defaults first).
    data: str = "nottingham"
    # For a registry name: "rolls" (the paper's benchmark rolls) or "midi" (the source
    # MIDI sampled every dt seconds: the tutorial's data).
    source: str = "rolls"
    # Seconds per frame when the data is sampled from MIDI; None: the tutorial's 0.3.
    dt: float | None = None

    def __post_init__(self) -> None:
        if self.source not in ("rolls", "midi"):
            raise RnnrbmUsageError(f"source must be rolls or midi, not {self.source!r}.")
        if self.dt is not None:
            check_dt(self.dt)


@dataclass(frozen=True)
class OptimConfig:
    # Fine-tuning passes over the training split (after any pretraining); the tutorial ran 200.
    epochs: int = 200
    # Gibbs steps of CD-k; the tutorial's k = 15.
    k: int = 15
    # Learning rate; the tutorial's plain SGD used 0.001.
    lr: float = 0.001
    # Learning rates of the RBM (or NADE) part (W, bv, bh, V) and of the RNN part (the
    # recurrence, Wuv, Wuh, u0); None: lr. The paper: "specified differently" for the two.
    lr_rbm: float | None = None
    lr_rnn: float | None = None
    # "sgd" (the tutorial) or "adam".
    optimizer: str = "sgd"
    # SGD momentum (Nesterov when > 0); the tutorial used none.
    momentum: float = 0.0
    # "constant"; "exp": every epoch the rates are multiplied by lr_decay; "plateau": by
    # lr_decay when validation LL has not improved for more than lr_patience estimates.
    lr_schedule: str = "constant"
    lr_decay: float = 0.5
    lr_patience: int = 2
    # Clip the gradient's global norm to this (0: no clipping).
    clip_grad: float = 0.0
    # Fine-tuning keeps an exponential moving average of the parameters, a <- ema a + (1 - ema) p
    # after every update (Polyak averaging; 0: none). Validation, best.pt and early stopping
    # then see the averaged model; checkpoint.pt keeps both (resume continues both).
    ema: float = 0.0
    # Stop when validation LL has not improved for this many estimates (0: never stop early).
    patience: int = 10
    # Sequences are cut into chunks of at most this many frames; the tutorial's batch_size = 100.
    chunk: int = 100
    # Chunks per update; 1 is the tutorial's scheme (one SGD step per chunk).
    batch: int = 1
    # Pretraining (the paper, Sec. 4.1): epochs of the RBM alone (W, bv, bh) by CD-k on
    # shuffled frames, `chunk` frames per update, SGD at pretrain_rbm_lr (with momentum) ...
    pretrain_rbm_epochs: int = 0
    pretrain_rbm_lr: float = 0.01
    # ... then epochs of the RNN alone (recurrence, Wuv, bv, u0) predicting each frame as
    # sigmoid(bv(t)) by cross-entropy, exact BPTT, Adam at pretrain_rnn_lr.
    pretrain_rnn_epochs: int = 0
    pretrain_rnn_lr: float = 0.003
    # Regularisers. Dropout: the share of the recurrence's inputs v(t) and of its outputs u(t-1)
    # (what conditions each frame's model) zeroed at random in every training update, the rest
    # scaled by 1 / (1 - dropout) (Zaremba et al. 2014: the non-recurrent connections only);
    # validation, evaluation and sampling use the whole network. The RNN-RBM's compiled kernels
    # drop units as torch does; the RNN-NADE's do not (its dropout > 0 trains on torch).
    dropout: float = 0.0
    # Weight decay of every parameter: L2 added to the gradient with SGD, decoupled (AdamW) with Adam.
    weight_decay: float = 0.0
    # Transposition augmentation: every epoch each training sequence is shifted by its own random
    # number of semitones in [-K, K] (0: none); notes pushed off the keyboard are dropped and
    # counted in the epoch's metrics. Validation and test data are never shifted.
    augment_transpose: int = 0

    def __post_init__(self) -> None:
        positive = (lambda v: v > 0, "above 0")
        _check_ranges(self, {
            "epochs": _between(0, MAX_EPOCHS), "k": _between(1, MAX_K), "lr": positive,
            "momentum": (lambda v: 0 <= v < 1, "0 to below 1"),
            "chunk": _between(1, MAX_CHUNK), "batch": _between(1, MAX_BATCH),
            "lr_rbm": positive, "lr_rnn": positive,
            "lr_decay": (lambda v: 0 < v <= 1, "above 0 to 1"), "lr_patience": _between(0, MAX_EPOCHS),
            "clip_grad": (lambda v: v >= 0, "0 or more"), "ema": (lambda v: 0 <= v < 1, "0 to below 1"),
            "patience": _between(0, MAX_EPOCHS), "pretrain_rbm_epochs": _between(0, MAX_EPOCHS),
            "pretrain_rbm_lr": positive, "pretrain_rnn_epochs": _between(0, MAX_EPOCHS),
            "pretrain_rnn_lr": positive, "dropout": (lambda v: 0 <= v < 1, "0 to below 1"),
            "weight_decay": (lambda v: v >= 0, "0 or more"), "augment_transpose": _between(0, MAX_TRANSPOSE),
        })
        if self.optimizer not in ("sgd", "adam"):
            raise RnnrbmUsageError(f"optimizer must be sgd or adam, not {self.optimizer!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise RnnrbmUsageError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}.")


LR_SCHEDULES = ("constant", "exp", "plateau")


@dataclass(frozen=True)
class EvalConfig:
    # Estimate the validation log-likelihood every N fine-tuning epochs (and after the last);
    # best.pt, early stopping and the plateau schedule follow it. 0: never (best.pt then
    # follows the validation monitor, which misleads: README, Training). The cost at the
    # defaults below is ~15-25% of training time on Nottingham (AIS on the CPU).
    eval_every: int = 5
    # Validation frames (a fixed random subset) used by that estimate.
    eval_frames: int = 500
    # AIS chains for that estimate (the paper evaluates with 100).
    eval_chains: int = 50
    # AIS inverse temperatures: at 100 the log Z error is about -0.02 nats on JSB chorales
    # (README, Evaluation), but on sharper models (Nottingham) forward AIS errs high by more
    # the sharper the model gets, and then ranks epochs wrongly.
    eval_betas: int = 100
    # "ais" (forward: errs high when the annealing is too short) or "raise" (reverse
    # annealing from the frames: errs low instead, so a model cannot be chosen for being
    # hard to anneal). They agree where the annealing is long enough (README, Evaluation).
    eval_method: str = "ais"

    def __post_init__(self) -> None:
        _check_ranges(self, {
            "eval_every": _between(0, MAX_EPOCHS), "eval_frames": _between(1, MAX_EVAL_FRAMES),
            "eval_chains": _between(1, MAX_EVAL_CHAINS), "eval_betas": _between(1, MAX_EVAL_BETAS),
        })
        if self.eval_method not in EVAL_METHODS:
            raise RnnrbmUsageError(f"eval_method must be one of {', '.join(EVAL_METHODS)}, not {self.eval_method!r}.")

@dataclass(frozen=True)
class RunConfig:
    # One seed for initialisation, shuffling and Gibbs sampling.
    seed: int = 1234
    # Where the run lives; "" means a new runs/<data>-<timestamp>-<id>.
    run_dir: str = ""
    # auto, cpu or cuda.
    device: str = "auto"
    # Who computes gradients and samples: "torch", "numba" (the compiled CPU kernels) or
    # "auto" (the engines decide). The two draw different random numbers, so a seed
    # reproduces a run only with the same backend.
    backend: str = "auto"

    def __post_init__(self) -> None:
        _check_ranges(self, {"seed": _between(0, MAX_SEED)})
        if self.backend not in BACKENDS:
            raise RnnrbmUsageError(f"backend must be {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}, not {self.backend!r}.")


@dataclass(frozen=True)
class Settings:
    """Everything a training run is made from."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_sizes(self)

    def sections(self) -> dict[str, dict[str, Any]]:
        """By section, as config.json holds them (run_dir left out: it is where the file is)."""
        out = {name: asdict(getattr(self, name)) for name in _SECTIONS}
        out["run"].pop("run_dir")
        return out

    def flat(self) -> dict[str, Any]:
        """All settings as one flat mapping (keys are unique across sections)."""
        return {k: v for name in _SECTIONS for k, v in asdict(getattr(self, name)).items()}

    def with_values(self, **values: Any) -> Settings:
        """A copy with some flat settings changed (checked like any other)."""
        return resolve_settings({**self.flat(), **values})


_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "eval": EvalConfig, "run": RunConfig,
}
_SECTION_OF: dict[str, str] = {f.name: name for name, cls in _SECTIONS.items() for f in fields(cls)}
_DEFAULTS: dict[str, Any] = {f.name: f.default for cls in _SECTIONS.values() for f in fields(cls)}


# The tutorial's exact settings (deeplearning.net rnnrbm.py): Nottingham MIDI sampled
# every 0.3 s, 150 hidden / 100 recurrent units, plain SGD at 0.001, CD-15, chunks of 100
# frames, one chunk per update, sequences shuffled every epoch, no model selection.
PRESETS: dict[str, dict[str, Any]] = {
    "tutorial": {
        "data": "nottingham", "source": "midi", "dt": 0.3, "n_hidden": 150, "n_recurrent": 100,
        "learn_u0": False, "optimizer": "sgd", "lr": 0.001, "momentum": 0.0, "k": 15,
        "chunk": 100, "batch": 1, "eval_every": 0, "patience": 0, "rnn": "tanh", "model_type": "rnn-rbm",
    },
}

# "paper": each model's recipe found best by validation log-likelihood (README, Results; never
# by the test split), with what a dataset needs on top: its record's paper_preset and
# paper_by_data (models/).


def preset_values(name: str, model_type: str = models.DEFAULT_MODEL_TYPE, data: str = "nottingham") -> dict[str, Any]:
    """The settings a preset sets, for the model and data it is applied to."""
    if name == "paper":
        if model_type not in models.model_types():
            raise RnnrbmUsageError(f"model_type must be one of {', '.join(models.model_types())}, not {model_type!r}.")
        rec = models.record(model_type)
        if not rec.paper_preset:
            raise RnnrbmUsageError(f"the {model_type} model has no paper preset; give its settings instead.")
        values = dict(rec.paper_preset)
        values.update(rec.paper_by_data.get(str(data), {}))
        return values
    if name not in PRESETS:
        raise RnnrbmUsageError(f"unknown preset {name!r}; known presets: {', '.join([*PRESETS, 'paper'])}.")
    return dict(PRESETS[name])


def _between(low: int, high: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: low <= v <= high), f"{low:,}..{high:,}"


def _check_ranges(obj: Any, checks: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Each named field of ``obj`` (None: not set, allowed) in its range, every float finite."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise RnnrbmUsageError(f"{f.name} = {value!r} is not a finite number.")
    for name, (ok, allowed) in checks.items():
        value = getattr(obj, name)
        if value is not None and not ok(value):
            raise RnnrbmUsageError(f"{name} = {value!r} is out of range ({allowed}).")


def physical_memory() -> int | None:
    """Bytes of memory of this machine, if the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def model_parameters(config: ModelConfig) -> int:
    """How many parameters the model of ``config`` has, counted without allocating them
    (built on torch's meta device, so every model counts itself)."""
    import torch

    for name in ("n_visible", "n_hidden", "n_recurrent"):
        if getattr(config, name) > MAX_UNITS:
            raise RnnrbmUsageError(f"{name} = {getattr(config, name)!r} is out of range (1..{MAX_UNITS:,}).")
    with torch.device("meta"):
        model = models.record(config.model_type).model_class(config)
    return sum(p.numel() for p in model.parameters())


def check_sizes(settings: Settings) -> None:
    """Refuse settings whose model or update the machine cannot plausibly hold: more than
    MAX_PARAMETERS parameters, or more than half the physical memory to train them, or more
    than MAX_BATCH_CELLS cells in one update's batch."""
    m, o = settings.model, settings.optim
    n = model_parameters(m)
    memory = physical_memory()
    need = n * TRAIN_BYTES_PER_PARAMETER
    if n > MAX_PARAMETERS or (memory is not None and need > memory // 2):
        held = f"{MAX_PARAMETERS:,} parameters" + (f" or half of this machine's {memory / 2**30:,.0f} GiB" if memory else "")
        raise RnnrbmUsageError(
            f"n_visible = {m.n_visible}, n_hidden = {m.n_hidden} and n_recurrent = {m.n_recurrent} give the {m.model_type} "
            f"model {n:,} parameters (about {need / 2**30:,.1f} GiB to train), more than the {held} a model may take; "
            "lower n_hidden or n_recurrent."
        )
    cells = o.batch * o.chunk * m.n_visible
    if cells > MAX_BATCH_CELLS:
        raise RnnrbmUsageError(
            f"batch = {o.batch} chunks of chunk = {o.chunk} frames of {m.n_visible} keys is {cells:,} cells per update, "
            f"more than the {MAX_BATCH_CELLS:,} one update may hold; lower batch or chunk."
        )


# Settings that may be None (meaning "not set": another setting or a rule decides).
_OPTIONAL_NUMBERS = {"dt", "lr_rbm", "lr_rnn"}


def _check_type(key: str, value: Any) -> None:
    default = _DEFAULTS[key]
    if key in _OPTIONAL_NUMBERS:
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
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


def flatten(values: Mapping[str, Any], where: str = "settings") -> dict[str, Any]:
    """Flat keys from a mapping that names keys flat, by section, or both; a key in the
    wrong section, an unknown key or section is a usage error."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in _SECTIONS and isinstance(value, Mapping):
            for inner, v in value.items():
                if _SECTION_OF.get(inner) != key:
                    raise RnnrbmUsageError(f"unknown setting {key}.{inner} in {where}.")
                flat[inner] = v
        elif key in _SECTION_OF:
            flat[key] = value
        else:
            raise RnnrbmUsageError(f"unknown setting(s): {key} in {where}.")
    return flat


def resolve_settings(values: Mapping[str, Any]) -> Settings:
    """Settings from flat (or sectioned) values over the defaults; types and ranges checked.

    An int where a float is expected is accepted; nothing else is converted silently.
    """
    flat = flatten(values)
    per: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in flat.items():
        _check_type(key, value)
        if (isinstance(_DEFAULTS[key], float) or key in _OPTIONAL_NUMBERS) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        per[_SECTION_OF[key]][key] = value
    try:
        return Settings(**{name: cls(**per[name]) for name, cls in _SECTIONS.items()})
    except ValueError as e:
        raise RnnrbmUsageError(f"{str(e).rstrip('.')}.") from None


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The flat settings of a TOML file, or of a run's config.json (by its .json suffix)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise RnnrbmUsageError(f"{path} does not hold a JSON object of settings.")
        else:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RnnrbmUsageError(f"{path} is not valid TOML: {e}.") from None
    except json.JSONDecodeError as e:
        raise RnnrbmUsageError(f"{path} is not valid JSON: {e}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RnnrbmUsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}.") from None
    return flatten(doc, where=str(path))


def merge_settings(
    preset: str | None = None, config_file: str | Path | None = None, flags: Mapping[str, Any] | None = None,
) -> Settings:
    """defaults < preset < config file < flags (flags that are None count as not given).

    A preset that depends on the model and data ("paper") takes them from the file and the
    flags (default: the default model, on nottingham).
    """
    return resolve_settings(merged_values(preset, config_file, flags))


def merged_values(
    preset: str | None = None, config_file: str | Path | None = None, flags: Mapping[str, Any] | None = None, *,
    defaults: Mapping[str, Any] | None = None, over_file: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat values of the one merge, before they are checked:

        ``defaults`` (a caller's own, e.g. a study's) < preset < config file < ``over_file``
        (e.g. a search space's fixed values) < flags (None counts as not given)
    """
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    from_file = read_settings_file(config_file) if config_file is not None else {}
    values: dict[str, Any] = dict(defaults or {})
    if preset is not None:
        later = {**from_file, **(over_file or {}), **given}
        model_type = later.get("model_type", _DEFAULTS["model_type"])
        values.update(preset_values(preset, model_type, later.get("data", _DEFAULTS["data"])))
    values.update(from_file)
    values.update(over_file or {})
    values.update(given)
    return values


def by_section(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings grouped by section, as config.json and checkpoints hold them (a key of no
    section stays at the top, where ``flatten`` refuses it by name)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in _SECTION_OF:
            out.setdefault(_SECTION_OF[key], {})[key] = value
        else:
            out[key] = value
    return out


def settings_from_checkpoint(payload: Mapping[str, Any]) -> Settings:
    """The settings a checkpoint was trained with (its ``settings`` by section, over its model_config)."""
    values: dict[str, Any] = dict(payload.get("model_config") or {})
    if isinstance(payload.get("settings"), Mapping):
        values.update(flatten(payload["settings"], where="the checkpoint"))
    return resolve_settings(values)


def differences(a: Settings, b: Settings) -> dict[str, tuple[Any, Any]]:
    """The flat settings whose values differ, key -> (a's, b's); run_dir left out."""
    fa, fb = a.flat(), b.flat()
    return {k: (fa[k], fb[k]) for k in fa if k != "run_dir" and fa[k] != fb[k]}


# --- writing settings back: the one TOML writer ------------------------------------------


def toml_value(v: Any) -> str:
    """A setting's value as TOML (inline tables for a search space's ranges)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):  # an inline table of bare keys (a search space's ranges)
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
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
        lines += ["", f"[{section}]"] + [f"{k} = {toml_value(v)}" for k, v in given.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
