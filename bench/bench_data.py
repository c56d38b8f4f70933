"""Data pipeline throughput on the reference set (or any class-per-folder set).

    python bench/bench_data.py [--data ../shared/data/brain_mri] [--size 224]

Prints images/s for decode, decode+crop+equalise+resize (one thread), the full
prepare_dataset with a cold cache (thread pool) and with a warm cache, plus one JSON line.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax

from bt_jax.config import base_config
from bt_jax.data import dataset, decode, discover, preprocess

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    c = base_config()
    c.data.dir = a.data
    c.preprocess.size = a.size
    files = [f for f in discover.discover(Path(a.data), tuple(c.data.classes), c.data.extensions)]
    p = preprocess.PreprocessParams.from_config(c.preprocess)

    def timed(fn):
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return len(files) / statistics.median(ts)

    dec = timed(lambda: [decode.decode_file(f.path) for f in files])
    full = timed(lambda: [preprocess.preprocess_image(decode.decode_file(f.path)[0], p) for f in files])
    with tempfile.TemporaryDirectory() as w:
        t0 = time.perf_counter()
        dataset.prepare_dataset(c, w, progress=False)
        cold = len(files) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        dataset.prepare_dataset(c, w, progress=False)
        warm = len(files) / (time.perf_counter() - t0)
    res = {"bench": "data", "images": len(files), "size": a.size,
           "decode_img_s": round(dec, 1), "decode_crop_equalise_resize_img_s": round(full, 1),
           "prepare_cold_img_s": round(cold, 1), "prepare_warm_cache_img_s": round(warm, 1),
           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
           "jax": jax.__version__}
    for k, v in res.items():
        print(f"{k:36s} {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
