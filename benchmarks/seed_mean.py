"""The README's seed means: each run of ``benchmarks/results.sh MODEL DATA SEED`` and their mean.

    python benchmarks/seed_mean.py rnn-nade jsb-chorales          (reads runs/results-rnn-nade-jsb-chorales*)

Prints, per seed: the test LL ± its standard error and ACC from the run's ``test.json``, the
best epoch (by validation LL) of the epochs run, and the training time (epochs plus their
validation estimates, from ``metrics.jsonl``); then the mean over seeds and its spread (the
sample standard deviation), which is the figure to compare with Table 1.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.rundir import read_metrics


def run_summary(run: Path) -> dict:
    """One run's figures; RnnrbmError (one sentence) when its files cannot be read."""
    try:
        test = json.loads((run / "test.json").read_text())
        keys = ["log_likelihood", "log_likelihood_stderr", "frame_accuracy", "frames"]
        if "raise_log_likelihood" in test:  # an RNN-RBM evaluated with --method both: the conservative side too
            keys += ["raise_log_likelihood", "raise_log_likelihood_stderr"]
        figures = {k: float(test[k]) for k in keys}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RnnrbmError(f"{run / 'test.json'} is not the output of rnnrbm evaluate --json ({e}).") from None
    metrics = read_metrics(run)  # a resumed run's repeated epochs count once
    if not metrics.epochs:
        raise RnnrbmError(f"{run / 'metrics.jsonl'} holds no epoch.")
    valid = metrics.column("valid_ll")
    best = int(np.nanargmax(valid)) if np.isfinite(valid).any() else len(valid) - 1
    seconds = np.nansum(metrics.column("seconds")) + np.nansum(metrics.column("valid_ll_seconds"))
    return {"run": run.name, "ll": figures["log_likelihood"], "se": figures["log_likelihood_stderr"],
            "raise": figures.get("raise_log_likelihood"), "raise_se": figures.get("raise_log_likelihood_stderr"),
            "acc": figures["frame_accuracy"], "frames": int(figures["frames"]),
            "best_epoch": metrics.epochs[best]["epoch"], "valid_ll": valid[best],
            "epochs": metrics.epochs[-1]["epoch"], "seconds": float(seconds)}


def mean_and_spread(values: list[float]) -> str:
    spread = f", sd {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{spread}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    model, data = argv
    runs = sorted(p for p in Path("runs").glob(f"results-{model}-{data}*") if (p / "test.json").is_file())
    if not runs:
        print(f"no finished runs/results-{model}-{data}* (each needs test.json).", file=sys.stderr)
        return 1
    try:
        rows = [run_summary(r) for r in runs]
    except RnnrbmError as e:
        print(e, file=sys.stderr)
        return 1
    for r in rows:
        lower = f" (RAISE {r['raise']:.3f} ± {r['raise_se']:.3f})" if r["raise"] is not None else ""
        print(f"{r['run']:44s} test {r['ll']:.3f} ± {r['se']:.3f}{lower} ({r['frames']:,} frames)  ACC {r['acc']:.1f}%  "
              f"valid {r['valid_ll']:.3f} at epoch {r['best_epoch']} of {r['epochs']}  {r['seconds']:.0f} s")
    print(f"mean of {len(rows)}: {mean_and_spread([r['ll'] for r in rows])}; ACC {statistics.fmean(r['acc'] for r in rows):.1f}%")
    if all(r["raise"] is not None for r in rows):
        print(f"RAISE (conservative) mean of {len(rows)}: {mean_and_spread([r['raise'] for r in rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
