"""Piano-rolls <-> MIDI: the one module that knows MIDI and array orientation.

A piano-roll ("roll") is an ``np.ndarray`` of shape ``(T, 88)`` and dtype ``uint8`` holding
0 or 1; row t is frame t, column k is MIDI pitch ``LOWEST_PITCH + k`` (21 = A0 ... 108 = C8).
pretty_midi's own rolls are ``(128, T)``; nothing outside this module sees that orientation.

Sampling rule, the same on both grids: frame t has a sampling instant ``s_t`` (its start,
as in the Theano tutorial's ``midiread``: frame t is on iff ``ceil(start/dt) <= t <
ceil(end/dt)``, i.e. ``start <= t*dt < end``). A pitch is on in frame t iff one of its
notes sounds at ``s_t``: ``start <= s_t < end``. Times are compared in frame units with a
tolerance of ``TOLERANCE`` of a frame, as if the instant were that much after the frame
start, so that float and MIDI-tick rounding (0.3 * 3 != 0.9) never moves a note by a frame.
A roll has one frame per sampling instant before the file's end time
(``T = ceil(end_time / dt)`` on the seconds grid).

    >>> roll = np.zeros((4, N_KEYS), np.uint8); roll[1:3, 60 - LOWEST_PITCH] = 1
    >>> back, info = midi_to_roll(roll_to_midi(roll, dt=0.3), dt=0.3)
    >>> bool((back == roll).all())
    True
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import pretty_midi

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError

LOWEST_PITCH = 21  # MIDI pitch of column 0 (A0), as in the tutorial's r = (21, 109)
N_KEYS = 88  # columns of a roll: the piano's range, MIDI 21..108
HIGHEST_PITCH = LOWEST_PITCH + N_KEYS - 1

#: Fraction of a frame by which the sampling instant trails the frame start. Large enough
#: to absorb float and tick rounding (a note rounded to the nearest tick of a 220-per-beat
#: file cut in three is up to 0.7 % of a frame late), small enough never to pick up a note
#: a listener would call late.
TOLERANCE = 0.01

#: The most frames a piece may have. Over 8 hours at the tutorial's 0.3 s and over 3 hours
#: at 16th notes of 120 bpm, where the longest piece of Nottingham has 1,495 and 3,588 frames;
#: a roll this long takes 8.8 MB. A damaged or hostile file claims far more (44 bytes of MIDI
#: can ask for 500 million frames, 44 GB) and is refused before anything is allocated.
MAX_FRAMES = 100_000

#: The largest MIDI file read, in bytes: room for 600,000 events, hours of dense piano, where
#: Nottingham's largest file is 19 KB. Parsing costs up to 110 bytes of memory per byte of
#: MIDI (mido builds an object per event), so this bounds one file's cost near 250 MB.
MAX_MIDI_BYTES = 2 * 2**20

#: MIDI control change 64 is the sustain pedal: down at values >= 64, as pretty_midi reads it.
SUSTAIN_PEDAL = 64
PEDAL_THRESHOLD = 64

TRANSPOSE_MODES = ("none", "c")

# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# Pitch-class names as pretty_midi spells keys (key_number 0-11 major, 12-23 minor).
_MAJOR_NAMES = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
_MINOR_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"]

# Resolution of written files. roll_to_midi sets one beat = one frame, so every frame
# boundary is a whole number of ticks and the file holds the roll's times exactly.
_WRITE_RESOLUTION = 480
# A text event at the roll's end, so trailing silent frames survive a round trip. (A
# controller would do in memory, but pretty_midi drops a track without notes on reading.)
_END_MARKER = "end"


@dataclass(frozen=True)
class RollInfo:
    """What midi_to_roll did to a file besides sampling it."""

    dropped_notes: int = 0  # non-drum notes outside MIDI 21..108 (after transposition), left out
    transpose_semitones: int = 0  # added to every pitch, in -6..+5; 0 without transposition
    key: str | None = None  # the file's key before transposition, e.g. "D major"; None if not asked
    key_source: str | None = None  # "signature" (first key signature), "estimate", or None


def key_name(key_number: int) -> str:
    """pretty_midi's key number (0-11 major, 12-23 minor, tonic C = 0) as e.g. "Eb major"."""
    if not 0 <= key_number < 24:
        raise ValueError(f"key_number must be in 0..23, not {key_number}")
    if key_number < 12:
        return f"{_MAJOR_NAMES[key_number]} major"
    return f"{_MINOR_NAMES[key_number - 12]} minor"


def read_midi(
    source: str | os.PathLike | bytes, *, name: str | None = None, max_bytes: int | None = MAX_MIDI_BYTES
) -> pretty_midi.PrettyMIDI:
    """Parse a standard MIDI file from a path or from its bytes.

    Parameters
    ----------
    source : str, path or bytes
        The file, or its content (e.g. a member read from a zip).
    name : str, optional
        How to call the file in the error message; default the path.
    max_bytes : int or None
        Refuse a file larger than this many bytes (default ``MAX_MIDI_BYTES``) before
        parsing it; None for no limit.

    Raises RnnrbmError (one sentence, naming the file) if it is missing, too large,
    truncated, corrupt or not MIDI at all.
    """
    name = _name_of(source, name)
    return _to_pretty_midi(_parse_midi(source, name, max_bytes), name)


def _name_of(source, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, bytes) else str(source)


def _parse_midi(source: str | os.PathLike | bytes, name: str, max_bytes: int | None) -> mido.MidiFile:
    """The file's events as mido reads them (relative ticks), after the size check."""
    if not isinstance(source, bytes):
        try:
            with open(source, "rb") as f:
                source = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except FileNotFoundError as e:
            raise RnnrbmError(f"{name}: no such file.") from e
        except OSError as e:
            raise RnnrbmError(f"cannot read {name}: {e.strerror or e}.") from e
    if max_bytes is not None and len(source) > max_bytes:
        raise RnnrbmError(too_large_message(name, max_bytes))
    try:
        return mido.MidiFile(file=io.BytesIO(source), charset="latin1")  # pretty_midi's charset
    except Exception as e:  # mido raises many types on a damaged file
        raise RnnrbmError(f"{name} is not a readable MIDI file ({str(e) or type(e).__name__}).") from e


def _to_pretty_midi(parsed: mido.MidiFile, name: str) -> pretty_midi.PrettyMIDI:
    _fit_resolution(parsed)
    try:
        with warnings.catch_warnings():
            # pretty_midi warns about tempo events on non-zero tracks; the times it
            # computes are still the best reading of such a file.
            warnings.simplefilter("ignore")
            # pretty_midi maps every tick to seconds in arrays of 24 bytes a tick, and
            # refuses more than 10 million ticks as corrupt (_fit_resolution has made a
            # real piece of high resolution fit first).
            return pretty_midi.PrettyMIDI(mido_object=parsed)
    except Exception as e:  # pretty_midi raises many types on a damaged file
        raise RnnrbmError(f"{name} is not a readable MIDI file ({str(e) or type(e).__name__}).") from e


#: The coarsest resolution (ticks per beat) a file is rounded to when no exact rescaling fits
#: pretty_midi's tick limit: the usual resolution of sequencer files, an event then moves by at
#: most 1/192 of a beat (2.6 ms at 120 bpm), a quarter of the grid's tolerance at 16th notes.
MIN_RESCALED_RESOLUTION = 96


def _fit_resolution(parsed: mido.MidiFile) -> None:
    """Lower the tick resolution of a file, in place, until pretty_midi accepts its ticks.

    pretty_midi tabulates seconds per tick and refuses a file whose last tick passes
    ``pretty_midi.pretty_midi.MAX_TICK`` (10 million) as "likely corrupt". Notation programs
    export at high resolution (10,080 ticks per beat, for tuplets), so ten minutes of real
    music pass that limit. The tool bounds a piece by its real length before this (seconds
    and frames, ``_check_length``), so the tick count alone says nothing here: the ticks are
    divided, with ``ticks_per_beat``, by the smallest factor that fits. Tempo is microseconds
    per beat, so dividing both keeps every time in seconds and beats; when the factor divides
    every event's tick (notation puts events on a grid) the result is exact, else events are
    rounded to the nearest tick of the finest resolution that fits (never coarser than
    MIN_RESCALED_RESOLUTION). A file that no such resolution fits is left to pretty_midi to refuse.
    """
    limit = int(pretty_midi.pretty_midi.MAX_TICK)  # pretty_midi refuses a last tick + 1 above it (a float: 1e7)
    resolution = parsed.ticks_per_beat
    absolute = []
    for track in parsed.tracks:
        tick, ticks = 0, []
        for event in track:
            tick += event.time
            ticks.append(tick)
        absolute.append(ticks)
    last = max((t[-1] for t in absolute if t), default=0)
    if last + 1 <= limit or resolution <= 0:
        return
    common = math.gcd(resolution, *(tick for ticks in absolute for tick in ticks))
    exact = [f for f in _divisors(common) if last // f + 1 <= limit]
    if exact:
        factor = exact[0]
        new_resolution, new_tick = resolution // factor, lambda tick: tick // factor  # noqa: E731
    else:
        # The finest whole resolution whose last tick fits; times keep their seconds and
        # beats up to half a new tick.
        new_resolution = (limit - 2) * resolution // last
        if new_resolution < MIN_RESCALED_RESOLUTION:
            return
        new_tick = lambda tick: (2 * tick * new_resolution + resolution) // (2 * resolution)  # noqa: E731
    for track, ticks in zip(parsed.tracks, absolute):
        before = 0
        for event, tick in zip(track, ticks):
            now = new_tick(tick)
            event.time = now - before
            before = now
    parsed.ticks_per_beat = new_resolution


def _divisors(n: int) -> list[int]:
    """The divisors of ``n`` (> 0), smallest first."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


# Events pretty_midi's get_end_time() counts: notes, controllers, pitch bends, tempo, key
# and time signatures, lyrics and text. (Not end_of_track, names or sysex.)
_TIMED_EVENTS = frozenset(
    ("note_on", "note_off", "control_change", "pitchwheel", "set_tempo", "key_signature", "time_signature",
     "lyrics", "text")
)


def _raw_extent(parsed: mido.MidiFile) -> tuple[float, float]:
    """(end time in seconds, end in beats) of a parsed file, from its events alone.

    Follows pretty_midi: the tempo map is track 0's set_tempo events (120 bpm until the
    first), the end is the last event ``get_end_time()`` counts. An upper bound on what
    pretty_midi finds (an unclosed note counts here, not there); nothing is allocated
    per tick.
    """
    resolution = parsed.ticks_per_beat
    if resolution <= 0:
        return 0.0, 0.0  # pretty_midi refuses it; let it say why
    tempo_changes = [(0, 500_000)]  # (tick, microseconds per beat)
    tick = 0
    for event in parsed.tracks[0] if parsed.tracks else ():
        tick += event.time
        if event.type == "set_tempo":
            if tick == 0:
                tempo_changes = [(0, event.tempo)]
            else:
                tempo_changes.append((tick, event.tempo))
    end_tick = 0
    for track in parsed.tracks:
        tick = 0
        for event in track:
            tick += event.time
            if event.type in _TIMED_EVENTS and tick > end_tick:
                end_tick = tick
    seconds, (last_tick, last_tempo) = 0.0, tempo_changes[0]
    for change_tick, tempo in tempo_changes[1:]:
        if change_tick >= end_tick:
            break
        seconds += (change_tick - last_tick) * last_tempo / 1e6 / resolution
        last_tick, last_tempo = change_tick, tempo
    seconds += (end_tick - last_tick) * last_tempo / 1e6 / resolution
    return seconds, end_tick / resolution


def _check_length(
    end_time: float, n_frames: int, max_frames: int | None, name: str | None,
    dt: float | None, beat_division: int | None,
) -> None:
    if max_frames is None or n_frames <= max_frames:
        return
    grid = f"{dt:g} s per frame" if dt is not None else f"{beat_division} frames per beat"
    raise RnnrbmError(
        f"{name or 'the MIDI file'} lasts {_duration(end_time)}, {n_frames:,} frames at {grid}: more than "
        f"the {max_frames:,} a piece may have (raise the limit, --max-frames, if it is real)."
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:.1f} s"


def too_large_message(name: str, max_bytes: int) -> str:
    """The sentence for a MIDI file over the size limit (shared with the zip reader)."""
    size = f"{max_bytes / 2**20:.4g} MiB" if max_bytes >= 2**20 else f"{max_bytes:,} bytes"
    return (
        f"{name} is larger than {size}, far more than a piece of music takes as MIDI "
        "(raise the limit, --max-member-mb, if it is real)."
    )


def midi_to_roll(
    midi: pretty_midi.PrettyMIDI | str | os.PathLike,
    *,
    dt: float | None = None,
    beat_division: int | None = None,
    transpose: str = "none",
    pedal: bool = False,
    max_frames: int | None = MAX_FRAMES,
    name: str | None = None,
) -> tuple[np.ndarray, RollInfo]:
    """Sample a MIDI file into a piano-roll on a seconds grid or on its beat grid.

    Parameters
    ----------
    midi : pretty_midi.PrettyMIDI, path or bytes
        The music (a path is read as by ``read_midi``; bytes are a file's content). Drum
        tracks are ignored; the notes of all other instruments are merged.
    dt : float, optional
        Seconds per frame; frame t is sampled at ``t * dt`` (the tutorial used 0.3).
    beat_division : int, optional
        Frames per beat, following the file's tempo map: each beat (a quarter note, the
        unit of MIDI tempo, as in the registry's ``beat_division``) is cut into this many
        equal frames; 2 gives eighth notes whatever the tempo. Not pretty_midi's
        ``get_beats()``, which counts dotted quarters in 6/8, so that 2 would give dotted
        eighths in a third of Nottingham. Give exactly one of ``dt`` and ``beat_division``.
    transpose : {"none", "c"}
        "c" shifts every pitch by the smallest interval (-6..+5 semitones) that takes the
        file's key to C major or C minor. The key is the first key signature if the file
        has one, else the best Krumhansl-Kessler match of its duration-weighted
        pitch-class profile.
    pedal : bool
        Hold notes while the sustain pedal is down, as pretty_midi's ``get_piano_roll``
        does: a note of an instrument still sounding, or struck, while that instrument's
        CC 64 is at 64 or more lasts until the pedal comes up (a pedal never released
        holds to the end of the file). Default False: notes end at their note-off.
    max_frames : int or None
        Refuse a file whose roll would have more frames than this (default
        ``MAX_FRAMES``), before allocating it; None for no limit.
    name : str, optional
        How to call the file in the error message; default its path.

    Returns
    -------
    roll : np.ndarray, shape=(T, 88), dtype=uint8
        1 where a pitch sounds at the frame's sampling instant; T counts the instants
        before ``midi.get_end_time()``.
    info : RollInfo
        Notes dropped for being out of range, the transposition and the key it came from.

    Raises RnnrbmError naming the file if it cannot be read or its roll would be longer
    than ``max_frames``.
    """
    if (dt is None) == (beat_division is None):
        raise ValueError("give exactly one of dt (seconds per frame) and beat_division (frames per beat)")
    if dt is not None and not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive number of seconds, not {dt!r}")
    if beat_division is not None and (
        isinstance(beat_division, bool) or int(beat_division) != beat_division or beat_division < 1
    ):
        raise ValueError(f"beat_division must be a positive integer, not {beat_division!r}")
    if transpose not in TRANSPOSE_MODES:
        raise ValueError(f"transpose must be one of {', '.join(TRANSPOSE_MODES)}, not {transpose!r}")
    if not isinstance(midi, pretty_midi.PrettyMIDI):
        # Measure the file from its events before pretty_midi builds its per-tick table,
        # so that a file claiming millions of frames is refused having cost nothing.
        name = _name_of(midi, name)
        parsed = _parse_midi(midi, name, None if isinstance(midi, bytes) else MAX_MIDI_BYTES)
        raw_seconds, raw_beats = _raw_extent(parsed)
        raw_frames = raw_seconds / dt if dt is not None else raw_beats * int(beat_division)
        _check_length(raw_seconds, _n_frames(raw_frames), max_frames, name, dt, beat_division)
        midi = _to_pretty_midi(parsed, name)

    end_time = midi.get_end_time()
    played = [inst for inst in midi.instruments if not inst.is_drum]
    notes = [n for inst in played for n in (_sustained(inst, end_time) if pedal else inst.notes)]
    shift, key, key_source = 0, None, None
    if transpose == "c":
        key_number, key_source = _find_key(midi, notes)
        if key_number is not None:
            key = key_name(key_number)
            shift = _shift_to_c(key_number % 12)

    if end_time <= 0:
        return np.zeros((0, N_KEYS), dtype=np.uint8), RollInfo(0, shift, key, key_source)
    if dt is not None:
        to_frame = lambda t: np.asarray(t, dtype=float) / dt  # noqa: E731
    else:
        to_frame = _beat_grid(midi, int(beat_division))
    n_frames = _n_frames(float(to_frame(end_time)))
    _check_length(end_time, n_frames, max_frames, name, dt, beat_division)

    roll = np.zeros((n_frames, N_KEYS), dtype=np.uint8)
    dropped = 0
    if notes:
        pitch = np.array([n.pitch for n in notes]) + shift
        starts = _first_frame(to_frame([n.start for n in notes]))
        ends = _first_frame(to_frame([n.end for n in notes]))
        in_range = (pitch >= LOWEST_PITCH) & (pitch <= HIGHEST_PITCH)
        dropped = int((~in_range).sum())
        for p, a, b in zip(pitch[in_range], starts[in_range], ends[in_range]):
            roll[a : min(b, n_frames), p - LOWEST_PITCH] = 1
    return roll, RollInfo(dropped, shift, key, key_source)


def roll_to_midi(roll: np.ndarray, dt: float, *, program: int = 0, velocity: int = 80) -> pretty_midi.PrettyMIDI:
    """Turn a piano-roll into a one-instrument MIDI object.

    Parameters
    ----------
    roll : np.ndarray, shape=(T, 88)
        0/1 (or boolean) frames; column k is MIDI pitch 21 + k.
    dt : float
        Seconds per frame.
    program : int
        General MIDI program number, 0..127 (0 = acoustic grand piano).
    velocity : int
        Velocity of every note, 1..127.

    A run of n consecutive on-frames of a pitch starting at frame t becomes one note from
    ``t * dt`` to ``(t + n) * dt`` seconds: a roll cannot tell a held note from repeated
    attacks, and held is what it means. The tempo is ``60 / dt`` bpm (one frame per beat),
    so every frame boundary is a whole number of ticks in a written file. A text event
    "end" at ``T * dt`` marks the end, so that ``midi_to_roll(roll_to_midi(roll,
    dt), dt=dt)`` returns ``roll`` exactly, trailing silent frames included.
    """
    roll = _check_roll(roll)
    if not MIN_WRITE_DT <= dt <= MAX_WRITE_DT:
        raise ValueError(f"dt must be {MIN_WRITE_DT:g} to {MAX_WRITE_DT:g} seconds (the range of a MIDI tempo), not {dt!r}")
    if not 0 <= program <= 127:
        raise ValueError(f"program must be in 0..127, not {program}")
    if not 1 <= velocity <= 127:
        raise ValueError(f"velocity must be in 1..127, not {velocity}")
    midi = pretty_midi.PrettyMIDI(resolution=_WRITE_RESOLUTION, initial_tempo=60.0 / dt)
    instrument = pretty_midi.Instrument(program=program)
    n_frames = roll.shape[0]
    # Pad with a silent frame on each side so every run has an onset and an offset.
    edges = np.diff(np.pad(roll.astype(np.int8), ((1, 1), (0, 0))), axis=0)
    for key in range(N_KEYS):
        onsets = np.flatnonzero(edges[:, key] == 1)
        offsets = np.flatnonzero(edges[:, key] == -1)
        for a, b in zip(onsets, offsets):
            instrument.notes.append(pretty_midi.Note(velocity, LOWEST_PITCH + key, a * dt, b * dt))
    instrument.notes.sort(key=lambda n: (n.start, n.pitch))
    if n_frames:
        midi.text_events.append(pretty_midi.Text(_END_MARKER, n_frames * dt))
    midi.instruments.append(instrument)
    return midi


def write_midi(
    roll: np.ndarray, path: str | os.PathLike, dt: float, *, program: int = 0, velocity: int = 80
) -> Path:
    """Write ``roll_to_midi(roll, dt, ...)`` to ``path`` atomically; return the path."""
    midi = roll_to_midi(roll, dt, program=program, velocity=velocity)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        midi.write(f)
    return path


# -- helpers -----------------------------------------------------------------------------


def _check_roll(roll: np.ndarray) -> np.ndarray:
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != N_KEYS:
        raise ValueError(f"a piano-roll has shape (T, {N_KEYS}), not {roll.shape}")
    if roll.size and not np.isin(roll, (0, 1)).all():
        raise ValueError("a piano-roll holds only 0 and 1")
    return roll.astype(np.uint8, copy=False)


def _first_frame(u: np.ndarray) -> np.ndarray:
    """Index of the first frame whose sampling instant is at or after frame position ``u``."""
    return np.maximum(np.ceil(np.asarray(u) - TOLERANCE), 0).astype(np.int64)


def _n_frames(u_end: float) -> int:
    """Frames whose sampling instant lies before frame position ``u_end`` (the end time)."""
    return int(max(math.ceil(u_end - TOLERANCE), 0))


def _sustained(instrument: pretty_midi.Instrument, end_time: float) -> list[pretty_midi.Note]:
    """The instrument's notes, each held until the sustain pedal is released.

    The pedal is down from a CC 64 of value >= PEDAL_THRESHOLD to the next one below it
    (or to ``end_time`` if it never comes up). A note that sounds at any moment of such an
    interval, ``start < up`` and ``end > down``, ends at ``max(end, up)``; a note released
    exactly as the pedal goes down is not caught, as in pretty_midi's ``get_piano_roll``.
    """
    pedal = sorted((c for c in instrument.control_changes if c.number == SUSTAIN_PEDAL), key=lambda c: c.time)
    downs: list[float] = []
    ups: list[float] = []
    for cc in pedal:
        if cc.value >= PEDAL_THRESHOLD and len(downs) == len(ups):
            downs.append(cc.time)
        elif cc.value < PEDAL_THRESHOLD and len(downs) > len(ups):
            ups.append(cc.time)
    if len(downs) > len(ups):
        ups.append(end_time)
    if not downs or not instrument.notes:
        return list(instrument.notes)
    downs_a, ups_a = np.array(downs), np.array(ups)
    starts = np.array([n.start for n in instrument.notes])
    ends = np.array([n.end for n in instrument.notes])
    # Intervals are disjoint and in order: the last one to go down before a note ends is
    # the only one that can hold it longest; it holds it if it is still down after the start.
    last = np.searchsorted(downs_a, ends, side="left") - 1
    up = ups_a[np.maximum(last, 0)]
    held = (last >= 0) & (up > starts)
    new_ends = np.where(held, np.maximum(ends, up), ends)
    return [
        pretty_midi.Note(n.velocity, n.pitch, n.start, float(e)) if e != n.end else n
        for n, e in zip(instrument.notes, new_ends)
    ]


def _beat_grid(midi: pretty_midi.PrettyMIDI, beat_division: int):
    """A map from seconds to frame position on the beat grid, ``beat_division`` frames a beat.

    A beat is a quarter note, MIDI's unit of tempo: the position of time t is the number
    of quarter notes elapsed by t under the file's tempo map, times ``beat_division``, so
    each beat is cut into equal frames even across a tempo change.
    """
    change_times, qpm = midi.get_tempo_changes()
    if len(change_times) == 0 or change_times[0] > 0:  # pretty_midi starts at 120 qpm
        change_times = np.concatenate([[0.0], change_times])
        qpm = np.concatenate([[120.0], qpm])
    beats_per_second = qpm / 60.0
    beats_at_change = np.concatenate([[0.0], np.cumsum(np.diff(change_times) * beats_per_second[:-1])])

    def to_frame(t):
        t = np.asarray(t, dtype=float)
        i = np.maximum(np.searchsorted(change_times, t, side="right") - 1, 0)
        return beat_division * (beats_at_change[i] + (t - change_times[i]) * beats_per_second[i])

    return to_frame


def _find_key(midi: pretty_midi.PrettyMIDI, notes: list[pretty_midi.Note]) -> tuple[int | None, str | None]:
    """The file's key as pretty_midi's key number, and where it came from."""
    if midi.key_signature_changes:
        first = min(midi.key_signature_changes, key=lambda k: k.time)
        return int(first.key_number), "signature"
    key_number = estimate_key(notes)
    return (key_number, "estimate") if key_number is not None else (None, None)


def estimate_key(notes: list[pretty_midi.Note]) -> int | None:
    """The Krumhansl-Kessler key of some notes, as a key number (0-11 major, 12-23 minor).

    The pitch-class profile weights each note by its duration in seconds; the key is the
    major or minor profile, rotated to each of the 12 tonics, that correlates best with it.
    None when there is nothing to go on: no sounding note, or all 12 pitch classes equal.
    """
    profile = np.zeros(12)
    for n in notes:
        profile[n.pitch % 12] += max(n.end - n.start, 0.0)
    if np.ptp(profile) == 0:
        return None
    scores = [
        np.corrcoef(profile, np.roll(template, tonic))[0, 1]
        for template in (_KK_MAJOR, _KK_MINOR)
        for tonic in range(12)
    ]
    return int(np.argmax(scores))


def _shift_to_c(tonic: int) -> int:
    """Semitones in -6..+5 that take pitch class ``tonic`` to C."""
    return (-tonic + 6) % 12 - 6


_PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def tonic_of(key: str) -> int:
    """The pitch class (0 = C) of a key named by its tonic: "D", "F#", "Bb", "eb" (a trailing
    " major", " minor" or "m" is allowed and changes nothing: the mode of the piece is kept)."""
    name = key.strip()
    for suffix in (" major", " minor", "m"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)].strip()
            break
    letter, accidentals = name[:1].upper(), name[1:]
    if letter not in _PITCH_CLASSES or any(a not in "#b" for a in accidentals) or len(accidentals) > 2:
        raise ValueError(f"{key!r} is not a key; name its tonic, e.g. C, F#, Bb or A minor")
    return (_PITCH_CLASSES[letter] + accidentals.count("#") - accidentals.count("b")) % 12


def transpose_from_c(roll: np.ndarray, key: str) -> tuple[np.ndarray, int]:
    """A piano-roll in C (major or minor) moved to ``key`` by the nearest shift, -6..+5 semitones
    (the inverse of preparing with transpose "c"). roll : (T, 88) 0/1. Returns the new roll and
    how many note-frames fell off the keyboard."""
    shift = -_shift_to_c(tonic_of(key))
    out = np.zeros_like(roll)
    if shift >= 0:
        out[:, shift:] = roll[:, : roll.shape[1] - shift]
        lost = int(roll[:, roll.shape[1] - shift :].sum()) if shift else 0
    else:
        out[:, :shift] = roll[:, -shift:]
        lost = int(roll[:, :-shift].sum())
    return out, lost


# -- the time grid -------------------------------------------------------------------------

DEFAULT_DT = 0.3  # seconds per frame when MIDI is sampled and no grid is given: the tutorial's
DEFAULT_TEMPO = 120.0  # beats per minute when beat-grid frames are written as MIDI
# A MIDI file's tempo is microseconds per quarter note, a 24-bit field (1..16,777,215), and a
# written frame is one beat (roll_to_midi): so a written frame lasts 1 us to 16.777215 s.
MIN_WRITE_DT, MAX_WRITE_DT = 1e-6, 0xFFFFFF / 1e6


def check_dt(dt: float, flag: str = "dt") -> float:
    """``dt`` as a float if it is a positive, finite number of seconds; else a usage error."""
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (dt > 0 and math.isfinite(dt)):
        raise RnnrbmUsageError(f"{flag} must be a positive number of seconds, not {dt}.")
    return float(dt)


def check_same_grid(what: str, meta: dict | None, model_data: dict | None, fix: str) -> None:
    """Refuse, as a usage error, rolls (``meta``: their data metadata) on another time grid than
    the one a model was trained on (``model_data``: its checkpoint's data metadata): their
    frames would mean another length of time. ``what`` names the rolls, ``fix`` says what to do."""
    mine, theirs = Grid.from_meta(meta), Grid.from_meta(model_data)
    if not mine.matches(theirs):
        raise RnnrbmUsageError(
            f"{what} is on a grid of {mine.describe()} but the model was trained on one of {theirs.describe()}; {fix}."
        )


def _writable_dt(dt: float, asked: str, fix: str) -> float:
    """``dt`` if a MIDI file can play frames that long (MIN_WRITE_DT..MAX_WRITE_DT), else
    a usage error naming what ``asked`` for it, the range, and the ``fix``."""
    if not MIN_WRITE_DT <= dt <= MAX_WRITE_DT:
        raise RnnrbmUsageError(
            f"{asked} makes frames of {dt:g} s, but a MIDI file holds frames of {MIN_WRITE_DT:g} to "
            f"{MAX_WRITE_DT} s (its tempo, in microseconds per beat, is a 24-bit number); {fix}."
        )
    return dt


@dataclass(frozen=True)
class Grid:
    """How long a frame is: ``dt`` seconds, or ``1 / beat_division`` of a beat (quarter
    note) following the tempo map; neither when a roll's grid is not known.

        >>> Grid(dt=0.3).seconds_per_frame(), Grid(beat_division=2).seconds_per_frame(tempo=90)
        (0.3, 0.3333333333333333)
    """

    dt: float | None = None
    beat_division: int | None = None

    def __post_init__(self) -> None:
        if self.dt is not None and self.beat_division is not None:
            raise RnnrbmUsageError("give a time grid in seconds (dt) or in beats (beat_division), not both.")
        if self.dt is not None:
            check_dt(self.dt)
        if self.beat_division is not None and (
            isinstance(self.beat_division, bool) or not isinstance(self.beat_division, int) or self.beat_division < 1
        ):
            raise RnnrbmUsageError(f"beat_division must be a positive number of frames per beat, not {self.beat_division}.")

    @classmethod
    def from_meta(cls, meta: dict | None) -> Grid:
        """The grid a prepared file's (or a checkpoint's) data metadata records."""
        meta = meta or {}
        if meta.get("grid") == "beats" and meta.get("beat_division"):
            return cls(beat_division=int(meta["beat_division"]))
        if meta.get("grid") == "seconds" and meta.get("dt"):
            return cls(dt=float(meta["dt"]))
        return cls()

    @property
    def kind(self) -> str | None:
        """"seconds", "beats", or None when unknown (as the metadata's "grid")."""
        return "seconds" if self.dt is not None else "beats" if self.beat_division is not None else None

    def label(self) -> str:
        """For file names: ``dt0.3``, ``beat2`` or ``native``."""
        return f"dt{self.dt:g}" if self.dt is not None else f"beat{self.beat_division}" if self.beat_division else "native"

    def describe(self) -> str:
        if self.dt is not None:
            return f"{self.dt:g} s per frame"
        if self.beat_division is not None:
            return f"{self.beat_division} frame{'s' if self.beat_division != 1 else ''} per beat"
        return "as stored"

    def seconds_per_frame(self, *, dt: float | None = None, tempo: float | None = None) -> float:
        """Seconds per frame when frames on this grid are played: ``dt`` overrides the grid;
        a beat grid is played at ``tempo`` beats per minute (default 120)."""
        if dt is not None and tempo is not None:
            raise RnnrbmUsageError("give --dt or --tempo, not both: each sets the length of a frame.")
        if dt is not None:
            return _writable_dt(check_dt(dt, "--dt"), f"--dt {dt:g}", "give --dt in that range")
        if tempo is not None and not (tempo > 0 and math.isfinite(tempo)):
            raise RnnrbmUsageError(f"--tempo must be a positive number of beats per minute, not {tempo}.")
        if self.beat_division is not None:
            bpm = tempo if tempo is not None else DEFAULT_TEMPO
            low, high = 60.0 / MAX_WRITE_DT / self.beat_division, 60.0 / MIN_WRITE_DT / self.beat_division
            return _writable_dt(60.0 / bpm / self.beat_division, f"--tempo {bpm:g} at {self.describe()}",
                                f"give --tempo in {low:.6g}..{high:.6g}")
        if tempo is not None:
            raise RnnrbmUsageError(
                "--tempo applies to a model trained on a beat grid; these frames are "
                f"{self.dt} seconds long: use --dt to change that."
            )
        if self.dt is not None:
            return _writable_dt(self.dt, f"the recorded grid of {self.describe()}", "give --dt in that range")
        raise RnnrbmUsageError(
            f"no time grid is recorded; give the seconds per frame with --dt (the tutorial used {DEFAULT_DT})."
        )

    def matches(self, other: Grid) -> bool:
        """Whether frames on this grid and on ``other`` mean the same time (True when either is unknown)."""
        if self.kind is None or other.kind is None:
            return True
        return self.beat_division == other.beat_division and (
            self.dt == other.dt or (self.dt is not None and other.dt is not None and math.isclose(self.dt, other.dt))
        )

    def axis(self) -> tuple[float, str]:
        """Frame length and unit for a time axis: (1/beat_division, "beats") or (dt, "s")."""
        if self.beat_division is not None:
            return 1.0 / self.beat_division, "beats"
        return (self.dt if self.dt is not None else DEFAULT_DT), "s"
