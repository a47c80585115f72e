"""The ``rnnrbm`` command line: parse, call the library, print.

No maths and no file formats live here. Results go to stdout, progress and messages to
stderr; ``--json`` prints exactly one JSON object. Exit codes: 0 success, 1 runtime
failure (network, checksum, unreadable file), 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys

# torch's OpenMP threads spin while waiting; on a busy 2-core machine that makes small
# matrix products 100x slower. Sleeping waits cost nothing measurable here. (Must be set
# before torch is imported.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import math

import click
from rich.console import Console
from rich.markup import escape

from rnnrbm_cli import __version__, models
from rnnrbm_cli.choices import BACKENDS, EVAL_METHODS, FORMS, LL_METHODS, MAX_SEED
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError

# Messages and tables for people go to stderr; stdout carries results only.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False)


def print_json(obj) -> None:
    """Print exactly one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))


def fail(message: str) -> None:
    """Raise the runtime failure the group turns into one sentence and exit code 1."""
    raise RnnrbmError(message)


class _Group(click.Group):
    """A click group that turns library errors into one sentence on stderr and exit 1 (2 for
    a usage error), a flag's bad value into one sentence and exit 2 (click's own usage block,
    with its help hint, is for a command line it cannot parse at all), and Ctrl+C into one
    line and exit 130 (128 + SIGINT; every file is written atomically, so none is left half
    written). train and tune catch the signal themselves to checkpoint first."""

    @staticmethod
    def _bad_value(e: click.BadParameter):
        err_console.print(f"[bold red]Error:[/] {escape(e.format_message())}", soft_wrap=True)
        sys.exit(2)

    def parse_args(self, ctx, args):
        try:  # the group's own options (--threads): a bad value is one sentence too
            return super().parse_args(ctx, args)
        except click.BadParameter as e:
            self._bad_value(e)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.BadParameter as e:
            self._bad_value(e)
        except KeyboardInterrupt:
            err_console.print("Interrupted; nothing was left half written.", soft_wrap=True)
            sys.exit(130)
        except RnnrbmUsageError as e:
            err_console.print(f"[bold red]Error:[/] {escape(str(e))}", soft_wrap=True)
            sys.exit(2)
        except RnnrbmError as e:  # the sentence is text, not markup: "[/path]" must print as it is
            err_console.print(f"[bold red]Error:[/] {escape(str(e))}", soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnrbm")
@click.option("--threads", type=click.IntRange(1, 1024), metavar="N",
              help="CPU threads for torch and the compiled kernels (default: torch's, one per core). The RNN trains "
                   "faster on one: see benchmarks/threads.py.")
def cli(threads: int | None) -> None:
    """Model and generate polyphonic music with the RNN-RBM.

    \b
    Example:
      rnnrbm fetch nottingham && rnnrbm prepare nottingham
      rnnrbm --threads 1 train --preset paper --model rnn --data jsb-chorales
    """
    if threads is not None:
        from rnnrbm_cli.device import set_threads  # imports torch: only when asked

        set_threads(threads)


def main() -> None:
    cli(prog_name="rnnrbm")


# ---------------------------------------------------------------------------------------
# Commands live in cli_data.py (fetch, datasets, prepare), cli_train.py (train),
# cli_output.py (sample, plot, evaluate) and cli_report.py (report). Each imports its library
# module inside the command so that `rnnrbm --help` stays fast (torch is slow to import).
# ---------------------------------------------------------------------------------------


# == the library's values; names from choices.py (torch-free), the limits spelled out here so
# that `--help` need not import torch or pretty_midi (tests/test_cli.py checks they agree) ====

_FORMS = FORMS
_MAX_FRAMES = 100_000  # pianoroll.MAX_FRAMES
_MAX_MEMBER_MB = 2  # pianoroll.MAX_MIDI_BYTES in MiB
_EVAL_DEFAULTS = {"chains": 100, "betas": 1000, "samples": 20, "gibbs": 50}  # evaluate.DEFAULT_*
# The most a command's counts may be: far beyond any use, small enough to be held and finished.
_MAX_K = 10_000  # Gibbs steps (sample --k, evaluate --gibbs): config.MAX_K
_MAX_EVAL = {"chains": 10_000, "betas": 1_000_000, "samples": 10_000}  # config.MAX_EVAL_CHAINS, MAX_EVAL_BETAS
_MAX_PIXELS, _MAX_DPI = 20_000, 1_000  # plot's figure: 400 megapixels at most
_BACKENDS = BACKENDS
_EVAL_METHODS = EVAL_METHODS
_LL_METHODS = (*LL_METHODS, "both")


class FloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and infinity (click's accepts "nan" and
    "inf": no comparison with a bound is ever false for nan, and inf passes any lower one)."""

    name = "float range"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


# Every seed a command takes: 0..MAX_SEED.
SEED = click.IntRange(0, MAX_SEED)


class ModelChoice(click.Choice):
    """--model's choices: the models' registry (``models.model_types()``), read when the
    command line is parsed, so that a model registered at run time is a choice too."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self):
        return models.model_types()

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass


MODEL_HELP = f"The model: {', '.join(models.model_types())} (README, Models).  [default: {models.DEFAULT_MODEL_TYPE}]"

_backend_option = click.option(
    "--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True,
    help="Who samples: auto (the compiled CPU kernels on CPU, torch on CUDA), torch or numba.",
)

_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where downloads are kept. [default: $RNNRBM_CACHE_DIR, else ~/.cache/rnnrbm]",
)


# The commands live in modules by what they work on; importing them registers them.
from rnnrbm_cli import cli_data, cli_output, cli_report, cli_train, cli_tune  # noqa: E402,F401
