"""The names the command line, the settings and the engines share, spelled once (torch-free
and importing nothing, so that `rnnrbm --help` stays fast and any module may read it). The
model types are the models' registry's (``models.model_types()``), not spelled here."""

from __future__ import annotations

__all__ = ["BACKENDS", "FORMS", "EVAL_METHODS", "LL_METHODS", "RNN_KINDS", "MAX_SEED"]

# Who computes: "auto" (engines/__init__.py decides), "torch" or "numba" (the compiled CPU kernels).
BACKENDS = ("auto", "torch", "numba")
# The forms a dataset's files come in (datasets.toml's `form`).
FORMS = ("rolls", "pickle", "midi")
# How log Z of an annealed model is found in evaluation ("auto": exact when small enough, else "ais").
LL_METHODS = ("auto", "exact", "ais", "raise")
# Of those, how validation during training anneals.
EVAL_METHODS = ("ais", "raise")
# The recurrences every model can condition on (models/base.py builds them).
RNN_KINDS = ("tanh", "sigmoid", "lstm", "gru")
# The largest seed any command takes: torch's generators hold 64 bits, and the loop seeds its
# generators with seed + 1 .. seed + 3, which must still fit.
MAX_SEED = 2**62
