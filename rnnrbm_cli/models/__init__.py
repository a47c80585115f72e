"""The models, one module each, and the registry of their records (``record.py``).

    >>> from rnnrbm_cli import models
    >>> models.model_types()
    ('rnn-rbm', 'rnn-nade', 'rnn')
    >>> models.record("rnn").likelihood
    'exact'

Adding a model is its module (a torch module and a ``RECORD``) and one line in ``_MODULES``;
a test or a plugin may also ``register`` a record it defines. Importing this package does not
import torch: a model's module is imported when its record is first asked for.
"""

from __future__ import annotations

import importlib

from rnnrbm_cli.models.record import ANNEALED, EXACT, ModelRecord

__all__ = ["ModelRecord", "EXACT", "ANNEALED", "DEFAULT_MODEL_TYPE", "model_types", "record", "register", "record_of"]

# model type -> the module that defines its RECORD. A new model adds one line here.
_MODULES: dict[str, str] = {
    "rnn-rbm": "rnnrbm_cli.models.rbm",
    "rnn-nade": "rnnrbm_cli.models.nade",
    "rnn": "rnnrbm_cli.models.rnn",
}
# Records registered at run time (register), and those of _MODULES once imported.
_RECORDS: dict[str, ModelRecord] = {}

# The model of a settings file or checkpoint that names none (files written before there were two).
DEFAULT_MODEL_TYPE = "rnn-rbm"


def model_types() -> tuple[str, ...]:
    """Every known model type, the packaged ones first."""
    return (*_MODULES, *(name for name in _RECORDS if name not in _MODULES))


def record(name: str) -> ModelRecord:
    """The record of model type ``name``; KeyError naming the known ones if there is none."""
    if name not in _RECORDS:
        if name not in _MODULES:
            raise KeyError(f"unknown model {name!r}; known models: {', '.join(model_types())}")
        rec = importlib.import_module(_MODULES[name]).RECORD
        if rec.name != name:
            raise RuntimeError(f"{_MODULES[name]} defines the record of {rec.name!r}, not {name!r}")
        _RECORDS[name] = rec
    return _RECORDS[name]


def record_of(model) -> ModelRecord:
    """The record of a model instance (by its config's model_type)."""
    return record(model.config.model_type)


def register(rec: ModelRecord) -> None:
    """Add a model defined outside the package (a test's toy model, a plugin)."""
    if rec.name in _MODULES or (rec.name in _RECORDS and _RECORDS[rec.name] is not rec):
        raise ValueError(f"a model named {rec.name!r} is already registered")
    _RECORDS[rec.name] = rec


def unregister(name: str) -> None:
    """Remove a model added with ``register`` (packaged models stay)."""
    if name in _MODULES:
        raise ValueError(f"{name!r} is a packaged model; it cannot be removed")
    _RECORDS.pop(name, None)
