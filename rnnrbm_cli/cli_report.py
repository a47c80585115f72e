"""The report command: a run as one self-contained HTML page (report.py underneath)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from rnnrbm_cli.cli import _MAX_FRAMES, _MAX_K, SEED, _backend_option, cli, err_console, print_json

# report.py's values, spelled out so that --help need not import torch (tests/test_report.py checks them).
_REPORT_DEFAULTS = {"samples": 2, "steps": 64, "k": 25}  # report.DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_K
_MAX_SAMPLES = 100  # report.MAX_SAMPLES
_MAX_AUDIO_MB = 50  # report.MAX_AUDIO_BYTES in MB


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="HTML file to write.  [default: RUN_DIR/report.html]")
@click.option("--samples", type=click.IntRange(0, _MAX_SAMPLES), default=_REPORT_DEFAULTS["samples"], show_default=True,
              help="Pieces to generate from best.pt, each pictured and playable in the page (0 = none).")
@click.option("--steps", type=click.IntRange(1, _MAX_FRAMES), default=_REPORT_DEFAULTS["steps"], show_default=True,
              help=f"Frames per piece (the page's audio may hold {_MAX_AUDIO_MB} MB at most).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the sampler; the same seed gives the same pieces.")
@click.option("--k", type=click.IntRange(1, _MAX_K), default=_REPORT_DEFAULTS["k"], show_default=True,
              help="Gibbs steps per generated frame, for a model sampled by Gibbs chains.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
@_backend_option
@click.option("-f", "--force", is_flag=True, help="Replace the HTML file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the file written.")
def report_cmd(run_dir: Path, as_json: bool, **options) -> None:
    """Write a run as one self-contained HTML page; print its path.

    The page shows the run's settings (config.json), its training curves and a summary
    per stage with the validation LL and how it was found (metrics.jsonl), the
    evaluations saved in the run (every eval*.json file that `rnnrbm evaluate --json`
    wrote), and --samples pieces generated from best.pt, each as a piano-roll and an
    audio player (the built-in synthesiser). Pictures and audio are embedded, so the
    file opens offline and loads nothing from anywhere.

    \b
    Example:
      rnnrbm evaluate runs/nottingham-20261124-120000/best.pt --json > runs/nottingham-20261124-120000/eval-test.json
      rnnrbm report runs/nottingham-20261124-120000 --samples 3 --seed 1
    """
    from rnnrbm_cli.api import report_run

    result = report_run(run_dir, on_message=lambda text: err_console.print(escape(text), soft_wrap=True), **options)
    for note in result.notes:
        err_console.print(f"Note: {escape(note)}.", soft_wrap=True)
    err_console.print(
        f"Wrote a report of {result.epochs} epoch{'s' if result.epochs != 1 else ''}, {result.evaluations} "
        f"evaluation{'s' if result.evaluations != 1 else ''} and {result.pieces} piece{'s' if result.pieces != 1 else ''} "
        f"({result.bytes / 1e6:.1f} MB).", soft_wrap=True,
    )
    if as_json:
        print_json(result.to_json())
    else:
        click.echo(str(result.path))
