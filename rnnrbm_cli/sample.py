"""Sampling: rebuild a model from its checkpoint, generate piano-rolls, write MIDI files.

All ``num`` pieces come from one batched :meth:`RNNRBM.generate` call driven by one
``torch.Generator`` seeded with ``seed`` on the model's device, so the same checkpoint,
seed, options and device give the same rolls, and the same MIDI bytes. With a primer the
model first reads the primer's frames and continues them; every piece begins with them.

Time grid. The model thinks in frames of the grid it was trained on, which the checkpoint's
data metadata records: ``dt`` seconds per frame on a "seconds" grid, ``beat_division``
frames per beat on a "beats" grid. A written file plays each frame for ``dt`` seconds: the
recorded ``dt``, or ``60 / tempo / beat_division`` on a beat grid (tempo 120 bpm unless
asked), or whatever ``dt`` the caller passes. A MIDI primer is sampled on the training grid.

    >>> from rnnrbm_cli.sample import sample
    >>> result = sample("run/best.pt", "out.mid", num=4, seed=1)  # doctest: +SKIP
    >>> result.rolls.shape, [f["midi"].name for f in result.files]  # doctest: +SKIP
    ((4, 200, 88), ['out-001.mid', 'out-002.mid', 'out-003.mid', 'out-004.mid'])
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rnnrbm_cli import _io
from rnnrbm_cli.checkpoint import load_model
from rnnrbm_cli.device import resolve_device
from rnnrbm_cli.engines import sampler_for
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.models import record_of
from rnnrbm_cli.models.base import tempered
from rnnrbm_cli.pianoroll import N_KEYS, Grid, check_same_grid, tonic_of, transpose_from_c
from rnnrbm_cli.prepared import is_prepared_path

MIDI_SUFFIXES = (".mid", ".midi")
DEFAULT_STEPS = 200  # frames generated when neither --steps nor --seconds is given
DEFAULT_K = 25  # Gibbs steps per generated frame of an RNN-RBM, the tutorial's
# --temperature's range: outside it the notes are all on or all off, whatever the model.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
# The most cells (pieces x frames x 88 keys) one sample call may generate: 2**28 is 1 GiB
# of float32 while sampling, 3 million frames in all. Bigger requests are refused before any work.
MAX_CELLS = 2**28
# The most pieces (files) one call may write.
MAX_PIECES = 10_000
# Seconds between two progress lines while one long file is written.
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class SampleResult:
    """What :func:`sample` generated and wrote.

    rolls : np.ndarray, shape=(num, primer_frames + steps, 88), dtype=uint8
        The pieces, exactly as the MIDI files hold them.
    files : one dict per piece: {"midi": path, and "wav" / "png" when asked}.
    dt : seconds per frame in the written files.
    seed : the generator's seed (drawn at random when none was given).
    primer_frames : frames each piece takes from the primer (0 without one).
    audio : "fluidsynth" or "builtin" when WAV files were written, else None.
    audio_note : why the built-in synth was used (None otherwise).
    soundfont : the SoundFont FluidSynth played, if it did.
    generate_seconds : wall-clock time of the generate call.
    device : the device the model ran on.
    """

    rolls: np.ndarray
    files: list[dict[str, Path]]
    dt: float
    seed: int
    primer_frames: int
    audio: str | None
    audio_note: str | None
    soundfont: Path | None
    generate_seconds: float
    device: str

    @property
    def frames(self) -> int:
        """Frames in each piece, primer included."""
        return int(self.rolls.shape[1])

    @property
    def seconds(self) -> float:
        """Length of each piece in seconds."""
        return self.frames * self.dt

    def to_json(self) -> dict[str, Any]:
        return {
            "files": [{kind: str(path) for kind, path in f.items()} for f in self.files],
            "num": len(self.files),
            "frames": self.frames,
            "primer_frames": self.primer_frames,
            "dt": self.dt,
            "seconds": self.seconds,
            "seed": self.seed,
            "audio": self.audio,
            "audio_note": self.audio_note,
            "soundfont": str(self.soundfont) if self.soundfont else None,
            "device": self.device,
            "generate_seconds": self.generate_seconds,
        }


# -- the time grid -----------------------------------------------------------------------


def output_dt(data: dict[str, Any] | None, *, dt: float | None = None, tempo: float | None = None) -> float:
    """Seconds per frame for the written files: the checkpoint's grid (``data``: its
    "grid", "dt", "beat_division") played at ``tempo`` (beat grids), or ``dt`` instead."""
    return Grid.from_meta(data).seconds_per_frame(dt=dt, tempo=tempo)


# -- primers -----------------------------------------------------------------------------


def load_primer(
    source: str | os.PathLike,
    data: dict[str, Any] | None,
    *,
    split: str | None = None,
    index: int | None = None,
    steps: int | None = None,
    dt: float | None = None,
) -> np.ndarray:
    """A primer roll on the model's grid: a MIDI file, or a sequence of a prepared ``.npz``.

    Parameters
    ----------
    source : path
        A MIDI file, sampled on the checkpoint's grid (``data``: its "dt" or
        "beat_division", and its "transpose" mode if it recorded one); or a prepared
        ``.npz``, whose sequence ``index`` of ``split`` (default the first test sequence)
        is used as is, after checking that its grid is the checkpoint's.
    data : the checkpoint's data metadata.
    steps : keep only the first ``steps`` frames.
    dt : seconds per frame for a MIDI primer when the checkpoint records no grid.

    A prepared primer may be any data on the model's grid. When it is the very file the
    checkpoint records as its training data (the same file), it must still hold that data
    (``datasets.check_checkpoint_data``): whoever names it means the training data, and a
    file prepared again from other sources since would prime with something else silently.

    Returns
    -------
    roll : np.ndarray, shape=(T0, 88), dtype=uint8, T0 >= 1
    """
    source = Path(source)
    data = data or {}
    if steps is not None and steps < 1:
        raise RnnrbmUsageError(f"--primer-steps must be at least 1, not {steps}.")
    if is_prepared_path(source):
        from rnnrbm_cli.datasets import check_checkpoint_data, load_sequence

        if not source.exists():
            raise RnnrbmError(f"primer {source} does not exist.")
        roll, split, index, meta = load_sequence(source, split, index)
        _check_same_grid(source, meta, data)
        if _same_file(source, data.get("path")):
            check_checkpoint_data({"data": data}, source)
    else:
        if split is not None or index is not None:
            raise RnnrbmUsageError("--split and --index choose a sequence of a prepared .npz primer; a MIDI primer has one.")
        from rnnrbm_cli.pianoroll import midi_to_roll

        grid = Grid.from_meta(data)
        if grid.kind is None:
            if dt is None:
                raise RnnrbmUsageError("the checkpoint records no time grid to sample the primer on; give --dt.")
            grid = Grid(dt=dt)
        transpose = data.get("transpose") or "none"
        roll, _ = midi_to_roll(source, transpose=transpose, dt=grid.dt, beat_division=grid.beat_division)
    roll = np.asarray(roll, dtype=np.uint8)
    if steps is not None:
        roll = roll[:steps]
    if roll.shape[0] == 0:
        raise RnnrbmError(f"primer {source} has no frames; give a primer with some music in it.")
    return roll


def _same_file(a: Path, b: Any) -> bool:
    try:
        return isinstance(b, str) and os.path.samefile(a, b)
    except OSError:  # the checkpoint's data file is gone
        return False


def _check_same_grid(source: Path, meta: dict[str, Any], data: dict[str, Any]) -> None:
    """A prepared primer must be on the grid the model was trained on, or its frames mean something else."""
    check_same_grid(f"primer {source}", meta, data, "give a primer prepared like the training data, or a MIDI file")


# -- output files ------------------------------------------------------------------------


def output_files(out: str | os.PathLike, num: int, *, wav: bool = False, png: bool = False) -> list[dict[str, Path]]:
    """The files :func:`sample` writes: ``out`` itself for one piece, else ``out-001.mid``, ...

    Each entry maps "midi" (and "wav", "png" when asked) to a path; the audio and the
    figure sit beside the MIDI file with the same name.
    """
    out = Path(out)
    if out.suffix.lower() not in MIDI_SUFFIXES:
        raise RnnrbmUsageError(f"the output {out} should be a MIDI file name ending in .mid.")
    if num == 1:
        midis = [out]
    else:
        width = max(3, len(str(num)))
        midis = [out.with_name(f"{out.stem}-{i:0{width}d}{out.suffix}") for i in range(1, num + 1)]
    files = []
    for midi in midis:
        entry = {"midi": midi}
        if wav:
            entry["wav"] = midi.with_suffix(".wav")
        if png:
            entry["png"] = midi.with_suffix(".png")
        files.append(entry)
    return files


def check_writable(files: list[dict[str, Path]], force: bool) -> None:
    """Refuse, before anything is written, if an output exists (without ``force``) or is a folder."""
    for entry in files:
        for path in entry.values():
            if path.is_dir():
                raise RnnrbmError(f"{path} is a folder; choose another output name.")
            if path.exists() and not force:
                raise RnnrbmError(f"{path} already exists; pass --force to replace it.")


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write (a read-only folder, a full disk) into one sentence, and a name
    another process took meanwhile into another."""
    try:
        yield
    except FileExistsError as e:
        raise RnnrbmError(
            f"{getattr(e, 'filename2', None) or e.filename or path} was written by another process while this one sampled; nothing was written "
            "(pass --force to replace it)."
        ) from None
    except OSError as e:
        raise RnnrbmError(f"cannot write {path} ({e.strerror or e}); choose another output name.") from None


def _every(seconds: float, report: Callable[[float], None]) -> Callable[[float], None]:
    """``report`` at most once every ``seconds`` (never at the start or the very end: the
    lines around it say those)."""
    last = time.monotonic()

    def heard(done: float) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= seconds and done < 1:
            last = now
            report(done)

    return heard


# -- sampling ----------------------------------------------------------------------------


def check_size(num: int, frames: int, *, n_visible: int = N_KEYS, max_cells: int | None = MAX_CELLS) -> None:
    """Refuse, before any work, a request for more than ``max_cells`` cells
    (``num`` pieces x ``frames`` frames x ``n_visible`` keys); None: no limit."""
    cells = num * frames * n_visible
    if max_cells is not None and cells > max_cells:
        raise RnnrbmUsageError(
            f"{num:,} piece{'s' if num != 1 else ''} of {frames:,} frames is {cells:,} cells, more than the "
            f"{max_cells:,} one sample may hold (about {cells * 4 / 2**30:,.1f} GiB while sampling); "
            "lower --num or --steps, or sample in several runs."
        )


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: numpy's MemoryError, torch's OutOfMemoryError
    (CUDA), or the RuntimeError of torch's CPU allocator."""
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e).lower())


def generate_rolls(
    model,
    num: int,
    steps: int,
    *,
    k: int = 25,
    primer: np.ndarray | None = None,
    seed: int = 0,
    backend: str = "auto",
    max_cells: int | None = MAX_CELLS,
    on_message: Callable[[str], None] | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """``num`` pieces from one batched generate call on ``backend`` (``engines.sampler_for``),
    seeded on the model's device, at ``temperature`` (``models.base.tempered``: 1 is the
    model itself).

    More than ``max_cells`` cells (see :func:`check_size`) is refused before any work, and
    running out of memory is one RnnrbmError sentence. ``on_message`` hears when the
    sampler must compile first (the compiled CPU kernels, once per machine).

    Returns np.ndarray, shape=(num, T0 + steps, 88), dtype=uint8.
    """
    frames = steps + (0 if primer is None else len(primer))
    check_size(num, frames, n_visible=model.config.n_visible, max_cells=max_cells)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    primer_t = torch.from_numpy(np.asarray(primer, dtype=np.float32)) if primer is not None else None
    sampler = sampler_for(tempered(model, temperature), backend)
    message = sampler.compile_message()  # samplers that compile say so
    if message and on_message is not None:
        on_message(message)
    try:
        rolls = sampler.generate(num, steps, k, primer_t, generator)
        return rolls.round().to(torch.uint8).cpu().numpy()
    except Exception as e:
        if not out_of_memory(e):
            raise
        raise RnnrbmError(
            f"ran out of memory sampling {num:,} piece{'s' if num != 1 else ''} of {frames:,} frames on {device}; "
            "lower --num or --steps, or sample in several runs."
        ) from None


def sample(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    k: int | None = None,
    num: int = 1,
    seed: int | None = None,
    primer: str | os.PathLike | None = None,
    primer_steps: int | None = None,
    split: str | None = None,
    index: int | None = None,
    dt: float | None = None,
    tempo: float | None = None,
    program: int = 0,
    velocity: int = 80,
    temperature: float = 1.0,
    transpose_to: str | None = None,
    device: str | torch.device = "auto",
    backend: str = "auto",
    wav: bool = False,
    png: bool = False,
    force: bool = False,
    on_message: Callable[[str], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    max_cells: int | None = MAX_CELLS,
    max_pieces: int | None = MAX_PIECES,
) -> SampleResult:
    """Generate ``num`` pieces from a checkpoint and write them as MIDI (and WAV, PNG) files.

    Parameters
    ----------
    checkpoint : path
        An rnnrbm checkpoint (``best.pt`` or ``checkpoint.pt`` of a run); loaded without
        running any code it might hold.
    out : path
        ``x.mid``: the file for one piece, the name pattern ``x-001.mid`` ... for several.
    steps : frames to generate after the primer (default 200), or
    seconds : how long the generated part lasts instead (frames = seconds / the file's dt).
    k : Gibbs steps per generated frame of an RNN-RBM (default the tutorial's 25); given to a
        model sampled exactly, it is said not to be used.
    num : pieces, generated in parallel in one batch.
    seed : seeds the device's generator; None draws one (reported in the result).
    primer, primer_steps, split, index : see :func:`load_primer`.
    dt, tempo : see :func:`output_dt`.
    program : General MIDI program 0..127 of the written files.
    velocity : velocity 1..127 of every note.
    temperature : each frame's energies (RBM) or note logits (NADE, RNN) divided by it, in
        MIN_TEMPERATURE..MAX_TEMPERATURE: below 1 sharper (fewer stray notes), above 1 flatter;
        1 is the model itself.
    transpose_to : a key ("D", "F#", "Bb minor") to move the pieces to, for a model trained on
        rolls transposed to C (the benchmark rolls are); the nearest shift, -6..+5 semitones.
    device : "auto", "cpu" or "cuda[:n]".
    backend : "auto", "torch" or "numba": who samples (``engines``).
    wav : also render each piece to a WAV file (see :mod:`rnnrbm_cli.synth`).
    png : also draw each piece's piano-roll to a PNG file.
    force : replace existing files; otherwise any existing output is an error, raised
        before anything is generated or written.
    on_message : called with progress sentences for a person (the CLI prints them on stderr).
    on_progress : called with where the writing is, for a log where no bar can be drawn
        (the CLI passes it off a terminal): a line per piece written, and every
        PROGRESS_SECONDS while a long piece's audio renders.
    max_cells, max_pieces : the most cells (pieces x frames x 88, see :func:`check_size`)
        and pieces one call may make, checked before anything is loaded; None: no limit.

    A model whose visible units are not the 88 keys is refused before sampling; an
    allocation or write failure is one RnnrbmError sentence, and a file is written whole
    or not at all.
    """
    say = on_message or (lambda text: None)
    progress = on_progress or (lambda text: None)
    if steps is not None and seconds is not None:
        raise RnnrbmUsageError("give --steps or --seconds, not both.")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise RnnrbmUsageError(f"--seconds must be a positive number of seconds, not {seconds}.")
    if not (math.isfinite(temperature) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise RnnrbmUsageError(f"--temperature must be in {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}, not {temperature}.")
    if transpose_to is not None:
        try:
            tonic_of(transpose_to)
        except ValueError as e:
            raise RnnrbmUsageError(f"--transpose-to: {e}.") from None
    if steps is None and seconds is None:
        steps = DEFAULT_STEPS
    k_given = k is not None
    k = DEFAULT_K if k is None else k
    for name, value, low, high in (("steps", steps or 1, 1, None), ("k", k, 1, None), ("num", num, 1, None),
                                   ("program", program, 0, 127), ("velocity", velocity, 1, 127)):
        if value < low or (high is not None and value > high):
            bounds = f"in {low}..{high}" if high is not None else f"at least {low}"
            raise RnnrbmUsageError(f"--{name} must be {bounds}, not {value}.")
    if primer is None and (primer_steps is not None or split is not None or index is not None):
        raise RnnrbmUsageError("--primer-steps, --split and --index apply to a --primer; give one or drop them.")
    if max_pieces is not None and num > max_pieces:
        raise RnnrbmUsageError(
            f"--num {num:,} asks for more pieces than the {max_pieces:,} one run may write; "
            "sample in several runs (with different --seed values)."
        )
    if steps is not None:  # with --seconds, once the grid is known
        check_size(num, steps + (primer_steps or 0), max_cells=max_cells)  # the primer's length is checked once read
    files = output_files(out, num, wav=wav, png=png)
    check_writable(files, force)

    torch_device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model, payload = load_model(checkpoint, torch_device)
    n_visible = model.config.n_visible
    if n_visible != N_KEYS:
        raise RnnrbmError(
            f"{checkpoint} holds a model of {n_visible} visible units, not one per piano key ({N_KEYS}), "
            "so what it samples cannot be written as MIDI."
        )
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    frame_dt = output_dt(data, dt=dt, tempo=tempo)
    if transpose_to is not None and data.get("transpose") != "c":
        raise RnnrbmUsageError(
            f"--transpose-to moves pieces out of C, but {checkpoint} was trained on rolls in their own keys "
            f"(transpose {data.get('transpose', 'none')!r}); its samples have no key to move from."
        )
    if steps is None:
        steps = max(1, round(seconds / frame_dt))
        check_size(num, steps + (primer_steps or 0), max_cells=max_cells)
    primer_roll = None
    if primer is not None:
        primer_roll = load_primer(primer, data, split=split, index=index, steps=primer_steps, dt=dt)
        if primer_steps is not None and primer_roll.shape[0] < primer_steps:
            say(f"the primer has only {primer_roll.shape[0]} frames; all of them are used.")
        check_size(num, primer_roll.shape[0] + steps, max_cells=max_cells)
    if seed is None:
        seed = secrets.randbits(31)

    chains = f" (k={k})" if record_of(model).uses_gibbs else ""  # k means nothing to a model sampled exactly
    if k_given and not record_of(model).uses_gibbs:
        say(f"the {model.config.model_type} model samples each frame exactly; --k is not used.")
    say(f"sampling {num} piece{'s' if num != 1 else ''} of {steps} frames{chains} on {torch_device}, seed {seed}")
    t0 = time.perf_counter()
    rolls = generate_rolls(model, num, steps, k=k, primer=primer_roll, seed=seed, backend=backend,
                           max_cells=max_cells, on_message=say, temperature=temperature)
    generate_seconds = time.perf_counter() - t0
    progress(f"generated in {generate_seconds:.1f} s; writing {num} piece{'s' if num != 1 else ''}")
    if transpose_to is not None:
        moved = [transpose_from_c(roll, transpose_to) for roll in rolls]
        rolls = np.stack([roll for roll, _ in moved])
        lost = sum(n for _, n in moved)
        if lost:
            say(f"transposing to {transpose_to} moved {lost:,} note-frames off the keyboard; they are left out.")

    from rnnrbm_cli.pianoroll import roll_to_midi, write_midi

    audio_method = audio_note = soundfont = None
    primer_frames = 0 if primer_roll is None else int(primer_roll.shape[0])
    # Every file is written beside its name first and moved into place at the end, all of
    # them or none; without force a move never replaces a file, so two runs racing for the
    # same names cannot both win (the later one stops with one sentence, its files removed).
    targets = [path for entry in files for path in entry.values()]
    with _writing(out), _io.staged_paths(targets, replace=force) as temporaries:
        staged = iter(temporaries)
        for i, (roll, entry) in enumerate(zip(rolls, files), start=1):
            tmp = {kind: next(staged) for kind in entry}
            with _writing(entry["midi"]):
                write_midi(roll, tmp["midi"], frame_dt, program=program, velocity=velocity)
            if wav:
                from rnnrbm_cli import synth

                with _writing(entry["wav"]):
                    audio = synth.render_wav(roll_to_midi(roll, frame_dt, program=program, velocity=velocity), tmp["wav"],
                                             on_progress=_every(PROGRESS_SECONDS, lambda done, name=entry["wav"].name:
                                                                progress(f"{name}: rendering audio, {int(100 * done)}%")))
                audio_method, audio_note, soundfont = audio.method, audio.reason, audio.soundfont
            if png:
                from rnnrbm_cli import plot

                title = f"{entry['midi'].name}: sampled from {Path(checkpoint).name}, seed {seed}" + (
                    f", piece {i} of {num}" if num > 1 else ""
                )
                marks = {"primer | sampled": primer_frames * frame_dt} if primer_frames else None
                fig = plot.roll_figure(roll, frame_length=frame_dt, unit="s", title=title, marks=marks)
                plot.save_figure(fig, tmp["png"])
            progress(f"piece {i} of {num} ready: {', '.join(path.name for path in entry.values())}")
    return SampleResult(
        rolls=rolls,
        files=files,
        dt=frame_dt,
        seed=seed,
        primer_frames=primer_frames,
        audio=audio_method,
        audio_note=audio_note,
        soundfont=soundfont,
        generate_seconds=generate_seconds,
        device=str(torch_device),
    )
