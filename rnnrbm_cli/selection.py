"""Model selection: which epoch best.pt holds, early stopping, and the averaged parameters
(--ema) that validation and best.pt see. No loop here; ``train.py`` asks after each epoch."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


class ModelSelection:
    """The best epoch so far and the estimates since it.

    The best is by validation LL when it is measured (eval_every), else by the validation
    monitor; with no validation data the latest is the best. Pretraining epochs are never
    the best: they train a part of the model only. ``patience`` validation-LL estimates
    without improvement stop the run (0: never).
    """

    def __init__(self, by_ll: bool, patience: int) -> None:
        self.key = "valid_ll" if by_ll else "valid_monitor"
        self.patience = patience
        self.best: dict[str, Any] | None = None
        self.evals_since_best = 0
        self.stopped_early = False

    def update(self, metrics: dict[str, Any]) -> bool:
        """Is this epoch the best so far?"""
        if metrics.get("stage", "fine") != "fine":
            return False
        value = metrics.get(self.key)
        if value is None:
            return self.best is None
        if self.best is None or self.best.get("metric") != self.key or value > self.best["value"]:
            self.best = {"metric": self.key, "value": value, "epoch": metrics["epoch"]}
            return True
        return False

    def estimated(self, metrics: dict[str, Any]) -> None:
        """A validation LL was measured (metrics["valid_ll"]): count it for early stopping."""
        improved = self.best is None or self.best.get("metric") != "valid_ll" or metrics["valid_ll"] > self.best["value"]
        self.evals_since_best = 0 if improved else self.evals_since_best + 1
        if self.patience and self.evals_since_best >= self.patience:
            self.stopped_early = True
            metrics["stopped_early"] = True

    def state(self, last: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's ``metrics``."""
        return {"last": last, "best": self.best, "evals_since_best": self.evals_since_best,
                "stopped_early": self.stopped_early}

    def load(self, metrics: dict[str, Any]) -> None:
        self.best = metrics.get("best")
        self.evals_since_best = int(metrics.get("evals_since_best") or 0)
        # from the count, not the saved flag: a run resumed with more patience goes on
        self.stopped_early = bool(self.patience and self.evals_since_best >= self.patience)


class ParameterAverage:
    """An exponential moving average of the parameters (``decay`` per update), kept from the
    start of fine-tuning; ``averaged()`` puts it in the model's place."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.values: list[torch.Tensor] | None = None  # in the order of model.parameters()

    def start(self) -> None:
        if self.values is None:  # the average starts where fine-tuning starts
            self.values = [p.detach().clone() for p in self.model.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        for a, p in zip(self.values, self.model.parameters()):
            a.lerp_(p, 1.0 - self.decay)

    def state(self) -> dict[str, torch.Tensor] | None:
        """The average by parameter name (the checkpoint's ``ema_state``), or None."""
        if self.values is None:
            return None
        return {name: a.detach().cpu().clone() for (name, _), a in zip(self.model.named_parameters(), self.values)}

    def load(self, ema_state: dict[str, torch.Tensor] | None, device) -> None:
        """From a checkpoint's ``ema_state`` (checked by the caller to fit the model)."""
        self.values = None
        if ema_state is not None:
            self.values = [ema_state[name].to(device, p.dtype).clone() for name, p in self.model.named_parameters()]

    @contextlib.contextmanager
    def averaged(self):
        """The model with the averaged parameters in place of its own, while inside (no change
        without an average): what validation measures and best.pt holds."""
        if self.values is None:
            yield self.model
            return
        params = list(self.model.parameters())
        with torch.no_grad():
            own = [p.detach().clone() for p in params]
            for p, a in zip(params, self.values):
                p.copy_(a)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, o in zip(params, own):
                    p.copy_(o)
