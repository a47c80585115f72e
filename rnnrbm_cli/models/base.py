"""What every model shares: its config, the result of a cost, masks, and the deterministic
RNN that each frame's model conditions on, with four recurrences.

    tanh     u(t) = tanh(bu + u(t-1) Wuu + v(t) Wvu)      the tutorial's (cuDNN's fused kernel)
    sigmoid  u(t) = sigmoid(bu + u(t-1) Wuu + v(t) Wvu)   the paper's
    lstm, gru   torch's cells (cuDNN on CUDA); u(t) is the cell's output h(t)

Shapes: frames ``v`` are (B, T, n_visible); outputs u(1..T) are (B, T, n_recurrent). The
state before the first frame is u(0) (learned or a fixed zero) and, for an LSTM, a zero
cell. ``Recurrent`` is a base class: the tanh/sigmoid parameters keep the names
Wvu, Wuu, bu, u0 on the model itself (what checkpoints and the compiled kernels know).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from rnnrbm_cli.choices import RNN_KINDS


@dataclass(frozen=True)
class ModelConfig:
    # 88 piano keys, MIDI 21..108: the tutorial's r = (21, 109).
    n_visible: int = 88
    # Hidden units of each frame's model (RBM or NADE); the tutorial's n_hidden = 150.
    n_hidden: int = 150
    # RNN units; the tutorial's n_hidden_recurrent = 100.
    n_recurrent: int = 100
    # Learn the initial state u(0), as the paper does; the tutorial fixes u(0) = 0.
    learn_u0: bool = False
    # Which model (models.model_types(): "rnn-rbm", the tutorial's, is the default).
    model_type: str = "rnn-rbm"
    # The recurrence: "tanh" (the tutorial), "sigmoid" (the paper), "lstm" or "gru".
    rnn: str = "tanh"

    def __post_init__(self) -> None:
        from rnnrbm_cli.models import model_types

        for name in ("n_visible", "n_hidden", "n_recurrent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.learn_u0, bool):
            raise ValueError(f"learn_u0 must be true or false, not {self.learn_u0!r}")
        if self.model_type not in model_types():
            raise ValueError(f"model_type must be one of {', '.join(model_types())}, not {self.model_type!r}")
        if self.rnn not in RNN_KINDS:
            raise ValueError(f"rnn must be one of {', '.join(RNN_KINDS)}, not {self.rnn!r}")


@dataclass
class CostResult:
    """What a model's cost over a padded batch (or one gradient pass of an engine) returns.

    cost : scalar tensor, the mean over real frames of what is minimised (CD's free-energy
        gap, or minus the log-likelihood); engines return it detached, its gradient in .grad.
    monitor : scalar tensor (no grad), what is reported per frame in nats: the tutorial's
        reconstruction monitor for CD, the exact log-likelihood for an exact model.
    n_frames : number of real (unpadded) frames in the batch.
    """

    cost: Tensor
    monitor: Tensor
    n_frames: int


def length_mask(lengths: Tensor, T: int) -> Tensor:
    """(B, T) float mask, 1 where t < lengths[b]."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).float()


def masked_mean(per_frame: Tensor, lengths: Tensor | None) -> tuple[Tensor, int]:
    """The sum of (B, T) per-frame values over real frames, divided by their count; and the count."""
    B, T = per_frame.shape
    if lengths is None:
        return per_frame.sum() / (B * T), B * T
    n_frames = int(lengths.sum())
    return (per_frame * length_mask(lengths, T)).sum() / n_frames, n_frames

State = tuple[Tensor, ...]  # (u,) for tanh, sigmoid, gru; (u, cell) for lstm


# What every model's "paper" preset pins (its record's paper_preset adds the rest). Every
# setting that shapes the result is pinned, so that a change of default never changes what
# the preset trains.
PAPER_COMMON = {
    "rnn": "tanh", "n_hidden": 150, "n_recurrent": 100, "learn_u0": True, "chunk": 100, "batch": 1,
    "momentum": 0.0, "lr_rbm": None, "lr_rnn": None, "clip_grad": 0.0, "ema": 0.0, "seed": 1234,
    "eval_frames": 500, "eval_chains": 50, "eval_betas": 100, "eval_method": "ais",
}

# The time a slow late rise needs: 20 estimates without a new best, up to 300 epochs.
PATIENT = {"patience": 20, "epochs": 300}
# Each training piece shifted by up to 3 semitones every epoch, given that time (README, Results:
# the paper presets of the RNN-NADE on every dataset but Nottingham, and of the RNN on Piano-midi.de).
SHIFTED = {"augment_transpose": 3, **PATIENT}


def tempered(model: nn.Module, temperature: float) -> nn.Module:
    """The model to sample from at ``temperature``: itself at 1 (the same samples, bit for
    bit), else a copy whose record's ``temperature_parameters`` are divided by it, which
    divides each frame's energies (RBM) or note logits (NADE, RNN) by the temperature; below
    1 the distributions sharpen, above 1 they flatten. The recurrence is unchanged."""
    import copy

    from rnnrbm_cli.models import record_of

    if temperature == 1:
        return model
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, not {temperature!r}")
    names = record_of(model).temperature_parameters
    if not names:
        raise ValueError(f"the {model.config.model_type} model does not say how to sample it at a temperature")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            getattr(copied, name).div_(temperature)
    return copied


def normal_init(generator: torch.Generator | None) -> Callable[..., Tensor]:
    """``normal(*shape, sd=)``: N(0, sd^2) draws from ``generator`` (the global one if None)."""

    def normal(*shape: int, sd: float) -> Tensor:
        return torch.randn(*shape, generator=generator) * sd

    return normal


class Recurrent(nn.Module):
    """Base of the models: builds and runs the recurrence named by ``config.rnn``, and the
    conditioning the frame models share, bv(t) = bv + u(t-1) Wuv and bh(t) = bh + u(t-1) Wuh.

    A subclass sets ``config`` and defines ``training_cost`` and ``sample_frame`` (see
    ``models/record.py``)."""

    config: ModelConfig
    # Training-time dropout (the trainer's OptimConfig.dropout) and the generator its masks are
    # drawn from: set by ``set_dropout``, neither a parameter nor a buffer (checkpoints do not
    # hold them), applied in training mode only.
    dropout: float = 0.0
    dropout_generator: torch.Generator | None = None

    def set_dropout(self, rate: float, generator: torch.Generator | None = None) -> None:
        """Drop this share of the recurrence's inputs and outputs in training mode (0: none)."""
        if not 0 <= rate < 1:
            raise ValueError(f"dropout must be 0 to below 1, not {rate!r}")
        self.dropout, self.dropout_generator = float(rate), generator

    def _dropped(self, x: Tensor) -> Tensor:
        """x with a random ``dropout`` share of its entries zeroed and the rest scaled by
        1 / (1 - dropout), in training mode; x itself otherwise."""
        if not (self.training and self.dropout > 0):
            return x
        keep = torch.rand(x.shape, generator=self.dropout_generator, device=x.device, dtype=x.dtype) >= self.dropout
        return x * keep / (1 - self.dropout)

    def training_cost(self, v: Tensor, lengths: Tensor | None, k: int, generator: torch.Generator | None) -> CostResult:
        """The model's own objective on a padded batch v (B, T, n_visible); backward() gives its gradient."""
        raise NotImplementedError

    def sample_frame(self, state: State, k: int, generator: torch.Generator | None) -> Tensor:
        """One frame (n, n_visible) 0/1 for each of n sequences, given the RNN state after their past."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, n: int, steps: int, k: int = 25, primer: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample n sequences in parallel, one frame at a time (``sample_frame``), each frame fed
        back into the RNN. With a ``primer`` (T0, n_visible), the model first reads the primer
        and the result begins with it. Returns (n, T0 + steps, n_visible) float 0/1 on the
        model's device. This is the reference sampler; the engines may choose compiled kernels
        instead (the same sampler, with their own random streams)."""
        first = next(self.parameters())
        device, dtype = first.device, first.dtype
        state = self.initial_state(n)
        frames = []
        if primer is not None and primer.shape[0] > 0:
            p = primer.to(device=device, dtype=dtype).expand(n, -1, -1)
            state = self.run_recurrence(p)[1]
            frames.append(p)
        out = torch.empty((n, steps, self.config.n_visible), device=device, dtype=dtype)
        for t in range(steps):
            v = self.sample_frame(state, k, generator)
            out[:, t] = v
            state = self.step(v, state)
        frames.append(out)
        return torch.cat(frames, dim=1)

    def _init_conditioning(self, n_v: int, n_h: int, n_u: int, normal: Callable[..., Tensor]) -> None:
        """bv, bh (zeros) and Wuh, Wuv ~ N(0, 0.0001^2), the tutorial's, drawn in this order."""
        self.bv = nn.Parameter(torch.zeros(n_v))
        self.bh = nn.Parameter(torch.zeros(n_h))
        self.Wuh = nn.Parameter(normal(n_u, n_h, sd=0.0001))
        self.Wuv = nn.Parameter(normal(n_u, n_v, sd=0.0001))

    def conditional_biases(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """bv(t), bh(t) for every frame of v (B, T, n_visible), each computed from u(t-1) (the
        past only): (B, T, n_visible) and (B, T, n_hidden)."""
        # u(t-1), not u(t): the frame model at t sees only frames before t.
        u_prev = self.previous_outputs(v)
        return self.bv + u_prev @ self.Wuv, self.bh + u_prev @ self.Wuh

    def _init_recurrence(self, kind: str, n_in: int, n_u: int, learn_u0: bool, normal: Callable[..., Tensor],
                         generator: torch.Generator | None) -> None:
        if kind not in RNN_KINDS:
            raise ValueError(f"rnn must be one of {', '.join(RNN_KINDS)}, not {kind!r}")
        self.rnn_kind = kind
        if kind in ("tanh", "sigmoid"):
            # The tutorial's initialisation: N(0, 0.0001), bias 0.
            self.Wvu = nn.Parameter(normal(n_in, n_u, sd=0.0001))
            self.Wuu = nn.Parameter(normal(n_u, n_u, sd=0.0001))
            self.bu = nn.Parameter(torch.zeros(n_u))
            # rnn_tanh adds two bias vectors; ours has one (bu), so the second is a fixed zero.
            self.register_buffer("_zero_bias", torch.zeros(n_u), persistent=False)
        else:
            cell = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = cell(n_in, n_u, batch_first=True)
            # torch's own uniform(-1/sqrt(n), 1/sqrt(n)), drawn from our generator (not the global seed).
            bound = n_u ** -0.5
            with torch.no_grad():
                for p in self.rnn.parameters():
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
        if learn_u0:
            self.u0 = nn.Parameter(torch.zeros(n_u))
        else:
            self.register_buffer("u0", torch.zeros(n_u), persistent=False)

    # -- running it ------------------------------------------------------------------------

    def initial_state(self, batch: int) -> State:
        u = self.u0.expand(batch, -1)
        return (u, torch.zeros_like(u)) if self.rnn_kind == "lstm" else (u,)

    def recurrence(self, v: Tensor, state: State | None = None) -> Tensor:
        """u(1..T) for frames v(1..T), from ``state`` (default the initial one). (B, T, n_recurrent)."""
        return self.run_recurrence(v, state)[0]

    def run_recurrence(self, v: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """u(1..T) and the state after the last frame."""
        B = v.shape[0]
        if state is None:
            state = self.initial_state(B)
        kind = self.rnn_kind
        if kind == "tanh":
            params = [self.Wvu.t(), self.Wuu.t(), self.bu, self._zero_bias]
            out, h = torch.rnn_tanh(v, state[0].unsqueeze(0).contiguous(), params, True, 1, 0.0, self.training, False, True)
            return out, (h[0],)
        if kind == "sigmoid":
            u = state[0]
            x = v @ self.Wvu + self.bu  # the input part of every step at once
            outs = []
            for t in range(v.shape[1]):
                u = torch.sigmoid(x[:, t] + u @ self.Wuu)
                outs.append(u)
            out = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, self.u0.shape[0])
            return out, (u,)
        if kind == "lstm":
            out, (h, c) = self.rnn(v, (state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous()))
            return out, (h[0], c[0])
        out, h = self.rnn(v, state[0].unsqueeze(0).contiguous())
        return out, (h[0],)

    def step(self, v_t: Tensor, state: State) -> State:
        """The state after one more frame v_t (B, n_visible)."""
        kind = self.rnn_kind
        if kind == "tanh":
            return (torch.tanh(self.bu + state[0] @ self.Wuu + v_t @ self.Wvu),)
        if kind == "sigmoid":
            return (torch.sigmoid(self.bu + state[0] @ self.Wuu + v_t @ self.Wvu),)
        return self.run_recurrence(v_t.unsqueeze(1), state)[1]

    def parameter_parts(self) -> dict[str, list[nn.Parameter]]:
        """{"frame": the per-frame model's parameters (its record's frame_parameters), "rnn": the
        rest}, each in registration order."""
        from rnnrbm_cli.models import record_of

        frame = set(record_of(self).frame_parameters)
        parts: dict[str, list[nn.Parameter]] = {"frame": [], "rnn": []}
        for name, p in self.named_parameters():
            parts["frame" if name in frame else "rnn"].append(p)
        return parts

    def rnn_logits(self, v: Tensor) -> Tensor:
        """bv(t) = bv + u(t-1) Wuv for every frame of v (B, T, n_visible): the RNN's own
        prediction of each note, as logits (B, T, n_visible)."""
        return self.bv + self.previous_outputs(v) @ self.Wuv

    def rnn_prediction_cost(self, v: Tensor, lengths: Tensor | None = None) -> CostResult:
        """The RNN alone as a model of the notes: frame t predicted as sigmoid(bv(t)), each
        note independent (the paper's RNN pretraining). cost = mean cross-entropy per real
        frame (exact: backward is BPTT), monitor = minus that (this predictor's
        log-likelihood, nats per frame)."""
        nll = nn.functional.binary_cross_entropy_with_logits(self.rnn_logits(v), v, reduction="none").sum(-1)
        cost, n_frames = masked_mean(nll, lengths)
        return CostResult(cost=cost, monitor=(-cost).detach(), n_frames=n_frames)

    def previous_outputs(self, v: Tensor) -> Tensor:
        """u(t-1) for every frame t of v: (B, T, n_recurrent), u(0) first (the past only). In
        training with ``dropout``, the recurrence reads v with units dropped and its outputs
        are dropped on their way to the frame models (never inside the recurrence)."""
        u = self.recurrence(self._dropped(v))
        return self._dropped(torch.cat([self.u0.expand(v.shape[0], 1, -1), u[:, :-1]], dim=1))
