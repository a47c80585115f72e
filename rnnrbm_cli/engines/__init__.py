"""The one place that decides who computes: torch (autograd, any device; ``torch_path``) or
the compiled CPU kernels (numba, the same mathematics, several times faster on a CPU;
``numba_rbm`` adapts ``cpu_kernels`` to the RNN-RBM, ``numba_nade`` adapts ``nade_kernels`` to
the RNN-NADE). Nothing else imports either.

Three questions go through here, and nothing else in the package asks them:

- ``objective_for(model, data, k=..., backend=..., generator=...)``: a training step's
  gradients and statistics (``gradients(chunk_ids) -> CostResult``, which leaves the
  gradient in each parameter's ``.grad``) and the validation monitor (``monitor``);
- ``sampler_for(model, backend)``: generation (``generate``) and, for a model whose
  likelihood is annealed (an RBM per frame), the Gibbs chains and annealing that evaluation
  runs (``AnnealingSampler``); a model with an exact likelihood is never asked for them;
- ``exact_for(model, backend)``: for a model whose likelihood is exact, its frames'
  log-likelihoods and note marginals given their conditional biases (``log_likelihoods``,
  ``marginals``): the record's own hooks in torch, or the compiled kernels;
- ``resolve_backend(backend, model, binary=...)``: which of the two a request for
  "auto", "torch" or "numba" means for this model and data. ``RNNRBM_NO_NUMBA`` (set and
  not "0") makes "auto" mean torch; it is read here and nowhere else.

"auto" is the compiled kernels for a model whose record names kernels (the RNN-RBM's "rbm",
the RNN-NADE's "nade"), float32
on the CPU with 0/1 data (what the kernels assume), torch everywhere else (CUDA, other
dtypes, models without kernels). The two
draw different random numbers, so a seed reproduces a run only with the same backend.

The loop that uses an objective is the same whatever the engine::

    optimizer.zero_grad(set_to_none=False)
    stats = objective.gradients(chunk_ids)
    (clip) ; optimizer.step() ; (scheduler.step())

so an optimiser, a learning rate edited in ``param_groups`` or a schedule acts on both.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from torch import Tensor

from rnnrbm_cli.choices import BACKENDS
from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.errors import RnnrbmUsageError
from rnnrbm_cli.models import record_of
from rnnrbm_cli.models.base import CostResult
from rnnrbm_cli.engines.numba_rbm import COMPILE_MESSAGE
from rnnrbm_cli.engines.torch_path import ModelSampler, TorchExact, TorchObjective, TorchRNNPrediction, TorchSampler

__all__ = ["BACKENDS", "COMPILE_MESSAGE", "Objective", "Sampler", "AnnealingSampler", "numba_problem",
           "resolve_backend", "objective_for", "sampler_for", "exact_for", "TorchSampler"]

class Objective(Protocol):
    backend: str

    def gradients(self, chunk_ids: Tensor) -> CostResult: ...

    def monitor(self, data: ChunkedData, generator: torch.Generator) -> float: ...

    def compile_message(self) -> str | None: ...

    def warm_up(self) -> None: ...


class Sampler(Protocol):
    backend: str

    def compile_message(self, job: str = "sample") -> str | None: ...

    def generate(self, n: int, steps: int, k: int, primer: Tensor | None, generator: torch.Generator | None) -> Tensor: ...


class AnnealingSampler(Sampler, Protocol):
    """What evaluation asks of a model whose frames are RBMs (record likelihood "annealed")."""

    def gibbs_chain(self, v: Tensor, W: Tensor, bv: Tensor, bh: Tensor, k: int, generator: torch.Generator | None) -> Tensor: ...

    def ais_log_weights(self, W: Tensor, base: Tensor, bv: Tensor, bh: Tensor, schedule: Tensor, chains: int,
                        generator: torch.Generator | None) -> Tensor: ...

    def raise_log_weights(self, W: Tensor, base: Tensor, bv: Tensor, bh: Tensor, schedule: Tensor, chains: int,
                          v: Tensor, generator: torch.Generator | None) -> Tensor: ...


class ExactEvaluator(Protocol):
    """What evaluation asks of a model whose likelihood is exact (record likelihood "exact")."""

    backend: str

    def log_likelihoods(self, v: Tensor, bv: Tensor, bh: Tensor, progress=None) -> Tensor: ...

    def marginals(self, bv: Tensor, bh: Tensor, samples: int, generator: torch.Generator | None,
                  progress=None) -> Tensor: ...


# -- the compiled kernels by the name a record gives them: (objective, sampler, problem, exact)
# exact: the evaluator of an exact model, None for a model whose likelihood is annealed.


def _compiled(family: str):
    if family == "rbm":
        from rnnrbm_cli.engines import numba_rbm

        return numba_rbm.NumbaCD, numba_rbm.NumbaSampler, numba_rbm.problem, None
    if family == "nade":
        from rnnrbm_cli.engines import numba_nade

        return numba_nade.NumbaNADE, numba_nade.NumbaNADESampler, numba_nade.problem, numba_nade.NumbaNADEExact
    raise ValueError(f"no compiled kernels called {family!r}")


# -- choosing ------------------------------------------------------------------------------


def _numba_disabled() -> bool:
    return os.environ.get("RNNRBM_NO_NUMBA", "") not in ("", "0")


def numba_problem(model: torch.nn.Module, binary: bool = True, training: bool = False) -> str | None:
    """Why the compiled kernels cannot run ``model`` on data that is (or is not) 0/1, and when
    ``training``, with its training settings (its dropout); None if they can."""
    rec = record_of(model)
    if rec.kernels is None:
        return f"they have no kernels for the {rec.name} model"
    return _compiled(rec.kernels)[2](model, binary, training)


def resolve_backend(backend: str, model: torch.nn.Module, *, binary: bool = True, training: bool = False) -> str:
    """"torch" or "numba": what ``backend`` ("auto", "torch", "numba") means for this model and data,
    and, when ``training``, for its training settings (the NADE's kernels drop no units).

    An explicit "numba" that cannot run is a usage error saying why.
    """
    if backend not in BACKENDS:
        raise RnnrbmUsageError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}.")
    if backend == "torch":
        return "torch"
    problem = numba_problem(model, binary, training)
    if backend == "auto":
        return "torch" if problem is not None or _numba_disabled() else "numba"
    if problem is not None:
        raise RnnrbmUsageError(f"backend numba cannot be used: {problem}; use backend torch or auto.")
    return "numba"


def objective_for(
    model: torch.nn.Module, data: ChunkedData, *, k: int, backend: str = "auto", generator: torch.Generator | None = None,
    valid: ChunkedData | None = None, objective: str = "model",
) -> Objective:
    """The training objective of ``model`` on ``data``: gradients of a batch of its chunks,
    and the monitor of any ChunkedData. ``generator`` drives the training chains; ``valid``
    (its 0/1-ness) takes part in the backend choice, since the monitor runs on it too.

    ``objective``: "model" (the model's own: CD-k or exact likelihood; a frame model
    pretrained on frames is this objective on chunks of one frame), or "rnn-prediction" (the
    RNN alone predicting each frame, deterministic, torch on any device).
    """
    if objective == "rnn-prediction":
        return TorchRNNPrediction(model, data, k, generator)
    if objective != "model":
        raise ValueError(f"objective must be model or rnn-prediction, not {objective!r}")
    binary = data.binary and (valid is None or valid.binary)
    rec = record_of(model)
    if resolve_backend(backend, model, binary=binary, training=True) == "numba":
        return _compiled(rec.kernels)[0](model, data, k, generator)
    per = rec.frames_per_batch(model) if rec.frames_per_batch is not None else None
    return TorchObjective(model, data, k, generator, frames_per_batch=per)


def sampler_for(model: torch.nn.Module, backend: str = "auto") -> Sampler:
    """The sampler of ``model`` on the chosen backend: an ``AnnealingSampler`` for a model
    whose likelihood is annealed, else a plain ``Sampler``."""
    rec = record_of(model)
    if resolve_backend(backend, model) == "numba":
        return _compiled(rec.kernels)[1](model)
    return ModelSampler(model) if rec.exact else TorchSampler(model)


def exact_for(model: torch.nn.Module, backend: str = "auto") -> ExactEvaluator:
    """The exact evaluation of ``model`` (its record's likelihood is exact) on the chosen
    backend: per-frame log-likelihoods and note marginals given the conditional biases."""
    rec = record_of(model)
    if not rec.exact:
        raise ValueError(f"model {rec.name} has no exact likelihood")
    if resolve_backend(backend, model) == "numba":
        return _compiled(rec.kernels)[3](model)
    return TorchExact(model)
