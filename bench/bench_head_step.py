"""The widest head's training step against the machine's memory bandwidth (its roofline).

    python bench/bench_head_step.py [--units 1024] [--batch 16] [--dim 1280] [--rows 281]

Method A's search spends most of its time in 1024-unit heads (TPE's favourite), whose
step is memory-bound: one fold's first-layer kernel is D x U floats and a step moves it
13 times (the forward matmul reads it; the kernel-gradient matmul writes the gradient;
the fused Adam update makes one pass per output, reading parameter, both moments and the
gradient for the parameter, moment and gradient for each moment, and writing the three).
This bench times that step inside the real head program (`head.fit_folds`, 5 folds one
after another, every epoch run) and a streaming kernel (jitted `a * s + b` over 64 MiB
arrays, donated) in the same process, and prints both bandwidths and what a perfect
single-pass update (7 kernel-sized moves per step) would allow.
"""

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.train import head
from bt_jax.train.folds import FoldArrays, pad_index_sets

MOVES_NOW, MOVES_IDEAL = 13, 7   # kernel-sized reads + writes per step (docstring)


def stream_gb_s(mib: int = 64, repeats: int = 40) -> float:
    """Read a, read b, write a: bytes moved per second by a donated `a * s + b`."""
    n = mib * 2**20 // 4
    a, b = jnp.ones((n,), jnp.float32), jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda a, b: a * 1.0001 + b, donate_argnums=0)
    for _ in range(3):
        a = f(a, b)
    a.block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        a = f(a, b)
    a.block_until_ready()
    return 3 * 4 * n * repeats / (time.perf_counter() - t) / 1e9


def step_ms(units: int, batch: int, dim: int, rows: int, k: int, epochs: int, repeats: int):
    """Milliseconds per training step of one fold, every epoch run (patience > epochs)."""
    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 0.5, (rows, dim)).astype(np.float32)
    y = (rng.random(rows) < 2 / 3).astype(np.int64)
    parts = np.array_split(rng.permutation(rows), k)
    (ti, tm), (vi, vm) = (pad_index_sets([np.concatenate(parts[:f] + parts[f + 1:])
                                          for f in range(k)]), pad_index_sets(parts))
    folds = FoldArrays(ti, tm, vi, vm)
    steps = epochs * sum(-(-int(m.sum()) // batch) for m in tm)
    hp = head.HeadHParams(units=units, batch_size=batch, lr=1e-4, epochs=epochs,
                          patience=epochs + 1)
    head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(0))           # compile
    t = time.perf_counter()
    for r in range(repeats):
        head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(r + 1))
    return (time.perf_counter() - t) / repeats / steps * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1280, help="feature width (Lite0: 1280)")
    ap.add_argument("--rows", type=int, default=281, help="228 originals + 53 augment2a copies")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ms = step_ms(a.units, a.batch, a.dim, a.rows, 5, a.epochs, a.repeats)
    stream = stream_gb_s()
    kernel_mb = 4 * a.dim * a.units / 1e6
    step_gb_s = MOVES_NOW * kernel_mb / ms   # MB per ms = GB/s
    res = {"bench": "head_step", "units": a.units, "batch": a.batch, "dim": a.dim,
           "step_ms": round(ms, 3), "kernel_mb": round(kernel_mb, 2),
           "moved_mb_per_step": round(MOVES_NOW * kernel_mb, 1),
           "step_gb_s": round(step_gb_s, 1), "stream_gb_s": round(stream, 1),
           "fraction_of_stream": round(step_gb_s / stream, 2),
           "ideal_step_ms_at_stream": round(MOVES_IDEAL * kernel_mb / stream, 3),
           "ideal_speedup": round(ms / (MOVES_IDEAL * kernel_mb / stream), 2),
           "cpus": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}
    for k, v in res.items():
        print(f"{k:24s} {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
