"""Figures: piano-rolls as the Theano tutorial draws them, and training curves.

A piano-roll figure shows time on x (seconds, or beats for beat-grid data) and the MIDI
note number on y, one grey-scale pixel row per key (``imshow``, ``origin="lower"``,
``gray_r``: notes dark on white), with the y-axis trimmed to the pitches the music uses.
A training figure shows the monitor per epoch (and the validation log-likelihood and
accuracy when the run measured them) above the seconds each epoch took.

Figures are drawn on matplotlib's non-interactive Agg canvas and written atomically as
PNG files of exactly ``width`` x ``height`` pixels; only ``interactive=True`` (the CLI's
``--show``) touches pyplot and a window system.

    >>> from rnnrbm_cli.plot import plot_file
    >>> plot_file("song.mid").path  # doctest: +SKIP
    PosixPath('song.png')
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MultipleLocator

from rnnrbm_cli._io import atomic_path
from rnnrbm_cli.prepared import is_prepared_path
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.models import DEFAULT_MODEL_TYPE
from rnnrbm_cli.pianoroll import Grid, check_dt
from rnnrbm_cli.rundir import Metrics, read_metrics  # noqa: F401  (read_metrics: re-exported)

LOWEST_PITCH = 21  # MIDI pitch of roll column 0, as in pianoroll.py
DPI = 100
ROLL_SIZE = (1200, 500)  # pixels: a 60-second piece at 20 px a second, a 3-octave tune at ~10 px a key
CURVES_SIZE = (1000, 700)  # pixels
PITCH_MARGIN = 3  # semitones of white above and below the used pitch range
MIN_PITCH_SPAN = 13  # keys shown at least, so that a C (a labelled tick) is always in view
MIDI_PLOT_DT = 0.05  # seconds per frame when a MIDI file is sampled for a figure
METRICS_FILE = "metrics.jsonl"


# -- figures -----------------------------------------------------------------------------


def new_figure(width: int, height: int, dpi: int = DPI, *, interactive: bool = False) -> Figure:
    """A figure of ``width`` x ``height`` pixels on the Agg canvas (pyplot if ``interactive``)."""
    if width < 50 or height < 50:
        raise RnnrbmUsageError(f"a figure of {width} x {height} pixels is too small to draw on; ask for at least 50 x 50.")
    figsize = (width / dpi, height / dpi)
    if interactive:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, dpi=dpi, layout="constrained")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def roll_figure(
    roll: np.ndarray,
    *,
    frame_length: float,
    unit: str = "s",
    title: str = "",
    marks: dict[str, float] | None = None,
    width: int = ROLL_SIZE[0],
    height: int = ROLL_SIZE[1],
    dpi: int = DPI,
    interactive: bool = False,
) -> Figure:
    """A piano-roll figure, as the Theano tutorial draws one.

    Parameters
    ----------
    roll : np.ndarray, shape=(T, 88)
        0/1 frames; column k is MIDI pitch 21 + k.
    frame_length : float
        Length of a frame on the x-axis, in ``unit``.
    unit : {"s", "beats"}
        What x measures: seconds (``dt`` per frame) or beats (``1 / beat_division``).
    title : str
        The figure's title.
    marks : dict of str to float, optional
        Vertical dashed lines at these x positions, labelled with their keys (e.g. where a
        primer ends and sampling begins).
    width, height : int
        Size of the figure in pixels.
    dpi : int
        Pixels per inch: scales the text and lines, not the figure's pixel size.
    """
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != 88:
        raise ValueError(f"a piano-roll has shape (T, 88), not {roll.shape}")
    n_frames = roll.shape[0]
    fig = new_figure(width, height, dpi, interactive=interactive)
    ax = fig.add_subplot()
    end = frame_length * max(n_frames, 1)
    # Row k is drawn from pitch 21 + k - 0.5 to 21 + k + 0.5, so ticks sit on key centres.
    ax.imshow(
        roll.T if n_frames else np.zeros((88, 1)),
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="gray_r",
        vmin=0,
        vmax=1,
        extent=(0, end, LOWEST_PITCH - 0.5, LOWEST_PITCH + 87.5),
    )
    low, high = _pitch_limits(roll)
    ax.set_ylim(low - 0.5, high + 0.5)
    ax.yaxis.set_major_locator(MultipleLocator(12))  # every C
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{int(y)} C{int(y) // 12 - 1}"))
    ax.yaxis.set_minor_locator(MultipleLocator(1))
    ax.tick_params(axis="y", which="minor", length=2)
    ax.grid(axis="y", which="major", color="tab:blue", alpha=0.15, linewidth=0.8)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", va="top", color="tab:red", fontsize="small",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)" if unit == "s" else "time (beats)")
    ax.set_ylabel("MIDI note number")
    ax.set_title(title)
    return fig


def _pitch_limits(roll: np.ndarray) -> tuple[int, int]:
    """Lowest and highest MIDI pitch to show: the used range plus a margin, within the piano."""
    used = np.flatnonzero(roll.any(axis=0)) if roll.size else np.array([], dtype=int)
    if used.size == 0:
        return LOWEST_PITCH, LOWEST_PITCH + 87
    low = LOWEST_PITCH + int(used[0]) - PITCH_MARGIN
    high = LOWEST_PITCH + int(used[-1]) + PITCH_MARGIN
    short = MIN_PITCH_SPAN - (high - low + 1)
    if short > 0:
        low, high = low - short // 2, high + (short - short // 2)
    # Slide back inside the keyboard rather than clip, to keep the span.
    if low < LOWEST_PITCH:
        low, high = LOWEST_PITCH, high + (LOWEST_PITCH - low)
    if high > LOWEST_PITCH + 87:
        low, high = max(LOWEST_PITCH, low - (high - LOWEST_PITCH - 87)), LOWEST_PITCH + 87
    return low, high


def curves_figure(
    metrics: Metrics,
    *,
    title: str = "",
    width: int = CURVES_SIZE[0],
    height: int = CURVES_SIZE[1],
    dpi: int = DPI,
    interactive: bool = False,
) -> Figure:
    """Training curves: the monitor (and validation LL), validation accuracy if measured, seconds per epoch.

    The top panel plots, per epoch, the training and validation monitor (the tutorial's
    reconstruction pseudo-log-likelihood, nats per frame) and, where the run measured it,
    the validation log-likelihood with its standard error. A middle panel shows the
    validation accuracy when present; the bottom panel the wall-clock seconds of each epoch.
    """
    if not metrics.epochs:
        raise RnnrbmError("the run has no completed epoch yet, so there is nothing to plot; try again after the first epoch.")
    epochs = np.array([r["epoch"] for r in metrics.epochs])
    has_acc = metrics.has("valid_acc")
    fig = new_figure(width, height, dpi, interactive=interactive)
    ratios = [3, 1.5, 1.5] if has_acc else [3, 1.5]
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    style = {"marker": "o", "markersize": 3} if len(epochs) <= 60 else {}

    ax = axes[0]
    ax.plot(epochs, metrics.column("train_monitor"), label="train monitor", color="tab:blue", **style)
    if metrics.has("valid_monitor"):
        ax.plot(epochs, metrics.column("valid_monitor"), label="valid monitor", color="tab:orange", **style)
    if metrics.has("valid_ll"):
        ll, err = metrics.column("valid_ll"), metrics.column("valid_ll_stderr")
        ok = np.isfinite(ll)
        # how it was found, as the run recorded it (runs before the field: AIS)
        methods = [r.get("valid_ll_method") for r in metrics.epochs if r.get("valid_ll_method")]
        method = methods[-1] if methods else "ais"
        how = {"exact": "exact", "ais": "AIS", "raise": "RAISE"}.get(method, method)
        ax.errorbar(epochs[ok], ll[ok], yerr=np.nan_to_num(err[ok]), label=f"valid log-likelihood ({how})",
                    color="tab:green", marker="s", markersize=4, linestyle="-", capsize=2)
    ax.set_ylabel("nats per frame")
    ax.grid(alpha=0.3)
    _mark_stages(axes, metrics)
    # "best": where it hides the fewest points (the curves end at the lower right)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title)

    if has_acc:
        acc = metrics.column("valid_acc")
        ok = np.isfinite(acc)
        axes[1].plot(epochs[ok], acc[ok], color="tab:purple", marker="s", markersize=4, label="valid accuracy")
        axes[1].set_ylabel("accuracy")
        axes[1].grid(alpha=0.3)
        axes[1].legend(loc="lower right", fontsize="small")

    ax = axes[-1]
    ax.bar(epochs, metrics.column("seconds"), width=0.8, color="tab:gray")
    ax.set_ylabel("seconds per epoch")
    ax.set_xlabel("epoch")
    ax.grid(axis="y", alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


_STAGE_LABELS = {"rbm": "RBM pretraining", "rnn": "RNN pretraining"}


def _mark_stages(axes, metrics: Metrics) -> None:
    """Shade the pretraining stages (metrics lines name their stage), named in the legend.

    A legend entry rather than a label on the plot: a 20-epoch stage of a 500-epoch run
    is too narrow to hold its name, and two such labels overlap.
    """
    stages = [r.get("stage", "fine") for r in metrics.epochs]
    epochs = [r["epoch"] for r in metrics.epochs]
    start, named = 0, set()
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            name = stages[start]
            if name in _STAGE_LABELS:
                lo, hi = epochs[start] - 0.5, epochs[i - 1] + 0.5
                for ax in axes:
                    label = _STAGE_LABELS[name] if ax is axes[0] and name not in named else None
                    ax.axvspan(lo, hi, color="tab:olive" if name == "rbm" else "tab:cyan", alpha=0.12, linewidth=0,
                               label=label)
                named.add(name)
            start = i


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically as a PNG of exactly its pixel size; return the path."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=fig.dpi)
    except OSError as e:
        raise RnnrbmError(f"cannot write {path} ({e.strerror or e}); choose another place with -o.") from None
    return path


# -- from files --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlotResult:
    """What :func:`plot_file` drew and where."""

    path: Path  # the PNG written
    kind: str  # "midi", "npz" or "run"
    title: str
    skipped_lines: tuple[int, ...] = ()  # unreadable metrics lines left out (runs only)
    show_problem: str | None = None  # why --show opened no window, None if it did or was not asked


def default_output(source: str | os.PathLike, *, split: str | None = None, index: int | None = None) -> Path:
    """Where a figure of ``source`` goes without ``-o``: beside the input.

    ``song.mid`` -> ``song.png``; ``data.npz`` (or ``data.rnnrbm``) with split and index -> ``data-test-003.png``;
    a run directory -> ``RUN_DIR/training.png``.
    """
    source = Path(source)
    if is_prepared_path(source):
        return source.with_name(f"{source.stem}-{split}-{index:03d}.png")
    if source.is_dir():
        return source / "training.png"
    return source.with_suffix(".png")


def plot_file(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    index: int | None = None,
    dt: float | None = None,
    width: int | None = None,
    height: int | None = None,
    dpi: int = DPI,
    force: bool = False,
    show: bool = False,
) -> PlotResult:
    """Plot a MIDI file, a sequence of a prepared ``.npz``, or a run directory's training curves.

    Parameters
    ----------
    source : path
        A ``.mid`` file (sampled every ``dt`` seconds, default 0.05), a prepared ``.npz``
        (the sequence ``index`` of ``split``, default the first test sequence, on the
        data's own grid), or a training run directory holding ``metrics.jsonl``.
    out : path, optional
        The PNG to write; default :func:`default_output`.
    width, height : int, optional
        Pixels; default 1200 x 500 for a piano-roll, 1000 x 700 for training curves.
    force : bool
        Replace ``out`` if it exists; otherwise an existing ``out`` is an error.
    show : bool
        Also open the figure in a window (blocking until it is closed). Where that is
        impossible the file is still written and ``show_problem`` says why.
    """
    source = Path(source)
    if not source.exists():
        raise RnnrbmError(f"{source} does not exist.")
    prepared = is_prepared_path(source)  # a .npz, or a .rnnrbm folder
    is_run = source.is_dir() and not prepared
    if (split is not None or index is not None) and not prepared:
        raise RnnrbmUsageError("--split and --index choose a sequence of a prepared .npz file; drop them for other inputs.")
    if dt is not None and (is_run or prepared):
        raise RnnrbmUsageError("--dt sets the sampling of a MIDI file; a prepared .npz or a run directory has its own grid.")
    if show:
        problem = display_problem()
        interactive = problem is None
    else:
        problem, interactive = None, False

    skipped: tuple[int, ...] = ()
    if is_run:
        kind = "run"
        metrics = read_metrics(source)
        skipped = tuple(metrics.skipped)
        title = _run_title(source, metrics)
        size = (width or CURVES_SIZE[0], height or CURVES_SIZE[1])
        target = Path(out) if out is not None else default_output(source)
        _check_target(target, force)
        fig = curves_figure(metrics, title=title, width=size[0], height=size[1], dpi=dpi, interactive=interactive)
    else:
        if prepared:
            from rnnrbm_cli.datasets import load_sequence

            kind = "npz"
            roll, split, index, meta = load_sequence(source, split, index)
            frame_length, unit = Grid.from_meta(meta).axis()
            title = f"{meta.get('dataset') or source.stem}: {split} sequence {index} ({source.name})"
        else:
            from rnnrbm_cli.pianoroll import midi_to_roll

            kind = "midi"
            frame_length, unit = check_dt(dt, "--dt") if dt is not None else MIDI_PLOT_DT, "s"
            roll, _ = midi_to_roll(source, dt=frame_length)
            title = source.name
        target = Path(out) if out is not None else default_output(source, split=split, index=index)
        _check_target(target, force)
        size = (width or ROLL_SIZE[0], height or ROLL_SIZE[1])
        fig = roll_figure(roll, frame_length=frame_length, unit=unit, title=title,
                          width=size[0], height=size[1], dpi=dpi, interactive=interactive)
    save_figure(fig, target)
    if interactive:
        import matplotlib.pyplot as plt

        plt.show()
    return PlotResult(target, kind, title, skipped, show_problem=problem)


def _check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        raise RnnrbmUsageError(f"{target} is a folder; give -o a .png file name.")
    if target.exists() and not force:
        raise RnnrbmError(f"{target} already exists; pass --force to replace it.")


def _run_title(run_dir: Path, metrics: Metrics) -> str:
    """The run's name, data and model size (from config.json when readable), and epochs."""
    parts = [run_dir.resolve().name]
    try:
        config = json.loads((run_dir / "config.json").read_text())
        model, data = config.get("model", {}), config.get("data", {})
        if data.get("dataset"):
            parts.append(str(data["dataset"]))
        if model:
            parts.append(f"{model.get('model_type', DEFAULT_MODEL_TYPE)} n_hidden={model.get('n_hidden')}, "
                         f"n_recurrent={model.get('n_recurrent')}")
    except (OSError, ValueError, AttributeError):
        pass  # a title without them is still a title
    last = metrics.epochs[-1]["epoch"] if metrics.epochs else 0
    parts.append(f"{last} epoch{'s' if last != 1 else ''}")
    return ": ".join(parts[:1]) + (" - " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def display_problem() -> str | None:
    """Why a window cannot be opened here, or None if one can."""
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return "there is no display ($DISPLAY is not set)"
    import matplotlib
    import matplotlib.pyplot as plt  # resolves the backend

    backend = plt.get_backend().lower()
    if backend in ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template") or backend.startswith("module://matplotlib_inline"):
        return f"matplotlib's backend {matplotlib.get_backend()!r} cannot open windows (install tkinter or PyQt, or set MPLBACKEND)"
    return None
