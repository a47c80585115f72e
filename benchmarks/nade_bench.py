"""The RNN-NADE on the compiled kernels against the torch path: training frames/s and exact
test evaluation, each measured in its own child process with a fixed thread count, the
torch figure in the same run; then where one compiled update's time goes.

    RNNRBM_MIRROR=../shared/datasets python benchmarks/nade_bench.py            # 2 threads
    python benchmarks/nade_bench.py --threads 1 --eval-frames 5000

Model: the paper preset's sizes (n_hidden 150, n_recurrent 100, tanh, learned u(0)),
Nottingham benchmark rolls, chunks of 100 frames, Adam; training at --batch 1 and 4 is
the loop of ``train.py`` (zero_grad -> objective.gradients -> optimizer.step) over the
first updates of an epoch's order. Evaluation is ``evaluate.evaluate`` (exact LL, ACC from
--samples exact samples per frame) of a model trained by the compiled run for
--eval-train-updates updates first (an untrained NADE samples half its notes, which a
trained one does not), on the test split or its first --eval-frames frames.
Every child sets torch.set_num_threads and NUMBA_NUM_THREADS to --threads and runs with
OMP_WAIT_POLICY=PASSIVE (the CLI's setting), and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


WARM_UPDATES = 3  # untimed updates before the timed ones


def timed_updates(objective, opt, batches, n: int) -> tuple[int, float]:
    """Frames and seconds of ``n`` updates (zero_grad -> objective.gradients -> step, the loop
    of ``train.py``) over ``batches``, from the first again if they run out, after
    WARM_UPDATES untimed ones."""
    frames, t0 = 0, None
    for u in range(n + WARM_UPDATES):
        if u == WARM_UPDATES:
            t0, frames = time.perf_counter(), 0
        opt.zero_grad(set_to_none=False)
        res = objective.gradients(batches[u % len(batches)])
        opt.step()
        frames += res.n_frames
    return frames, time.perf_counter() - t0


def child(spec: dict) -> dict:
    """One measurement, in this (child) process."""
    import numba
    import torch

    torch.set_num_threads(spec["threads"])
    from rnnrbm_cli import engines
    from rnnrbm_cli.chunks import ChunkedData
    from rnnrbm_cli.datasets import load_prepared, resolve_data
    from rnnrbm_cli.models.base import ModelConfig
    from rnnrbm_cli.models.nade import RNNNADE

    info = {"torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    data = load_prepared(resolve_data("nottingham"))
    model = RNNNADE(ModelConfig(n_hidden=150, n_recurrent=100, learn_u0=True, model_type="rnn-nade"),
                    torch.Generator().manual_seed(0))
    backend = spec["backend"]
    if spec["job"] == "train":
        train = ChunkedData(data.splits["train"], 100, torch.device("cpu"))
        objective = engines.objective_for(model, train, k=0, backend=backend)
        assert objective.backend == backend
        objective.warm_up()
        opt = torch.optim.Adam(model.parameters(), lr=0.002)
        batches = train.epoch_order(spec["batch"], torch.Generator().manual_seed(1)).split(spec["batch"])
        n, warm = spec["updates"], WARM_UPDATES
        frames, seconds = timed_updates(objective, opt, batches, n)
        out = {**info, "frames_per_second": frames / seconds, "updates": n, "frames": frames, "seconds": seconds}
        if spec.get("save"):
            for ids in batches[n + warm : n + warm + spec.get("more_updates", 0)]:
                opt.zero_grad(set_to_none=False)
                objective.gradients(ids)
                opt.step()
            torch.save(model.state_dict(), spec["save"])
        if spec.get("profile"):
            out["profile_us"] = profile(model, objective, opt, train, batches[n + warm : n + warm + 200])
        return out
    from rnnrbm_cli.evaluate import evaluate

    model.load_state_dict(torch.load(spec["model"], weights_only=True))
    test = data.splits["test"]
    if spec.get("frames"):
        cut, left = [], spec["frames"]
        for s in test:
            if left <= 0:
                break
            cut.append(s[:left])
            left -= len(cut[-1])
        test = cut
    if backend == "numba":  # compile or load outside the timing
        evaluate(model, [test[0][:5]], samples=2, generator=torch.Generator().manual_seed(0), backend=backend)
    t0 = time.perf_counter()
    res = evaluate(model, test, samples=spec["samples"], generator=torch.Generator().manual_seed(0), backend=backend)
    assert res["backend"] == backend
    return {**info, "seconds": time.perf_counter() - t0, "frames": res["frames"], "log_likelihood": res["log_likelihood"],
            "frame_accuracy": res["frame_accuracy"]}


def profile(model, objective, opt, data, batches) -> dict:
    """Median µs per part of a compiled update (the tanh recurrence's closed form): the RNN
    forward (kernel), the NADE forward and backward (kernels), the RNN's BPTT (kernel),
    the products with every frame's u(t-1) (torch: biases, their gradients, what they send
    back to u(t-1), the RNN's weight gradients; timed apart on the same shapes), zero_grad,
    Adam's step, and what is left (Python glue: spans, views, allocations)."""
    import numpy as np
    import torch

    from rnnrbm_cli.engines import numba_nade

    kernels = numba_nade._kernels()
    times = {"recurrence": [], "log_probs": [], "gradients": [], "bptt": []}

    class Timed:
        def __getattr__(self, name):
            fn = getattr(kernels, name)
            if name not in times:
                return fn

            def call(*a):
                t = time.perf_counter()
                out = fn(*a)
                times[name].append(time.perf_counter() - t)
                return out

            return call

    proxy = Timed()
    numba_nade._kernels = lambda: proxy
    parts = {k: [] for k in ("RNN forward (kernel)", "NADE forward (kernel)", "NADE backward (kernel)",
                             "BPTT (kernel)", "products with u(t-1) (torch)", "zero_grad", "optimizer step",
                             "python and glue", "update")}
    n_u, n_v, n_h = model.Wuu.shape[0], model.config.n_visible, model.config.n_hidden
    try:
        for ids in batches:
            n = int(data.chunks[ids, 1].sum())
            u, d, W_cat = torch.randn(n, n_u), torch.randn(n, n_v + n_h), torch.randn(n_u, n_v + n_h)
            v, da = torch.rand(n, n_v), torch.randn(n, n_u)
            saved = torch.get_num_threads()
            torch.set_num_threads(1)  # as the update runs them
            t = time.perf_counter()
            torch.addmm(torch.zeros(n_v + n_h), u, W_cat), u.T @ d, d.sum(0), d @ W_cat.T, v.T @ da, u.T @ da, da.sum(0)
            products = time.perf_counter() - t
            torch.set_num_threads(saved)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            t1 = time.perf_counter()
            objective.gradients(ids)
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            last = {k: v[-1] for k, v in times.items()}
            parts["RNN forward (kernel)"].append(last["recurrence"])
            parts["NADE forward (kernel)"].append(last["log_probs"])
            parts["NADE backward (kernel)"].append(last["gradients"])
            parts["BPTT (kernel)"].append(last["bptt"])
            parts["products with u(t-1) (torch)"].append(products)
            parts["zero_grad"].append(t1 - t0)
            parts["optimizer step"].append(t3 - t2)
            parts["update"].append(t3 - t0)
            parts["python and glue"].append((t2 - t1) - sum(last.values()) - products)
    finally:
        numba_nade._kernels = lambda: kernels
    return {k: float(np.median(v)) * 1e6 for k, v in parts.items()}


def run_child(spec: dict, script: str = __file__) -> dict:
    """``script --child SPEC`` in a process of its own with spec["threads"] threads (OpenMP,
    MKL, numba) and passive waiting; its last line of output, as JSON."""
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    out = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"child {spec} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-updates", type=int, default=30, help="timed updates of the torch path per batch size")
    ap.add_argument("--numba-updates", type=int, default=300, help="timed updates of the kernels per batch size")
    ap.add_argument("--eval-train-updates", type=int, default=1000,
                    help="updates at batch 4 that train the evaluated model (after the timed ones)")
    ap.add_argument("--eval-frames", type=int, default=None, help="the first test frames only (default: all 44,463)")
    ap.add_argument("--samples", type=int, default=20, help="exact samples per frame for ACC")
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args(argv)
    print(f"threads {args.threads} (torch.set_num_threads and NUMBA_NUM_THREADS), OMP_WAIT_POLICY=PASSIVE, "
          "each figure in its own process", flush=True)
    model_file = Path(tempfile.mkdtemp(prefix="nade-bench-")) / "model.pt"
    rows = []
    for batch in (1, 4):
        figs = {}
        for backend in ("torch", "numba"):
            spec = {"job": "train", "backend": backend, "batch": batch, "threads": args.threads,
                    "updates": args.torch_updates if backend == "torch" else args.numba_updates}
            if backend == "numba" and batch == 4 and not args.skip_eval:
                spec.update(save=str(model_file), more_updates=args.eval_train_updates)
            if backend == "numba":
                spec["profile"] = True
            figs[backend] = run_child(spec)
            f = figs[backend]
            print(f"train batch {batch} {backend:>5}: {f['frames_per_second']:9,.0f} frames/s ({f['frames']:,} frames in "
                  f"{f['seconds']:.2f} s; torch threads {f['torch_threads']}, numba threads {f['numba_threads']}, "
                  f"OMP_WAIT_POLICY={f['OMP_WAIT_POLICY']})", flush=True)
        ratio = figs["numba"]["frames_per_second"] / figs["torch"]["frames_per_second"]
        rows.append(f"train batch {batch}: {ratio:.1f}x the torch path")
        print(f"  ratio {ratio:.1f}x  (must: >= 8x; goal: >= 20x and >= 30,000 frames/s)", flush=True)
        prof = figs["numba"]["profile_us"]
        print("  one compiled update, median us: " + ", ".join(f"{k} {v:.0f}" for k, v in prof.items()), flush=True)
    if not args.skip_eval:
        figs = {}
        for backend in ("torch", "numba"):
            spec = {"job": "evaluate", "backend": backend, "threads": args.threads, "model": str(model_file),
                    "samples": args.samples, "frames": args.eval_frames}
            figs[backend] = f = run_child(spec)
            print(f"evaluate {backend:>5}: {f['seconds']:8.2f} s for {f['frames']:,} test frames (exact LL "
                  f"{f['log_likelihood']:.3f}, ACC {f['frame_accuracy']:.2f}% from {args.samples} samples per frame; "
                  f"torch threads {f['torch_threads']}, numba threads {f['numba_threads']})", flush=True)
        ratio = figs["torch"]["seconds"] / figs["numba"]["seconds"]
        rows.append(f"evaluate: {ratio:.1f}x the torch path")
        print(f"  ratio {ratio:.1f}x  (must: >= 5x)", flush=True)
    print("; ".join(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
