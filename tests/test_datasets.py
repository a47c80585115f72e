"""datasets.py and `rnnrbm prepare`: readers, the prepared .npz, and the real files' figures.

Tests on the real files use the read-only mirror (fixture ``shared_datasets``) and skip
with a reason when it is absent; everything else builds its inputs in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import scipy.io
from click.testing import CliRunner

from rnnrbm_cli import prepared
from rnnrbm_cli.cli import cli
from rnnrbm_cli.datasets import (
    load_prepared,
    prepare,
    prepared_path,
    read_mat,
    read_pickle,
    resolve_data,
    write_prepared,
)
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.pianoroll import midi_to_roll, read_midi

from conftest import midi_bytes, one_sentence_error, run

SPLITS = ("train", "valid", "test")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache and no mirror unless it asks for one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RNNRBM_CACHE_DIR", str(cache))
    monkeypatch.delenv("RNNRBM_MIRROR", raising=False)
    return cache


@pytest.fixture
def mirror(shared_datasets, monkeypatch) -> Path:
    """The real files, as the mirror fetch copies from."""
    monkeypatch.setenv("RNNRBM_MIRROR", str(shared_datasets))
    return shared_datasets


GOOD = midi_bytes((60, 0.0, 0.6), (64, 0.3, 0.9))  # 3 frames at dt = 0.3


def summary(result) -> dict:
    return {s: (v["sequences"], v["frames"]) for s, v in result.splits.items()}


def no_partial_files(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.rglob("*"))


# -- the real files ----------------------------------------------------------------------


def test_nottingham_rolls(mirror, isolated_cache):
    result = prepare("nottingham", progress=False)
    assert result.path == isolated_cache / "prepared" / "nottingham-rolls-beat2-c.npz"
    assert summary(result) == {"train": (694, 176_561), "valid": (173, 45_513), "test": (170, 44_463)}
    data = load_prepared(result.path)
    assert data.summary() == result.splits
    assert data.meta == result.meta
    assert data.meta | {"created_by": None} == {
        "format": 1,
        "dataset": "nottingham",
        "source_file": "Nottingham.mat",
        "source_sha256": "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea",
        "source_kind": "rolls",
        "grid": "beats",
        "dt": None,
        "beat_division": 2,
        "transpose": "c",
        "pedal": None,
        "split": None,
        "skipped_files": [],
        "dropped_notes": 0,
        "created_by": None,
        # the digest of the rolls themselves (its definition is checked in the layout test)
        "content_sha256": "d47468076a97a6da32a4f95c31f06f326d1035a04a9ac381215a0fffbb9e6e38",
    }
    first = data.splits["train"][0]
    assert first.dtype == np.uint8 and first.shape == (192, 88)
    # The pitch range SOURCES.md gives for Nottingham: MIDI 31..93.
    used = np.flatnonzero(np.concatenate([np.concatenate(v) for v in data.splits.values()]).any(axis=0))
    assert (used.min() + 21, used.max() + 21) == (31, 93)


def test_jsb_pickle_matches_the_mat_exactly(mirror):
    from_pickle = prepare(mirror / "JSB Chorales.pickle", progress=False)
    from_mat = prepare("jsb-chorales", progress=False)
    expected = {"train": (229, 13_807), "valid": (76, 4_602), "test": (77, 4_725)}
    assert summary(from_pickle) == summary(from_mat) == expected
    # The path is recognised by its sha256 as the registry's file.
    assert from_pickle.path.name == "jsb-chorales-pickle-beat1-c.npz"
    assert from_pickle.meta["dataset"] == "jsb-chorales" and from_pickle.meta["beat_division"] == 1
    a, b = load_prepared(from_pickle.path), load_prepared(from_mat.path)
    for split in SPLITS:
        assert len(a.splits[split]) == len(b.splits[split])
        for x, y in zip(a.splits[split], b.splits[split]):
            np.testing.assert_array_equal(x, y)
    # Two files, two sources, one content: the same digest of the rolls.
    assert a.meta["source_kind"] != b.meta["source_kind"]
    assert a.meta["content_sha256"] == b.meta["content_sha256"]


def test_original_pickle_asks_only_for_numpy_scalars(shared_datasets):
    splits, dropped = read_pickle(shared_datasets / "JSB Chorales.pickle")
    assert dropped == 0
    assert [len(splits[s]) for s in SPLITS] == [229, 76, 77]


def test_nottingham_midi_zip_at_the_tutorials_dt(mirror, tmp_path):
    out = tmp_path / "notts.npz"
    result = prepare(mirror / "Nottingham.zip", dt=0.3, out=out, progress=False)
    assert result.path == out
    assert summary(result) == {"train": (694, 147_737), "valid": (173, 38_111), "test": (170, 37_232)}
    assert result.meta["grid"] == "seconds" and result.meta["dt"] == 0.3
    assert result.meta["transpose"] == "none" and result.skipped_files == []


def tutorial_midiread(midi: pretty_midi.PrettyMIDI, dt: float) -> np.ndarray:
    """The Theano tutorial's midiread, restated: frames [ceil(start/dt), ceil(end/dt))."""
    notes = [n for i in midi.instruments for n in i.notes]
    roll = np.zeros((int(np.ceil(max(n.end for n in notes) / dt)), 88), np.uint8)
    for n in notes:
        roll[int(np.ceil(n.start / dt)) : int(np.ceil(n.end / dt)), n.pitch - 21] = 1
    return roll


def test_nottingham_midi_sampled_as_the_tutorial_does(shared_datasets):
    with zipfile.ZipFile(shared_datasets / "Nottingham.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".mid"))[::50]
        for name in names:
            midi = read_midi(z.read(name), name=name)
            np.testing.assert_array_equal(midi_to_roll(midi, dt=0.3)[0], tutorial_midiread(midi, 0.3), err_msg=name)


# -- readers -----------------------------------------------------------------------------


def test_read_mat_of_hand_built_rolls(tmp_path):
    a = np.zeros((3, 88), np.uint8)
    a[0, 39] = a[2, 0] = 1
    b = np.ones((2, 88), np.uint8)
    cells = {}
    for key, rolls in (("traindata", [a, b]), ("validdata", [b]), ("testdata", [a])):
        cell = np.empty((1, len(rolls)), dtype=object)
        for i, r in enumerate(rolls):
            cell[0, i] = r
        cells[key] = cell
    scipy.io.savemat(tmp_path / "tiny.mat", cells)
    splits = read_mat(tmp_path / "tiny.mat")
    assert [len(splits[s]) for s in SPLITS] == [2, 1, 1]
    np.testing.assert_array_equal(splits["train"][0], a)
    np.testing.assert_array_equal(splits["valid"][0], b)


def test_read_mat_refuses_a_mat_without_the_splits(tmp_path):
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.zeros(3)})
    with pytest.raises(RnnrbmError, match="has no cell array 'traindata'"):
        read_mat(tmp_path / "other.mat")
    (tmp_path / "text.mat").write_text("not matlab")
    with pytest.raises(RnnrbmError, match="not a readable MATLAB"):
        read_mat(tmp_path / "text.mat")


def test_read_pickle_of_pitch_tuples(tmp_path):
    doc = {
        "train": [[(60, 64), (), (np.int64(21), np.int64(108))]],
        "valid": [[(20, 60)]],  # 20 is below the piano: dropped and counted
        "test": [],
    }
    path = tmp_path / "tiny.pickle"
    # Protocol 4: Python 3 writes numpy scalars with protocol 2 via _codecs.encode, which
    # the reader refuses; the original Python 2 files need only numpy's own globals.
    path.write_bytes(pickle.dumps(doc, protocol=4))
    splits, dropped = read_pickle(path)
    expected = np.zeros((3, 88), np.uint8)
    expected[0, [39, 43]] = 1
    expected[2, [0, 87]] = 1
    np.testing.assert_array_equal(splits["train"][0], expected)
    assert splits["valid"][0].nonzero()[1].tolist() == [39]
    assert splits["test"] == [] and dropped == 1


def _os_system_pickle(marker: Path) -> bytes:
    # Protocol 0 by hand: GLOBAL os.system, a tuple holding the command, REDUCE.
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("payload", "asks_for"),
    [
        (lambda m: _os_system_pickle(m), "os.system"),
        (lambda m: pickle.dumps({"train": [_Evil(m)]}, protocol=2), ".system"),  # posix.system
        (lambda m: b"cbuiltins\neval\n(S'open(" + repr(str(m)).encode() + b", \"w\")'\ntR.", "builtins.eval"),
        (lambda m: b"c__builtin__\nexec\n(S'open(" + repr(str(m)).encode() + b", \"w\")'\ntR.", "__builtin__.exec"),
        (lambda m: pickle.dumps(np.arange(3), protocol=2), "numpy."),  # an array: not needed
    ],
)
def test_restricted_unpickler_refuses_code(tmp_path, payload, asks_for):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(payload(marker))
    with pytest.raises(RnnrbmError, match=r"refusing to load evil\.pickle: the pickle asks for .*") as e:
        read_pickle(path)
    assert asks_for in str(e.value) and "which a dataset never needs" in str(e.value)
    assert not marker.exists()


def test_restricted_unpickler_message_names_os_system(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(_os_system_pickle(tmp_path / "pwned"))
    with pytest.raises(RnnrbmError) as e:
        read_pickle(path)
    assert str(e.value) == "refusing to load evil.pickle: the pickle asks for os.system, which a dataset never needs."


def test_read_pickle_refuses_what_is_not_a_dataset(tmp_path):
    (tmp_path / "list.pickle").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(RnnrbmError, match="must be a dict with train, valid and test"):
        read_pickle(tmp_path / "list.pickle")
    (tmp_path / "cut.pickle").write_bytes(pickle.dumps({"train": []}, protocol=2)[:5])
    with pytest.raises(RnnrbmError, match="not a readable pickle"):
        read_pickle(tmp_path / "cut.pickle")
    bad = {"train": [[("C4",)]], "valid": [], "test": []}
    (tmp_path / "names.pickle").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(RnnrbmError, match="holds 'C4', not a MIDI pitch"):
        read_pickle(tmp_path / "names.pickle")


# -- MIDI folders and zips ---------------------------------------------------------------


def test_folder_with_a_good_a_corrupt_and_a_text_file(tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "good.mid").write_bytes(GOOD)
    (songs / "corrupt.mid").write_bytes(GOOD[: len(GOOD) // 2])
    (songs / "notes.mid").write_text("this is a text file, not MIDI\n")
    (songs / "readme.txt").write_text("not a MIDI name: ignored")
    result = prepare(songs, out=tmp_path / "songs.npz", progress=False)
    assert summary(result) == {"train": (1, 3), "valid": (0, 0), "test": (0, 0)}
    assert result.skipped_files == [str(songs / "corrupt.mid"), str(songs / "notes.mid")]
    assert result.meta["skipped_files"] == result.skipped_files
    assert len(result.warnings) == 3  # the two files, then the empty validation split (one piece is left)
    assert "corrupt.mid" in result.warnings[0] and "notes.mid" in result.warnings[1]
    assert "never stops early" in result.warnings[2]
    assert result.meta["split"] == {"ratios": [0.8, 0.1, 0.1], "seed": 0}
    assert result.meta["source_sha256"] is None
    data = load_prepared(result.path)
    expected = np.zeros((3, 88), np.uint8)
    expected[0:2, 60 - 21] = 1
    expected[1:3, 64 - 21] = 1
    np.testing.assert_array_equal(data.splits["train"][0], expected)


def test_folder_with_split_subfolders_uses_them(tmp_path):
    root = tmp_path / "mine"
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        (root / split / "deeper").mkdir(parents=True)
        for i in range(n):
            (root / split / "deeper" / f"{i}.MIDI").write_bytes(GOOD)
    (root / "stray.mid").write_bytes(GOOD)  # outside the split folders
    result = prepare(root, beat_division=4, transpose="c", out=tmp_path / "o.npz", progress=False)
    # 120 bpm, 4 frames a beat: the 0.9 s file ends after 7.2 frames -> 8 frames.
    assert summary(result) == {"train": (3, 24), "valid": (1, 8), "test": (2, 16)}
    assert result.meta["split"] is None and result.meta["grid"] == "beats" and result.meta["beat_division"] == 4
    assert any("outside its train/valid/test folders" in w for w in result.warnings)
    with pytest.raises(RnnrbmUsageError, match="already split"):
        prepare(root, split_ratios=(0.5, 0.25, 0.25), out=tmp_path / "o.npz", progress=False)


def test_seeded_split_is_deterministic_and_follows_the_ratios(tmp_path):
    root = tmp_path / "twenty"
    root.mkdir()
    for i in range(20):
        (root / f"{i:02d}.mid").write_bytes(midi_bytes((40 + i, 0.0, 0.3)))

    def assignment(**kw):
        result = prepare(root, out=tmp_path / "o.npz", progress=False, **kw)
        data = load_prepared(result.path)
        return summary(result), {s: [int(r.argmax()) for r in data.splits[s]] for s in SPLITS}

    counts, first = assignment()
    assert counts == {"train": (16, 16), "valid": (2, 2), "test": (2, 2)}
    assert assignment()[1] == first
    assert assignment(seed=0)[1] == first
    assert assignment(seed=1)[1] != first
    assert assignment(split_ratios=(0.5, 0.25, 0.25))[0] == {"train": (10, 10), "valid": (5, 5), "test": (5, 5)}
    with pytest.raises(RnnrbmUsageError, match="add up to 1"):
        prepare(root, split_ratios=(0.5, 0.5, 0.5), out=tmp_path / "o.npz", progress=False)


def test_zip_of_split_folders_with_a_damaged_member(tmp_path):
    path = tmp_path / "Mine.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("Mine/", b"")
        z.writestr("Mine/train/b.mid", midi_bytes((62, 0.0, 0.3)))
        z.writestr("Mine/train/a.mid", GOOD)
        z.writestr("Mine/valid/c.mid", GOOD)
        z.writestr("Mine/test/d.mid", b"MThd garbage")
        z.writestr("Mine/test/e.mid", GOOD)
        z.writestr("__MACOSX/Mine/test/._e.mid", b"resource fork")
    result = prepare(path, progress=False)
    assert re.fullmatch(r"Mine-[0-9a-f]{8}-midi-dt0\.3-none\.npz", result.path.name)
    assert summary(result) == {"train": (2, 4), "valid": (1, 3), "test": (1, 3)}
    assert result.skipped_files == ["Mine.zip:Mine/test/d.mid"]
    # Members are read in name order: a.mid before b.mid.
    train = load_prepared(result.path).splits["train"]
    assert [len(r) for r in train] == [3, 1]


def test_a_folder_without_midi_files_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RnnrbmError, match="holds no .mid or .midi file"):
        prepare(tmp_path / "empty", progress=False)


def test_a_file_without_notes_on_the_keys_is_skipped(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    (root / "high.mid").write_bytes(midi_bytes((120, 0.0, 1.0)))
    (root / "ok.mid").write_bytes(GOOD)
    result = prepare(root, out=tmp_path / "o.npz", progress=False)
    assert result.skipped_files == [str(root / "high.mid")]
    assert result.meta["dropped_notes"] == 1


# -- options that do not fit the source -------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"dt": 0.3}, {"beat_division": 2}, {"transpose": "c"}, {"transpose": "none"}, {"seed": 1}],
)
def test_gridding_options_are_refused_for_rolls(mirror, options):
    with pytest.raises(RnnrbmUsageError, match="already|split"):
        prepare("nottingham", progress=False, **options)


def test_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(RnnrbmUsageError, match="unknown dataset 'nottinghm'"):
        prepare("nottinghm", progress=False)
    with pytest.raises(RnnrbmError, match="no such file or folder"):
        prepare(str(tmp_path / "missing.zip"), progress=False)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(RnnrbmError, match="cannot tell what"):
        prepare(tmp_path / "data.csv", progress=False)


def pedal_midi_bytes() -> bytes:
    """C4 played for 0.3 s under a sustain pedal held from 0.1 s to 0.9 s."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(90, 60, 0.0, 0.3)]
    piano.control_changes = [pretty_midi.ControlChange(64, 127, 0.1), pretty_midi.ControlChange(64, 0, 0.9)]
    midi.instruments.append(piano)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


def test_pedal_is_off_by_default_recorded_and_named(tmp_path, isolated_cache):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "pedalled.mid").write_bytes(pedal_midi_bytes())
    plain = prepare(songs, progress=False)
    held = prepare(songs, pedal=True, progress=False)
    # The default name is the one files had before the option existed, plus -pedal.
    assert plain.path.parent == isolated_cache / "prepared"
    assert re.fullmatch(r"songs-[0-9a-f]{8}-midi-dt0\.3-none\.npz", plain.path.name)
    assert held.path == plain.path.with_name(plain.path.stem + "-pedal.npz")
    assert (plain.meta["pedal"], held.meta["pedal"]) == (False, True)
    assert load_prepared(held.path).meta["pedal"] is True
    def c4(result) -> list[int]:
        return load_prepared(result.path).splits["train"][0][:, 60 - 21].tolist()

    assert c4(plain) == [1, 0, 0]
    assert c4(held) == [1, 1, 1]


def test_pedal_is_refused_for_rolls(tmp_path):
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = np.ones((2, 88), np.uint8)
    scipy.io.savemat(tmp_path / "tiny.mat", {"traindata": cell, "validdata": cell, "testdata": cell})
    with pytest.raises(RnnrbmUsageError, match="so --pedal cannot apply: they are for MIDI sources"):
        prepare(tmp_path / "tiny.mat", pedal=True, out=tmp_path / "t.npz", progress=False)
    result = run_prepare(str(tmp_path / "tiny.mat"), "--pedal")
    assert result.exit_code == 2 and "--pedal cannot apply" in result.stderr
    assert prepare(tmp_path / "tiny.mat", out=tmp_path / "t.npz", progress=False).meta["pedal"] is None


def test_limits_must_be_positive_whole_numbers(tmp_path):
    for limits in ({"max_frames": 0}, {"max_frames": 2.5}, {"max_member_bytes": -1}, {"max_member_bytes": True}):
        with pytest.raises(RnnrbmUsageError, match="must be a positive whole number"):
            prepare(tmp_path, progress=False, **limits)


def test_cli_limits_match_the_library():
    from rnnrbm_cli import cli as cli_module
    from rnnrbm_cli.pianoroll import MAX_FRAMES, MAX_MIDI_BYTES

    assert cli_module._MAX_FRAMES == MAX_FRAMES
    assert cli_module._MAX_MEMBER_MB * 2**20 == MAX_MIDI_BYTES


# -- the prepared file -------------------------------------------------------------------


def test_prepared_layout_loads_without_pickle(tmp_path):
    a = np.zeros((2, 88), np.uint8)
    a[1, 5] = 1
    path = write_prepared(tmp_path / "p.npz", {"train": [a, a[:1]], "valid": [], "test": [a]}, {"format": 1, "x": "é"})
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            [f"{s}_{k}" for s in SPLITS for k in ("rolls", "lengths")] + ["meta"]
        )
        assert npz["train_rolls"].dtype == np.uint8 and npz["train_rolls"].shape == (3, 88)
        assert npz["train_lengths"].dtype == np.int64 and npz["train_lengths"].tolist() == [2, 1]
        assert npz["valid_rolls"].shape == (0, 88) and npz["valid_lengths"].shape == (0,)
        assert npz["meta"].shape == () and npz["meta"].dtype.kind == "U"
        # The digest of the rolls, by its definition: per split, name, NUL, lengths, rolls.
        rolls = np.concatenate([a, a[:1]])
        expected = hashlib.sha256(
            b"train\0" + np.array([2, 1], "<i8").tobytes() + rolls.tobytes()
            + b"valid\0" + b"test\0" + np.array([2], "<i8").tobytes() + a.tobytes()
        ).hexdigest()
        assert json.loads(str(npz["meta"])) == {"format": 1, "x": "é", "content_sha256": expected}
    data = load_prepared(path)
    assert data.summary() == {
        "train": {"sequences": 2, "frames": 3},
        "valid": {"sequences": 0, "frames": 0},
        "test": {"sequences": 1, "frames": 2},
    }
    np.testing.assert_array_equal(data.splits["train"][1], a[:1])


def test_load_prepared_refuses_other_files(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(RnnrbmError, match="text.npz is not a prepared dataset"):
        load_prepared(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(RnnrbmError, match="other.npz is not a prepared dataset: it has no meta"):
        load_prepared(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(RnnrbmError, match="objects.npz is not a prepared dataset"):
        load_prepared(tmp_path / "objects.npz")
    good = write_prepared(tmp_path / "v2.npz", {"train": [], "valid": [], "test": []}, {"format": 2})
    with pytest.raises(RnnrbmError, match="format is 2, not 1"):
        load_prepared(good)
    with pytest.raises(RnnrbmError, match="no such file"):
        load_prepared(tmp_path / "missing.npz")
    for error in ("text.npz", "other.npz", "objects.npz"):
        with pytest.raises(RnnrbmError) as e:
            load_prepared(tmp_path / error)
        assert str(e.value).count(". ") == 0, "one sentence"


def test_resolve_data(mirror, isolated_cache, tmp_path):
    path = resolve_data("nottingham")
    assert path == prepared_path("nottingham", "rolls", beat_division=2, transpose="c")
    assert path == isolated_cache / "prepared" / "nottingham-rolls-beat2-c.npz"
    stamp = path.stat().st_mtime_ns
    assert resolve_data("nottingham") == path and path.stat().st_mtime_ns == stamp  # not redone
    assert resolve_data(str(path)) == path
    with pytest.raises(RnnrbmError, match="unknown dataset"):
        resolve_data("nope")
    with pytest.raises(RnnrbmError, match="no such file"):
        resolve_data(str(tmp_path / "gone.npz"))
    # a raw file is prepared with the defaults, as `rnnrbm prepare` would (here: the same rolls)
    assert resolve_data(mirror / "Nottingham.mat") == path


def test_nothing_is_written_when_writing_fails(tmp_path, monkeypatch):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "good.mid").write_bytes(GOOD)
    out = tmp_path / "out" / "songs.npz"
    out.parent.mkdir()
    out.write_bytes(b"previous content")

    def broken(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepared.np, "savez_compressed", broken)
    with pytest.raises(RnnrbmError, match="cannot write .*songs.npz: No space left on device"):
        prepare(songs, out=out, progress=False)
    assert out.read_bytes() == b"previous content"
    assert [p.name for p in out.parent.iterdir()] == ["songs.npz"]


# -- the mmap format: a .rnnrbm folder read memory-mapped --------------------------------


def songs_folder(tmp_path: Path) -> Path:
    """MIDI files in train/valid/test folders: two songs of 3 frames and one of 2 at dt 0.3."""
    short = midi_bytes((62, 0.0, 0.6))
    root = tmp_path / "songs"
    for split, files in (("train", [GOOD, short]), ("valid", [GOOD]), ("test", [short])):
        (root / split).mkdir(parents=True)
        for i, data in enumerate(files):
            (root / split / f"{i}.mid").write_bytes(data)
    return root


def test_mmap_and_npz_of_a_midi_folder_hold_the_same_data(tmp_path):
    songs = songs_folder(tmp_path)
    npz = prepare(songs, out=tmp_path / "s.npz", format="npz", progress=False)
    mm = prepare(songs, out=tmp_path / "s.rnnrbm", format="mmap", progress=False)
    assert mm.path.is_dir() and sorted(p.name for p in mm.path.iterdir()) == sorted(
        ["meta.json"] + [f"{s}_{k}.npy" for s in SPLITS for k in ("rolls", "lengths")])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    a, b = load_prepared(npz.path), load_prepared(mm.path)
    assert a.meta == b.meta == npz.meta == mm.meta  # content_sha256 included: the same rolls
    assert a.summary() == b.summary() == {
        "train": {"sequences": 2, "frames": 5}, "valid": {"sequences": 1, "frames": 3}, "test": {"sequences": 1, "frames": 2}}
    for split in SPLITS:
        assert len(a.splits[split]) == len(b.splits[split])
        for x, y in zip(a.splits[split], b.splits[split]):
            np.testing.assert_array_equal(x, y)
    expected = np.zeros((2, 88), np.uint8)
    expected[:, 62 - 21] = 1
    np.testing.assert_array_equal(b.splits["test"][0], expected)
    # views of the mapping, not copies; plain np.load reads the arrays too
    table = b.on_disk["train"]
    assert np.shares_memory(b.splits["train"][1], table.rolls) and not table.rolls.flags.writeable
    assert a.on_disk == {}
    on_disk = np.load(mm.path / "train_rolls.npy", mmap_mode="r")
    np.testing.assert_array_equal(on_disk, np.concatenate(a.splits["train"]))


def test_the_format_follows_the_name_or_the_size(tmp_path, monkeypatch):
    songs = songs_folder(tmp_path)
    assert prepare(songs, out=tmp_path / "by-name.rnnrbm", progress=False).path.is_dir()
    assert prepare(songs, out=tmp_path / "by-name.npz", progress=False).path.is_file()
    default = prepare(songs, progress=False).path
    assert default.suffix == ".npz" and default.is_file()  # small: the .npz, as before
    monkeypatch.setattr(prepared, "MMAP_BYTES", 10 * 88)  # 10 frames count as large
    big = prepare(songs, progress=False).path
    assert big == default.with_suffix(".rnnrbm") and big.is_dir()
    assert resolve_data(big) == big and resolve_data(songs) == big  # a .rnnrbm is prepared data, not MIDI
    with pytest.raises(RnnrbmUsageError, match="mmap format is written to a folder ending .rnnrbm"):
        prepare(songs, out=tmp_path / "x.npz", format="mmap", progress=False)
    result = run("prepare", str(songs), "--format", "npz", "--out", str(tmp_path / "y.rnnrbm"))
    assert result.exit_code == 2 and "npz format" in result.stderr
    result = run("prepare", str(songs), "--format", "mmap", "--out", str(tmp_path / "z.rnnrbm"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(tmp_path / "z.rnnrbm")


def damage(folder: Path, how: str) -> None:
    rolls = folder / "train_rolls.npy"
    data = bytearray(rolls.read_bytes())
    if how == "truncated":
        rolls.write_bytes(bytes(data[:-88]))
    elif how == "a note flipped":  # still 0/1: only the digest tells
        data[-1] ^= 1
        rolls.write_bytes(bytes(data))
    elif how == "a value of 2":
        data[-1] = 2
        rolls.write_bytes(bytes(data))
    elif how == "lengths altered":
        np.save(folder / "train_lengths.npy", np.array([4, 1], np.int64))
    elif how == "no meta.json":  # what a writer stopped before its end would leave, were it not renamed last
        (folder / "meta.json").unlink()


@pytest.mark.parametrize("how, said", [
    ("truncated", "train_rolls.npy is 480 bytes where its header says 568 (truncated or damaged)"),
    ("a note flipped", "its rolls do not match the content_sha256 of its meta.json (damaged or altered)"),
    ("a value of 2", "train_rolls holds values other than 0 and 1"),
    ("lengths altered", "its rolls do not match the content_sha256"),
    ("no meta.json", "it has no meta.json"),
])
def test_a_damaged_mmap_folder_is_refused_in_one_sentence(tmp_path, how, said):
    folder = prepare(songs_folder(tmp_path), out=tmp_path / "s.rnnrbm", progress=False).path
    damage(folder, how)
    with pytest.raises(RnnrbmError, match=re.escape(said)):
        load_prepared(folder)
    result = run("train", "--data", str(folder), "--epochs", "1", "--run-dir", str(tmp_path / "run"), "--device", "cpu")
    line = one_sentence_error(result)
    assert f"{folder} is not a prepared dataset: " in line and said in line


def test_a_failed_mmap_write_leaves_what_was_there(tmp_path, monkeypatch):
    songs = songs_folder(tmp_path)
    out = prepare(songs, out=tmp_path / "s.rnnrbm", progress=False).path
    before = load_prepared(out).meta

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepared.json, "dump", broken)  # meta.json, the last file written
    with pytest.raises(RnnrbmError, match="cannot write .*s.rnnrbm: No space left on device"):
        prepare(songs, out=out, split_ratios=None, pedal=True, progress=False)
    assert load_prepared(out).meta == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.rnnrbm", "songs"]


# -- the command line --------------------------------------------------------------------


def run_prepare(*args: str):
    return run("prepare", *args)


def test_cli_prints_the_path_on_stdout_and_a_table_on_stderr(mirror, isolated_cache):
    result = run_prepare("nottingham")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{isolated_cache / 'prepared' / 'nottingham-rolls-beat2-c.npz'}\n"
    assert "176,561" in result.stderr and "train" in result.stderr


def test_cli_json(mirror, tmp_path):
    out = tmp_path / "j.npz"
    result = run_prepare("jsb-chorales", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"path", "splits", "meta", "skipped_files"}
    assert doc["path"] == str(out) and out.is_file()
    assert doc["splits"] == {
        "train": {"sequences": 229, "frames": 13_807},
        "valid": {"sequences": 76, "frames": 4_602},
        "test": {"sequences": 77, "frames": 4_725},
    }
    assert set(doc["meta"]) == {
        "format", "dataset", "source_file", "source_sha256", "source_kind", "grid", "dt",
        "beat_division", "transpose", "pedal", "split", "skipped_files", "dropped_notes", "created_by",
        "content_sha256",
    }
    assert doc["meta"]["created_by"] == "rnnrbm 0.1.0" and doc["skipped_files"] == []


def test_cli_pedal(tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "pedalled.mid").write_bytes(pedal_midi_bytes())
    result = run_prepare(str(songs), "--pedal", "--out", str(tmp_path / "p.npz"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["meta"]["pedal"] is True
    assert load_prepared(tmp_path / "p.npz").splits["train"][0][:, 60 - 21].tolist() == [1, 1, 1]


def test_cli_names_skipped_files_on_stderr(tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "good.mid").write_bytes(GOOD)
    (songs / "bad.mid").write_text("text")
    result = run_prepare(str(songs), "--out", str(tmp_path / "s.npz"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped_files"] == [str(songs / "bad.mid")]
    assert "bad.mid" in result.stderr and "Warning" in result.stderr


def test_cli_dt_with_beat_division_is_a_usage_error(tmp_path):
    result = run_prepare(str(tmp_path), "--dt", "0.3", "--beat-division", "2")
    assert result.exit_code == 2
    assert "not both" in result.stderr


def test_cli_grid_options_for_rolls_are_a_usage_error(mirror):
    result = run_prepare("nottingham", "--transpose", "c")
    assert result.exit_code == 2
    assert "already on a beat grid" in result.stderr


def test_cli_bad_split_ratios_are_a_usage_error(tmp_path):
    assert run_prepare(str(tmp_path), "--split-ratios", "0.8,0.2").exit_code == 2
    assert run_prepare(str(tmp_path), "--split-ratios", "a,b,c").exit_code == 2


def test_cli_empty_folder_exits_1_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.npz"
    result = run_prepare(str(tmp_path / "empty"), "--out", str(out))
    assert result.exit_code == 1
    assert "holds no .mid or .midi file" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""
    assert not out.exists() and no_partial_files(tmp_path)


def test_cli_folder_of_only_bad_files_exits_1_and_writes_nothing(tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "a.mid").write_text("text")
    (songs / "b.mid").write_bytes(GOOD[:20])
    out = tmp_path / "out.npz"
    result = run_prepare(str(songs), "--out", str(out))
    assert result.exit_code == 1
    assert "no usable MIDI file (2 skipped: " in result.stderr
    assert not out.exists() and no_partial_files(tmp_path)


def test_cli_bad_path_exits_1(tmp_path):
    result = run_prepare(str(tmp_path / "nope.zip"))
    assert result.exit_code == 1
    assert "no such file or folder" in result.stderr


def test_cli_help():
    result = CliRunner().invoke(cli, ["prepare", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "rnnrbm prepare" in result.output


# -- several workers ---------------------------------------------------------------------


@pytest.fixture
def pools(monkeypatch) -> list[int]:
    """The size of each process pool prepare starts, on a machine of 8 CPUs (the cap is
    the CPUs, and these tests must not depend on the machine's)."""
    from rnnrbm_cli import readers

    started: list[int] = []

    class RecordedPool(readers.ProcessPoolExecutor):
        def __init__(self, max_workers, **kw):
            started.append(max_workers)
            super().__init__(max_workers, **kw)

    monkeypatch.setattr(readers, "ProcessPoolExecutor", RecordedPool)
    monkeypatch.setattr(readers.os, "cpu_count", lambda: 8)
    return started


def nottingham_members(zip_path: Path, per_split: int) -> dict[str, bytes]:
    """The first ``per_split`` MIDI members of each split folder of the real zip, by name."""
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".mid"))
        chosen = [n for split in SPLITS for n in [m for m in names if f"/{split}/" in m][:per_split]]
        return {n: z.read(n) for n in chosen}


def assert_same_arrays(a: Path, b: Path) -> None:
    """Two prepared files hold the same arrays, byte for byte, meta included (the files
    themselves differ only in their zip timestamps)."""
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        assert x.files == y.files
        for key in x.files:
            assert (x[key].dtype, x[key].shape) == (y[key].dtype, y[key].shape), key
            assert x[key].tobytes() == y[key].tobytes(), key


def test_two_workers_write_what_one_writes(shared_datasets, tmp_path, pools):
    songs = tmp_path / "songs"  # unsplit: the seeded split follows the order of the rolls
    songs.mkdir()
    for name, data in nottingham_members(shared_datasets / "Nottingham.zip", 8).items():
        (songs / Path(name).name).write_bytes(data)
    one = prepare(songs, out=tmp_path / "one.npz", progress=False, workers=1)
    assert pools == []  # one worker: no pool at all
    two = prepare(songs, out=tmp_path / "two.npz", progress=False, workers=2)
    assert pools == [2]
    assert summary(one)["train"][0] == 19 and sum(n for n, _ in summary(one).values()) == 24
    assert_same_arrays(one.path, two.path)
    assert two.meta == one.meta and "workers" not in two.meta
    assert (two.skipped_files, two.warnings) == ([], [])
    # The default output name does not depend on the workers either.
    assert prepare(songs, progress=False, workers=2).path == prepare(songs, progress=False).path


def test_two_workers_skip_the_same_files_with_the_same_warnings(shared_datasets, tmp_path, pools):
    members = nottingham_members(shared_datasets / "Nottingham.zip", 4)
    limit = max(len(d) for d in members.values()) + 1  # bytes: every real member fits
    bad = {  # a split each, among the good ones, each skipped for another reason
        "Mine/train/b_truncated.mid": members[next(iter(members))][:40],
        "Mine/train/c_text.mid": b"this is a text file, not MIDI\n",
        "Mine/valid/b_too_large.mid": GOOD + bytes(limit),
        "Mine/valid/c_too_long.mid": midi_bytes((60, 0.0, 120.0)),  # 400 frames at dt = 0.3
        "Mine/test/b_no_keys.mid": midi_bytes((120, 0.0, 1.0)),
    }
    path = tmp_path / "Mine.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in {**{n.replace("Nottingham/", "Mine/"): d for n, d in members.items()}, **bad}.items():
            z.writestr(name, data)
    options = ("--max-frames", "399", "--max-member-mb", f"{limit / 2**20!r}", "--json")
    results = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.npz"
        results[workers] = run_prepare(str(path), "--out", str(out), "--workers", workers, *options)
        assert results[workers].exit_code == 0, results[workers].output
    assert pools == [2]
    one, two = (json.loads(results[w].stdout) for w in ("1", "2"))
    assert one["skipped_files"] == [f"Mine.zip:{n}" for n in sorted(bad)]
    assert two["skipped_files"] == one["skipped_files"] and two["meta"] == one["meta"]
    warnings = [line for line in results["1"].stderr.splitlines() if line.startswith("Warning:")]
    assert [line for line in results["2"].stderr.splitlines() if line.startswith("Warning:")] == warnings
    reasons = ("Warning: Mine.zip:Mine/test/b_no_keys.mid has no note", "larger than", "more than the 399",
               "b_truncated.mid", "c_text.mid")
    assert len(warnings) == 5 and all(any(r in w for w in warnings) for r in reasons), warnings
    assert_same_arrays(tmp_path / "w1.npz", tmp_path / "w2.npz")
    # And what they hold is each good member sampled on its own, in name order.
    data = load_prepared(tmp_path / "w2.npz")
    for split in SPLITS:
        expected = [midi_to_roll(d, dt=0.3)[0] for n, d in sorted(members.items()) if f"/{split}/" in n]
        assert len(data.splits[split]) == len(expected) == 4
        for got, want in zip(data.splits[split], expected):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("workers", ["0", "-1", "two", "1.5", ""])
def test_cli_workers_must_be_a_whole_number_from_1(tmp_path, workers, pools):
    from conftest import one_sentence_error

    line = one_sentence_error(run_prepare(str(tmp_path), "--workers", workers), code=2)
    assert line == f"Error: --workers must be a whole number of processes, 1 or more, not {workers!r}."
    assert pools == []


def test_workers_must_be_a_whole_number_from_1(tmp_path):
    for workers in (0, -2, 1.0, True, "2", None):
        with pytest.raises(RnnrbmUsageError, match="workers must be a whole number of processes"):
            prepare(tmp_path, progress=False, workers=workers)


def test_rolls_ignore_the_workers(mirror, tmp_path, pools):
    one = prepare("jsb-chorales", out=tmp_path / "one.npz", progress=False)
    two = prepare("jsb-chorales", out=tmp_path / "two.npz", progress=False, workers=4)
    assert pools == [] and two.meta == one.meta
    assert_same_arrays(one.path, two.path)


# -- the data a checkpoint names -----------------------------------------------------------


def _checkpoint_of(path: Path, **extra) -> dict:
    """The data part of a checkpoint trained on ``path``, as train.py records it."""
    meta = {k: v for k, v in load_prepared(path).meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"data": {**meta, "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **extra}}


def _toy_splits(pitch: int) -> dict:
    roll = np.zeros((5, 88), np.uint8)
    roll[:, pitch - 21] = 1
    return {"train": [roll, roll[:2]], "valid": [roll], "test": [roll[:3]]}


def test_a_folder_is_named_by_its_path_and_content(tmp_path, isolated_cache):
    for folder, pitch in (("a", 60), ("b", 67)):
        (tmp_path / folder / "songs").mkdir(parents=True)
        (tmp_path / folder / "songs" / "x.mid").write_bytes(midi_bytes((pitch, 0.0, 0.6)))
    first = prepare(tmp_path / "a" / "songs", progress=False).path
    again = prepare(tmp_path / "a" / "songs", progress=False).path
    other = prepare(tmp_path / "b" / "songs", progress=False).path
    assert first == again != other
    assert {p.name for p in (isolated_cache / "prepared").iterdir()} == {first.name, other.name}
    (tmp_path / "a" / "songs" / "y.mid").write_bytes(GOOD)  # new content, new file: the old one is kept
    changed = prepare(tmp_path / "a" / "songs", progress=False).path
    assert changed not in (first, other) and first.is_file()


def test_check_checkpoint_data(tmp_path):
    from rnnrbm_cli.datasets import check_checkpoint_data

    trained = write_prepared(tmp_path / "trained.npz", _toy_splits(60), {"format": 1, "dataset": "toy"})
    payload = _checkpoint_of(trained)
    check_checkpoint_data(payload, trained)
    # the same rolls in other bytes (other meta, written again): the same data
    again = write_prepared(tmp_path / "again.npz", _toy_splits(60), {"format": 1, "dataset": "toy", "note": "x"})
    assert again.read_bytes() != trained.read_bytes()
    check_checkpoint_data(payload, again)
    # other rolls: refused, naming both files and both digests
    other = write_prepared(tmp_path / "other.npz", _toy_splits(62), {"format": 1, "dataset": "toy"})
    with pytest.raises(RnnrbmError) as e:
        check_checkpoint_data(payload, other)
    now = hashlib.sha256(other.read_bytes()).hexdigest()
    assert str(e.value) == (
        f"the checkpoint was trained on {trained} (sha256 {payload['data']['sha256'][:12]}), but {other} holds other "
        f"data (sha256 {now[:12]}); prepare that data again from the same source with the same options, or evaluate "
        "other data on purpose with --data."
    )
    # a checkpoint that records no digest (older ones) is not checked
    check_checkpoint_data({"data": {"path": str(trained)}}, other)
    check_checkpoint_data({}, other)


def test_checkpoint_data_checks_the_default_not_an_explicit_choice(tmp_path):
    from rnnrbm_cli.datasets import checkpoint_data

    trained = write_prepared(tmp_path / "trained.npz", _toy_splits(60), {"format": 1, "dataset": "toy"})
    payload = _checkpoint_of(trained)
    payload["settings"] = {"data": {"data": str(tmp_path / "by-name.npz")}}
    assert checkpoint_data(payload) == trained
    other = write_prepared(tmp_path / "other.npz", _toy_splits(62), {"format": 1, "dataset": "toy"})
    assert checkpoint_data(payload, str(other)) == other  # other data on purpose
    write_prepared(trained, _toy_splits(62), {"format": 1, "dataset": "toy"})  # the file now holds other data
    with pytest.raises(RnnrbmError, match="holds other data"):
        checkpoint_data(payload)
    # the recorded file gone, the settings' data is found instead, and checked too
    trained.unlink()
    write_prepared(tmp_path / "by-name.npz", _toy_splits(62), {"format": 1, "dataset": "toy"})
    with pytest.raises(RnnrbmError, match=f"but {tmp_path / 'by-name.npz'} holds other data"):
        checkpoint_data(payload)
    write_prepared(tmp_path / "by-name.npz", _toy_splits(60), {"format": 1, "dataset": "toy"})
    assert checkpoint_data(payload) == tmp_path / "by-name.npz"


def test_load_sequence_of_an_empty_split(tmp_path):
    from rnnrbm_cli.datasets import load_sequence

    path = write_prepared(tmp_path / "d.npz", {**_toy_splits(60), "valid": []}, {"format": 1})
    with pytest.raises(RnnrbmUsageError, match=r"has no valid sequences \(it has train 2, test 1\); choose another --split\.$"):
        load_sequence(path, "valid")
    empty = write_prepared(tmp_path / "e.npz", {"train": [], "valid": [], "test": []}, {"format": 1})
    with pytest.raises(RnnrbmError, match="holds no sequences"):
        load_sequence(empty, "valid")
