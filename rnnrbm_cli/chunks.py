"""Training and validation data as the loop and the engines see it: one frame table, cut
into chunks of at most ``chunk`` frames, gathered into padded batches.

The table is in memory (a float tensor on the device), or, for data prepared in the mmap
format, the uint8 rolls on disk: then only the chunks of a batch are read and converted,
and the pages read are dropped from this process as it goes, so that an epoch over data
larger than memory never holds more than a few batches of it.
"""

from __future__ import annotations

import mmap
from typing import Iterator, Sequence

import numpy as np
import torch

from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.prepared import FrameTable

# Bytes of an on-disk table mapped between two drops of its pages from this process (the
# page cache keeps them; a later read maps them again without touching the disk). A read
# maps more than it reads: the kernel maps the cached pages around a fault too (its
# fault_around_bytes, 64 KiB by default), so each chunk counts that much more on either side.
RESIDENT_BYTES = 32 * 2**20
FAULT_AROUND = 64 * 2**10
# Frames per block when compiled code runs over a whole on-disk split (the monitor).
BLOCK_FRAMES = 1 << 16


def shift_notes(block: np.ndarray, k: int) -> np.ndarray:
    """Frames (n, keys) moved up k semitones (down for k < 0), the notes pushed past either
    end of the keyboard dropped, as a new array (``block`` itself when k = 0)."""
    if k == 0:
        return block
    out = np.zeros_like(block)
    keys = block.shape[-1]
    if abs(k) < keys:
        if k > 0:
            out[..., k:] = block[..., : keys - k]
        else:
            out[..., : keys + k] = block[..., -k:]
    return out


def _off_keyboard(block: np.ndarray, k: int) -> np.ndarray:
    """The part of ``block``'s keys that a shift by k pushes off the keyboard."""
    keys = block.shape[-1]
    m = min(abs(k), keys)
    return block[..., keys - m :] if k > 0 else block[..., :m]


def shift_rows(rolls: np.ndarray, per_row: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row of ``rolls`` shifted by its own ``per_row`` semitones (``shift_notes``), and
    the number of notes dropped, by groups of rows with the same shift."""
    out = np.zeros_like(rolls)
    dropped = 0.0
    for k in np.unique(per_row).tolist():
        rows = np.flatnonzero(per_row == k)
        part = rolls[rows]
        out[rows] = shift_notes(part, k)
        dropped += float(_off_keyboard(part, k).sum()) if k else 0.0
    return out, int(dropped)


class ChunkedData:
    """A split's sequences as one frame table, cut into chunks.

    In memory: frames : (N + 1, n_visible) float tensor on the device, all sequences
    concatenated, plus one zero row that padding indices point at. On disk (``table``, a
    split of the mmap format; ``sequences`` is then unused): frames is None and rolls is
    the (N, n_visible) uint8 table. chunks : (C, 2) int64 (start, length) in frames.
    """

    def __init__(self, sequences: Sequence[np.ndarray] | None, chunk: int, device: torch.device,
                 table: FrameTable | None = None) -> None:
        if table is not None:
            self._init_on_disk(table, chunk, device)
            return
        self.table = None
        if not sequences:
            raise RnnrbmError("the training data has no sequences.")
        rolls = np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences] + [np.zeros((1, sequences[0].shape[1]), np.float32)])
        # Row-major always: the .mat rolls arrive column-major, and compiled code reads frames
        # row by row (a layout of its own would also make numba compile a second version).
        self.frames = torch.from_numpy(np.ascontiguousarray(rolls)).to(device)
        self._plain: np.ndarray | None = None  # the rolls before any transposition (transpose())
        self._shifts: np.ndarray | None = None  # each sequence's shift in semitones, or None
        self.notes_dropped = 0
        self.seq_lengths = np.array([len(s) for s in sequences], np.int64)
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

    def _init_on_disk(self, table: FrameTable, chunk: int, device: torch.device) -> None:
        lengths = np.asarray(table.lengths, np.int64)
        if not len(lengths):
            raise RnnrbmError("the training data has no sequences.")
        self.table, self.frames, self.rolls = table, None, table.rolls
        self._plain, self._shifts, self.notes_dropped = None, None, 0
        self.seq_lengths = lengths
        self.pad_row = None
        self.binary = True  # load_prepared checked every value to be 0 or 1
        # chunk j of sequence i starts at offset[i] + j * chunk: the loop of __init__, vectorised
        per_seq = -(-lengths // chunk)  # ceil; a sequence of 0 frames has no chunk
        seq_of_chunk = np.repeat(np.arange(len(lengths)), per_seq)
        first = np.cumsum(per_seq) - per_seq
        j = np.arange(int(per_seq.sum())) - np.repeat(first, per_seq)
        offsets = np.cumsum(lengths) - lengths
        starts = offsets[seq_of_chunk] + j * chunk
        sizes = np.minimum(chunk, lengths[seq_of_chunk] - j * chunk)
        self.chunks = torch.from_numpy(np.stack([starts, sizes], 1).astype(np.int64).reshape(-1, 2))
        self.seq_of_chunk = torch.from_numpy(seq_of_chunk.astype(np.int64))
        self.n_sequences = len(lengths)
        self.n_frames = int(lengths.sum())
        self.chunk = chunk
        self.device = device
        self._read = 0  # bytes mapped (at most) since the table's pages were last dropped

    def _gather(self, starts: np.ndarray, lengths: np.ndarray, T: int | None = None) -> np.ndarray:
        """On disk: the chunks frames[starts[b] : starts[b] + lengths[b]] as float32, either
        one after another, (sum of lengths, n_visible), or padded with zeros to T,
        (B, T, n_visible)."""
        rolls = self.rolls
        shifts = self._chunk_shifts(starts)
        if T is None:
            out = np.empty((int(lengths.sum()), rolls.shape[1]), np.float32)
            at = 0
            for s, n, k in zip(starts.tolist(), lengths.tolist(), shifts.tolist()):
                out[at : at + n] = self._shifted(rolls[s : s + n], k)
                at += n
        else:
            out = np.zeros((len(starts), T, rolls.shape[1]), np.float32)
            for b, (s, n, k) in enumerate(zip(starts.tolist(), lengths.tolist(), shifts.tolist())):
                out[b, :n] = self._shifted(rolls[s : s + n], k)
        self._read += int(lengths.sum()) * rolls.shape[1] + 2 * FAULT_AROUND * len(lengths)
        if self._read >= RESIDENT_BYTES and self.table.mapping is not None:
            # A read-only file mapping: the pages come back from the file when read again.
            self.table.mapping.madvise(mmap.MADV_DONTNEED)
            self._read = 0
        return out

    def _chunk_shifts(self, starts: np.ndarray) -> np.ndarray:
        """On disk: the shift of the sequence each chunk (by its first frame) belongs to."""
        if self._shifts is None:
            return np.zeros(len(starts), np.int64)
        ends = np.cumsum(self.seq_lengths)
        return self._shifts[np.searchsorted(ends, starts, side="right")]

    def _shifted(self, block: np.ndarray, k: int) -> np.ndarray:
        """On disk: a chunk's frames shifted by k, its dropped notes counted."""
        if k:
            self.notes_dropped += int(_off_keyboard(block, k).sum())
        return shift_notes(block, k)

    def transpose(self, shifts: np.ndarray | None) -> None:
        """From now on, sequence i reads shifted by shifts[i] semitones (None: as it is), notes
        pushed off the keyboard dropped and counted in ``notes_dropped``. In memory the frame
        table is rewritten now (from the unshifted rolls, kept aside the first time) and the
        count is the whole split's; on disk each chunk is shifted as it is read, and the count
        is of the chunks read since."""
        if shifts is not None:
            shifts = np.asarray(shifts, np.int64)
            if shifts.shape != (self.n_sequences,):
                raise ValueError(f"one shift per sequence ({self.n_sequences}), not {shifts.shape}")
        self._shifts = None if shifts is None or not shifts.any() else shifts
        self.notes_dropped = 0
        if self.table is not None:
            return
        per_row = None if self._shifts is None else np.repeat(self._shifts, self.seq_lengths)
        if self._plain is None:
            if per_row is None:
                return
            self._plain = self.frames.cpu().numpy().copy()
        plain = self._plain
        if per_row is None:
            shifted, dropped = plain, 0
        else:
            body, dropped = shift_rows(plain[:-1], per_row)
            shifted = np.concatenate([body, plain[-1:]])  # the zero padding row stays
        self.frames = torch.from_numpy(np.ascontiguousarray(shifted)).to(self.device)
        self.notes_dropped = dropped

    def batch(self, chunk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames (B, T, n_visible) and lengths (B,) (None when B = 1: nothing to mask)."""
        if self.table is not None:
            starts, lengths = self.spans(chunk_ids)
            T = int(lengths.max())
            v = torch.from_numpy(self._gather(starts, lengths, T)).to(self.device)
            return v, (None if len(lengths) == 1 else torch.from_numpy(lengths).to(self.device))
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

    def frame_spans(self, chunk_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What compiled code reads: frames (N, n_visible) float32 0/1 on the CPU, and the
        chunks' starts and lengths in them (``spans``). In memory, the whole table; on disk,
        just these chunks, read and converted now, one after another."""
        starts, lengths = self.spans(chunk_ids)
        if self.table is None:
            return self.frames.numpy(), starts, lengths
        local = np.cumsum(lengths) - lengths
        return self._gather(starts, lengths), local.astype(np.int64), lengths

    def frame_blocks(self, chunk_ids: torch.Tensor) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``frame_spans`` of ``chunk_ids`` in blocks: one in memory, blocks of about
        BLOCK_FRAMES frames on disk (what compiled code reads over a whole split)."""
        if self.table is None:
            yield self.frame_spans(chunk_ids)
            return
        sizes = self.chunks[chunk_ids, 1].numpy()
        ends = np.cumsum(sizes)
        begin = 0
        while begin < len(chunk_ids):
            end = max(begin + 1, int(np.searchsorted(ends, ends[begin] - sizes[begin] + BLOCK_FRAMES, side="right")))
            yield self.frame_spans(chunk_ids[begin:end])
            begin = end

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
