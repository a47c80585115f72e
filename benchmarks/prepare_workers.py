"""Speed of `rnnrbm prepare` of the Nottingham MIDI zip with 1 and more worker processes.

Each run is `rnnrbm prepare nottingham --source midi --workers N` in its own subprocess
(a fresh interpreter: imports and pool start-up are counted, as a user pays them), into
a temporary cache fetched beforehand, so that only preparing is timed. Prints the wall
seconds of each, the CPU seconds of it and its workers, the ratio to one worker, and
whether every run wrote the same rolls.

    RNNRBM_MIRROR=../shared/datasets python benchmarks/prepare_workers.py
    python benchmarks/prepare_workers.py --workers 1 2 4 --repeat 3
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rnnrbm_cli, not another install's

from rnnrbm_cli.readers import pool_size  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def rnnrbm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnnrbm_cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )


def timed_prepare(workers: int, cache: Path, env: dict[str, str]) -> dict:
    """One `rnnrbm prepare` in a subprocess: wall and CPU seconds (the workers' included),
    and what it wrote."""
    out = cache / f"workers{workers}.npz"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = rnnrbm("prepare", "nottingham", "--source", "midi", "--workers", str(workers), "--cache-dir", str(cache),
                  "--out", str(out), "--json", env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = json.loads(done.stdout)
    n_files = sum(s["sequences"] for s in doc["splits"].values()) + len(doc["skipped_files"])
    return {
        "workers": workers,
        "processes": pool_size(workers, n_files),
        "files": n_files,
        "seconds": seconds,
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "content_sha256": doc["meta"]["content_sha256"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each count; the fastest is kept (default 1)")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = ", ".join(f"{v}={os.environ[v]}" for v in THREAD_VARIABLES if v in os.environ) or "none set"
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, os.cpu_count() = {os.cpu_count()}, "
          f"usable CPUs = {affinity}; thread variables: {threads}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="rnnrbm-bench-") as tmp:
        cache = Path(tmp)
        rnnrbm("fetch", "nottingham", "--form", "midi", "--cache-dir", str(cache), env=env)  # not timed
        best: dict[int, dict] = {}
        for _ in range(args.repeat):
            for workers in args.workers:
                run = timed_prepare(workers, cache, env)
                if workers not in best or run["seconds"] < best[workers]["seconds"]:
                    best[workers] = run
    base = best[args.workers[0]]["seconds"]
    print(f"rnnrbm prepare nottingham --source midi ({best[args.workers[0]]['files']} MIDI files), "
          f"best of {args.repeat}:")
    for workers in args.workers:
        r = best[workers]
        print(f"  --workers {workers}: {r['processes']} process{'es' if r['processes'] > 1 else ''} sampling, "
              f"{r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU, "
              f"{base / r['seconds']:.2f}x the speed of --workers {args.workers[0]}")
    digests = {r["content_sha256"] for r in best.values()}
    print(f"same rolls in every run: {'yes' if len(digests) == 1 else 'NO'} "
          f"(content_sha256 {', '.join(d[:12] for d in sorted(digests))})")
    if len(digests) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
