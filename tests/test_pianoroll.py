"""pianoroll.py: sampling MIDI onto a grid, writing rolls as MIDI, transposition.

Inputs are built inline with pretty_midi (or mido, for tempo maps) and the expected rolls
are written out by hand: row t is frame t, and each test names the few pitches it uses.
"""

from __future__ import annotations

import io
import math

import mido
import numpy as np
import pretty_midi
import pytest

from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.pianoroll import (
    LOWEST_PITCH,
    N_KEYS,
    RollInfo,
    key_name,
    midi_to_roll,
    read_midi,
    roll_to_midi,
    write_midi,
)

C4, D4, E4, G4 = 60, 62, 64, 67


def make_midi(*notes: tuple[int, float, float], drums: list[tuple[int, float, float]] = (), key: int | None = None):
    """A PrettyMIDI at 120 bpm with one piano holding ``notes`` = (pitch, start s, end s)."""
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(90, p, s, e) for p, s, e in notes]
    midi.instruments.append(piano)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes = [pretty_midi.Note(90, p, s, e) for p, s, e in drums]
        midi.instruments.append(kit)
    if key is not None:
        midi.key_signature_changes.append(pretty_midi.KeySignature(key, 0.0))
    return midi


def roll_of(columns: dict[int, list[int]]) -> np.ndarray:
    """A full (T, 88) roll from a hand-written column per pitch: {pitch: [0/1 per frame]}."""
    lengths = {len(c) for c in columns.values()}
    assert len(lengths) == 1, "every column must have the same number of frames"
    roll = np.zeros((lengths.pop(), N_KEYS), np.uint8)
    for pitch, column in columns.items():
        roll[:, pitch - LOWEST_PITCH] = column
    return roll


def notes_of(midi: pretty_midi.PrettyMIDI) -> list[tuple[int, float, float]]:
    return sorted((n.pitch, round(n.start, 9), round(n.end, 9)) for i in midi.instruments for n in i.notes)


def reread(midi: pretty_midi.PrettyMIDI) -> pretty_midi.PrettyMIDI:
    """The MIDI object as it comes back from a file: times quantised to ticks and tempo."""
    buffer = io.BytesIO()
    midi.write(buffer)
    return read_midi(buffer.getvalue())


# -- the seconds grid --------------------------------------------------------------------


def test_frames_are_sampled_at_their_start_like_the_tutorial():
    # dt = 0.3: sampling instants 0.0, 0.3, 0.6, 0.9; the file ends at 1.0 -> 4 frames.
    midi = make_midi(
        (C4, 0.0, 0.3),  # exactly frame 0
        (D4, 0.2, 0.7),  # sounds at 0.3 and 0.6
        (E4, 0.31, 0.59),  # between two instants: never sampled
        (G4, 0.6, 1.0),  # 0.6 and 0.9
    )
    roll, info = midi_to_roll(midi, dt=0.3)
    expected = roll_of({
        C4: [1, 0, 0, 0],
        D4: [0, 1, 1, 0],
        E4: [0, 0, 0, 0],
        G4: [0, 0, 1, 1],
    })
    assert roll.dtype == np.uint8 and roll.shape == (4, 88)
    np.testing.assert_array_equal(roll, expected)
    assert info == RollInfo(dropped_notes=0, transpose_semitones=0, key=None, key_source=None)


def test_the_tutorials_ceil_rule_on_float_boundaries():
    # 0.1 + 0.2 = 0.30000000000000004 and 3 * 0.3 = 0.8999999999999999: rounding must not
    # push a note into the next frame or lose its first one.
    midi = make_midi((C4, 0.1 + 0.2, 3 * 0.3), (D4, 0.0, 0.1 + 0.2))
    roll, _ = midi_to_roll(midi, dt=0.3)
    np.testing.assert_array_equal(roll, roll_of({C4: [0, 1, 1], D4: [1, 0, 0]}))


@pytest.mark.parametrize(
    ("end", "frames"),
    # 0.9000001: a hair past the instant 0.9 is rounding, not a note sounding there.
    [(0.9, 3), (0.9000001, 3), (0.91, 4), (1.0, 4), (1.2, 4), (1.21, 5)],
)
def test_roll_length_is_ceil_of_end_over_dt(end, frames):
    roll, _ = midi_to_roll(make_midi((C4, 0.0, end)), dt=0.3)
    assert roll.shape == (frames, N_KEYS)
    assert roll[:, C4 - LOWEST_PITCH].all()


def test_empty_midi_gives_an_empty_roll():
    roll, info = midi_to_roll(pretty_midi.PrettyMIDI(), dt=0.3)
    assert roll.shape == (0, N_KEYS) and roll.dtype == np.uint8
    assert info.dropped_notes == 0


def test_drums_are_excluded():
    midi = make_midi((C4, 0.0, 0.6), drums=[(36, 0.0, 0.3), (C4, 0.3, 0.6)])
    roll, info = midi_to_roll(midi, dt=0.3)
    np.testing.assert_array_equal(roll, roll_of({C4: [1, 1]}))
    assert info.dropped_notes == 0  # drums are not "dropped": they are not pitched notes


def test_notes_outside_the_piano_are_dropped_and_counted():
    midi = make_midi((20, 0.0, 0.3), (21, 0.0, 0.3), (108, 0.3, 0.6), (109, 0.3, 0.6), (127, 0.0, 0.6))
    roll, info = midi_to_roll(midi, dt=0.3)
    expected = np.zeros((2, N_KEYS), np.uint8)
    expected[0, 0] = 1  # A0 = MIDI 21 is column 0
    expected[1, 87] = 1  # C8 = MIDI 108 is column 87
    np.testing.assert_array_equal(roll, expected)
    assert info.dropped_notes == 3


def test_overlapping_notes_of_two_instruments_merge():
    midi = make_midi((C4, 0.0, 0.6))
    violin = pretty_midi.Instrument(program=40)
    violin.notes = [pretty_midi.Note(90, C4, 0.3, 1.2)]
    midi.instruments.append(violin)
    roll, _ = midi_to_roll(midi, dt=0.3)
    np.testing.assert_array_equal(roll, roll_of({C4: [1, 1, 1, 1]}))


def test_a_grid_is_required_and_unique():
    midi = make_midi((C4, 0.0, 1.0))
    with pytest.raises(ValueError, match="exactly one"):
        midi_to_roll(midi)
    with pytest.raises(ValueError, match="exactly one"):
        midi_to_roll(midi, dt=0.3, beat_division=2)
    with pytest.raises(ValueError, match="transpose"):
        midi_to_roll(midi, dt=0.3, transpose="d")


# -- the beat grid -----------------------------------------------------------------------


def test_beat_grid_at_120_bpm_has_frames_every_quarter_second():
    # 120 bpm, 2 frames per beat: instants 0, 0.25, 0.5, ...; the file ends at 2.0 s.
    midi = make_midi((C4, 0.0, 0.5), (E4, 0.25, 0.75), (G4, 1.5, 2.0))
    roll, _ = midi_to_roll(midi, beat_division=2)
    expected = roll_of({
        C4: [1, 1, 0, 0, 0, 0, 0, 0],
        E4: [0, 1, 1, 0, 0, 0, 0, 0],
        G4: [0, 0, 0, 0, 0, 0, 1, 1],
    })
    np.testing.assert_array_equal(roll, expected)
    # The same as a seconds grid of 0.25 s at this tempo.
    np.testing.assert_array_equal(midi_to_roll(midi, dt=0.25)[0], expected)


def _mido_file(tempo_changes, notes, *, resolution=480, time_signature=(4, 4)) -> bytes:
    """A type-1 MIDI file: tempo_changes = [(tick, bpm)], notes = [(pitch, start tick, end tick)]."""
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("time_signature", numerator=time_signature[0],
                                      denominator=time_signature[1], time=0))
    events = [(tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for tick, bpm in tempo_changes]
    _append_absolute(conductor, events)
    track = mido.MidiTrack()
    events = []
    for pitch, start, end in notes:
        events.append((start, mido.Message("note_on", note=pitch, velocity=90)))
        events.append((end, mido.Message("note_off", note=pitch, velocity=0)))
    _append_absolute(track, events)
    buffer = io.BytesIO()
    mido.MidiFile(type=1, ticks_per_beat=resolution, tracks=[conductor, track]).save(file=buffer)
    return buffer.getvalue()


def _append_absolute(track, events):
    now = 0
    for tick, message in sorted(events, key=lambda e: e[0]):
        track.append(message.copy(time=tick - now))
        now = tick


def test_beat_grid_follows_a_tempo_change():
    # 120 bpm for two beats (1.0 s), then 60 bpm: frames are 0.25 s long, then 0.5 s.
    # Instants: 0, .25, .5, .75 | 1.0, 1.5, 2.0, 2.5; the last note ends at beat 4 = 3.0 s.
    data = _mido_file(
        [(0, 120), (960, 60)],
        [(C4, 0, 480), (D4, 960, 1440), (E4, 1440, 1680), (G4, 1680, 1920)],
    )
    midi = read_midi(data)
    assert notes_of(midi) == [(C4, 0.0, 0.5), (D4, 1.0, 2.0), (E4, 2.0, 2.5), (G4, 2.5, 3.0)]
    roll, _ = midi_to_roll(midi, beat_division=2)
    expected = roll_of({
        C4: [1, 1, 0, 0, 0, 0, 0, 0],
        D4: [0, 0, 0, 0, 1, 1, 0, 0],
        E4: [0, 0, 0, 0, 0, 0, 1, 0],
        G4: [0, 0, 0, 0, 0, 0, 0, 1],
    })
    np.testing.assert_array_equal(roll, expected)
    # On a seconds grid the slow part gets twice the frames: 3.0 s / 0.25 s = 12.
    assert midi_to_roll(midi, dt=0.25)[0].shape == (12, N_KEYS)


def test_beat_grid_in_six_eight_is_still_eighth_notes():
    # pretty_midi's get_beats() would count dotted quarters here; a beat_division of 2
    # means eighth notes, as in the registry, whatever the metre.
    data = _mido_file([(0, 120)], [(C4, 0, 240), (D4, 240, 720), (E4, 720, 1440)], time_signature=(6, 8))
    roll, _ = midi_to_roll(read_midi(data), beat_division=2)
    expected = roll_of({C4: [1, 0, 0, 0, 0, 0], D4: [0, 1, 1, 0, 0, 0], E4: [0, 0, 0, 1, 1, 1]})
    np.testing.assert_array_equal(roll, expected)


def test_triplet_grid_on_a_220_tick_file_keeps_notes_on_their_frames():
    # 220 ticks a beat cut in 3: notes on ticks 73 and 147 are a third of a tick early or
    # late against the grid; both still land on frames 1 and 2.
    data = _mido_file([(0, 120)], [(C4, 0, 73), (D4, 73, 147), (E4, 147, 220)], resolution=220)
    roll, _ = midi_to_roll(read_midi(data), beat_division=3)
    np.testing.assert_array_equal(roll, roll_of({C4: [1, 0, 0], D4: [0, 1, 0], E4: [0, 0, 1]}))


# -- transposition ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_number", "name", "shift"),
    [
        (2, "D major", -2),
        (7, "G major", 5),
        (6, "Gb major", -6),  # the tritone goes down: shifts are -6..+5
        (5, "F major", -5),
        (12 + 9, "A minor", 3),
        (12 + 11, "B minor", 1),
        (0, "C major", 0),
    ],
)
def test_transposition_from_the_key_signature(key_number, name, shift):
    midi = make_midi((D4, 0.0, 0.3), (G4, 0.3, 0.6), key=key_number)
    roll, info = midi_to_roll(midi, dt=0.3, transpose="c")
    assert info == RollInfo(dropped_notes=0, transpose_semitones=shift, key=name, key_source="signature")
    np.testing.assert_array_equal(roll, roll_of({D4 + shift: [1, 0], G4 + shift: [0, 1]}))


def test_d_major_is_moved_down_a_tone():
    midi = make_midi((62, 0.0, 0.3), (66, 0.0, 0.3), (69, 0.3, 0.6), key=2)  # D F# A
    roll, info = midi_to_roll(midi, dt=0.3, transpose="c")
    np.testing.assert_array_equal(roll, roll_of({60: [1, 0], 64: [1, 0], 67: [0, 1]}))  # C E G
    assert info.transpose_semitones == -2 and info.key == "D major"


def test_without_transposition_the_key_is_not_looked_at():
    midi = make_midi((D4, 0.0, 0.3), key=2)
    roll, info = midi_to_roll(midi, dt=0.3)
    np.testing.assert_array_equal(roll, roll_of({D4: [1]}))
    assert info.key is None and info.key_source is None and info.transpose_semitones == 0


def test_transposition_by_estimate_without_a_key_signature():
    # An E-flat major cadence, I - IV - V7 - I, with no key signature: Krumhansl-Kessler
    # finds Eb major and the music moves down 3 semitones.
    eb_major = [
        (63, 0, 2), (67, 0, 2), (70, 0, 2),
        (68, 2, 3), (72, 2, 3), (75, 2, 3),
        (70, 3, 4), (74, 3, 4), (65, 3, 4),
        (63, 4, 6), (67, 4, 6), (70, 4, 6),
    ]
    roll, info = midi_to_roll(make_midi(*eb_major), dt=1.0, transpose="c")
    assert (info.key, info.key_source, info.transpose_semitones) == ("Eb major", "estimate", -3)
    np.testing.assert_array_equal(roll, midi_to_roll(make_midi(*[(p - 3, s, e) for p, s, e in eb_major]), dt=1.0)[0])


def test_minor_key_estimate():
    # An A minor tune with its leading note G#: A minor, shifted up 3 to C minor.
    a_minor = [(57, 0, 1), (60, 1, 1.5), (64, 1.5, 2), (69, 2, 3), (68, 3, 3.5), (71, 3.5, 4),
               (72, 4, 4.5), (69, 4.5, 6), (64, 6, 6.5), (57, 6.5, 8)]
    _, info = midi_to_roll(make_midi(*a_minor), dt=0.5, transpose="c")
    assert (info.key, info.key_source, info.transpose_semitones) == ("A minor", "estimate", 3)


def test_transposition_can_push_notes_out_of_range():
    midi = make_midi((105, 0.0, 0.3), (C4, 0.0, 0.3), key=7)  # G major: up 5, 105 -> 110
    roll, info = midi_to_roll(midi, dt=0.3, transpose="c")
    assert info.dropped_notes == 1
    np.testing.assert_array_equal(roll, roll_of({C4 + 5: [1]}))


def test_key_names():
    assert [key_name(k) for k in (0, 1, 11, 12, 13, 23)] == [
        "C major", "Db major", "B major", "C minor", "C# minor", "B minor",
    ]


# -- roll -> MIDI ------------------------------------------------------------------------


def test_roll_to_midi_notes_by_hand():
    roll = roll_of({
        C4: [1, 1, 0, 1],  # held two frames, then re-struck after a rest
        E4: [0, 1, 1, 1],  # lasts to the last frame
        G4: [1, 0, 0, 0],  # at frame 0
    })
    midi = roll_to_midi(roll, dt=0.5, program=40, velocity=70)
    assert len(midi.instruments) == 1
    (violin,) = midi.instruments
    assert violin.program == 40 and not violin.is_drum
    assert notes_of(midi) == [(C4, 0.0, 1.0), (C4, 1.5, 2.0), (E4, 0.5, 2.0), (G4, 0.0, 0.5)]
    assert {n.velocity for n in violin.notes} == {70}
    assert midi.get_end_time() == pytest.approx(2.0)


def test_adjacent_on_frames_are_one_held_note():
    # Two attacks in a row cannot be told from one held note in a roll: it becomes one.
    roll = roll_of({C4: [1, 1, 1]})
    assert notes_of(roll_to_midi(roll, dt=0.3)) == [(C4, 0.0, 0.9)]


ROUND_TRIP_ROLLS = {
    "edges": roll_of({C4: [1, 0, 0, 1], E4: [0, 1, 1, 1], G4: [1, 1, 0, 0]}),
    "trailing silence": roll_of({C4: [1, 0, 0, 0, 0]}),
    "leading silence": roll_of({C4: [0, 0, 1]}),
    "all silent": np.zeros((4, N_KEYS), np.uint8),
    "no frames": np.zeros((0, N_KEYS), np.uint8),
    "every key at once": np.ones((2, N_KEYS), np.uint8),
    "random": (np.random.default_rng(0).random((500, N_KEYS)) < 0.1).astype(np.uint8),
}


@pytest.mark.parametrize("dt", [0.3, 0.25, 0.123456789, 0.01])
@pytest.mark.parametrize("name", list(ROUND_TRIP_ROLLS))
def test_round_trip_roll_midi_roll_is_the_identity(name, dt):
    roll = ROUND_TRIP_ROLLS[name]
    midi = roll_to_midi(roll, dt)
    back, info = midi_to_roll(midi, dt=dt)
    np.testing.assert_array_equal(back, roll)
    assert back.dtype == np.uint8 and info.dropped_notes == 0
    # ... and through a MIDI file, whose times are ticks and a whole-microsecond tempo.
    np.testing.assert_array_equal(midi_to_roll(reread(midi), dt=dt)[0], roll)


def test_round_trip_through_a_long_file():
    # Tick and tempo rounding must not drift a note into another frame over 100 minutes.
    roll = (np.random.default_rng(1).random((20_000, N_KEYS)) < 0.003).astype(np.uint8)
    np.testing.assert_array_equal(midi_to_roll(reread(roll_to_midi(roll, 0.3)), dt=0.3)[0], roll)


def test_roll_to_midi_checks_its_input():
    with pytest.raises(ValueError, match=r"shape \(T, 88\)"):
        roll_to_midi(np.zeros((3, 128), np.uint8), 0.3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        roll_to_midi(np.full((3, 88), 2, np.uint8), 0.3)
    with pytest.raises(ValueError, match="dt"):
        roll_to_midi(np.zeros((3, 88), np.uint8), 0.0)


def test_write_midi_round_trip(tmp_path):
    roll = ROUND_TRIP_ROLLS["edges"]
    path = write_midi(roll, tmp_path / "out.mid", 0.3)
    assert path == tmp_path / "out.mid"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mid"]
    np.testing.assert_array_equal(midi_to_roll(path, dt=0.3)[0], roll)
    np.testing.assert_array_equal(midi_to_roll(str(path), dt=0.3)[0], roll)


def test_write_midi_leaves_nothing_behind_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.mid"
    target.write_bytes(b"the old file")

    def broken_write(self, f):
        f.write(b"MThd half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pretty_midi.PrettyMIDI, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_midi(ROUND_TRIP_ROLLS["edges"], target, 0.3)
    assert target.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mid"]


# -- reading files -----------------------------------------------------------------------


def test_read_midi_refuses_what_is_not_midi(tmp_path):
    with pytest.raises(RnnrbmError, match="notes.mid is not a readable MIDI file"):
        read_midi(b"just some text\n", name="notes.mid")
    good = io.BytesIO()
    make_midi((C4, 0.0, 1.0)).write(good)
    with pytest.raises(RnnrbmError, match="cut.mid is not a readable MIDI file"):
        read_midi(good.getvalue()[:30], name="cut.mid")
    with pytest.raises(RnnrbmError, match="no such file"):
        read_midi(tmp_path / "missing.mid")


def test_midi_to_roll_reads_a_path(tmp_path):
    path = tmp_path / "tune.mid"
    make_midi((C4, 0.0, 0.6)).write(str(path))
    roll, _ = midi_to_roll(path, dt=0.3)
    np.testing.assert_array_equal(roll, roll_of({C4: [1, 1]}))
    assert math.isclose(read_midi(path).get_end_time(), 0.6)


# -- the sustain pedal -------------------------------------------------------------------


def pedalled(*notes, pedal: list[tuple[float, int]], program: int = 0) -> pretty_midi.Instrument:
    """An instrument holding ``notes`` = (pitch, start s, end s) and CC 64 events (time s, value)."""
    instrument = pretty_midi.Instrument(program=program)
    instrument.notes = [pretty_midi.Note(90, p, s, e) for p, s, e in notes]
    instrument.control_changes = [pretty_midi.ControlChange(64, v, t) for t, v in pedal]
    return instrument


def test_the_pedal_holds_notes_until_it_is_released():
    # dt = 0.5: instants 0, 0.5, ..., 2.5; the pedal is down from 0.25 to 2.0.
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    midi.instruments.append(pedalled(
        (C4, 0.0, 0.5),  # sounding as the pedal goes down: held to 2.0
        (D4, 0.0, 0.25),  # released exactly as it goes down: not caught
        (E4, 1.0, 1.5),  # struck while it is down: held to 2.0
        (G4, 2.5, 3.0),  # after it comes up: as played
        pedal=[(0.25, 127), (1.2, 100), (2.0, 0)],  # 100 is still down
    ))
    # Another instrument without a pedal of its own is not held by this one.
    midi.instruments.append(pedalled((A4 := 69, 0.0, 0.5), pedal=[], program=40))
    held, _ = midi_to_roll(midi, dt=0.5, pedal=True)
    expected = roll_of({
        C4: [1, 1, 1, 1, 0, 0],
        D4: [1, 0, 0, 0, 0, 0],
        E4: [0, 0, 1, 1, 0, 0],
        G4: [0, 0, 0, 0, 0, 1],
        A4: [1, 0, 0, 0, 0, 0],
    })
    np.testing.assert_array_equal(held, expected)
    as_played, _ = midi_to_roll(midi, dt=0.5)  # the default: notes end at note-off
    np.testing.assert_array_equal(as_played, roll_of({
        C4: [1, 0, 0, 0, 0, 0],
        D4: [1, 0, 0, 0, 0, 0],
        E4: [0, 0, 1, 0, 0, 0],
        G4: [0, 0, 0, 0, 0, 1],
        A4: [1, 0, 0, 0, 0, 0],
    }))


def test_a_pedal_never_released_holds_to_the_end():
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    midi.instruments.append(pedalled((C4, 0.5, 1.0), (G4, 2.5, 3.0), pedal=[(0.75, 127)]))
    roll, _ = midi_to_roll(midi, dt=0.5, pedal=True)
    np.testing.assert_array_equal(roll, roll_of({C4: [0, 1, 1, 1, 1, 1], G4: [0, 0, 0, 0, 0, 1]}))


def test_the_pedal_agrees_with_pretty_midis_piano_roll():
    # Times on the frame boundaries, where pretty_midi's own roll (which floors every time
    # to a column) and ours sample the same instants.
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    midi.instruments.append(pedalled(
        (C4, 0.0, 1.0), (D4, 0.0, 0.5), (E4, 1.0, 1.5), (G4, 2.5, 3.0), (C4 + 12, 3.0, 3.5),
        pedal=[(0.5, 127), (2.0, 0), (3.0, 64), (4.0, 0)],
    ))
    midi = reread(midi)  # through a file: CC events as a reader sees them
    ours, _ = midi_to_roll(midi, dt=0.5, pedal=True)
    theirs = (midi.get_piano_roll(fs=2, pedal_threshold=64)[LOWEST_PITCH : LOWEST_PITCH + N_KEYS].T > 0)
    np.testing.assert_array_equal(ours, theirs.astype(np.uint8))
    assert ours[:, C4 + 12 - LOWEST_PITCH].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]  # held from 3.5 to 4.0


# -- limits ------------------------------------------------------------------------------


def test_a_roll_longer_than_max_frames_is_refused():
    midi = make_midi((C4, 0.0, 3.0))  # 10 frames at 0.3 s
    assert len(midi_to_roll(midi, dt=0.3, max_frames=10)[0]) == 10
    with pytest.raises(RnnrbmError) as e:
        midi_to_roll(midi, dt=0.3, max_frames=9, name="tune.mid")
    assert str(e.value) == (
        "tune.mid lasts 3.0 s, 10 frames at 0.3 s per frame: more than the 9 a piece may have "
        "(raise the limit, --max-frames, if it is real)."
    )
    assert len(midi_to_roll(midi, dt=0.3, max_frames=None)[0]) == 10


def test_read_midi_refuses_a_file_over_the_size_limit(tmp_path):
    path = tmp_path / "big.mid"
    good = io.BytesIO()
    make_midi((C4, 0.0, 1.0)).write(good)
    path.write_bytes(good.getvalue())
    size = len(good.getvalue())
    assert read_midi(path, max_bytes=size).get_end_time() == 1.0
    with pytest.raises(RnnrbmError, match=rf"big.mid is larger than {size - 1} bytes, far more than a piece"):
        read_midi(path, max_bytes=size - 1)
    with pytest.raises(RnnrbmError, match="is larger than"):
        read_midi(good.getvalue(), max_bytes=size - 1)


# -- files of high resolution ------------------------------------------------------------


def ten_minutes(ticks_per_beat: int, *, humanised: bool = False) -> bytes:
    """Ten minutes of music as a notation program exports it: 600 beats at 120 bpm, then 500
    at 100 bpm; a chord on every beat, and a bar of triplet eighths every 8 beats. With
    ``humanised`` a controller sits one tick after the start, so that no factor divides every tick."""
    events = []  # (beat as a fraction (numerator, denominator), message)
    for beat in range(1100):
        if beat % 8 == 7:
            for third in range(3):
                pitch = (72, 74, 76)[third]
                events.append(((3 * beat + third, 3), mido.Message("note_on", note=pitch, velocity=80)))
                events.append(((3 * beat + third + 1, 3), mido.Message("note_off", note=pitch, velocity=0)))
        else:
            for pitch in (48, 52, 55) if beat % 2 else (53, 57, 60):
                events.append(((beat, 1), mido.Message("note_on", note=pitch, velocity=80)))
                events.append(((beat + 1, 1), mido.Message("note_off", note=pitch, velocity=0)))
    events.append(((600, 1), mido.MetaMessage("set_tempo", tempo=600_000)))
    if humanised:
        events.append(((1, ticks_per_beat), mido.Message("control_change", control=7, value=100)))

    def tick(beat):
        return beat[0] * ticks_per_beat // beat[1]

    # note_off before note_on at the same tick, as a file writer orders them
    events.sort(key=lambda e: (tick(e[0]), e[1].type != "set_tempo", e[1].type == "note_on"))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)])
    last = 0
    for beat, message in events:
        at = tick(beat)
        track.append(message.copy(time=at - last))
        last = at
    midi = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("humanised", [False, True], ids=["on-a-grid", "humanised"])
@pytest.mark.parametrize("grid", [{"dt": 0.3}, {"beat_division": 6}], ids=["dt", "beats"])
def test_a_file_at_10080_ticks_per_beat_reads_as_the_same_music_at_480(humanised, grid):
    fine = ten_minutes(10080, humanised=humanised)
    # as it is, pretty_midi takes these 11 million ticks for a corrupt file
    with pytest.raises(ValueError, match="it is likely corrupt"):
        pretty_midi.PrettyMIDI(io.BytesIO(fine))
    roll, _ = midi_to_roll(fine, **grid)
    expected, _ = midi_to_roll(ten_minutes(480), **grid)
    frames = 2000 if "dt" in grid else 6600  # 600 s at 0.3 s; 1100 beats of 6 frames
    assert roll.shape == expected.shape == (frames, N_KEYS)
    assert (roll == expected).all()
    assert roll[:, 72 - LOWEST_PITCH].sum() > 0  # the triplets are there
    midi = read_midi(fine)
    assert midi.get_end_time() == pytest.approx(600.0, abs=1e-9)
    # on its grid the file is divided exactly (by 2: 5,040 ticks a beat); rounded otherwise
    assert midi.resolution == (5040 if not humanised else 9090)
