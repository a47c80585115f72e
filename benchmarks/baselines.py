"""Reference points that need no training loop: models anyone can check by hand.

    python benchmarks/baselines.py                  # every registry dataset with rolls
    python benchmarks/baselines.py jsb-chorales --json

For each dataset, on its test split, with every frame weighted equally (first frame included,
its "previous frame" silence, as rnnrbm evaluate conditions the first frame on nothing):

- independent notes, each a first-order Markov chain on its own previous state, fit on the
  training split by counting (add-one smoothing): LL in nats per frame, and the expected
  frame accuracy (Bay et al.: sum E[TP] / sum E[TP + FP + FN]) of its note probabilities;
- "copy the previous frame", deterministic: its frame accuracy only.

This is the bar the issue on training quality sets: a trained model that does not beat it has
not learnt anything about time beyond each key's own persistence.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from rnnrbm_cli import registry
from rnnrbm_cli.datasets import load_prepared, resolve_data


def previous_frames(sequences):
    """(frames, previous frames) over all sequences, the previous of a first frame silence."""
    v = np.concatenate(sequences).astype(np.float64)
    prev = np.concatenate([np.vstack([np.zeros((1, s.shape[1])), s[:-1]]) for s in sequences]).astype(np.float64)
    return v, prev


def markov_notes(train, test) -> dict:
    v, prev = previous_frames(train)
    # p(on | previous on) and p(on | previous off) per key, add-one smoothed
    on_after_on = (v * prev).sum(0) + 1
    on_after_off = (v * (1 - prev)).sum(0) + 1
    p_on_on = on_after_on / (prev.sum(0) + 2)
    p_on_off = on_after_off / ((1 - prev).sum(0) + 2)
    tv, tprev = previous_frames(test)
    p = tprev * p_on_on + (1 - tprev) * p_on_off
    ll = (tv * np.log(p) + (1 - tv) * np.log1p(-p)).sum(1)
    tp, fp, fn = (p * tv).sum(), (p * (1 - tv)).sum(), ((1 - p) * tv).sum()
    copy = tprev
    ctp, cfp, cfn = (copy * tv).sum(), (copy * (1 - tv)).sum(), ((1 - copy) * tv).sum()
    return {
        "frames": int(len(tv)),
        "markov_ll": float(ll.mean()), "markov_ll_stderr": float(ll.std(ddof=1) / np.sqrt(len(ll))),
        "markov_acc": float(100 * tp / (tp + fp + fn)),
        "copy_acc": float(100 * ctp / (ctp + cfp + cfn)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", help="registry names (default: all with rolls)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.datasets or [d.name for d in registry.load_registry().values() if d.file("rolls") is not None]
    results = {}
    for name in names:
        data = load_prepared(resolve_data(name, progress=False))
        results[name] = markov_notes(data.splits["train"], data.splits["test"])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'dataset':<16} {'test frames':>11} {'Markov notes LL':>18} {'its ACC':>8} {'copy ACC':>9}")
        for name, r in results.items():
            print(f"{name:<16} {r['frames']:>11,} {r['markov_ll']:>10.2f} ± {r['markov_ll_stderr']:.2f} "
                  f"{r['markov_acc']:>7.1f}% {r['copy_acc']:>8.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
