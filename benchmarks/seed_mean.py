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


def run_summary(run: Path) -> dict:
    test = json.loads((run / "test.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    scored = [r for r in rows if r.get("valid_ll") is not None]
    best = max(scored, key=lambda r: r["valid_ll"]) if scored else rows[-1]
    seconds = sum(r.get("seconds", 0.0) + (r.get("valid_ll_seconds") or 0.0) for r in rows)
    return {"run": run.name, "ll": test["log_likelihood"], "se": test["log_likelihood_stderr"],
            "acc": test["frame_accuracy"], "frames": test["frames"], "best_epoch": best["epoch"],
            "valid_ll": best.get("valid_ll"), "epochs": rows[-1]["epoch"], "seconds": seconds}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    model, data = argv
    runs = sorted(p for p in Path("runs").glob(f"results-{model}-{data}*") if (p / "test.json").is_file())
    if not runs:
        print(f"no finished runs/results-{model}-{data}* (each needs test.json).", file=sys.stderr)
        return 1
    rows = [run_summary(r) for r in runs]
    for r in rows:
        print(f"{r['run']:44s} test {r['ll']:.3f} ± {r['se']:.3f} ({r['frames']:,} frames)  ACC {r['acc']:.1f}%  "
              f"valid {r['valid_ll']:.3f} at epoch {r['best_epoch']} of {r['epochs']}  {r['seconds']:.0f} s")
    lls = [r["ll"] for r in rows]
    spread = f", sd {statistics.stdev(lls):.3f}" if len(lls) > 1 else ""
    print(f"mean of {len(lls)}: {statistics.fmean(lls):.3f}{spread}; ACC {statistics.fmean(r['acc'] for r in rows):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
