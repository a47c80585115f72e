"""Training and validation data as the loop and the engines see it: one frame table, cut
into chunks of at most ``chunk`` frames, gathered into padded batches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rnnrbm_cli.errors import RnnrbmError


class ChunkedData:
    """A split's sequences as one frame tensor on the device, cut into chunks.

    frames : (N + 1, n_visible) float, all sequences concatenated, plus one zero row
    that padding indices point at. chunks : (C, 2) int64 (start, length) in frames.
    """

    def __init__(self, sequences: Sequence[np.ndarray], chunk: int, device: torch.device) -> None:
        if not sequences:
            raise RnnrbmError("the training data has no sequences.")
        rolls = np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences] + [np.zeros((1, sequences[0].shape[1]), np.float32)])
        # Row-major always: the .mat rolls arrive column-major, and compiled code reads frames
        # row by row (a layout of its own would also make numba compile a second version).
        self.frames = torch.from_numpy(np.ascontiguousarray(rolls)).to(device)
        self.pad_row = rolls.shape[0] - 1
        self.binary = bool(((rolls == 0) | (rolls == 1)).all())  # the engines: what the compiled kernels need
        starts, lengths, seq_of_chunk = [], [], []
        offset = 0
        for i, s in enumerate(sequences):
            for j in range(0, len(s), chunk):
                starts.append(offset + j)
                lengths.append(min(chunk, len(s) - j))
                seq_of_chunk.append(i)
            offset += len(s)
        self.chunks = torch.tensor(list(zip(starts, lengths)), dtype=torch.int64)
        self.seq_of_chunk = torch.tensor(seq_of_chunk, dtype=torch.int64)
        self.n_sequences = len(sequences)
        self.n_frames = offset
        self.chunk = chunk
        self.device = device

    def batch(self, chunk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames (B, T, n_visible) and lengths (B,) (None when B = 1: nothing to mask)."""
        if len(chunk_ids) == 1:
            start, length = self.chunks[int(chunk_ids[0])].tolist()
            return self.frames[start : start + length].unsqueeze(0), None
        sel = self.chunks[chunk_ids]
        T = int(sel[:, 1].max())
        steps = torch.arange(T)
        idx = sel[:, :1] + steps[None, :]
        idx = torch.where(steps[None, :] < sel[:, 1:], idx, torch.full_like(idx, self.pad_row))
        return self.frames[idx.to(self.device)], sel[:, 1].to(self.device)

    def spans(self, chunk_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Where the chunks lie in ``frames``: starts and lengths, (B,) int64 numpy arrays
        (what compiled code takes instead of a padded batch)."""
        sel = self.chunks.numpy()[chunk_ids.numpy()]
        return np.ascontiguousarray(sel[:, 0]), np.ascontiguousarray(sel[:, 1])

    def epoch_order(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """The chunk order of one epoch: sequences shuffled (the tutorial), their chunks in
        order; with several chunks per update the chunks are shuffled too, so that one
        update does not see one sequence only."""
        perm = torch.randperm(self.n_sequences, generator=generator)
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(self.n_sequences)
        # stable sort by the sequence's shuffled rank keeps chunks of a sequence in order
        order = torch.argsort(rank[self.seq_of_chunk], stable=True)
        if batch > 1:
            order = order[torch.randperm(len(order), generator=generator)]
        return order
