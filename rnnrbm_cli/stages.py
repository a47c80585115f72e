"""The stages of a run and what each trains with: the plan (pretraining of the frame model,
of the RNN, then fine-tuning of the whole model, one epoch counter across them) and the
optimiser and schedule factory. No loop here: ``train.py`` runs the stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.config import OptimConfig

# Stage names, in order: the per-frame model alone on shuffled frames, the RNN alone, the whole model.
STAGE_NAMES = {"rbm": "RBM pretraining", "rnn": "RNN pretraining", "fine": "training"}


@dataclass(frozen=True)
class StagePlan:
    """How many epochs each stage has: [(name, epochs)] in STAGE_NAMES' order."""

    stages: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, o: OptimConfig) -> StagePlan:
        return cls((("rbm", o.pretrain_rbm_epochs), ("rnn", o.pretrain_rnn_epochs), ("fine", o.epochs)))

    @property
    def total_epochs(self) -> int:
        return sum(n for _, n in self.stages)

    def epochs_of(self, name: str) -> int:
        return dict(self.stages).get(name, 0)

    def stage_of(self, completed: int) -> str:
        """The stage that epoch ``completed + 1`` belongs to (fine-tuning past the end)."""
        for name, n in self.stages:
            if completed < n:
                return name
            completed -= n
        return "fine"

    def fine_epoch(self, epoch: int) -> int:
        """Epoch number within fine-tuning (1-based) of overall epoch ``epoch``."""
        return epoch - self.epochs_of("rbm") - self.epochs_of("rnn")


@dataclass
class Stage:
    """What one stage trains with: its objective, data, optimiser and schedule."""

    name: str
    objective: Any
    data: ChunkedData
    valid: ChunkedData | None
    batch: int  # chunks per update
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any = None


def fine_tuning_optimizer(model: torch.nn.Module, parts: dict[str, list], o: OptimConfig) -> torch.optim.Optimizer:
    """The fine-tuning optimiser: one group, or the frame model's and the RNN's parts at their
    own rates when ``lr_rbm`` or ``lr_rnn`` is set."""
    if o.lr_rbm is None and o.lr_rnn is None:
        groups = [{"params": list(model.parameters())}]
    else:
        groups = [{"params": parts["frame"], "lr": o.lr_rbm or o.lr}, {"params": parts["rnn"], "lr": o.lr_rnn or o.lr}]
    if o.optimizer == "adam":
        if o.weight_decay > 0:  # decoupled from the adaptive step (Loshchilov & Hutter), not L2
            return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0, weight_decay=o.weight_decay)


def schedule(optimizer: torch.optim.Optimizer, o: OptimConfig):
    """The learning-rate schedule of ``o.lr_schedule`` (None for "constant")."""
    if o.lr_schedule == "exp":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=o.lr_decay)
    if o.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=o.lr_decay,
                                                          patience=o.lr_patience)
    return None


def step_schedule(scheduler, valid_ll: float | None) -> None:
    """After an epoch of fine-tuning: the exponential schedule every epoch, the plateau one
    when a validation LL was measured."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if valid_ll is not None:
            scheduler.step(valid_ll)
    elif isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR):
        scheduler.step()
