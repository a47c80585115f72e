"""A run's report: one self-contained HTML page to look at and to listen to.

The page holds the run's settings (``config.json``), its training curves and a summary per
stage (``metrics.jsonl``), the evaluations saved in the run directory, and a few pieces
generated from ``best.pt``, each drawn as a piano-roll and playable in the page. Everything
is embedded: pictures as base64 PNG and audio as base64 WAV ``data:`` URIs, so the file
opens offline, from any folder, attached to a mail; its Content-Security-Policy lets it
load nothing from anywhere.

Evaluations. Any ``eval*.json`` file in the run directory holding one object as
``rnnrbm evaluate --json`` prints it is shown, one row each:

    rnnrbm evaluate RUN/best.pt --split test --json > RUN/eval-test.json

Audio comes from the built-in synthesiser (``synth.synthesize``: the same everywhere, no
SoundFont needed) at 22 050 Hz, and is bounded: a request whose embedded audio would pass
:data:`MAX_AUDIO_BYTES` is refused before any work.

    >>> from rnnrbm_cli.report import report_run
    >>> report_run("runs/nottingham-20261124-120000", samples=2, steps=64, seed=1).path  # doctest: +SKIP
    PosixPath('runs/nottingham-20261124-120000/report.html')
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.rundir import CONFIG_FILE, METRICS_FILE, Metrics, read_metrics

REPORT_FILE = "report.html"  # the default output, in the run directory
EVAL_PATTERN = "eval*.json"  # evaluations saved in the run directory (rnnrbm evaluate --json > RUN/eval-test.json)
MAX_EVAL_FILE_BYTES = 1_000_000  # an evaluation is a few hundred bytes; a bigger file is not one
DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_K = 2, 64, 25  # two short pieces; sample's k
MAX_SAMPLES = 100
SAMPLE_RATE = 22_050  # Hz: half of CD quality, half the bytes, plenty for the built-in synth
MAX_AUDIO_BYTES = 50_000_000  # the most embedded (base64) audio one report may hold: 50 MB
ROLL_SIZE = (1000, 360)  # pixels of each piece's piano-roll
BEST_FILE = "best.pt"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report_run` wrote."""

    path: Path  # the HTML file
    bytes: int  # its size
    pieces: int  # generated pieces embedded
    frames: int  # frames per piece
    seconds: float  # seconds per piece
    seed: int
    evaluations: int  # evaluation files shown
    epochs: int  # completed epochs in metrics.jsonl
    skipped_lines: tuple[int, ...] = ()  # unreadable metrics lines left out
    notes: tuple[str, ...] = ()  # what the page says is missing or left out

    def to_json(self) -> dict[str, Any]:
        return {"html": str(self.path), "bytes": self.bytes, "pieces": self.pieces, "frames": self.frames,
                "seconds": self.seconds, "seed": self.seed, "evaluations": self.evaluations, "epochs": self.epochs,
                "skipped_lines": list(self.skipped_lines), "notes": list(self.notes)}


def audio_bytes_bound(pieces: int, seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """The most base64 bytes the audio of ``pieces`` pieces of ``seconds`` seconds embeds."""
    from rnnrbm_cli.synth import builtin_length

    wav = 44 + 2 * builtin_length(seconds, sample_rate)  # RIFF header, 16-bit mono samples
    return pieces * 4 * math.ceil(wav / 3)


def report_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    k: int = DEFAULT_K,
    device: str = "cpu",
    backend: str = "auto",
    force: bool = False,
    max_audio_bytes: int = MAX_AUDIO_BYTES,
    on_message: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write one self-contained HTML report of the run in ``run_dir``; return what it holds.

    Parameters
    ----------
    run_dir : path
        A training run directory (config.json, metrics.jsonl, best.pt). A run still
        training is fine: the page shows the epochs completed so far.
    out : path, optional
        The HTML file; default ``run_dir/report.html``. An existing file is replaced only
        with ``force``; it is written atomically.
    samples : pieces generated from best.pt (0: none, and best.pt is not needed).
    steps : frames per piece.
    seed : seeds the sampler: the same seed gives the same pieces.
    k : Gibbs steps per frame, for a model sampled by Gibbs chains (others ignore it).
    device, backend : where and by whom the pieces are sampled (as ``rnnrbm sample``).
    max_audio_bytes : refuse a request whose embedded audio could pass this many bytes.
    on_message : hears progress (the compiled sampler's first compilation).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RnnrbmError(f"{run_dir} is not a folder; give the run directory that rnnrbm train wrote.")
    if not 0 <= samples <= MAX_SAMPLES:
        raise RnnrbmUsageError(f"--samples must be in 0..{MAX_SAMPLES}, not {samples}.")
    if steps < 1 or k < 1:
        raise RnnrbmUsageError(f"--steps and --k must be at least 1, not {min(steps, k)}.")
    target = Path(out) if out is not None else run_dir / REPORT_FILE
    if target.is_dir():
        raise RnnrbmUsageError(f"{target} is a folder; give -o an .html file name.")
    if target.exists() and not force:
        raise RnnrbmError(f"{target} already exists; pass --force to replace it.")
    best = run_dir / BEST_FILE
    if samples and not best.is_file():
        raise RnnrbmError(f"{run_dir} has no {BEST_FILE} to sample from (train writes it after the first epoch); "
                          "wait for one, or pass --samples 0.")
    notes: list[str] = []

    config = _read_config(run_dir, notes)
    metrics = _read_metrics(run_dir, notes)
    model = payload = None
    if best.is_file():
        from rnnrbm_cli.checkpoint import load_model
        from rnnrbm_cli.device import resolve_device

        model, payload = load_model(best, resolve_device(device))

    pieces, dt = [], None
    if samples:
        pieces, dt = _pieces(model, payload, best, samples=samples, steps=steps, k=k, seed=seed, backend=backend,
                             max_audio_bytes=max_audio_bytes, on_message=on_message)
    evaluations = _read_evaluations(run_dir)

    page = _page(run_dir, config, metrics, model, payload, evaluations, pieces,
                 steps=steps, dt=dt, k=k, seed=seed, notes=notes)
    data = page.encode("utf-8")
    try:
        with atomic_open(target, "wb") as f:
            f.write(data)
    except OSError as e:
        raise RnnrbmError(f"cannot write {target} ({e.strerror or e}); choose another place with -o.") from None
    return ReportResult(
        path=target, bytes=len(data), pieces=len(pieces), frames=steps if pieces else 0,
        seconds=steps * dt if pieces else 0.0, seed=seed, evaluations=sum(1 for e in evaluations if e[1] is not None),
        epochs=len(metrics.epochs) if metrics else 0, skipped_lines=tuple(metrics.skipped) if metrics else (),
        notes=tuple(notes),
    )


# -- reading the run ------------------------------------------------------------------------


def _read_config(run_dir: Path, notes: list[str]) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{CONFIG_FILE} does not exist")
        return None
    except (OSError, ValueError) as e:
        notes.append(f"{CONFIG_FILE} cannot be read ({getattr(e, 'strerror', None) or e})")
        return None
    if not isinstance(config, dict):
        notes.append(f"{CONFIG_FILE} is not a JSON object")
        return None
    return config


def _read_metrics(run_dir: Path, notes: list[str]) -> Metrics | None:
    if not (run_dir / METRICS_FILE).exists():
        notes.append(f"{METRICS_FILE} does not exist")
        return None
    metrics = read_metrics(run_dir)
    if metrics.skipped:
        notes.append(f"unreadable line(s) {', '.join(map(str, metrics.skipped))} of {METRICS_FILE} are left out")
    return metrics


def _read_evaluations(run_dir: Path) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(file name, the evaluation or None, why it is not one) for each eval*.json, by name."""
    found = []
    for path in sorted(run_dir.glob(EVAL_PATTERN)):
        if not path.is_file():
            continue
        try:
            if path.stat().st_size > MAX_EVAL_FILE_BYTES:
                found.append((path.name, None, f"larger than {MAX_EVAL_FILE_BYTES:,} bytes"))
                continue
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            found.append((path.name, None, f"not readable JSON ({getattr(e, 'strerror', None) or e})"))
            continue
        if not isinstance(record, dict) or not _number(record.get("log_likelihood")):
            found.append((path.name, None, "not the output of rnnrbm evaluate --json (no log_likelihood)"))
            continue
        found.append((path.name, record, None))
    return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the pieces -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    png: bytes
    wav: bytes
    seconds: float  # length of the audio


def _pieces(model, payload, best: Path, *, samples: int, steps: int, k: int, seed: int, backend: str,
            max_audio_bytes: int, on_message) -> tuple[list[_Piece], float]:
    from rnnrbm_cli import synth
    from rnnrbm_cli.pianoroll import N_KEYS, roll_to_midi
    from rnnrbm_cli.plot import roll_figure
    from rnnrbm_cli.sample import check_size, generate_rolls, output_dt

    if model.config.n_visible != N_KEYS:
        raise RnnrbmError(f"{best} holds a model of {model.config.n_visible} visible units, not one per piano key "
                          f"({N_KEYS}), so what it samples cannot be played; pass --samples 0.")
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    dt = output_dt(data)
    bound = audio_bytes_bound(samples, steps * dt)
    if bound > max_audio_bytes:
        raise RnnrbmUsageError(
            f"{samples} piece{'s' if samples != 1 else ''} of {steps:,} frames ({steps * dt:,.1f} s each) would embed up to "
            f"{bound / 1e6:,.1f} MB of audio, more than the {max_audio_bytes / 1e6:g} MB a report may hold; "
            "lower --samples or --steps."
        )
    check_size(samples, steps)
    rolls = generate_rolls(model, samples, steps, k=k, seed=seed, backend=backend, on_message=on_message)
    pieces = []
    for i, roll in enumerate(rolls, start=1):
        fig = roll_figure(roll, frame_length=dt, unit="s", title=f"piece {i} of {samples}: seed {seed}",
                          width=ROLL_SIZE[0], height=ROLL_SIZE[1])
        wave = synth.synthesize(roll_to_midi(roll, dt), SAMPLE_RATE)
        audio = synth.Audio(wave, SAMPLE_RATE, "builtin", None, None)
        pieces.append(_Piece(_png_of(fig), synth.wav_bytes(audio), wave.size / SAMPLE_RATE))
    return pieces, dt


# -- the page ----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _png_of(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value)


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table of already-escaped cells."""
    out = [f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    out += [f"<th>{h}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _settings_section(config: dict[str, Any] | None) -> str:
    if config is None:
        return "<p>This run has no readable config.json.</p>"
    rows = []
    for section, values in config.items():
        if isinstance(values, dict):
            for i, (key, value) in enumerate(values.items()):
                rows.append([_e(section) if i == 0 else "", f"<code>{_e(key)}</code>", _e(_value(value))])
        else:
            rows.append([_e(section), "", _e(_value(values))])
    return _table(["section", "setting", "value"], rows, "settings")


def _ll_method(model, config: dict[str, Any] | None) -> str:
    """How the run's validation LL was found: exactly, or by AIS / RAISE with its sizes."""
    from rnnrbm_cli.models import record_of

    if model is not None and record_of(model).exact:
        return "computed exactly (this model's likelihood needs no partition-function estimate), on every validation frame"
    e = (config or {}).get("eval") if isinstance((config or {}).get("eval"), dict) else {}
    method = {"ais": "AIS (forward annealing: errs high when the betas are too few)",
              "raise": "RAISE (reverse annealing from the frames: errs low)"}.get(e.get("eval_method"), None)
    if method is None:
        return "estimated (config.json does not say how)"
    return (f"estimated by {method}, {_e(e.get('eval_chains'))} chains x {_e(e.get('eval_betas'))} betas, "
            f"on a fixed subset of {_e(e.get('eval_frames'))} validation frames")


def _stages_table(metrics: Metrics) -> str:
    from rnnrbm_cli.stages import STAGE_NAMES

    groups: list[tuple[str, list[dict[str, Any]]]] = []
    for record in metrics.epochs:
        stage = record.get("stage", "fine")
        if not groups or groups[-1][0] != stage:
            groups.append((stage, []))
        groups[-1][1].append(record)

    def last(records, key):
        values = [r.get(key) for r in records if _number(r.get(key))]
        return f"{values[-1]:.3f}" if values else "–"

    rows = []
    for stage, records in groups:
        lls = [r for r in records if _number(r.get("valid_ll"))]
        best = max(lls, key=lambda r: r["valid_ll"]) if lls else None
        best_cell = "–" if best is None else (
            f"{best['valid_ll']:.3f} ± {best.get('valid_ll_stderr') or 0:.3f} (epoch {best['epoch']})")
        seconds = sum(r.get("seconds") or 0 for r in records if _number(r.get("seconds")))
        first, final = records[0]["epoch"], records[-1]["epoch"]
        rows.append([_e(STAGE_NAMES.get(stage, stage)), f"{first}–{final}" if first != final else f"{first}",
                     last(records, "train_monitor"), last(records, "valid_monitor"), best_cell,
                     _e(_value(records[-1].get("lr", "–"))), f"{seconds:,.1f}"])
    return _table(["stage", "epochs", "last train monitor", "last valid monitor", "best valid LL", "last lr",
                   "seconds"], rows, "numbers")


def _training_section(run_dir: Path, metrics: Metrics | None, model, config) -> str:
    if metrics is None or not metrics.epochs:
        return "<p>No completed epoch yet: there are no training curves to show.</p>"
    from rnnrbm_cli.plot import curves_figure

    parts = [_stages_table(metrics)]
    parts.append("<p>The monitor is the tutorial's reconstruction pseudo-log-likelihood (nats per frame). "
                 f"Validation LL (nats per frame) was {_ll_method(model, config)}.</p>")
    fig = curves_figure(metrics, title=f"{run_dir.resolve().name}: training curves")
    parts.append(f'<img id="curves" class="curves" alt="training curves of {_e(run_dir.name)}" '
                 f'src="{_data_uri("image/png", _png_of(fig))}">')
    if metrics.partial_last_line:
        parts.append("<p>The run was writing an epoch's line when this report was made; it is left out.</p>")
    return "".join(parts)


def _evaluation_section(run_dir: Path, evaluations) -> str:
    how = (f"<code>rnnrbm evaluate {_e(run_dir)}/best.pt --split test --json &gt; {_e(run_dir)}/eval-test.json</code>")
    if not evaluations:
        return (f"<p>No evaluation results in this run (no <code>{EVAL_PATTERN}</code> file). Save one with {how}.</p>")
    rows, bad = [], []
    for name, r, why in evaluations:
        if r is None:
            bad.append(f"<li><code>{_e(name)}</code>: {_e(why)}</li>")
            continue
        ll = f"{r['log_likelihood']:.3f}"
        if _number(r.get("log_likelihood_stderr")):
            ll += f" ± {r['log_likelihood_stderr']:.3f}"
        if _number(r.get("raise_log_likelihood")):
            ll += f"<br>RAISE {r['raise_log_likelihood']:.3f}"
            if _number(r.get("raise_log_likelihood_stderr")):
                ll += f" ± {r['raise_log_likelihood_stderr']:.3f}"
        if r.get("gibbs") is None and "gibbs" in r:
            method = "exact"
        elif r.get("method") == "exact":
            method = "exact log Z"
        else:
            method = f"{_e(r.get('method', '?'))}, {_e(r.get('chains', '?'))} chains x {_e(r.get('betas', '?'))} betas"
        acc = f"{r['frame_accuracy']:.2f}" if _number(r.get("frame_accuracy")) else "–"
        frames = f"{r['frames']:,}" if isinstance(r.get("frames"), int) else "–"
        rows.append([f"<code>{_e(name)}</code>", _e(r.get("split", "?")), ll, method, acc, frames,
                     _e(Path(str(r.get("checkpoint", "?"))).name), _e(Path(str(r.get("data", "?"))).name)])
    parts = []
    if rows:
        parts.append(_table(["file", "split", "LL (nats per frame)", "LL by", "ACC (%)", "frames", "checkpoint", "data"],
                            rows, "numbers"))
    else:
        parts.append(f"<p>No evaluation results in this run. Save one with {how}.</p>")
    if bad:
        parts.append("<p>Left out:</p><ul>" + "".join(bad) + "</ul>")
    return "".join(parts)


def _pieces_section(pieces: list[_Piece], payload, model, *, steps, dt, k, seed) -> str:
    if not pieces:
        return "<p>No pieces were asked for (<code>--samples 0</code>).</p>"
    from rnnrbm_cli.models import record_of

    chains = f", {k} Gibbs steps per frame" if record_of(model).uses_gibbs else ""  # k means nothing to an exact sampler
    epoch = payload.get("epoch")
    parts = [f"<p>{len(pieces)} piece{'s' if len(pieces) != 1 else ''} of {steps} frames "
             f"({steps * dt:.1f} s at {dt:g} s a frame) sampled from <code>best.pt</code>"
             f"{f' (epoch {_e(epoch)})' if isinstance(epoch, int) else ''}, seed {seed}{chains}. "
             "Audio by the built-in synthesiser: the same simple tone for every instrument, enough to hear the "
             "music, not to judge the timbre (<code>rnnrbm sample --wav</code> uses FluidSynth where it can).</p>"]
    for i, piece in enumerate(pieces, start=1):
        parts.append(
            f'<figure class="piece" id="piece-{i}">'
            f'<img alt="piano-roll of piece {i}" src="{_data_uri("image/png", piece.png)}">'
            f'<figcaption>Piece {i} ({piece.seconds:.1f} s)</figcaption>'
            f'<audio controls preload="metadata" src="{_data_uri("audio/wav", piece.wav)}"></audio>'
            "</figure>"
        )
    return "".join(parts)


# The page's only script. It does nothing unless the page is opened with ?selfcheck=1: then,
# once everything has loaded, it writes what a visitor would get (pictures drawn, players
# playable) into a hidden element, for a headless browser's --dump-dom to read.
_SELFCHECK = """
(function () {
  if (!/[?&]selfcheck=1(&|$)/.test(location.search)) return;
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var audios = Array.prototype.slice.call(document.querySelectorAll("audio"));
    var curves = document.getElementById("curves");
    var durations = [], done = 0, written = false;
    function write() {
      if (written) return;
      written = true;
      var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
      var playable = durations.filter(function (d) { return d > 0 && isFinite(d); }).length;
      var out = document.createElement("div");
      out.id = "selfcheck";
      out.hidden = true;
      out.setAttribute("data-check", "images:" + images.length + " broken:" + broken + " curves:" +
        (curves && curves.naturalWidth > 0 ? 1 : 0) + " audio:" + audios.length + " playable:" + playable);
      out.setAttribute("data-durations", durations.join(" "));
      document.body.appendChild(out);
    }
    function settle(audio, duration) {
      if (audio.dataset.checked) return;
      audio.dataset.checked = "1";
      durations[audios.indexOf(audio)] = duration;
      if (++done === audios.length) write();
    }
    audios.forEach(function (audio) {
      audio.addEventListener("loadedmetadata", function () { settle(audio, audio.duration); });
      audio.addEventListener("error", function () { settle(audio, 0); });
      if (audio.readyState >= 1) settle(audio, audio.duration);
    });
    if (!audios.length) write();
    setTimeout(write, 4000);  // a player that never answers counts as not playable
  });
})();
"""

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1040px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #eee; padding: 0.2em 0.8em 0.2em 0; text-align: left; vertical-align: top; }
table.numbers td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; }
figure.piece { margin: 1.2em 0; } figure.piece audio { width: 100%; margin-top: 0.3em; }
.meta, figcaption { color: #666; font-size: 0.9em; } code { font-size: 0.92em; }
"""

# Nothing loads from anywhere: pictures and audio are data: URIs, style and script inline.
_CSP = ("default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")


def _page(run_dir: Path, config, metrics, model, payload, evaluations, pieces, *, steps, dt, k, seed, notes) -> str:
    from rnnrbm_cli import __version__

    name = run_dir.resolve().name
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    missing = ("<p class=\"meta\">Missing from the run: " + _e("; ".join(notes)) + ".</p>") if notes else ""
    sections = [
        ("settings", "Settings", _settings_section(config)),
        ("training", "Training", _training_section(run_dir, metrics, model, config)),
        ("evaluation", "Evaluation", _evaluation_section(run_dir, evaluations)),
        ("pieces", "Generated pieces", _pieces_section(pieces, payload, model, steps=steps, dt=dt, k=k, seed=seed)),
    ]
    nav = " · ".join(f'<a href="#{sid}">{title}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{content}</section>' for sid, title, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>rnnrbm report: {_e(name)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>{_e(name)}</h1>"
        f'<p class="meta">Report of <code>{_e(run_dir)}</code>, written {_e(when)} by rnnrbm {_e(__version__)}.</p>'
        f"{missing}<nav>{nav}</nav>{body}"
        f"<script>{_SELFCHECK}</script></body></html>\n"
    )
