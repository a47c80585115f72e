"""`rnnrbm sample` and rnnrbm_cli.sample: rolls that round-trip, seeds, batching, primers, safety."""

from __future__ import annotations

import json
import wave
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from rnnrbm_cli.checkpoint import save_checkpoint
from rnnrbm_cli.datasets import write_prepared
from rnnrbm_cli.errors import RnnrbmUsageError
from rnnrbm_cli.models.rbm import RNNRBM, ModelConfig
from rnnrbm_cli.pianoroll import midi_to_roll, write_midi
from rnnrbm_cli.sample import output_dt, output_files, sample

from conftest import one_sentence_error, png_size, run

SECONDS_GRID = {"dataset": "toy", "grid": "seconds", "dt": 0.3, "beat_division": None}
BEATS_GRID = {"dataset": "toy", "grid": "beats", "dt": None, "beat_division": 2, "transpose": "c"}


def make_checkpoint(path: Path, data: dict | None = None, seed: int = 0) -> Path:
    """A real RNN-RBM (20 hidden, 10 recurrent) with random weights, saved as train.py saves one.

    The weights are larger than the tutorial's initialisation so that samples have
    structure: some keys often on, most rarely, and frames that depend on the past.
    """
    torch.manual_seed(seed)
    config = ModelConfig(n_hidden=20, n_recurrent=10)
    model = RNNRBM(config)
    with torch.no_grad():
        model.W.normal_(0, 0.6)
        model.bv.normal_(-3, 1)
        model.Wuv.normal_(0, 1)
        model.Wuh.normal_(0, 1)
        model.Wvu.normal_(0, 0.5)
        model.Wuu.normal_(0, 0.5)
    payload = {"model_config": asdict(config), "model_state": model.state_dict(), "data": data or dict(SECONDS_GRID)}
    save_checkpoint(path, payload)
    return path


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "ckpt.pt")


# -- what is written is what was generated ---------------------------------------------


def test_sampled_files_read_back_into_exactly_the_generated_rolls(ckpt: Path, tmp_path: Path):
    result = sample(ckpt, tmp_path / "out.mid", steps=60, k=5, num=3, seed=11, device="cpu")
    assert result.rolls.shape == (3, 60, 88) and result.rolls.dtype == np.uint8
    # A test worth its name needs music in the rolls: some notes, not every key on,
    # and the three pieces different from each other.
    assert 0.01 < result.rolls.mean() < 0.5
    assert not (result.rolls[0] == result.rolls[1]).all()
    assert result.dt == 0.3 and result.seconds == pytest.approx(18.0)
    assert [f["midi"].name for f in result.files] == ["out-001.mid", "out-002.mid", "out-003.mid"]
    for roll, entry in zip(result.rolls, result.files):
        back, _ = midi_to_roll(entry["midi"], dt=0.3)
        np.testing.assert_array_equal(back, roll)


def test_same_seed_same_bytes_and_another_seed_another_file(ckpt: Path, tmp_path: Path):
    for name, seed in (("a.mid", 7), ("b.mid", 7), ("c.mid", 8)):
        r = run("sample", ckpt, tmp_path / name, "--seed", seed, "--steps", 50, "--k", 5, "--device", "cpu")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip() == str(tmp_path / name)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.mid", "b.mid", "c.mid"))
    assert a == b
    assert a != c


def test_num_8_writes_eight_files_from_one_batched_generate_call(ckpt: Path, tmp_path: Path, monkeypatch):
    from rnnrbm_cli import engines

    calls = []
    from rnnrbm_cli.engines.numba_rbm import NumbaSampler

    for cls in (engines.TorchSampler, NumbaSampler):
        def counting_generate(self, n, steps, *args, _real=cls.generate, **kwargs):
            calls.append(n)
            return _real(self, n, steps, *args, **kwargs)

        monkeypatch.setattr(cls, "generate", counting_generate)
    r = run("sample", ckpt, tmp_path / "song.mid", "--num", 8, "--steps", 30, "--k", 3, "--seed", 1, "--json")
    assert r.exit_code == 0, r.stderr
    assert calls == [8]
    report = json.loads(r.stdout)
    names = [Path(f["midi"]).name for f in report["files"]]
    assert names == [f"song-{i:03d}.mid" for i in range(1, 9)]
    assert all(Path(f["midi"]).is_file() for f in report["files"])
    assert report["frames"] == 30 and report["dt"] == 0.3 and report["seed"] == 1
    assert report["seconds"] == pytest.approx(9.0)
    # eight different pieces, not one piece eight times
    assert len({Path(f["midi"]).read_bytes() for f in report["files"]}) == 8


def test_seed_is_drawn_and_reported_when_not_given(ckpt: Path, tmp_path: Path):
    r = run("sample", ckpt, tmp_path / "a.mid", "--steps", 20, "--k", 3, "--json")
    assert r.exit_code == 0, r.stderr
    seed = json.loads(r.stdout)["seed"]
    r2 = run("sample", ckpt, tmp_path / "b.mid", "--steps", 20, "--k", 3, "--seed", seed)
    assert r2.exit_code == 0
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


# -- primers -----------------------------------------------------------------------------


def hand_primer() -> np.ndarray:
    """Eight frames: a C major triad held four frames, then a G7 chord for four."""
    roll = np.zeros((8, 88), np.uint8)
    roll[:4, [60 - 21, 64 - 21, 67 - 21]] = 1
    roll[4:, [55 - 21, 59 - 21, 62 - 21, 65 - 21]] = 1
    return roll


def test_primed_sample_begins_with_the_midi_primer(ckpt: Path, tmp_path: Path):
    primer = hand_primer()
    write_midi(primer, tmp_path / "primer.mid", dt=0.3)
    r = run("sample", ckpt, tmp_path / "out.mid", "--primer", tmp_path / "primer.mid", "--primer-steps", 6,
            "--steps", 20, "--k", 5, "--num", 2, "--seed", 3, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["primer_frames"] == 6 and report["frames"] == 26
    for entry in report["files"]:
        back, _ = midi_to_roll(entry["midi"], dt=0.3)
        assert back.shape == (26, 88)
        np.testing.assert_array_equal(back[:6], primer[:6])


def test_primer_changes_what_follows(ckpt: Path, tmp_path: Path):
    # The model reads the primer: the same seed continues two primers differently.
    empty, chords = np.zeros((8, 88), np.uint8), hand_primer()
    a = sample(ckpt, tmp_path / "a.mid", steps=30, k=5, seed=5, primer=_midi(tmp_path / "e.mid", empty))
    b = sample(ckpt, tmp_path / "b.mid", steps=30, k=5, seed=5, primer=_midi(tmp_path / "c.mid", chords))
    assert not (a.rolls[0, 8:] == b.rolls[0, 8:]).all()


def _midi(path: Path, roll: np.ndarray) -> Path:
    write_midi(roll, path, dt=0.3)
    return path


def test_npz_primer_takes_the_chosen_sequence(ckpt: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    seqs = [(rng.random((n, 88)) < 0.05).astype(np.uint8) for n in (12, 15, 9)]
    npz = write_prepared(tmp_path / "data.npz", {"train": seqs[:1], "valid": seqs[1:], "test": seqs[:2]},
                         {"format": 1, **SECONDS_GRID, "transpose": "none"})
    result = sample(ckpt, tmp_path / "out.mid", steps=10, k=3, seed=0, primer=npz, split="valid", index=1)
    assert result.primer_frames == 9
    np.testing.assert_array_equal(result.rolls[0, :9], seqs[2])
    # default: the first test sequence
    result = sample(ckpt, tmp_path / "out2.mid", steps=10, k=3, seed=0, primer=npz)
    np.testing.assert_array_equal(result.rolls[0, :12], seqs[0])
    # a sequence that is not there is a usage error
    r = run("sample", ckpt, tmp_path / "x.mid", "--primer", npz, "--split", "valid", "--index", 5)
    assert "0..1" in one_sentence_error(r, code=2)


def test_npz_primer_on_another_grid_is_refused(ckpt: Path, tmp_path: Path):
    seq = np.zeros((10, 88), np.uint8)
    npz = write_prepared(tmp_path / "beats.npz", {"train": [seq], "valid": [seq], "test": [seq]},
                         {"format": 1, **BEATS_GRID})
    r = run("sample", ckpt, tmp_path / "x.mid", "--primer", npz)
    assert "grid" in one_sentence_error(r, code=2)
    assert not (tmp_path / "x.mid").exists()


def test_real_nottingham_primer_on_a_beat_grid_model(tmp_path: Path, shared_datasets: Path):
    from rnnrbm_cli.datasets import load_prepared, prepare

    npz = prepare("nottingham", cache_dir=tmp_path / "cache", mirror=shared_datasets, progress=False).path
    first_test = load_prepared(npz).splits["test"][0]
    ckpt = make_checkpoint(tmp_path / "beats.pt", data={**BEATS_GRID, "dataset": "nottingham"})
    r = run("sample", ckpt, tmp_path / "out.mid", "--primer", npz, "--primer-steps", 32, "--steps", 32,
            "--k", 5, "--seed", 2, "--tempo", 90, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["dt"] == pytest.approx(60 / 90 / 2)
    back, _ = midi_to_roll(report["files"][0]["midi"], dt=report["dt"])
    np.testing.assert_array_equal(back[:32], first_test[:32])
    assert back.shape[0] == 64


# -- the time grid -----------------------------------------------------------------------


def test_output_dt_follows_the_checkpoint_grid_and_the_overrides():
    assert output_dt(SECONDS_GRID) == 0.3
    assert output_dt(SECONDS_GRID, dt=0.125) == 0.125
    assert output_dt(BEATS_GRID) == 0.25  # 120 bpm, 2 frames a beat
    assert output_dt(BEATS_GRID, tempo=60) == 0.5
    assert output_dt(BEATS_GRID, dt=0.1) == 0.1
    with pytest.raises(RnnrbmUsageError, match="--tempo applies"):
        output_dt(SECONDS_GRID, tempo=100)
    with pytest.raises(RnnrbmUsageError, match="not both"):
        output_dt(BEATS_GRID, dt=0.1, tempo=100)
    with pytest.raises(RnnrbmUsageError, match="--dt"):
        output_dt({})


def test_beat_grid_checkpoint_writes_frames_of_60_over_tempo_over_division(tmp_path: Path):
    ckpt = make_checkpoint(tmp_path / "beats.pt", data=BEATS_GRID)
    r = run("sample", ckpt, tmp_path / "out.mid", "--steps", 24, "--k", 3, "--seed", 4, "--tempo", 150, "--json")
    assert r.exit_code == 0, r.stderr
    dt = json.loads(r.stdout)["dt"]
    assert dt == pytest.approx(0.2)
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "out.mid"))
    assert midi.get_end_time() == pytest.approx(24 * 0.2)
    starts = np.array([n.start for n in midi.instruments[0].notes])
    np.testing.assert_allclose(starts / 0.2, np.round(starts / 0.2), atol=1e-6)


def test_program_and_velocity_are_written(ckpt: Path, tmp_path: Path):
    r = run("sample", ckpt, tmp_path / "out.mid", "--steps", 20, "--k", 3, "--seed", 0,
            "--program", 40, "--velocity", 100)
    assert r.exit_code == 0, r.stderr
    (inst,) = pretty_midi.PrettyMIDI(str(tmp_path / "out.mid")).instruments
    assert inst.program == 40
    assert inst.notes and {n.velocity for n in inst.notes} == {100}


# -- extra outputs -----------------------------------------------------------------------


def test_wav_and_png_beside_the_midi(ckpt: Path, tmp_path: Path):
    r = run("sample", ckpt, tmp_path / "out.mid", "--steps", 20, "--k", 3, "--seed", 0, "--wav", "--png", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["files"] == [{"midi": str(tmp_path / "out.mid"), "wav": str(tmp_path / "out.wav"),
                                "png": str(tmp_path / "out.png")}]
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 44100)
        seconds = w.getnframes() / 44100
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert 20 * 0.3 <= seconds < 20 * 0.3 + 1
    assert np.abs(pcm).max() > 10000  # sound, not silence
    assert report["audio"] in ("fluidsynth", "builtin")
    said = " ".join(r.stderr.split())
    assert ("built-in synthesiser" in said) if report["audio"] == "builtin" else ("FluidSynth" in said)
    assert png_size(tmp_path / "out.png") == (1200, 500)


def test_off_a_terminal_sample_says_where_it_is(ckpt: Path, tmp_path: Path, monkeypatch):
    from rnnrbm_cli import sample as sample_module

    monkeypatch.setattr(sample_module, "PROGRESS_SECONDS", 0.0)  # a line for every block of audio
    r = run("sample", ckpt, tmp_path / "out.mid", "--steps", 400, "--k", 1, "--seed", 0, "--num", 2, "--wav")
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()  # CliRunner's stderr is no terminal
    generated = next(i for i, line in enumerate(lines) if line.startswith("generated in "))
    assert lines[generated].endswith(" s; writing 2 pieces")
    ready = [i for i, line in enumerate(lines) if line.startswith("piece ")]
    assert [lines[i] for i in ready] == ["piece 1 of 2 ready: out-001.mid, out-001.wav",
                                         "piece 2 of 2 ready: out-002.mid, out-002.wav"]
    rendering = [line for line in lines[generated:ready[0]] if line.startswith("out-001.wav: rendering audio, ")]
    assert len(rendering) >= 2, r.stderr  # 120 s of audio is 81 blocks, rendered twice
    shares = [int(line.split(", ")[-1].rstrip("%")) for line in rendering]
    assert shares == sorted(shares) and shares[-1] < 100


def test_a_piece_too_long_for_fluidsynth_is_played_by_the_builtin_synth(tmp_path: Path, monkeypatch):
    from rnnrbm_cli import synth
    from rnnrbm_cli.pianoroll import roll_to_midi

    monkeypatch.setattr(synth, "fluidsynth_problem", lambda: None)  # as if FluidSynth were installed
    monkeypatch.setattr(synth, "find_soundfont", lambda: tmp_path / "piano.sf2")
    monkeypatch.setattr(synth, "_fluidsynth", lambda midi, rate, soundfont: np.full(rate, 0.5))
    monkeypatch.setattr(synth, "FLUIDSYNTH_MAX_SECONDS", 6.0)
    roll = np.zeros((30, 88), np.uint8)
    roll[:, 39] = 1
    short = synth.render_wav(roll_to_midi(roll[:20], 0.3), tmp_path / "short.wav")
    assert (short.method, short.soundfont, short.reason, short.frames) == ("fluidsynth", tmp_path / "piano.sf2", None, 44100)
    long = synth.render_wav(roll_to_midi(roll, 0.3), tmp_path / "long.wav")
    assert (long.method, long.soundfont) == ("builtin", None)
    assert long.reason == ("FluidSynth renders a piece whole in memory, at most 0.1 minutes, and this one lasts 0.1 "
                           "(sample fewer --steps or --seconds for FluidSynth's sound)")
    with wave.open(str(tmp_path / "long.wav")) as w:
        assert w.getnframes() == long.frames == synth.builtin_length(9.0)
        assert (np.frombuffer(w.readframes(w.getnframes()), "<i2") != 0).any()


# -- refusing ----------------------------------------------------------------------------


class _WritesMarker:
    """Unpickling this object opens (creates) a file: code running on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        return path
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save([1, 2, 3], path)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "crafted":
        payload = {"format": "rnnrbm-checkpoint", "version": 1, "model_config": {},
                   "model_state": {}, "data": _WritesMarker(tmp_path / "marker")}
        torch.save(payload, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "random", "crafted"])
def test_bad_checkpoints_fail_in_one_sentence(kind: str, ckpt: Path, tmp_path: Path):
    bad = _bad_checkpoint(kind, tmp_path, ckpt)
    r = run("sample", bad, tmp_path / "out.mid", "--steps", 5)
    message = one_sentence_error(r)
    assert str(bad) in message
    assert not (tmp_path / "out.mid").exists()
    assert not (tmp_path / "marker").exists()


def test_the_crafted_checkpoint_really_runs_code_when_loaded_unsafely(ckpt: Path, tmp_path: Path):
    # So that the refusal above proves something: without weights_only the code runs.
    bad = _bad_checkpoint("crafted", tmp_path, ckpt)
    torch.load(bad, weights_only=False)
    assert (tmp_path / "marker").exists()


def test_a_checkpoint_whose_weights_do_not_fit_its_config(tmp_path: Path):
    config = ModelConfig(n_hidden=20, n_recurrent=10)
    state = RNNRBM(ModelConfig(n_hidden=30, n_recurrent=10)).state_dict()
    save_checkpoint(tmp_path / "c.pt", {"model_config": asdict(config), "model_state": state, "data": SECONDS_GRID})
    one_sentence_error(run("sample", tmp_path / "c.pt", tmp_path / "out.mid"))


def test_existing_output_is_untouched_without_force(ckpt: Path, tmp_path: Path):
    out = tmp_path / "out.mid"
    out.write_bytes(b"precious")
    r = run("sample", ckpt, out, "--steps", 5, "--k", 2)
    assert str(out) in one_sentence_error(r)
    assert out.read_bytes() == b"precious"
    r = run("sample", ckpt, out, "--steps", 5, "--k", 2, "--force")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes().startswith(b"MThd")


def test_all_outputs_are_checked_before_any_is_written(ckpt: Path, tmp_path: Path):
    (tmp_path / "out-002.png").write_bytes(b"precious")
    r = run("sample", ckpt, tmp_path / "out.mid", "--num", 3, "--steps", 5, "--k", 2, "--png")
    assert "out-002.png" in one_sentence_error(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "out-002.png"]


@pytest.mark.parametrize(
    "args",
    [
        ["--velocity", "0"],
        ["--program", "128"],
        ["--steps", "0"],
        ["--tempo", "100"],  # a seconds-grid checkpoint
        ["--split", "test"],  # without a primer
    ],
)
def test_usage_errors_exit_2(args, ckpt: Path, tmp_path: Path):
    r = run("sample", ckpt, tmp_path / "out.mid", *args)
    assert r.exit_code == 2, r.stderr
    assert not (tmp_path / "out.mid").exists()


def test_output_must_be_a_midi_name(tmp_path: Path):
    with pytest.raises(RnnrbmUsageError, match=r"\.mid"):
        output_files(tmp_path / "out.wav", 1)
    assert [f["midi"].name for f in output_files(tmp_path / "x.mid", 1000)][:2] == ["x-0001.mid", "x-0002.mid"]


# -- sizes, compiling ----------------------------------------------------------------------


def test_the_size_limit_is_settable(ckpt: Path, tmp_path: Path):
    with pytest.raises(RnnrbmUsageError, match=r"^2 pieces of 10 frames is 1,760 cells, more than the 1,000 one sample may hold"):
        sample(ckpt, tmp_path / "a.mid", steps=10, k=1, num=2, seed=0, max_cells=1000)
    assert not any(p.suffix == ".mid" for p in tmp_path.iterdir())
    # the primer's frames count: checked once it is read, before sampling
    write_midi(hand_primer(), tmp_path / "primer.mid", dt=0.3)
    with pytest.raises(RnnrbmUsageError, match=r"^1 piece of 13 frames is 1,144 cells"):
        sample(ckpt, tmp_path / "b.mid", steps=5, k=1, seed=0, primer=tmp_path / "primer.mid", max_cells=1000)
    result = sample(ckpt, tmp_path / "c.mid", steps=10, k=1, num=2, seed=0, max_cells=None, max_pieces=None)
    assert result.rolls.shape == (2, 10, 88)
    with pytest.raises(RnnrbmUsageError, match=r"^--num 3 asks for more pieces than the 2 one run may write"):
        sample(ckpt, tmp_path / "d.mid", steps=10, num=3, max_pieces=2)


def test_a_sampler_that_must_compile_says_so_first(ckpt: Path, tmp_path: Path, monkeypatch):
    from rnnrbm_cli import engines

    said: list[str] = []

    def sample_once(name: str) -> None:
        said.clear()
        sample(ckpt, tmp_path / name, steps=5, k=1, seed=0, backend="torch", on_message=said.append)

    sample_once("a.mid")
    assert not any("Compiling" in text for text in said)  # the torch sampler has nothing to compile
    monkeypatch.setattr(engines.TorchSampler, "compile_message", lambda self: "Compiling the CPU kernels...", raising=False)
    sample_once("b.mid")
    assert said[-1] == "Compiling the CPU kernels..."  # after "sampling ...", before the generate call
    r = run("sample", ckpt, tmp_path / "cli.mid", "--steps", 5, "--k", 1, "--backend", "torch")
    assert r.exit_code == 0 and "Compiling the CPU kernels..." in r.stderr


def test_an_npz_primer_that_is_the_training_file_must_still_hold_it(tmp_path: Path):
    import hashlib

    rng = np.random.default_rng(1)
    seqs = [(rng.random((12, 88)) < 0.05).astype(np.uint8) for _ in range(3)]
    trained = write_prepared(tmp_path / "trained.npz", {"train": seqs, "valid": [], "test": seqs[:1]},
                             {"format": 1, **SECONDS_GRID})
    data = {**SECONDS_GRID, "path": str(trained), "sha256": hashlib.sha256(trained.read_bytes()).hexdigest()}
    ckpt = make_checkpoint(tmp_path / "c.pt", data=data)
    assert sample(ckpt, tmp_path / "a.mid", steps=3, k=1, seed=0, primer=trained).primer_frames == 12
    write_prepared(trained, {"train": seqs[1:], "valid": [], "test": seqs[1:2]}, {"format": 1, **SECONDS_GRID})
    r = run("sample", ckpt, tmp_path / "b.mid", "--primer", trained, "--steps", 3)
    assert "holds other data" in one_sentence_error(r)
    assert not (tmp_path / "b.mid").exists()


# -- sampling controls: temperature, seconds, key ---------------------------------------------


def test_temperature_one_writes_todays_bytes_and_is_the_model_itself(ckpt: Path, tmp_path: Path):
    from rnnrbm_cli.models.base import tempered

    plain = run("sample", ckpt, tmp_path / "a.mid", "--seed", 4, "--steps", 40)
    warm = run("sample", ckpt, tmp_path / "b.mid", "--seed", 4, "--steps", 40, "--temperature", 1)
    assert plain.exit_code == warm.exit_code == 0, plain.stderr + warm.stderr
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()
    model = RNNRBM(ModelConfig(n_hidden=4, n_recurrent=3))
    assert tempered(model, 1.0) is model


def _notes_per_frame(model, temperature: float) -> float:
    from rnnrbm_cli.api import generate

    return float(generate(model, num=64, steps=40, seed=9, temperature=temperature).sum(-1).mean())


@pytest.mark.parametrize("model_type", ["rnn-rbm", "rnn-nade", "rnn"])
def test_a_lower_temperature_plays_fewer_notes_per_frame(model_type: str):
    from rnnrbm_cli import models

    torch.manual_seed(0)
    config = ModelConfig(n_hidden=20, n_recurrent=10, model_type=model_type)
    model = models.record(model_type).model_class(config, torch.Generator().manual_seed(0))
    with torch.no_grad():  # most keys rarely on, as in music
        for name, p in model.named_parameters():
            p.normal_(-2.5 if name == "bv" else 0, 1 if name == "bv" else 0.3)
    cold, plain, hot = (_notes_per_frame(model, t) for t in (0.5, 1.0, 2.0))
    assert cold < plain < hot, (cold, plain, hot)


def test_the_rnns_tempered_note_probabilities_are_its_logits_over_t():
    from rnnrbm_cli.models.base import tempered
    from rnnrbm_cli.models.rnn import RNN

    model = RNN(ModelConfig(n_hidden=1, n_recurrent=6, model_type="rnn"), torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    v = (torch.rand(2, 5, 88, generator=torch.Generator().manual_seed(2)) < 0.1).float()
    with torch.no_grad():
        logits = model.conditional_biases(v)[0]
        cold = tempered(model, 0.4).conditional_biases(v)[0]
    torch.testing.assert_close(cold, logits / 0.4)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), tempered(model, 0.4).parameters()))


def test_seconds_sets_the_frames_from_the_files_grid(ckpt: Path, tmp_path: Path):
    r = run("sample", ckpt, tmp_path / "a.mid", "--seconds", 6, "--seed", 1, "--json")
    assert r.exit_code == 0, r.stderr
    import json

    assert json.loads(r.stdout)["frames"] == 20  # 6 s at the checkpoint's dt of 0.3 s
    line = one_sentence_error(run("sample", ckpt, tmp_path / "b.mid", "--seconds", 6, "--steps", 10), code=2)
    assert "--steps or --seconds" in line


def test_tonic_names_and_the_shift_out_of_c():
    from rnnrbm_cli.pianoroll import tonic_of, transpose_from_c

    assert [tonic_of(k) for k in ("C", "D", "F#", "Gb", "Bb minor", "am", "b", "E#", "Cb")] == [0, 2, 6, 6, 10, 9, 11, 5, 11]
    for bad in ("H", "", "C##b", "D major7"):
        with pytest.raises(ValueError):
            tonic_of(bad)
    roll = np.zeros((2, 88), np.uint8)
    roll[0, [0, 39, 87]] = 1  # A0, middle C, C8
    up, lost = transpose_from_c(roll, "D")  # +2 semitones: C8 falls off the top
    assert sorted(np.flatnonzero(up[0])) == [2, 41] and lost == 1
    down, lost = transpose_from_c(roll, "G")  # the nearest G is below: -5
    assert sorted(np.flatnonzero(down[0])) == [34, 82] and lost == 1
    same, lost = transpose_from_c(roll, "C")
    assert np.array_equal(same, roll) and lost == 0


def test_transpose_to_moves_a_c_model_and_refuses_one_in_its_own_keys(tmp_path: Path):
    from rnnrbm_cli.pianoroll import midi_to_roll

    in_c = make_checkpoint(tmp_path / "c.pt", data=dict(BEATS_GRID))
    assert run("sample", in_c, tmp_path / "c.mid", "--seed", 3, "--steps", 30).exit_code == 0
    r = run("sample", in_c, tmp_path / "e.mid", "--seed", 3, "--steps", 30, "--transpose-to", "E")
    assert r.exit_code == 0, r.stderr
    grid = dict(beat_division=2)
    c_roll, _ = midi_to_roll(str(tmp_path / "c.mid"), **grid)
    e_roll, _ = midi_to_roll(str(tmp_path / "e.mid"), **grid)
    kept = c_roll[:, : 88 - 4]
    assert np.array_equal(e_roll[:, 4:], kept[: len(e_roll)]) and kept.any()
    own_keys = make_checkpoint(tmp_path / "own.pt")  # SECONDS_GRID: no transposition
    assert "own keys" in one_sentence_error(run("sample", own_keys, tmp_path / "x.mid", "--transpose-to", "E"), code=2)
    assert "not a key" in one_sentence_error(run("sample", in_c, tmp_path / "y.mid", "--transpose-to", "H"), code=2)
