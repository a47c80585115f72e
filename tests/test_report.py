"""`rnnrbm report` and rnnrbm_cli.report: one self-contained HTML page of a run, read back as a
person would see it (headless Chromium, where installed) and as bytes (html.parser)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from rnnrbm_cli import models
from rnnrbm_cli.report import DEFAULT_STEPS, MAX_AUDIO_BYTES, SAMPLE_RATE, audio_bytes_bound, report_run
from rnnrbm_cli.synth import builtin_length

from conftest import make_trainer, one_sentence_error, png_size, run, write_toy_npz

DT = 0.25  # the toy data's seconds per frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(model_type)``: a small run of that model on the toy data, trained once for
    the module and copied for each test (tests write into it): an RBM pretraining epoch where
    the model has one, three of fine-tuning, validation LL at epochs 2 and 4."""
    base = tmp_path_factory.mktemp("runs")
    toy = write_toy_npz(base / "toy.npz")
    runs: dict[str, Path] = {}

    def copy(model_type: str, to: Path) -> Path:
        if model_type not in runs:
            pretrain = {"pretrain_rbm_epochs": 1} if models.record(model_type).uses_gibbs else {}
            runs[model_type] = make_trainer(toy, base / model_type, epochs=3, eval_every=2, eval_chains=4, eval_betas=10,
                                            eval_frames=40, backend="torch", model_type=model_type, **pretrain).train().run_dir
        return Path(shutil.copytree(runs[model_type], to))

    return copy


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """This test's copy of the trained RNN-RBM run."""
    return trained(models.DEFAULT_MODEL_TYPE, tmp_path / "run")


class _Page(html.parser.HTMLParser):
    """The tags a report's test looks at: images, audio players, table cells, the script."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.audios: list[dict] = []
        self.metas: list[dict] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "audio":
            self.audios.append(attrs)
        elif tag == "meta":
            self.metas.append(attrs)
        for name in ("href", "src"):
            if name in attrs:
                self.links.append(attrs[name])

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def data_uri(uri: str, kind: str) -> bytes:
    prefix = f"data:{kind};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri[len(prefix):], validate=True)


# -- the page's bytes -------------------------------------------------------------------------


def test_the_report_embeds_every_picture_and_sound_and_loads_nothing(run_dir, tmp_path):
    result = report_run(run_dir, samples=2, steps=DEFAULT_STEPS, seed=5, backend="torch")
    assert result.path == run_dir / "report.html" and result.path.stat().st_size == result.bytes
    assert (result.pieces, result.frames, result.epochs, result.evaluations) == (2, DEFAULT_STEPS, 4, 0)
    page = parse(result.path)

    # the curves and one piano-roll per piece, as PNGs of the sizes plot draws
    curves, *rolls = page.images
    assert curves["id"] == "curves"
    with open(tmp_path / "c.png", "wb") as f:
        f.write(data_uri(curves["src"], "image/png"))
    assert png_size(tmp_path / "c.png") == (1000, 700)
    assert len(rolls) == 2
    for i, image in enumerate(rolls):
        (tmp_path / f"{i}.png").write_bytes(data_uri(image["src"], "image/png"))
        assert png_size(tmp_path / f"{i}.png") == (1000, 360)

    # one player per piece: 16-bit mono WAV at the report's rate, as long as the piece and its release
    assert len(page.audios) == 2
    for audio in page.audios:
        assert "controls" in audio
        with wave.open(io.BytesIO(data_uri(audio["src"], "audio/wav"))) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
            assert w.getnframes() <= builtin_length(DEFAULT_STEPS * DT, SAMPLE_RATE)
            assert w.getnframes() > 0.5 * DEFAULT_STEPS * DT * SAMPLE_RATE
            assert any(w.readframes(w.getnframes()))  # not silence

    # nothing from anywhere: every link is a data: URI or a place in the page, and the policy forbids the rest
    assert all(link.startswith(("data:", "#")) for link in page.links), [l[:40] for l in page.links]
    (csp,) = [m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp.startswith("default-src 'none'")

    text = " ".join(page.text)
    assert "n_hidden" in text and "16" in text  # the settings table
    assert "RBM pretraining" in text and "training" in text  # the stages
    assert "estimated by AIS" in text and "4 chains x 10 betas" in text  # how the validation LL was found
    assert "No evaluation results in this run" in text and "eval-test.json" in text
    assert "seed 5" in text and "25 Gibbs steps per frame" in text


def test_the_same_seed_gives_the_same_pieces(run_dir, tmp_path):
    a = report_run(run_dir, tmp_path / "a.html", samples=1, steps=16, seed=3, backend="torch")
    b = report_run(run_dir, tmp_path / "b.html", samples=1, steps=16, seed=3, backend="torch")
    c = report_run(run_dir, tmp_path / "c.html", samples=1, steps=16, seed=4, backend="torch")
    sounds = [parse(r.path).audios[0]["src"] for r in (a, b, c)]
    assert sounds[0] == sounds[1] != sounds[2]


@pytest.mark.parametrize("model_type", models.model_types())
def test_every_model_reports_and_only_a_gibbs_sampler_names_k(trained, tmp_path, model_type):
    run_dir = trained(model_type, tmp_path / "run")
    result = report_run(run_dir, samples=1, steps=8, backend="torch")
    page = parse(result.path)
    text = " ".join(page.text)
    assert len(page.audios) == 1 and len(page.images) == 2
    uses_gibbs = models.record(model_type).uses_gibbs
    assert ("Gibbs steps per frame" in text) == uses_gibbs
    assert ("computed exactly" in text) == models.record(model_type).exact


def test_saved_evaluations_are_shown_and_other_files_named(run_dir, tmp_path):
    r = run("evaluate", run_dir / "best.pt", "--max-frames", "40", "--chains", "4", "--betas", "10", "--samples", "2",
            "--gibbs", "2", "--backend", "torch", "--json")
    assert r.exit_code == 0, r.stderr
    (run_dir / "eval-test.json").write_text(r.stdout)
    (run_dir / "eval-notes.json").write_text('{"comment": "not an evaluation"}')
    (run_dir / "eval-broken.json").write_text("{")
    result = report_run(run_dir, samples=0)
    assert result.evaluations == 1 and result.pieces == 0
    text = " ".join(parse(result.path).text)
    assert f"{json.loads(r.stdout)['log_likelihood']:.3f}" in text
    assert "eval-notes.json" in text and "no log_likelihood" in text
    assert "eval-broken.json" in text and "not readable JSON" in text
    assert "No evaluation results" not in text and "--samples 0" in text


def test_a_run_without_a_completed_epoch_says_so(tmp_path):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"model": {"n_hidden": 7}}')
    result = report_run(run_dir, samples=0)
    text = " ".join(parse(result.path).text)
    assert "No completed epoch yet" in text and "metrics.jsonl does not exist" in text
    assert result.notes == ("metrics.jsonl does not exist",)


# -- the command ----------------------------------------------------------------------------------


def test_report_prints_the_path_and_refuses_to_replace_without_force(run_dir, tmp_path):
    out = tmp_path / "page.html"
    r = run("report", run_dir, "-o", out, "--samples", "1", "--steps", "8", "--backend", "torch")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out) and out.is_file()
    before = out.read_bytes()
    assert "already exists" in one_sentence_error(run("report", run_dir, "-o", out, "--samples", "0"), 1)
    assert out.read_bytes() == before
    r = run("report", run_dir, "-o", out, "--samples", "0", "--force", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["html"] == str(out) and json.loads(r.stdout)["pieces"] == 0


def test_audio_past_the_bound_is_refused_before_any_work(run_dir, tmp_path):
    steps = 20_000  # 5000 s a piece at 0.25 s a frame: 300 MB of base64 audio
    assert audio_bytes_bound(2, steps * DT) > MAX_AUDIO_BYTES
    line = one_sentence_error(run("report", run_dir, "--steps", steps), 2)
    assert "50 MB" in line and "--steps" in line
    assert not (run_dir / "report.html").exists()


def test_a_run_without_best_pt_asks_for_samples_0(tmp_path):
    (tmp_path / "r").mkdir()
    line = one_sentence_error(run("report", tmp_path / "r"), 1)
    assert "best.pt" in line and "--samples 0" in line


def test_the_cli_spells_the_report_values_exactly():
    from rnnrbm_cli import cli_report, report

    assert cli_report._REPORT_DEFAULTS == {"samples": report.DEFAULT_SAMPLES, "steps": report.DEFAULT_STEPS,
                                           "k": report.DEFAULT_K}
    assert cli_report._MAX_SAMPLES == report.MAX_SAMPLES
    assert cli_report._MAX_AUDIO_MB * 1_000_000 == report.MAX_AUDIO_BYTES


# -- what a person sees: headless Chromium ----------------------------------------------------------

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


def dump_dom(page: Path, profile: Path, query: str = "") -> str:
    """The page's DOM after Chromium loaded it and ran its script (5 s of virtual time)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri() + query]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (apt-get install chromium; .ci/run installs it where apt can)")
def test_in_a_browser_the_curves_and_rolls_are_drawn_and_every_piece_plays(run_dir, tmp_path):
    result = report_run(run_dir, samples=2, steps=32, seed=1, backend="torch")

    dom = dump_dom(result.path, tmp_path / "profile", "?selfcheck=1")
    found = re.search(r'<div id="selfcheck"[^>]*data-check="([^"]*)"[^>]*data-durations="([^"]*)"', dom)
    assert found, "the page's self-check wrote nothing: " + dom[-500:]
    assert found.group(1) == "images:3 broken:0 curves:1 audio:2 playable:2"
    # each player knows the length of its own sound
    lengths = []
    for audio in parse(result.path).audios:
        with wave.open(io.BytesIO(data_uri(audio["src"], "audio/wav"))) as w:
            lengths.append(w.getnframes() / w.getframerate())
    assert [float(d) for d in found.group(2).split()] == pytest.approx(lengths, abs=0.01)

    # opened as a person opens it, the page stays clean: no self-check
    assert 'id="selfcheck"' not in dump_dom(result.path, tmp_path / "profile2")
