"""What the rest of the tool asks about a model type, as one record per model (torch-free).

A model module (``models/rbm.py``, ``models/nade.py``, ``models/rnn.py``) defines its torch
module and one ``RECORD``; ``models/__init__.py`` lists the modules. The loop, the
evaluation, the engines, the command line and the study read the record and never compare a
model-type string.

Every model class the record names is a torch module built as ``model_class(config,
generator=...)`` with these methods (``models/base.py`` has the shared ones):

    training_cost(v, lengths, k, generator) -> CostResult   its objective on a padded batch
    rnn_prediction_cost(v, lengths) -> CostResult           the RNN-pretraining objective
    generate(n, steps, k, primer, generator) -> Tensor      (n, T0 + steps, n_visible) 0/1; base.Recurrent
                                                            builds it from sample_frame(state, k, generator)
    conditional_biases(v) -> (bv(t), bh(t))                  what each frame's model is given
    parameter_parts() -> {"frame": [...], "rnn": [...]}     from ``frame_parameters``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# How a model's log-likelihood is found.
EXACT = "exact"  # tractable: exact LL, exact note marginals, exact sampling
ANNEALED = "annealed"  # an RBM per frame: log Z by enumeration or annealing, Gibbs chains


@dataclass(frozen=True)
class ModelRecord:
    # The model type: the --model choice, the checkpoint's model_type, the [table] of a search space.
    name: str
    # One line saying what it is (`rnnrbm tune --show-space` prints it above the model's table).
    summary: str
    # The torch module; built as model_class(config, generator=...).
    model_class: type
    # Its config dataclass (the checkpoint's model_config is rebuilt with it).
    config_class: type
    # EXACT or ANNEALED (see above).
    likelihood: str
    # Whether Gibbs steps (--k, --gibbs) mean anything for it.
    uses_gibbs: bool
    # Parameter names of the per-frame model: --lr-rbm's part and what frame pretraining trains;
    # every other parameter is the RNN's.
    frame_parameters: tuple[str, ...]
    # The "paper" preset: the recipe found best on validation, and what a dataset needs on top.
    paper_preset: Mapping[str, Any]
    paper_by_data: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # `rnnrbm tune`'s default search space: setting -> a range {low, high, log?, step?} or a list.
    search_space: Mapping[str, Any] = field(default_factory=dict)
    # EXACT models: per-frame log p(v_t | history) (N,) of frames v (N, n_visible) with their
    # conditional biases bv (N, n_visible), bh (N, n_hidden): fn(model, v, bv, bh) -> Tensor.
    exact_log_likelihoods: Callable | None = None
    # EXACT models: note marginals (N, n_visible) given the biases, from ``samples`` exact
    # draws or exactly: fn(model, bv, bh, samples, generator) -> Tensor.
    exact_marginals: Callable | None = None
    # The compiled CPU kernels that can compute this model, by the name the engines know them
    # ("rbm"), or None: torch only.
    kernels: str | None = None
    # The pretraining stages that mean something for it (stages.STAGE_NAMES: "rbm", the frame
    # model alone on shuffled frames; "rnn", the RNN alone predicting each frame); asking for
    # another is a usage error.
    pretraining: tuple[str, ...] = ("rbm", "rnn")
    # The parameters divided by T to sample at temperature T (``models.base.tempered``): those
    # that make each frame's energies (an RBM) or note logits (a NADE, the RNN).
    temperature_parameters: tuple[str, ...] = ()
    # Frames of working tensors per batch in evaluation and the monitor (a memory bound, not a
    # result); None: no bound beyond the callers' own.
    frames_per_batch: Callable | None = None

    def __post_init__(self) -> None:
        if self.likelihood not in (EXACT, ANNEALED):
            raise ValueError(f"likelihood must be {EXACT} or {ANNEALED}, not {self.likelihood!r}")
        if self.likelihood == EXACT and (self.exact_log_likelihoods is None or self.exact_marginals is None):
            raise ValueError(f"model {self.name}: an exact likelihood needs exact_log_likelihoods and exact_marginals")

    @property
    def exact(self) -> bool:
        return self.likelihood == EXACT
