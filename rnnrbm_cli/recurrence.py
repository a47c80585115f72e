"""The deterministic RNN that both models condition on, with four recurrences.

    tanh     u(t) = tanh(bu + u(t-1) Wuu + v(t) Wvu)      the tutorial's (cuDNN's fused kernel)
    sigmoid  u(t) = sigmoid(bu + u(t-1) Wuu + v(t) Wvu)   the paper's
    lstm, gru   torch's cells (cuDNN on CUDA); u(t) is the cell's output h(t)

Shapes: frames ``v`` are (B, T, n_visible); outputs u(1..T) are (B, T, n_recurrent). The
state before the first frame is u(0) (learned or a fixed zero) and, for an LSTM, a zero
cell. ``Recurrent`` is a base class: the tanh/sigmoid parameters keep the names
Wvu, Wuu, bu, u0 on the model itself (what checkpoints and the compiled kernels know).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

RNN_KINDS = ("tanh", "sigmoid", "lstm", "gru")

State = tuple[Tensor, ...]  # (u,) for tanh, sigmoid, gru; (u, cell) for lstm


def normal_init(generator: torch.Generator | None) -> Callable[..., Tensor]:
    """``normal(*shape, sd=)``: N(0, sd^2) draws from ``generator`` (the global one if None)."""

    def normal(*shape: int, sd: float) -> Tensor:
        return torch.randn(*shape, generator=generator) * sd

    return normal


class Recurrent(nn.Module):
    """Base of the models: builds and runs the recurrence named by ``config.rnn``, and the
    conditioning both models share, bv(t) = bv + u(t-1) Wuv and bh(t) = bh + u(t-1) Wuh."""

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

    # Parameters of the frame model (RBM or NADE); every other parameter is the RNN part's.
    FRAME_PARAMETERS = ("W", "V", "bv", "bh")

    def parameter_parts(self) -> dict[str, list[nn.Parameter]]:
        """{"rbm": the frame model's parameters, "rnn": the rest}, each in registration order."""
        parts: dict[str, list[nn.Parameter]] = {"rbm": [], "rnn": []}
        for name, p in self.named_parameters():
            parts["rbm" if name in self.FRAME_PARAMETERS else "rnn"].append(p)
        return parts

    def rnn_prediction_cost(self, v: Tensor, lengths: Tensor | None = None):
        """The RNN alone as a model of the notes: frame t predicted as sigmoid(bv(t)),
        bv(t) = bv + u(t-1) Wuv, each note independent (the paper's RNN pretraining).
        Returns a CDResult: cost = mean cross-entropy per real frame (exact: backward is
        BPTT), monitor = minus that (the log-likelihood of this predictor, nats per frame)."""
        from rnnrbm_cli.model import CDResult, length_mask

        B, T, _ = v.shape
        u_prev = self.previous_outputs(v)
        logits = self.bv + u_prev @ self.Wuv
        nll = nn.functional.binary_cross_entropy_with_logits(logits, v, reduction="none").sum(-1)
        if lengths is None:
            n_frames, total = B * T, nll.sum()
        else:
            n_frames, total = int(lengths.sum()), (nll * length_mask(lengths, T)).sum()
        cost = total / n_frames
        return CDResult(cost=cost, monitor=(-cost).detach(), n_frames=n_frames)

    def previous_outputs(self, v: Tensor) -> Tensor:
        """u(t-1) for every frame t of v: (B, T, n_recurrent), u(0) first (the past only)."""
        u = self.recurrence(v)
        return torch.cat([self.u0.expand(v.shape[0], 1, -1), u[:, :-1]], dim=1)
