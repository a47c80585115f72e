"""The RNN-RBM with dropout on the compiled kernels against the torch engine: fine-tuning
updates per second of the JSB chorales paper preset's model, each figure measured in its own
child process with a fixed thread count, the torch figure in the same run; and the kernels
without dropout, for what the masks cost.

    RNNRBM_MIRROR=../shared/datasets python benchmarks/dropout_bench.py     # 1 thread
    python benchmarks/dropout_bench.py --threads 2 --data nottingham

Model: the preset's sizes (150 hidden units, 100 recurrent, tanh, learned u(0)), chunks of
100 frames, one chunk per update (the preset's batch), CD-15, Adam; the loop of ``train.py``
(zero_grad -> objective.gradients -> optimizer.step) over an epoch's order (from its start
again when it ends), after three untimed updates. Every child sets torch.set_num_threads and
NUMBA_NUM_THREADS to --threads, runs with OMP_WAIT_POLICY=PASSIVE (the CLI's setting), and
prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nade_bench import run_child, timed_updates  # this folder is on sys.path when run as a script


def child(spec: dict) -> dict:
    """One measurement, in this (child) process."""
    import numba
    import torch

    torch.set_num_threads(spec["threads"])
    from rnnrbm_cli import engines
    from rnnrbm_cli.chunks import ChunkedData
    from rnnrbm_cli.datasets import load_prepared, resolve_data
    from rnnrbm_cli.models.base import ModelConfig
    from rnnrbm_cli.models.rbm import RNNRBM

    info = {"torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    data = load_prepared(resolve_data(spec["data"], progress=False))
    model = RNNRBM(ModelConfig(n_hidden=150, n_recurrent=100, learn_u0=True), torch.Generator().manual_seed(0))
    model.set_dropout(spec["dropout"], torch.Generator().manual_seed(2))
    model.train()
    train = ChunkedData(data.splits["train"], 100, torch.device("cpu"))
    objective = engines.objective_for(model, train, k=15, backend=spec["backend"],
                                      generator=torch.Generator().manual_seed(3))
    assert objective.backend == spec["backend"]
    objective.warm_up()
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    order = train.epoch_order(1, torch.Generator().manual_seed(1)).split(1)
    frames, seconds = timed_updates(objective, opt, order, spec["updates"])
    return {**info, "updates": spec["updates"], "frames": frames, "seconds": seconds,
            "frames_per_second": frames / seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="jsb-chorales", help="registry name (default: jsb-chorales)")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--torch-updates", type=int, default=300, help="timed updates of the torch engine")
    ap.add_argument("--numba-updates", type=int, default=2000, help="timed updates of the kernels")
    args = ap.parse_args(argv)
    print(f"{args.data}, 150 hidden, 100 recurrent, chunks of 100, CD-15, Adam; threads {args.threads} "
          "(torch.set_num_threads and NUMBA_NUM_THREADS), OMP_WAIT_POLICY=PASSIVE, each figure in its own process",
          flush=True)
    figs = {}
    for name, backend, dropout, updates in (("torch, dropout", "torch", args.dropout, args.torch_updates),
                                            ("kernels, dropout", "numba", args.dropout, args.numba_updates),
                                            ("kernels, none", "numba", 0.0, args.numba_updates)):
        spec = {"backend": backend, "dropout": dropout, "threads": args.threads, "updates": updates, "data": args.data}
        figs[name] = f = run_child(spec, __file__)
        print(f"{name:>17} {dropout:.2f}: {f['frames_per_second']:9,.0f} frames/s ({f['frames']:,} frames in "
              f"{f['seconds']:.2f} s; torch threads {f['torch_threads']}, numba threads {f['numba_threads']}, "
              f"OMP_WAIT_POLICY={f['OMP_WAIT_POLICY']})", flush=True)
    fps = {k: v["frames_per_second"] for k, v in figs.items()}
    print(f"dropout {args.dropout}: kernels {fps['kernels, dropout'] / fps['torch, dropout']:.1f}x the torch engine; "
          f"with dropout the kernels run at {100 * fps['kernels, dropout'] / fps['kernels, none']:.0f}% of their speed "
          "without")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
