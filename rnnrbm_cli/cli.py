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

import click
from rich.console import Console
from rich.markup import escape

from rnnrbm_cli import __version__
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
    """A click group that turns library errors into one sentence on stderr and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RnnrbmUsageError as e:
            err_console.print(f"[bold red]Error:[/] {e}", soft_wrap=True)
            sys.exit(2)
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

# registry.FORMS, spelled out so that `--help` need not import the registry (and tqdm);
# tests/test_registry.py checks that the two agree.
_FORMS = ("rolls", "pickle", "midi")

_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where downloads are kept. [default: $RNNRBM_CACHE_DIR, else ~/.cache/rnnrbm]",
)


def _select_datasets(names: tuple[str, ...]) -> list:
    """The registry entries called ``names`` (all if none); an unknown name is a usage error
    (exit 2) naming the known ones, the same sentence as from prepare, train or evaluate."""
    from rnnrbm_cli import registry

    if not names:
        return list(registry.load_registry().values())
    return [registry.get_dataset(n) for n in dict.fromkeys(names)]


def _human_size(n: int) -> str:
    """``n`` bytes as a short human-readable size, e.g. 371688 -> '363 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if n >= 100 or unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _show_datasets(selected: list, cache_dir: Path | None, as_json: bool) -> None:
    """Print the datasets, their files and each file's cache status, as a table or JSON."""
    from rich.table import Table

    from rnnrbm_cli import registry

    root = cache_dir if cache_dir is not None else registry.default_cache_dir()

    def status(datafile, dataset) -> str:
        if registry.cached_file(datafile, dataset, root) is not None:
            return "verified"
        # Present but not matching: fetch will replace it.
        return "corrupt" if registry.cache_path(datafile, dataset, root).exists() else "missing"

    if as_json:
        print_json(
            {
                "cache_dir": str(root),
                "datasets": [
                    {
                        "name": d.name,
                        "title": d.title,
                        "description": d.description,
                        "grid": d.grid,
                        "beat_division": d.beat_division,
                        "terms": d.terms,
                        "citation": d.citation,
                        "files": [
                            {
                                "name": f.name,
                                "form": f.form,
                                "size": f.size,
                                "sha256": f.sha256,
                                "urls": list(f.urls),
                                "path": str(registry.cache_path(f, d, root)),
                                "status": status(f, d),
                            }
                            for f in d.files
                        ],
                    }
                    for d in selected
                ],
            }
        )
        return

    shown = {"verified": "[green]✓ verified[/]", "missing": "[dim]—[/]", "corrupt": "[red]✗ corrupt[/]"}
    table = Table(title=f"Datasets (cache: {escape(str(root))})", title_justify="left")
    table.add_column("dataset", no_wrap=True)
    table.add_column("file", no_wrap=True)
    table.add_column("form")
    table.add_column("size", justify="right")
    table.add_column("cache")
    for d in selected:
        for i, f in enumerate(d.files):
            table.add_row(
                escape(d.name) if i == 0 else "",
                escape(f.name),
                f.form,
                _human_size(f.size),
                shown[status(f, d)],
                end_section=i == len(d.files) - 1,
            )
    out_console.print(table)


@cli.command("fetch")
@click.argument("names", nargs=-1, metavar="NAME...")
@click.option("--all", "all_", is_flag=True, help="Fetch every dataset of the registry.")
@click.option(
    "--form",
    "forms",
    multiple=True,
    type=click.Choice(_FORMS),
    help="Fetch only files of this form (repeatable). [default: what prepare reads, the rolls]",
)
@click.option("--all-forms", is_flag=True, help="Fetch every file of each dataset: rolls, pickle and MIDI.")
@click.option(
    "--mirror",
    metavar="DIR_OR_URL",
    help="A folder or URL base tried before the registry URLs. [default: $RNNRBM_MIRROR]",
)
@_cache_dir_option
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the fetched files as JSON.")
@click.option(
    "--list", "list_", is_flag=True, help="Only list the datasets, their files and cache status."
)
def fetch_cmd(
    names: tuple[str, ...],
    all_: bool,
    forms: tuple[str, ...],
    all_forms: bool,
    mirror: str | None,
    cache_dir: Path | None,
    force: bool,
    as_json: bool,
    list_: bool,
) -> None:
    """Download dataset files into the cache and verify them; print their paths.

    By default only what `rnnrbm prepare NAME` reads is fetched, the benchmark rolls;
    the other files (the original pickle, the source MIDI) come with --all-forms or
    --form, and the command says which were left. Each file is taken from the mirror,
    else from the URLs in datasets.toml in order, and kept only if its size and sha256
    match the registry. Files already cached and verified are not downloaded again
    (unless --force). With --all, datasets that have no file of the --form asked for
    are skipped.

    \b
    Example:
      rnnrbm fetch nottingham --mirror ../shared/datasets
    """
    from rnnrbm_cli import registry

    if names and all_:
        raise click.UsageError("give dataset names or --all, not both.")
    if not names and not all_ and not list_:
        raise click.UsageError("name a dataset to fetch, or pass --all (see `rnnrbm fetch --list`).")
    if forms and all_forms:
        raise click.UsageError("give --form or --all-forms, not both.")
    selected = _select_datasets(names)
    if list_:
        _show_datasets(selected, cache_dir, as_json)
        return
    if forms:
        lacking = [d for d in selected if not any(f.form in forms for f in d.files)]
        if names and lacking:
            d = lacking[0]
            have = ", ".join(dict.fromkeys(f.form for f in d.files))
            raise click.BadParameter(
                f"dataset {d.name!r} has no file of form {' or '.join(forms)}; it has {have}.",
                param_hint="--form",
            )
        selected = [d for d in selected if d not in lacking]

    reports: list[dict] = []
    failures: list[str] = []
    for dataset in selected:
        wanted = list(registry.FORMS) if all_forms else list(forms) if forms else [dataset.default_form]
        left = [f for f in dataset.files if f.form not in wanted]
        try:
            results = registry.fetch(
                dataset, forms=wanted, mirror=mirror, cache_dir=cache_dir, force=force
            )
        except registry.FetchError as e:
            results = e.results
            failures.extend(e.failures)
        for r in results:
            if r.cached:
                err_console.print(
                    f"✓ {escape(r.name)}  already cached at {escape(str(r.path))}", soft_wrap=True
                )
            else:
                err_console.print(
                    f"✓ {escape(r.name)}  from {escape(r.source)}  (cached at {escape(str(r.path))})",
                    soft_wrap=True,
                )
            if not as_json:
                click.echo(str(r.path))
        if left and not forms:
            shown = ", ".join(f"{f.name} ({f.form})" for f in left)
            err_console.print(
                f"· not fetched: {escape(shown)}; `rnnrbm prepare {escape(dataset.name)}` reads only the "
                f"{dataset.default_form}: pass --all-forms to fetch them too.",
                soft_wrap=True,
            )
        reports.append(
            {
                "dataset": dataset.name,
                "files": [
                    {
                        "name": r.name,
                        "path": str(r.path),
                        "sha256": r.sha256,
                        "source": r.source,
                        "cached": r.cached,
                    }
                    for r in results
                ],
                "not_fetched": [f.name for f in left],
            }
        )
    if failures:
        # No JSON on failure: a partial list must not pass for the complete one.
        fail(
            "\n".join(failures)
            + "\nCheck the network connection, or pass --mirror with a folder or URL"
            " that holds the files."
        )
    if as_json:
        print_json(reports[0] if len(names) == 1 else reports)


@cli.command("datasets")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the registry and cache status as JSON.")
def datasets_cmd(cache_dir: Path | None, as_json: bool) -> None:
    """List the datasets, their files, and which are cached and verified.

    \b
    Example:
      rnnrbm datasets --cache-dir ~/.cache/rnnrbm
    """
    from rnnrbm_cli import registry

    _show_datasets(list(registry.load_registry().values()), cache_dir, as_json)


# == datasets: prepare ===================================================================


def _split_ratios(ctx, param, value):
    """--split-ratios "0.8,0.1,0.1" -> (0.8, 0.1, 0.1)."""
    if value is None:
        return None
    try:
        ratios = tuple(float(x) for x in value.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers such as 0.8,0.1,0.1, not {value!r}.")
    return ratios


# pianoroll.MAX_FRAMES and MAX_MIDI_BYTES (in MiB), spelled out so that `--help` need not
# import pretty_midi; tests/test_datasets.py checks that they agree.
_MAX_FRAMES = 100_000
_MAX_MEMBER_MB = 2


@cli.command()
@click.argument("name_or_path")
@click.option("--source", "source_kind", type=click.Choice(["rolls", "pickle", "midi"]),
              help="Which file of a dataset to use (default rolls), or how to read a path.")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True), default=None,
              help="MIDI only: seconds per frame (default 0.3, the tutorial's).")
@click.option("--beat-division", type=click.IntRange(min=1), default=None,
              help="MIDI only: frames per beat (quarter note), following the tempo map.")
@click.option("--transpose", type=click.Choice(["none", "c"]), default=None,
              help="MIDI only: transpose each file to C major / C minor (default none).")
@click.option("--pedal", is_flag=True, default=False,
              help="MIDI only: hold notes while the sustain pedal (CC 64) is down (default: notes end at note-off).")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Output .npz (default: in the cache, named after the source and grid).")
@click.option("--split-ratios", callback=_split_ratios, default=None, metavar="TRAIN,VALID,TEST",
              help="Unsplit MIDI folder only: shares of a seeded shuffle (default 0.8,0.1,0.1).")
@click.option("--seed", type=int, default=None, help="Unsplit MIDI folder only: seed of that shuffle (default 0).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help=f"Skip a MIDI file whose roll would have more frames than this (default {_MAX_FRAMES:,}).")
@click.option("--max-member-mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Skip a MIDI file or zip member larger than this many MiB once inflated (default {_MAX_MEMBER_MB}).")
@click.option("--mirror", default=None, help="Folder or URL base tried before the registry URLs [$RNNRBM_MIRROR].")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the path.")
def prepare(name_or_path, source_kind, dt, beat_division, transpose, pedal, out, split_ratios, seed, max_frames,
            max_member_mb, mirror, cache_dir, as_json):
    """Turn a dataset or MIDI files into train/valid/test piano-rolls (.npz).

    NAME_OR_PATH is a registry dataset (fetched first if need be), a .mat of rolls, an
    original .pickle, a .zip of MIDI files in <Name>/{train,valid,test}/, or a folder of
    your own MIDI files. Prints the path of the .npz; a summary goes to stderr. A MIDI
    file that cannot be read, is larger than --max-member-mb or would be longer than
    --max-frames is skipped with a warning naming it, and the rest are prepared.

    \b
    Example:
      rnnrbm prepare nottingham --source midi --dt 0.3 --transpose c
    """
    from rnnrbm_cli.datasets import prepare as prepare_data

    if dt is not None and beat_division is not None:
        raise click.UsageError("give --dt (seconds per frame) or --beat-division (frames per beat), not both.")

    def warn(message: str) -> None:
        err_console.print(f"[yellow]Warning:[/] {escape(message)}", soft_wrap=True)

    # Options that do not fit the source (e.g. --dt for gridded rolls) raise
    # RnnrbmUsageError: the group prints it and exits 2.
    limits = {}
    if max_frames is not None:
        limits["max_frames"] = max_frames
    if max_member_mb is not None:
        limits["max_member_bytes"] = max(1, int(max_member_mb * 2**20))
    result = prepare_data(
        name_or_path, source_kind=source_kind, dt=dt, beat_division=beat_division,
        transpose=transpose, pedal=pedal, out=out, cache_dir=cache_dir, mirror=mirror,
        split_ratios=split_ratios, seed=seed, on_warning=warn, **limits,
    )
    if as_json:
        print_json(result.as_json())
        return
    _print_prepare_summary(result)
    click.echo(str(result.path))


def _print_prepare_summary(result) -> None:
    from rich.table import Table

    meta = result.meta
    if meta["grid"] == "seconds":
        grid = f"{meta['dt']:g} s per frame"
    elif meta["beat_division"] is not None:
        n = meta["beat_division"]
        grid = f"{n} frame{'s' if n != 1 else ''} per beat"
    else:
        grid = "as stored"
    table = Table(title=f"{escape(meta['dataset'])} ({meta['source_kind']})", title_justify="left")
    table.add_column("split")
    table.add_column("sequences", justify="right")
    table.add_column("frames", justify="right")
    for split, counts in result.splits.items():
        table.add_row(split, f"{counts['sequences']:,}", f"{counts['frames']:,}")
    err_console.print(table)
    pedal = "" if meta.get("pedal") is None else f"sustain pedal: {'held' if meta['pedal'] else 'ignored'}; "
    err_console.print(
        f"grid: {grid}; transpose: {meta['transpose'] or 'unknown'}; {pedal}"
        f"skipped files: {len(result.skipped_files)}; notes out of range dropped: {meta['dropped_notes']:,}",
        soft_wrap=True,
    )


# engines.BACKENDS, spelled out so that `--help` need not import torch; tests/test_cli.py
# checks that the two agree.
_BACKENDS = ("auto", "torch", "numba")
_backend_option = click.option(
    "--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True,
    help="Who samples: auto (the compiled CPU kernels on CPU, torch on CUDA), torch or numba.",
)


# == train ================================================================================


@cli.command()
@click.option("--data", help="Registry name, prepared .npz, or a MIDI folder/zip (prepared first).  [default: nottingham]")
@click.option("--source", type=click.Choice(["rolls", "midi"]), help="For a registry name: the benchmark rolls or the source MIDI.  [default: rolls]")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True), help="Seconds per frame with --source midi.  [default: 0.3]")
@click.option("--epochs", type=click.IntRange(min=0), help="Passes over the training split (total, also with --resume).  [default: 200]")
@click.option("--device", help="auto, cpu or cuda.  [default: auto]")
@click.option("--seed", type=int, help="Seed for initialisation, shuffling and sampling.  [default: 1234]")
@click.option("--model", "model_type", type=click.Choice(["rnn-rbm", "rnn-nade"]), help="The model: RNN-RBM (CD-k) or RNN-NADE (exact likelihood).  [default: rnn-rbm]")
@click.option("--rnn", type=click.Choice(["tanh", "sigmoid", "lstm", "gru"]), help="The recurrence (the compiled CPU kernels run tanh only).  [default: tanh]")
@click.option("--n-hidden", type=click.IntRange(min=1), help="RBM (or NADE) hidden units.  [default: 150]")
@click.option("--n-recurrent", type=click.IntRange(min=1), help="RNN units.  [default: 100]")
@click.option("--learn-u0/--no-learn-u0", default=None, help="Learn the initial RNN state (the paper) instead of u(0) = 0.")
@click.option("--k", type=click.IntRange(min=1), help="Gibbs steps of CD-k.  [default: 15]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.  [default: 0.001]")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), help="Optimiser.  [default: sgd]")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), help="Nesterov momentum for SGD.  [default: 0]")
@click.option("--chunk", type=click.IntRange(min=1), help="Frames per chunk.  [default: 100]")
@click.option("--batch", type=click.IntRange(min=1), help="Chunks per update (1 = the tutorial).  [default: 1]")
@click.option("--eval-every", type=click.IntRange(min=0), help="Estimate validation LL every N epochs (0 = never).  [default: 0]")
@click.option("--eval-frames", type=click.IntRange(min=1), help="Validation frames for that estimate.  [default: 2000]")
@click.option("--eval-chains", type=click.IntRange(min=1), help="AIS chains for that estimate.  [default: 100]")
@click.option("--eval-betas", type=click.IntRange(min=1), help="AIS inverse temperatures for that estimate.  [default: 300]")
@click.option("--backend", type=click.Choice(_BACKENDS), help="Who computes: auto (the compiled CPU kernels on CPU, torch on CUDA), torch or numba.  [default: auto]")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory.  [default: a new runs/<data>-<timestamp>]")
@click.option("--preset", type=click.Choice(["tutorial"]), help="Start from a named set of settings (flags and --config override it).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="TOML file of settings, or a run's config.json (flags override it).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--mirror", help="Local folder or URL to fetch data from first.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Download and prepared-data cache.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.pass_context
def train(ctx, preset, config_file, resume, mirror, cache_dir, as_json, **flags):
    """Train an RNN-RBM (or RNN-NADE) and write a run directory.

    The run directory holds config.json, command.txt, metrics.jsonl, checkpoint.pt
    (latest) and best.pt. Ctrl+C checkpoints and tells you how to resume.

    \b
    Example:
      rnnrbm train --epochs 200 --device cuda
      rnnrbm train --preset tutorial --epochs 10
      rnnrbm train --resume runs/nottingham-20261124-120000 --epochs 300
    """
    import signal

    from rnnrbm_cli.config import merge_settings
    from rnnrbm_cli.device import resolve_device
    from rnnrbm_cli.train import (
        StopFlag,
        TrainingInterrupted,
        new_trainer,
        resume_trainer,
    )

    given = {k: v for k, v in flags.items() if v is not None}
    command = " ".join(["rnnrbm", *[_shell_quote(a) for a in sys.argv[1:]]])
    if resume:
        extra = sorted(set(given) - {"epochs", "device"}) + (["preset"] if preset else []) + (["config"] if config_file else [])
        if extra:
            raise click.UsageError(f"--resume continues a run with its own settings; only --epochs and --device may be given (not {', '.join('--' + e.replace('_', '-') for e in extra)}).")
    else:
        settings = merge_settings(preset, config_file, given)
    device = resolve_device(given.get("device") or ("auto" if resume else settings.run.device))

    stop = StopFlag()
    callbacks = _TrainProgress(as_json)
    old = {s: signal.signal(s, lambda signum, frame: stop.set(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if resume:
            trainer = resume_trainer(resume, device, given.get("epochs"), command, callbacks, stop, cache_dir, mirror)
        else:
            trainer = new_trainer(settings, device, command, callbacks, stop, cache_dir, mirror)
        result = trainer.train()
    except TrainingInterrupted as e:
        callbacks.close()
        where = f"in epoch {e.epoch} after update {e.update}" if e.update is not None else f"at the end of epoch {e.epoch}"
        err_console.print(f"Interrupted {where}; checkpoint written. Resume with: rnnrbm train --resume {e.run_dir}")
        sys.exit(128 + e.signum)
    finally:
        callbacks.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    if as_json:
        print_json({
            "run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint),
            "best_checkpoint": str(result.best_checkpoint), "epochs": result.epochs, "metrics": result.metrics,
        })
    else:
        click.echo(str(result.checkpoint))


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


class _TrainProgress:
    """Draws the training loop's events: a tqdm bar per epoch and one line per epoch."""

    def __init__(self, quiet_stdout: bool) -> None:
        self.bar = None
        self.epochs = 0

    def on_start(self, info) -> None:
        self.epochs = info["epochs"]
        err_console.print(
            f"Run directory: {info['run_dir']}  (device {info['device']}, {info['train_sequences']} sequences, "
            f"{info['train_frames']:,} frames, {info['train_chunks']:,} chunks)"
        )

    def on_epoch_start(self, epoch, n_updates, first_update) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=n_updates, initial=first_update, desc=f"epoch {epoch}/{self.epochs}", unit="upd",
                        leave=False, file=sys.stderr, dynamic_ncols=True, disable=None)

    def on_update(self, epoch, update, n_updates) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, m) -> None:
        self.close()
        parts = [f"epoch {m['epoch']:>4}/{self.epochs}", f"train monitor {m['train_monitor']:8.3f}"]
        if m.get("valid_monitor") is not None:
            parts.append(f"valid monitor {m['valid_monitor']:8.3f}")
        if m.get("valid_ll") is not None:
            parts.append(f"valid LL {m['valid_ll']:7.3f} ± {m['valid_ll_stderr']:.3f}")
        parts.append(f"{m['seconds']:7.1f} s")
        if m.get("frames_per_second"):
            parts.append(f"{m['frames_per_second']:10,.0f} frames/s")
        err_console.print("  ".join(parts))

    def on_message(self, text) -> None:
        err_console.print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# == sample, plot =========================================================================


@cli.command("sample")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.mid")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Frames to generate (after the primer).")
@click.option("--k", type=click.IntRange(min=1), default=25, show_default=True, help="Gibbs steps per generated frame.")
@click.option("--num", type=click.IntRange(min=1), default=1, show_default=True, help="Pieces, sampled in one batch: OUT-001.mid, OUT-002.mid, ...")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the sampler; the same seed writes the same files.  [default: random, reported]")
@click.option("--primer", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="MIDI file or prepared .npz that every piece begins with and continues.")
@click.option("--primer-steps", type=click.IntRange(min=1), help="Use only the primer's first N frames.")
@click.option("--split", help="Split of an .npz primer.  [default: test]")
@click.option("--index", type=click.IntRange(min=0), help="Sequence of that split.  [default: 0]")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True), help="Seconds per frame in the files.  [default: the checkpoint's grid]")
@click.option("--tempo", type=click.FloatRange(min=0, min_open=True), help="Beats per minute, for a model trained on a beat grid.  [default: 120]")
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
    """
    from rnnrbm_cli.sample import sample

    result = sample(checkpoint, out, on_message=lambda text: err_console.print(escape(text), soft_wrap=True), **options)
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
@click.argument("source", type=click.Path(path_type=Path), metavar="FILE.mid|FILE.npz|RUN_DIR")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write.  [default: beside the input: FILE.png, FILE-SPLIT-INDEX.png, RUN_DIR/training.png]")
@click.option("--split", help="Split of a prepared .npz.  [default: test]")
@click.option("--index", type=click.IntRange(min=0), help="Sequence of that split.  [default: 0]")
@click.option("--dt", type=click.FloatRange(min=0, min_open=True), help="Seconds per frame when sampling a MIDI file.  [default: 0.05]")
@click.option("--width", type=click.IntRange(min=50), help="Width in pixels.  [default: 1200, training curves 1000]")
@click.option("--height", type=click.IntRange(min=50), help="Height in pixels.  [default: 500, training curves 700]")
@click.option("--dpi", type=click.IntRange(min=10), default=100, show_default=True, help="Scale of text and lines (not of the pixel size).")
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

# evaluate.DEFAULT_*, spelled out so that `--help` need not import torch;
# tests/test_evaluate.py checks that the two agree.
_EVAL_DEFAULTS = {"chains": 100, "betas": 1000, "samples": 20, "gibbs": 50}


class _EvalProgress:
    """A tqdm bar on stderr per stage of an evaluation (hidden when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="frame", leave=False, file=sys.stderr,
                                          dynamic_ncols=True, disable=None)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@cli.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", help="Registry name or prepared .npz file.  [default: the data the checkpoint was trained on]")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True,
              help="Which split to evaluate.")
@click.option("--chains", type=click.IntRange(min=1), default=_EVAL_DEFAULTS["chains"], show_default=True,
              help="AIS runs per frame (the paper's 100).")
@click.option("--betas", type=click.IntRange(min=1), default=_EVAL_DEFAULTS["betas"], show_default=True,
              help="AIS inverse temperatures per run.")
@click.option("--samples", type=click.IntRange(min=1), default=_EVAL_DEFAULTS["samples"], show_default=True,
              help="Gibbs chains per frame for its note probabilities (used by ACC and the AIS base).")
@click.option("--gibbs", type=click.IntRange(min=1), default=_EVAL_DEFAULTS["gibbs"], show_default=True,
              help="Gibbs steps per chain (for ACC, chains start from the previous true frame).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Evaluate a seeded random subset of this many frames (a quick estimate).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the frame subset, AIS and Gibbs sampling.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@_backend_option
@click.option("--mirror", default=None, help="Folder or URL base tried before the registry URLs [$RNNRBM_MIRROR].")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate_cmd(checkpoint, data, split, chains, betas, samples, gibbs, max_frames, seed, device, backend, mirror,
                 cache_dir, as_json):
    """The paper's LL (nats per frame) and ACC (%) of a checkpoint on a data split.

    Every frame is predicted from its true history and weighted equally, the first
    frame included. log Z of each frame's RBM is exact when n_hidden <= 20, else
    estimated by annealed importance sampling with --chains runs of --betas steps.

    \b
    Example:
      rnnrbm evaluate runs/nottingham/best.pt --split test --max-frames 2000
    """
    from rnnrbm_cli.evaluate import evaluate_checkpoint

    progress = _EvalProgress()
    try:
        result = evaluate_checkpoint(
            checkpoint, data=data, split=split, chains=chains, betas=betas, samples=samples, gibbs=gibbs,
            max_frames=max_frames, seed=seed, device=device, backend=backend, cache_dir=cache_dir, mirror=mirror,
            progress=progress,
        )
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
    table.add_row("LL (nats per frame)", f"{r['log_likelihood']:.3f} ± {r['log_likelihood_stderr']:.3f}")
    table.add_row("ACC (%)", f"{r['frame_accuracy']:.2f}")
    table.add_row("frames", f"{r['frames']:,}")
    method = "exact, by enumeration" if r["method"] == "exact" else f"AIS, {r['chains']} chains x {r['betas']} betas"
    table.add_row("log Z", method)
    table.add_row("ACC from", f"{r['samples']} samples x {r['gibbs']} Gibbs steps")
    table.add_row("data", escape(r["data"]))
    table.add_row("seconds", f"{r['seconds']:.1f}")
    out_console.print(table)
