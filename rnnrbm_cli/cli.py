"""The ``rnnrbm`` command line: parse, call the library, print.

No maths and no file formats live here. Results go to stdout, progress and messages to
stderr; ``--json`` prints exactly one JSON object. Exit codes: 0 success, 1 runtime
failure (network, checksum, unreadable file), 2 usage error.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from rnnrbm_cli import __version__
from rnnrbm_cli.errors import RnnrbmError

# Messages and tables for people go to stderr; stdout carries results only.
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def print_json(obj) -> None:
    """Print exactly one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))


def fail(message: str) -> None:
    """Raise the runtime failure the group turns into one sentence and exit code 1."""
    raise RnnrbmError(message)


class _Group(click.Group):
    """A click group that turns library errors into one sentence on stderr and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RnnrbmError as e:
            err_console.print(f"[bold red]Error:[/] {e}", soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnrbm")
def cli() -> None:
    """Model and generate polyphonic music with the RNN-RBM.

    \b
    Example:
      rnnrbm fetch nottingham && rnnrbm prepare nottingham
    """


def main() -> None:
    cli(prog_name="rnnrbm")


# ---------------------------------------------------------------------------------------
# Commands are grouped by the module they call. Each block imports its library module
# inside the command so that `rnnrbm --help` stays fast (torch is slow to import).
# ---------------------------------------------------------------------------------------

# == registry: fetch, datasets ===========================================================

# == datasets: prepare ===================================================================

# == train ================================================================================

# == sample, plot =========================================================================

# == evaluate =============================================================================
