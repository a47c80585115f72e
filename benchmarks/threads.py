"""Training speed against torch's thread count: the paper preset of one model on one dataset,
trained for a few epochs in its own child process per thread count, the first count the
baseline every ratio is against (all measured in the same run, on the same machine).

    RNNRBM_MIRROR=../shared/datasets python benchmarks/threads.py                  # RNN, Nottingham, 1 and 2 threads
    python benchmarks/threads.py --model rnn-nade --data jsb-chorales --threads 2,1

Each child is ``rnnrbm_cli.train_model`` (the real ``Trainer``: the run's own loop, validation
and checkpoints) with ``--eval-every 0`` and no pretraining (the RNN-RBM's preset pretrains
for 60 epochs), so an epoch's seconds are its fine-tuning updates and the validation monitor.
It sets its count as ``rnnrbm --threads N`` does (``device.set_threads``) before anything
runs, with OMP_WAIT_POLICY=PASSIVE (the CLI's setting), and prints the counts it ran with. The figure is the median of the epochs' seconds after the first (the first pays
for warming up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(spec: dict) -> dict:
    """Train ``spec``'s run in this (child) process and return its threads and epoch times."""
    import torch

    from rnnrbm_cli import api
    from rnnrbm_cli.device import set_threads

    set_threads(spec["threads"])  # what `rnnrbm --threads N` does, before numba is loaded
    from rnnrbm_cli.rundir import read_metrics

    info = {"threads": spec["threads"], "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    result = api.train_model(preset="paper", model_type=spec["model"], data=spec["data"], epochs=spec["epochs"],
                             eval_every=0, run_dir=spec["run_dir"], device="cpu", seed=1234,
                             pretrain_rbm_epochs=0, pretrain_rnn_epochs=0)
    rows = [r for r in read_metrics(Path(result.run_dir)).epochs if r.get("stage", "fine") == "fine"]
    info["seconds"] = [r["seconds"] for r in rows]
    info["valid_monitor"] = rows[-1].get("valid_monitor")
    return info


def measure(spec: dict) -> dict:
    """``spec`` run by ``child`` in a fresh interpreter with its thread count in the environment."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), OMP_WAIT_POLICY="PASSIVE")  # read as torch loads
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rnn")
    ap.add_argument("--data", default="nottingham")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per thread count (the first is left out)")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}",
                    help="comma-separated thread counts; the first is the baseline (default: 1 and all cores)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.epochs < 2:
        ap.error("--epochs must be 2 or more (the first epoch is left out of the figure)")
    counts = [int(c) for c in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            spec = {"model": args.model, "data": args.data, "epochs": args.epochs, "threads": n,
                    "run_dir": str(Path(tmp) / f"threads-{n}")}
            info = measure(spec)
            info["epoch_seconds"] = statistics.median(info["seconds"][1:])
            rows.append(info)
    base = rows[0]["epoch_seconds"]
    print(f"{args.model} on {args.data}, paper preset, {args.epochs} epochs per count, {os.cpu_count()} cores, "
          f"OMP_WAIT_POLICY={rows[0]['OMP_WAIT_POLICY']}")
    print(f"{'threads':>8} {'torch threads':>14} {'s/epoch':>9} {'vs ' + str(counts[0]) + ' thread(s)':>16} {'valid monitor':>14}")
    for r in rows:
        print(f"{r['threads']:>8} {r['torch_threads']:>14} {r['epoch_seconds']:>9.2f} "
              f"{base / r['epoch_seconds']:>15.2f}x {r['valid_monitor']:>14.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
