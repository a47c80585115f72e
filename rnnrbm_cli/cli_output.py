"""The commands that read a model or a run: sample, plot, evaluate."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from rnnrbm_cli.cli import (
    _EVAL_DEFAULTS, _LL_METHODS, _MAX_DPI, _MAX_EVAL, _MAX_K, _MAX_PIXELS, SEED, FloatRange, _backend_option, _cache_dir_option, cli,
    err_console, fail, out_console, print_json,
)


# == sample, plot =========================================================================


@cli.command("sample")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.mid")
@click.option("--steps", type=click.IntRange(min=1), help="Frames to generate (after the primer).  [default: 200]")
@click.option("--seconds", type=FloatRange(min=0, min_open=True), help="Or: how many seconds to generate (after the primer), on the file's grid.")
@click.option("--temperature", type=FloatRange(0.01, 100), default=1.0, show_default=True, help="Below 1 sharper (fewer stray notes), above 1 wilder: each frame's energies or note logits divided by it.")
@click.option("--transpose-to", metavar="KEY", help="Move the pieces from C to this key (D, F#, Bb minor, ...), for a model trained on rolls transposed to C (the benchmark rolls).")
@click.option("--k", type=click.IntRange(1, _MAX_K), help="Gibbs steps per generated frame (an RNN-RBM's; other models sample exactly).  [default: 25]")
@click.option("--num", type=click.IntRange(min=1), default=1, show_default=True, help="Pieces, sampled in one batch: OUT-001.mid, OUT-002.mid, ...")
@click.option("--seed", type=SEED, help="Seed of the sampler; the same seed writes the same files.  [default: random, reported]")
@click.option("--primer", type=click.Path(exists=True, path_type=Path), help="MIDI file or prepared .npz (or .rnnrbm) that every piece begins with and continues.")
@click.option("--primer-steps", type=click.IntRange(min=1), help="Use only the primer's first N frames.")
@click.option("--split", help="Split of an .npz primer.  [default: test]")
@click.option("--index", type=click.IntRange(min=0), help="Sequence of that split.  [default: 0]")
@click.option("--dt", type=FloatRange(min=0, min_open=True), help="Seconds per frame in the files.  [default: the checkpoint's grid]")
@click.option("--tempo", type=FloatRange(min=0, min_open=True), help="Beats per minute, for a model trained on a beat grid.  [default: 120]")
@click.option("--program", type=click.IntRange(0, 127), default=0, show_default=True, help="General MIDI instrument (0 = acoustic grand piano).")
@click.option("--velocity", type=click.IntRange(1, 127), default=80, show_default=True, help="Velocity of every note.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@_backend_option
@click.option("--wav", is_flag=True, help="Also write OUT.wav: FluidSynth with a SoundFont ($RNNRBM_SOUNDFONT) if available, else a built-in synth.")
@click.option("--png", is_flag=True, help="Also write OUT.png, the piano-roll.")
@click.option("-f", "--force", is_flag=True, help="Replace output files that exist.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object listing every file written.")
def sample_cmd(checkpoint: Path, out: Path, as_json: bool, **options) -> None:
    """Generate music from a checkpoint and write it as MIDI; print the paths.

    All --num pieces are sampled together, one frame at a time, each frame from a
    fresh k-step Gibbs chain. With --primer the model first reads the primer (a MIDI
    file, sampled on the model's grid, or a sequence of a prepared .npz) and each piece
    begins with it. Each frame lasts the checkpoint's dt, or 60/tempo/beat_division
    seconds for a model trained on a beat grid. Existing files are replaced only with
    --force, and nothing is written if any of them exists.

    \b
    Example:
      rnnrbm sample runs/nottingham/best.pt song.mid --num 4 --seed 1 --png --wav
      rnnrbm sample runs/nottingham/best.pt calm.mid --seconds 30 --temperature 0.8 --transpose-to D --program 24
    """
    from rnnrbm_cli.sample import sample

    # Off a terminal (a log, CI, nohup) a long sample says where it is; on one, its messages suffice.
    progress = None if sys.stderr.isatty() else (lambda text: click.echo(text, err=True))
    result = sample(checkpoint, out, on_message=lambda text: err_console.print(escape(text), soft_wrap=True),
                    on_progress=progress, **options)
    if result.audio == "fluidsynth":
        err_console.print(f"Audio rendered with FluidSynth and {escape(str(result.soundfont))}.", soft_wrap=True)
    elif result.audio == "builtin":
        err_console.print(f"Audio rendered with the built-in synthesiser: {escape(result.audio_note or '')}.", soft_wrap=True)
    err_console.print(
        f"Wrote {len(result.files)} piece{'s' if len(result.files) != 1 else ''} of {result.frames} frames "
        f"({result.seconds:.1f} s at dt={result.dt:g} s), seed {result.seed}, in {result.generate_seconds:.1f} s.",
        soft_wrap=True,
    )
    if as_json:
        print_json(result.to_json())
    else:
        for entry in result.files:
            for path in entry.values():
                click.echo(str(path))


@cli.command("plot")
@click.argument("source", type=click.Path(path_type=Path), metavar="FILE.mid|FILE.npz|DATA.rnnrbm|RUN_DIR")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write.  [default: beside the input: FILE.png, FILE-SPLIT-INDEX.png, RUN_DIR/training.png]")
@click.option("--split", help="Split of a prepared .npz.  [default: test]")
@click.option("--index", type=click.IntRange(min=0), help="Sequence of that split.  [default: 0]")
@click.option("--dt", type=FloatRange(min=0, min_open=True), help="Seconds per frame when sampling a MIDI file.  [default: 0.05]")
@click.option("--width", type=click.IntRange(50, _MAX_PIXELS), help="Width in pixels.  [default: 1200, training curves 1000]")
@click.option("--height", type=click.IntRange(50, _MAX_PIXELS), help="Height in pixels.  [default: 500, training curves 700]")
@click.option("--dpi", type=click.IntRange(10, _MAX_DPI), default=100, show_default=True, help="Scale of text and lines (not of the pixel size).")
@click.option("--show", is_flag=True, help="Also open the figure in a window, where there is a display.")
@click.option("-f", "--force", is_flag=True, help="Replace the PNG if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object naming the file written.")
def plot_cmd(source: Path, as_json: bool, **options) -> None:
    """Draw a piano-roll of a MIDI file or prepared data, or a run's training curves.

    A piano-roll shows time (seconds, or beats for beat-grid data) against MIDI note
    number, notes dark on white, trimmed to the pitches used. For a run directory it
    plots metrics.jsonl: train and validation monitor (and validation log-likelihood
    and accuracy when measured) per epoch, and seconds per epoch; a run still training
    is fine. The PNG goes beside the input unless -o says otherwise.

    \b
    Example:
      rnnrbm plot song.mid -o song.png --width 1600 --height 600
      rnnrbm plot runs/nottingham-20261124-120000
    """
    from rnnrbm_cli.plot import plot_file

    result = plot_file(source, **options)
    if result.skipped_lines:
        lines = ", ".join(map(str, result.skipped_lines))
        err_console.print(f"Warning: left out unreadable line(s) {lines} of {escape(str(source))}/metrics.jsonl.", soft_wrap=True)
    if result.show_problem:
        err_console.print(f"Warning: cannot open a window: {escape(result.show_problem)}; the figure is in {escape(str(result.path))}.", soft_wrap=True)
    if as_json:
        print_json({"png": str(result.path), "kind": result.kind, "title": result.title})
    else:
        click.echo(str(result.path))




# == evaluate =============================================================================



class _EvalProgress:
    """Progress of an evaluation on stderr, stage by stage.

    On a terminal, a tqdm bar per stage. Elsewhere (a log file, CI, nohup), plain lines: one
    when a stage starts, then at most one every ``interval`` seconds with frames done, rate
    and time left, and one when it ends, so that a long evaluation is never silent.
    """

    def __init__(self, *, interval: float = 10.0, clock=None, terminal: bool | None = None) -> None:
        import time

        self.bars: dict = {}
        self.interval = interval
        self.clock = clock or time.monotonic
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.started: dict[str, float] = {}  # stage -> when it started
        self.said: dict[str, float | None] = {}  # stage -> when a line was last printed (None: ended)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.terminal:
            self._bar(stage, done, total)
            return
        now = self.clock()
        if stage not in self.started:
            self.started[stage] = self.said[stage] = now
            click.echo(f"{stage}: {total:,} frames", err=True)
        elapsed = now - self.started[stage]
        rate = done / elapsed if elapsed > 0 else None
        per_second = f", {rate:,.0f} frames/s" if rate else ""
        if done >= total:
            if self.said.get(stage) is not None:
                click.echo(f"{stage}: {total:,} frames in {_duration(elapsed)}{per_second}", err=True)
            self.said[stage] = None  # ended: nothing more to say
        elif self.said[stage] is not None and now - self.said[stage] >= self.interval and rate:
            self.said[stage] = now
            click.echo(f"{stage}: {done:,}/{total:,} frames ({done / total:.0%}){per_second}, "
                       f"about {_duration((total - done) / rate)} left", err=True)

    def _bar(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="frame", leave=False, file=sys.stderr,
                                          dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@cli.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", help="Registry name or prepared .npz file.  [default: the data the checkpoint was trained on]")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True,
              help="Which split to evaluate.")
@click.option("--chains", type=click.IntRange(1, _MAX_EVAL["chains"]), default=_EVAL_DEFAULTS["chains"], show_default=True,
              help="AIS runs per frame (the paper's 100).")
@click.option("--betas", type=click.IntRange(1, _MAX_EVAL["betas"]), default=_EVAL_DEFAULTS["betas"], show_default=True,
              help="AIS inverse temperatures per run.")
@click.option("--samples", type=click.IntRange(1, _MAX_EVAL["samples"]), default=_EVAL_DEFAULTS["samples"], show_default=True,
              help="Gibbs chains per frame for its note probabilities (used by ACC and the AIS base).")
@click.option("--gibbs", type=click.IntRange(1, _MAX_K), default=_EVAL_DEFAULTS["gibbs"], show_default=True,
              help="Gibbs steps per chain (for ACC, chains start from the previous true frame).")
@click.option("--method", type=click.Choice(_LL_METHODS), default="auto", show_default=True,
              help="log Z by: auto (exact when n_hidden <= 20, else ais), exact, ais (forward annealing: errs high "
                   "when --betas is too few), raise (reverse annealing from the frames: errs low), or both (ais and "
                   "raise on the same frames: they bracket the truth).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Evaluate a seeded random subset of this many frames (a quick estimate).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the frame subset, AIS and Gibbs sampling.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@_backend_option
@click.option("--mirror", default=None, help="Folder or URL base tried before the registry URLs [$RNNRBM_MIRROR].")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate_cmd(checkpoint, data, split, chains, betas, samples, gibbs, method, max_frames, seed, device, backend,
                 mirror, cache_dir, as_json):
    """The paper's LL (nats per frame) and ACC (%) of a checkpoint on a data split.

    Every frame is predicted from its true history and weighted equally, the first
    frame included. log Z of each frame's RBM is exact when n_hidden <= 20, else
    estimated by annealed importance sampling with --chains runs of --betas steps;
    --method both adds the reverse (RAISE) estimate, so that the two bracket the truth.

    \b
    Example:
      rnnrbm evaluate runs/nottingham/best.pt --split test --max-frames 2000
    """
    from rnnrbm_cli.api import evaluate_model
    from rnnrbm_cli.sample import out_of_memory

    progress = _EvalProgress()
    try:
        result = evaluate_model(
            checkpoint, data=data, split=split, chains=chains, betas=betas, samples=samples, gibbs=gibbs,
            max_frames=max_frames, seed=seed, device=device, backend=backend, cache_dir=cache_dir, mirror=mirror,
            progress=progress, method=method, on_message=lambda text: err_console.print(escape(text), soft_wrap=True),
        )
    except Exception as e:
        if not out_of_memory(e):
            raise
        fail(f"ran out of memory evaluating {checkpoint}; lower --chains or --samples, or use --max-frames.")
    finally:
        progress.close()
    if as_json:
        print_json(result)
        return
    _print_evaluation(result)


def _print_evaluation(r: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{escape(r['checkpoint'])} on {r['split']}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right", overflow="fold")
    name = {"raise": "LL (nats per frame, RAISE)", "ais+raise": "LL (nats per frame, AIS)"}.get(r["method"], "LL (nats per frame)")
    table.add_row(name, f"{r['log_likelihood']:.3f} ± {r['log_likelihood_stderr']:.3f}")
    if "raise_log_likelihood" in r:
        table.add_row("LL (RAISE, conservative)", f"{r['raise_log_likelihood']:.3f} ± {r['raise_log_likelihood_stderr']:.3f}")
    table.add_row("ACC (%)", f"{r['frame_accuracy']:.2f}")
    table.add_row("frames", f"{r['frames']:,}")
    annealing = {"ais": "AIS", "raise": "RAISE", "ais+raise": "AIS and RAISE"}
    if r["gibbs"] is None:  # a model whose likelihood is exact: no partition function, no chains
        table.add_row("LL", "exact")
        table.add_row("ACC from", "note probabilities sampled or computed exactly (no Gibbs chain)")
    else:
        method = "exact, by enumeration" if r["method"] == "exact" else f"{annealing[r['method']]}, {r['chains']} chains x {r['betas']} betas"
        table.add_row("log Z", method)
        table.add_row("ACC from", f"{r['samples']} samples x {r['gibbs']} Gibbs steps")
    table.add_row("data", escape(r["data"]))
    table.add_row("seconds", f"{r['seconds']:.1f}")
    out_console.print(table)
