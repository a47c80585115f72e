"""Speed of training, sampling and evaluation, each beside a baseline measured in the same run.

The baseline is the straightforward PyTorch port of the 2012 tutorial, written out below:
one chunk per update, a Python loop over time for the RNN, ``torch.bernoulli`` in the
Gibbs chain, autograd for everything. Every figure is printed with its ratio to it.

    python benchmarks/bench.py                      # CPU, Nottingham benchmark rolls
    python benchmarks/bench.py --device cuda --json out.json

Data: the Nottingham benchmark rolls (fetched and prepared on demand; set RNNRBM_MIRROR to
a local mirror to work offline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What the CLI sets before torch loads (rnnrbm_cli/cli.py): the figures are the ones a
# user of `rnnrbm train` gets.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from rnnrbm_cli.config import resolve_settings
from rnnrbm_cli.datasets import load_prepared, resolve_data
from rnnrbm_cli.engines import sampler_for
from rnnrbm_cli.train import Trainer

TARGETS = {  # from the speed issue: (CPU, GPU)
    "train_tutorial_s_per_epoch": (3.7, 1.0),
    "sample_1_s": (0.013, None),
    "sample_100_s": (1.0, None),
    "sample_1000_s": (None, 2.0),
    "evaluate_test_s": (None, 60.0),
}


# --- the same-run baseline -----------------------------------------------------------------


class Baseline(nn.Module):
    """The tutorial's RNN-RBM, written the obvious way (no batching, no fusion)."""

    def __init__(self, n_visible=88, n_hidden=150, n_recurrent=100):
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_visible, n_hidden) * 0.01)
        self.bv = nn.Parameter(torch.zeros(n_visible))
        self.bh = nn.Parameter(torch.zeros(n_hidden))
        self.Wuh = nn.Parameter(torch.randn(n_recurrent, n_hidden) * 0.0001)
        self.Wuv = nn.Parameter(torch.randn(n_recurrent, n_visible) * 0.0001)
        self.Wvu = nn.Parameter(torch.randn(n_visible, n_recurrent) * 0.0001)
        self.Wuu = nn.Parameter(torch.randn(n_recurrent, n_recurrent) * 0.0001)
        self.bu = nn.Parameter(torch.zeros(n_recurrent))
        self.n_recurrent = n_recurrent

    def free_energy(self, v, bv, bh):
        return -(v * bv).sum(-1) - torch.log1p(torch.exp(v @ self.W + bh)).sum(-1)

    def gibbs(self, v, bv, bh, k):
        for _ in range(k):
            h = torch.bernoulli(torch.sigmoid(v @ self.W + bh))
            v = torch.bernoulli(torch.sigmoid(h @ self.W.t() + bv))
        return v

    def cost(self, v, k):
        u = torch.zeros(self.n_recurrent, device=v.device)
        bvs, bhs = [], []
        for t in range(v.shape[0]):
            bvs.append(self.bv + u @ self.Wuv)
            bhs.append(self.bh + u @ self.Wuh)
            u = torch.tanh(self.bu + u @ self.Wuu + v[t] @ self.Wvu)
        bv, bh = torch.stack(bvs), torch.stack(bhs)
        with torch.no_grad():
            v_neg = self.gibbs(v, bv, bh, k)
        return (self.free_energy(v, bv, bh) - self.free_energy(v_neg, bv, bh)).mean()

    @torch.no_grad()
    def sample(self, steps, k):
        u = torch.zeros(self.n_recurrent, device=self.W.device)
        out = []
        for _ in range(steps):
            v = self.gibbs(torch.zeros(self.W.shape[0], device=self.W.device), self.bv + u @ self.Wuv, self.bh + u @ self.Wuh, k)
            out.append(v)
            u = torch.tanh(self.bu + u @ self.Wuu + v @ self.Wvu)
        return torch.stack(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_epoch_seconds(sequences, device, k, chunk, updates, seed):
    """Seconds per epoch of the baseline, timed over ``updates`` chunks and scaled."""
    torch.manual_seed(seed)
    model = Baseline().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    chunks = [torch.tensor(s[j : j + chunk], dtype=torch.float32, device=device) for s in sequences for j in range(0, len(s), chunk)]
    n = min(updates, len(chunks))
    for c in chunks[:5]:  # warm-up
        opt.zero_grad()
        model.cost(c, k).backward()
        opt.step()
    sync(device)
    t0 = time.perf_counter()
    frames = 0
    for c in chunks[5 : 5 + n]:
        opt.zero_grad()
        model.cost(c, k).backward()
        opt.step()
        frames += len(c)
    sync(device)
    seconds = time.perf_counter() - t0
    return seconds / n * len(chunks), frames / seconds, model


# --- the real code ----------------------------------------------------------------------------


def train_epochs(data, data_path, device, batch, epochs, seed):
    """Train ``epochs`` epochs with the real Trainer; returns the trainer and per-epoch metrics."""
    run_dir = Path(tempfile.mkdtemp(prefix="rnnrbm-bench-"))
    settings = resolve_settings({"data": str(data_path), "batch": batch, "epochs": epochs, "seed": seed,
                                 "run_dir": str(run_dir / "run"), "device": device.type})
    trainer = Trainer(settings, device, data, data_path)
    trainer.start_run_dir("benchmark")
    trainer.train()
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, lines


def time_call(fn, device, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def baseline_in_child(args, threads: int) -> dict:
    """The baseline's epoch, frames/s and one 200-frame sample, measured in a child process of
    its own with ``threads`` threads and passive waiting: in the parent it ran after the
    compiled kernels had started their thread pool, and its time drifted with them."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, __file__, "--baseline-child", "--device", args.device, "--baseline-updates",
               str(args.baseline_updates), "--seed", str(args.seed)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_child(args) -> None:
    device = torch.device(args.device)
    train = load_prepared(resolve_data("nottingham", progress=False)).splits["train"]
    epoch, fps, model = baseline_epoch_seconds(train, device, 15, 100, args.baseline_updates, args.seed)
    one = time_call(lambda: model.sample(200, 25), device, repeat=2)
    print(json.dumps({"epoch": epoch, "fps": fps, "sample_one": one, "threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="threads of the baseline's process  [default: this process's torch threads]")
    ap.add_argument("--baseline-updates", type=int, default=200, help="chunks the baseline is timed on (scaled to an epoch)")
    ap.add_argument("--batch", type=int, nargs="*", default=[32, 128], help="chunks per update for the batched schemes")
    ap.add_argument("--eval-frames", type=int, default=None,
                    help="test frames for evaluate, scaled to the whole split (default: all on CUDA, 1000 on CPU)")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-nade", action="store_true", help="leave out the RNN-NADE's train and evaluate figures")
    ap.add_argument("--ais-frames", type=int, default=200, help="test frames of the AIS engine comparison")
    ap.add_argument("--ais-betas", type=int, default=100, help="betas of the AIS engine comparison")
    ap.add_argument("--nade-samples", type=int, default=20, help="exact samples per frame for the RNN-NADE's ACC")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.baseline_child:
        baseline_child(args)
        return
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    figures: dict[str, float] = {}
    rows = []

    def row(name, ours, base=None, unit="s", target=None, better="lower"):
        figures[name] = ours
        ratio = "" if base is None else f"{(base / ours if better == 'lower' else ours / base):8.1f}x"
        tgt = "" if target is None else f"{target:g}"
        ok = "" if target is None else ("ok" if (ours <= target if better == "lower" else ours >= target) else "MISS")
        rows.append(f"{name:<34} {ours:>12.4g} {unit:<9} {'' if base is None else f'{base:12.4g}':>12} {ratio:>9} {tgt:>9} {ok:>5}")
        print(rows[-1], flush=True)

    data_path = resolve_data("nottingham")
    data = load_prepared(data_path)
    train = data.splits["train"]
    print(f"device: {device} ({torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"data: {data_path.name}: {len(train)} train sequences, {sum(len(s) for s in train):,} frames")
    print(f"{'figure':<34} {'ours':>12} {'unit':<9} {'baseline':>12} {'ratio':>9} {'target':>9}")

    base = baseline_in_child(args, args.baseline_threads or torch.get_num_threads())
    base_epoch, base_fps = base["epoch"], base["fps"]
    print(f"baseline: its own process, {base['threads']} torch threads, OMP_WAIT_POLICY={base['omp_wait_policy']}")
    trainer, lines = train_epochs(data, data_path, device, 1, 2, args.seed)
    target = TARGETS["train_tutorial_s_per_epoch"][1 if gpu else 0]
    row("train tutorial, epoch 1", lines[0]["seconds"], base_epoch, "s/epoch", target)
    row("train tutorial, epoch 2", lines[1]["seconds"], base_epoch, "s/epoch", target)
    row("train tutorial, frames/s", lines[1]["frames_per_second"], base_fps, "frames/s", better="higher")
    for batch in args.batch:
        _, blines = train_epochs(data, data_path, device, batch, 2, args.seed)
        row(f"train batch {batch}, frames/s", blines[1]["frames_per_second"], base_fps, "frames/s",
            10 * base_fps if not gpu else 5e6, better="higher")

    model = trainer.model.eval()
    sampler = sampler_for(model)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    base_one = base["sample_one"]
    for n in ([1, 100, 1000] if gpu else [1, 100]):
        seconds = time_call(lambda: sampler.generate(n, 200, 25, None, gen), device)
        row(f"sample --num {n} (200 frames, k 25)", seconds, base_one * n, "s", TARGETS.get(f"sample_{n}_s", (None, None))[1 if gpu else 0])

    if not args.skip_eval:
        from rnnrbm_cli.evaluate import evaluate

        test = data.splits["test"]
        n_test = sum(len(s) for s in test)
        frames = args.eval_frames if args.eval_frames is not None else (n_test if gpu else 1000)
        frames = min(frames, n_test)
        sync(device)
        t0 = time.perf_counter()
        result = evaluate(model, test, max_frames=frames if frames < n_test else None,
                          generator=torch.Generator(device=device).manual_seed(args.seed))
        sync(device)
        seconds = (time.perf_counter() - t0) * n_test / frames
        label = f"evaluate test ({n_test:,} frames)" + ("" if frames == n_test else f", from {frames:,}")
        row(label, seconds, None, "s", TARGETS["evaluate_test_s"][1 if gpu else 0])
        print(f"  (LL {result['log_likelihood']:.3f}, ACC {result['frame_accuracy']:.2f}% after 2 epochs)")

    if not args.skip_eval:
        # AIS alone, both engines on the same frames, chains, betas and seed: the ratio the
        # speed issue asks for (the torch path is the reference and the CUDA path).
        from rnnrbm_cli.engines import sampler_for as _sampler_for
        from rnnrbm_cli.evaluate import ais_base, ais_log_partition, conditional_frames, note_marginals

        frames = conditional_frames(model, data.splits["test"], max_frames=args.ais_frames,
                                    generator=torch.Generator(device=device).manual_seed(args.seed))
        base = ais_base(note_marginals(model.W, frames.bv, frames.bh, generator=torch.Generator(device=device).manual_seed(1)))
        per = {}
        for name in (["torch", "numba"] if not gpu else ["torch"]):
            s = _sampler_for(model, name)
            sync(device)
            t0 = time.perf_counter()
            ais_log_partition(model.W, frames.bv, frames.bh, chains=100, betas=args.ais_betas, base=base,
                              generator=torch.Generator(device=device).manual_seed(args.seed), sampler=s)
            sync(device)
            per[name] = (time.perf_counter() - t0) / (len(frames) * 100 * args.ais_betas) * 1e6
        if "numba" in per:
            row("AIS, us per frame x chain x beta", per["numba"], per["torch"], "us", per["torch"] / 8)
        else:
            row("AIS, us per frame x chain x beta", per["torch"], None, "us")

    if not args.skip_nade:
        # The RNN-NADE: exact likelihood, so training and evaluation have no chains at all.
        for batch in (1, 4):
            settings = resolve_settings({"data": str(data_path), "model_type": "rnn-nade", "optimizer": "adam",
                                         "batch": batch, "epochs": 1, "seed": args.seed, "eval_every": 0,
                                         "run_dir": str(Path(tempfile.mkdtemp(prefix="rnnrbm-bench-")) / "run"),
                                         "device": device.type})
            nade_trainer = Trainer(settings, device, data, data_path)
            nade_trainer.start_run_dir("benchmark")
            nade_trainer.train()
            fps = nade_trainer.last_metrics["frames_per_second"]
            row(f"train RNN-NADE batch {batch}, frames/s", fps, None, "frames/s", better="higher")
        from rnnrbm_cli.evaluate import evaluate

        test = data.splits["test"]
        sync(device)
        t0 = time.perf_counter()
        result = evaluate(nade_trainer.model, test, samples=args.nade_samples,
                          generator=torch.Generator(device=device).manual_seed(args.seed))
        sync(device)
        row(f"evaluate RNN-NADE test ({result['frames']:,} frames, exact)", time.perf_counter() - t0, None, "s")
        print(f"  (LL {result['log_likelihood']:.3f}, ACC {result['frame_accuracy']:.2f}% from {args.nade_samples} "
              "exact samples per frame, after 1 epoch)")

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row("peak host memory", peak_rss, None, "MiB")
    if gpu:
        row("peak GPU memory", torch.cuda.max_memory_allocated(device) / 2**20, None, "MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
