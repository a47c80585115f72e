"""The torch engine: the reference, on any device. Autograd differentiates a model's own cost;
generation is the model's own ``generate``; an annealed model's chains and AIS are the
reference functions of ``models/rbm.py``."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.models import base, record_of
from rnnrbm_cli.models import rbm as rbm_math


class TorchObjective:
    """An objective autograd differentiates: ``cost`` of a padded batch (B, T, n_visible)
    returns a CostResult (cost, monitor, n_frames); gradients and the monitor follow from it.
    By default the model's own ``training_cost``."""

    backend = "torch"
    monitor_chunks = 256  # chunks per batch when the monitor runs over a whole split

    def __init__(self, model, data: ChunkedData, k: int, generator: torch.Generator | None,
                 frames_per_batch: int | None = None) -> None:
        self.model, self.data, self.k, self.generator = model, data, k, generator
        if frames_per_batch is not None:  # a model whose working tensors bound the batch
            self.monitor_chunks = max(1, frames_per_batch // max(1, data.chunk))

    def cost(self, v: Tensor, lengths: Tensor | None, generator: torch.Generator | None) -> base.CostResult:
        return self.model.training_cost(v, lengths, self.k, generator)

    def gradients(self, chunk_ids: Tensor) -> base.CostResult:
        v, lengths = self.data.batch(chunk_ids)
        res = self.cost(v, lengths, self.generator)
        res.cost.backward()
        return base.CostResult(res.cost.detach(), res.monitor, res.n_frames)

    @torch.no_grad()
    def monitor(self, data: ChunkedData, generator: torch.Generator) -> float:
        total, frames = None, 0
        for ids in torch.arange(len(data.chunks)).split(self.monitor_chunks):
            v, lengths = data.batch(ids)
            res = self.cost(v, lengths, generator)
            total = res.monitor * res.n_frames if total is None else total + res.monitor * res.n_frames
            frames += res.n_frames
        return float(total) / frames

    def compile_message(self) -> str | None:
        return None

    def warm_up(self) -> None:
        pass


class TorchRNNPrediction(TorchObjective):
    """The RNN's cross-entropy prediction of each frame (``rnn_prediction_cost``), by autograd."""

    def cost(self, v, lengths, generator):
        return self.model.rnn_prediction_cost(v, lengths)


class TorchExact:
    """Exact evaluation of a model with a tractable likelihood: its record's own hooks."""

    backend = "torch"

    def __init__(self, model) -> None:
        self.model, self.record = model, record_of(model)

    def log_likelihoods(self, v, bv, bh, progress=None) -> Tensor:
        return self.record.exact_log_likelihoods(self.model, v, bv, bh, progress)

    def marginals(self, bv, bh, samples, generator=None, progress=None) -> Tensor:
        return self.record.exact_marginals(self.model, bv, bh, samples, generator, progress)


class ModelSampler:
    """A sampler that is the model's own ``generate`` (torch, any device)."""

    backend = "torch"

    def __init__(self, model) -> None:
        self.model = model

    def compile_message(self, job: str = "sample") -> str | None:
        return None

    def generate(self, n, steps, k, primer=None, generator=None) -> Tensor:
        return self.model.generate(n, steps, k, primer, generator)


class TorchSampler(ModelSampler):
    """The RNN-RBM's reference sampler: its generate, Gibbs chains and AIS in torch."""

    def gibbs_chain(self, v, W, bv, bh, k, generator=None) -> Tensor:
        """k block Gibbs steps from ``v`` (..., n_visible) with biases broadcast against it;
        one step per call, so that the random numbers of only one step are in memory."""
        for _ in range(k):
            v = rbm_math.gibbs_chain(v, W, bv, bh, 1, generator)
        return v

    def ais_log_weights(self, W, base, bv, bh, schedule, chains, generator=None) -> Tensor:
        return rbm_math.ais_log_weights(W, base, bv, bh, schedule, chains, generator)

    def raise_log_weights(self, W, base, bv, bh, schedule, chains, v, generator=None) -> Tensor:
        return rbm_math.raise_log_weights(W, base, bv, bh, schedule, chains, v, generator)
