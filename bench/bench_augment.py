"""Augmentation throughput (images/second) of `bt_jax.data.augment.augment_batch`.

    python bench/bench_augment.py                      # CPU, batch 32, 224x224
    python bench/bench_augment.py --batch 64 --size 240 --repeats 20 --platform gpu

Times whole jitted batches after a warm-up call (compilation excluded), reports the
median over repeats, and prints a table and one JSON line for logs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--platform", default="cpu", help="JAX platform: cpu | gpu | tpu")
    args = ap.parse_args(argv)
    # must be set before jax initialises its backends
    os.environ.setdefault("JAX_PLATFORMS", args.platform)

    import jax
    import numpy as np

    from bt_jax import config as cfg
    from bt_jax.data.augment import augment_batch, make_augment_params

    params = make_augment_params(cfg.base_config().augment)
    images = jax.device_put(np.random.default_rng(0).random(
        (args.batch, args.size, args.size, 3), dtype=np.float32))
    keys = [jax.random.split(jax.random.PRNGKey(i), args.batch)
            for i in range(args.warmup + args.repeats)]
    t0 = time.perf_counter()
    augment_batch(images, keys[0], params).block_until_ready()
    compile_s = time.perf_counter() - t0
    for k in keys[1:args.warmup]:
        augment_batch(images, k, params).block_until_ready()
    times = []
    for k in keys[args.warmup:]:
        t0 = time.perf_counter()
        augment_batch(images, k, params).block_until_ready()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    result = {
        "bench": "augment", "batch": args.batch, "size": args.size, "repeats": args.repeats,
        "median_batch_s": round(med, 5), "images_per_s": round(args.batch / med, 1),
        "first_call_s": round(compile_s, 3), "device": str(jax.devices()[0]),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "python": platform.python_version(),
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
