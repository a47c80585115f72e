"""`rnnrbm plot` and rnnrbm_cli.plot: piano-roll figures, training curves, metrics reading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnrbm_cli.datasets import write_prepared
from rnnrbm_cli.pianoroll import write_midi
from rnnrbm_cli.plot import curves_figure, read_metrics, roll_figure

from conftest import one_sentence_error, png_size, run

META = {"format": 1, "dataset": "toy", "grid": "seconds", "dt": 0.25, "beat_division": None, "transpose": "none"}


def melody() -> np.ndarray:
    """Twelve frames: C4 D4 E4 (two frames each), then a C major triad for six."""
    roll = np.zeros((12, 88), np.uint8)
    for i, pitch in enumerate((60, 62, 64)):
        roll[2 * i : 2 * i + 2, pitch - 21] = 1
    roll[6:, [48 - 21, 52 - 21, 55 - 21]] = 1
    return roll


# -- piano-rolls -------------------------------------------------------------------------


def test_roll_figure_draws_the_roll_as_the_tutorial_does():
    roll = melody()
    fig = roll_figure(roll, frame_length=0.3, title="t")
    (ax,) = fig.axes
    (image,) = ax.images
    np.testing.assert_array_equal(np.asarray(image.get_array()), roll.T)  # pitch on y, time on x
    assert image.origin == "lower" and image.get_cmap().name == "gray_r"
    assert image.get_extent() == pytest.approx([0, 12 * 0.3, 20.5, 108.5])  # row k centred on pitch 21 + k
    # y trimmed to the pitches used (48..64) plus a margin of 3
    assert ax.get_ylim() == pytest.approx((44.5, 67.5))
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "MIDI note number"


@pytest.mark.parametrize(
    "pitches, expected",
    [
        ([60, 61], (55, 67)),  # widened to 13 keys so that a C is always in view
        ([21], (21, 33)),  # slid up at the bottom of the keyboard
        ([108], (96, 108)),  # and down at the top
        ([], (21, 108)),  # silence: the whole keyboard
    ],
)
def test_pitch_range_is_the_used_range_plus_margin(pitches, expected):
    roll = np.zeros((4, 88), np.uint8)
    for p in pitches:
        roll[1, p - 21] = 1
    ax = roll_figure(roll, frame_length=1.0).axes[0]
    assert ax.get_ylim() == pytest.approx((expected[0] - 0.5, expected[1] + 0.5))


def test_plot_a_midi_file_at_the_requested_size(tmp_path: Path):
    write_midi(melody(), tmp_path / "song.mid", dt=0.3)
    r = run("plot", tmp_path / "song.mid", "-o", tmp_path / "fig.png", "--width", 801, "--height", 333)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "fig.png")
    assert png_size(tmp_path / "fig.png") == (801, 333)


def test_plot_a_midi_file_defaults_to_a_png_beside_it(tmp_path: Path, monkeypatch):
    write_midi(melody(), tmp_path / "song.mid", dt=0.3)
    monkeypatch.chdir(tmp_path.parent)
    r = run("plot", tmp_path / "song.mid")
    assert r.exit_code == 0, r.stderr
    assert png_size(tmp_path / "song.png") == (1200, 500)


def test_plot_an_npz_split_and_index(tmp_path: Path):
    seqs = [melody(), melody()[::-1].copy(), np.zeros((5, 88), np.uint8)]
    npz = write_prepared(tmp_path / "data.npz", {"train": seqs, "valid": seqs[:2], "test": seqs[:1]}, META)
    r = run("plot", npz, "--split", "valid", "--index", 1, "--width", 640, "--height", 480, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["png"] == str(tmp_path / "data-valid-001.png") and report["kind"] == "npz"
    assert png_size(tmp_path / "data-valid-001.png") == (640, 480)
    assert "valid sequence 1" in report["title"]


def test_plot_npz_usage_errors(tmp_path: Path):
    npz = write_prepared(tmp_path / "data.npz", {"train": [melody()], "valid": [melody()], "test": [melody()]}, META)
    assert "train, valid" in one_sentence_error(run("plot", npz, "--split", "nope"), code=2)
    assert "0..0" in one_sentence_error(run("plot", npz, "--index", 3), code=2)


def test_plot_real_nottingham_rolls_in_beats(tmp_path: Path, shared_datasets: Path):
    from rnnrbm_cli.datasets import load_prepared, prepare

    npz = prepare("nottingham", cache_dir=tmp_path / "cache", mirror=shared_datasets, progress=False).path
    roll = load_prepared(npz).splits["test"][0]
    r = run("plot", npz, "-o", tmp_path / "n.png")
    assert r.exit_code == 0, r.stderr
    assert png_size(tmp_path / "n.png") == (1200, 500)
    # the same figure in the library: x in beats, 2 frames a beat
    ax = roll_figure(roll, frame_length=0.5, unit="beats").axes[0]
    assert ax.get_xlim() == pytest.approx((0, len(roll) / 2)) and ax.get_xlabel() == "time (beats)"


# -- training curves ---------------------------------------------------------------------


def write_run(run_dir: Path) -> Path:
    """A run directory as a resumed, still-running training leaves it."""
    run_dir.mkdir()
    lines = [
        {"epoch": 1, "train_monitor": -15.0, "valid_monitor": -11.0, "train_cost": 1.0, "seconds": 40.0, "updates": 10},
        {"epoch": 2, "train_monitor": -10.5, "valid_monitor": -9.0, "train_cost": 0.8, "seconds": 41.0, "updates": 10},
        {"epoch": 3, "train_monitor": -99.0, "valid_monitor": -99.0, "train_cost": 0.7, "seconds": 39.0, "updates": 10},
        # resumed from epoch 2: epoch 3 again, and this one counts
        {"epoch": 3, "train_monitor": -9.0, "valid_monitor": -8.5, "train_cost": 0.7, "seconds": 42.0, "updates": 10,
         "valid_ll": -8.0, "valid_ll_stderr": 0.1, "valid_acc": 0.3},
        {"epoch": 4, "train_monitor": -8.5, "valid_monitor": None, "train_cost": 0.6, "seconds": 40.5, "updates": 10},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += '{"epoch": 5, "train_monitor": -8.2, "val'  # being written right now
    (run_dir / "metrics.jsonl").write_text(text)
    (run_dir / "config.json").write_text(json.dumps({"model": {"n_hidden": 150, "n_recurrent": 100},
                                                     "train": {}, "data": {"dataset": "nottingham"}}))
    return run_dir


def test_read_metrics_last_duplicate_wins_and_partial_line_is_left_out(tmp_path: Path):
    metrics = read_metrics(write_run(tmp_path / "run"))
    assert [r["epoch"] for r in metrics.epochs] == [1, 2, 3, 4]
    np.testing.assert_array_equal(metrics.column("train_monitor"), [-15.0, -10.5, -9.0, -8.5])
    np.testing.assert_array_equal(metrics.column("valid_monitor")[:3], [-11.0, -9.0, -8.5])
    assert np.isnan(metrics.column("valid_monitor")[3])
    assert metrics.partial_last_line and metrics.skipped == []


def test_read_metrics_counts_damaged_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_monitor": -3}\nnot json\n[1, 2]\n{"epoch": 2, "train_monitor": -2}\n')
    metrics = read_metrics(path)
    assert [r["epoch"] for r in metrics.epochs] == [1, 2]
    assert metrics.skipped == [2, 3] and not metrics.partial_last_line


def test_curves_figure_has_what_the_run_measured(tmp_path: Path):
    fig = curves_figure(read_metrics(write_run(tmp_path / "run")))
    top, acc, seconds = fig.axes
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert labels == ["train monitor", "valid monitor", "valid log-likelihood (AIS)"]
    np.testing.assert_array_equal(top.lines[0].get_ydata(), [-15.0, -10.5, -9.0, -8.5])
    assert [p.get_height() for p in seconds.patches] == [40.0, 41.0, 42.0, 40.5]
    assert seconds.get_ylabel() == "seconds per epoch"


def test_plot_a_run_directory(tmp_path: Path):
    run_dir = write_run(tmp_path / "run")
    r = run("plot", run_dir, "--width", 900, "--height", 650)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(run_dir / "training.png")
    assert png_size(run_dir / "training.png") == (900, 650)
    assert r.stderr == ""  # a partial last line is normal, not worth a warning


def test_plot_a_run_without_a_complete_epoch(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1, "train_')
    assert "no completed epoch" in one_sentence_error(run("plot", tmp_path / "run"))
    assert "metrics.jsonl" in one_sentence_error(run("plot", tmp_path))


# -- refusing and showing ----------------------------------------------------------------


def test_existing_png_is_untouched_without_force(tmp_path: Path):
    write_midi(melody(), tmp_path / "song.mid", dt=0.3)
    (tmp_path / "song.png").write_bytes(b"precious")
    assert "song.png" in one_sentence_error(run("plot", tmp_path / "song.mid"))
    assert (tmp_path / "song.png").read_bytes() == b"precious"
    assert run("plot", tmp_path / "song.mid", "--force").exit_code == 0
    assert png_size(tmp_path / "song.png") == (1200, 500)


@pytest.mark.parametrize("content", [None, b"", b"MThd\x00\x00\x00\x06garbage", b"hello"])
def test_unreadable_inputs_fail_in_one_sentence(content, tmp_path: Path):
    path = tmp_path / "bad.mid"
    if content is not None:
        path.write_bytes(content)
    message = one_sentence_error(run("plot", path))
    assert str(path) in message
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a display is told apart by $DISPLAY on Linux")
def test_show_without_a_display_writes_the_file_and_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    write_midi(melody(), tmp_path / "song.mid", dt=0.3)
    r = run("plot", tmp_path / "song.mid", "--show")
    assert r.exit_code == 0
    assert png_size(tmp_path / "song.png") == (1200, 500)
    assert "no display" in " ".join(r.stderr.split())


def test_the_curves_name_how_the_validation_ll_was_found(tmp_path):
    """An exact model's validation LL is labelled exact, an annealed one's by its method;
    runs written before the method was recorded read as AIS."""
    import json

    from rnnrbm_cli.plot import curves_figure, read_metrics

    for method, label in (("exact", "exact"), ("raise", "RAISE"), (None, "AIS")):
        run_dir = tmp_path / str(method)
        run_dir.mkdir()
        lines = []
        for epoch in (1, 2):
            m = {"epoch": epoch, "stage": "fine", "train_monitor": -10.0, "valid_monitor": -9.0, "seconds": 1.0,
                 "valid_ll": -8.0 - epoch, "valid_ll_stderr": 0.1}
            if method:
                m["valid_ll_method"] = method
            lines.append(json.dumps(m))
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        fig = curves_figure(read_metrics(run_dir))
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert f"valid log-likelihood ({label})" in labels, labels


def test_pretraining_stages_are_shaded_on_every_panel_and_named_once_in_the_legend(tmp_path):
    """Narrow stages of a long run are named in the legend, not by labels that overlap."""
    import json

    from rnnrbm_cli.plot import curves_figure, read_metrics

    stages = ["rbm"] * 2 + ["rnn"] * 3 + ["fine"] * 95
    lines = [json.dumps({"epoch": e, "stage": st, "train_monitor": -10.0 + e / 100, "seconds": 1.0})
             for e, st in enumerate(stages, start=1)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    fig = curves_figure(read_metrics(tmp_path))
    top, seconds = fig.axes
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert labels.count("RBM pretraining") == 1 and labels.count("RNN pretraining") == 1, labels
    assert len(top.texts) == 0
    for ax in (top, seconds):
        spans = [p for p in ax.patches if p.get_alpha() == 0.12]
        assert [(p.get_x(), p.get_x() + p.get_width()) for p in spans] == [(0.5, 2.5), (2.5, 5.5)]
