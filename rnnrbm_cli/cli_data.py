"""The data commands: fetch, datasets, prepare (registry.py and datasets.py underneath)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from rnnrbm_cli.cli import (
    _FORMS, _MAX_FRAMES, _MAX_MEMBER_MB, SEED, FloatRange, _cache_dir_option, cli,
    err_console, fail, out_console, print_json,
)
from rnnrbm_cli.errors import RnnrbmUsageError


# == registry: fetch, datasets ===========================================================




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
@click.option("--json", "as_json", is_flag=True, help="Print the fetched files as one JSON object (several datasets: under \"datasets\").")
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
        fail("\n".join(failures) + "\nCheck the network connection. " + registry.FetchError.HINT)
    if as_json:
        # --json prints exactly one object: one dataset's report, or several under "datasets"
        print_json(reports[0] if len(reports) == 1 else {"datasets": reports})


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


def _workers(ctx, param, value: str) -> int:
    """--workers N -> N; anything but a whole number 1 or more is one sentence and exit 2."""
    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if workers < 1:
        raise RnnrbmUsageError(f"--workers must be a whole number of processes, 1 or more, not {value!r}.")
    return workers


@cli.command()
@click.argument("name_or_path")
@click.option("--source", "source_kind", type=click.Choice(["rolls", "pickle", "midi"]),
              help="Which file of a dataset to use (default rolls), or how to read a path.")
@click.option("--dt", type=FloatRange(min=0, min_open=True), default=None,
              help="MIDI only: seconds per frame (default 0.3, the tutorial's).")
@click.option("--beat-division", type=click.IntRange(1, 10_000), default=None,
              help="MIDI only: frames per beat (quarter note), following the tempo map.")
@click.option("--transpose", type=click.Choice(["none", "c"]), default=None,
              help="MIDI only: transpose each file to C major / C minor (default none).")
@click.option("--pedal", is_flag=True, default=False,
              help="MIDI only: hold notes while the sustain pedal (CC 64) is down (default: notes end at note-off).")
@click.option("--out", type=click.Path(writable=True), default=None,
              help="Output .npz, or .rnnrbm folder for --format mmap (default: in the cache, named after the "
                   "source and grid).")
@click.option("--format", "format_", type=click.Choice(["auto", "npz", "mmap"]), default="auto", show_default=True,
              help="npz: one compressed file, read into memory; mmap: a .rnnrbm folder that training and "
                   "evaluation read memory-mapped, for data larger than memory; auto: by --out's suffix, "
                   "else mmap from 1 GiB of rolls.")
@click.option("--split-ratios", callback=_split_ratios, default=None, metavar="TRAIN,VALID,TEST",
              help="Unsplit MIDI folder only: shares of a seeded shuffle (default 0.8,0.1,0.1).")
@click.option("--seed", type=SEED, default=None, help="Unsplit MIDI folder only: seed of that shuffle (default 0).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help=f"Skip a MIDI file whose roll would have more frames than this (default {_MAX_FRAMES:,}).")
@click.option("--max-member-mb", type=FloatRange(min=0, min_open=True), default=None,
              help=f"Skip a MIDI file or zip member larger than this many MiB once inflated (default {_MAX_MEMBER_MB}).")
@click.option("--workers", callback=_workers, default="1", metavar="N",
              help="MIDI only: sample the files in N processes, capped at the CPUs and the files; "
                   "the output is the same as with 1 (default 1: no pool).")
@click.option("--mirror", default=None, help="Folder or URL base tried before the registry URLs [$RNNRBM_MIRROR].")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the path.")
def prepare(name_or_path, source_kind, dt, beat_division, transpose, pedal, out, split_ratios, seed, max_frames,
            max_member_mb, workers, mirror, cache_dir, as_json, format_):
    """Turn a dataset or MIDI files into train/valid/test piano-rolls (.npz or .rnnrbm).

    NAME_OR_PATH is a registry dataset (fetched first if need be), a .mat of rolls, an
    original .pickle, a .zip of MIDI files in <Name>/{train,valid,test}/, or a folder of
    your own MIDI files. Prints the path of the .npz (or .rnnrbm folder); a summary goes to stderr. A MIDI
    file that cannot be read, is larger than --max-member-mb or would be longer than
    --max-frames is skipped with a warning naming it, and the rest are prepared.

    \b
    Example:
      rnnrbm prepare nottingham --source midi --dt 0.3 --transpose c --workers 2
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
        split_ratios=split_ratios, seed=seed, on_warning=warn, workers=workers, format=format_, **limits,
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
