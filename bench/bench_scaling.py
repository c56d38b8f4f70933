"""Data-parallel fine-tuning: images/s of one `finetune_step` on 1, 2, 4 ... devices, in
bfloat16 vs float32, and with gradient accumulation (speed and XLA's memory estimate).

    python bench/bench_scaling.py                         # 1, 2, 4 simulated CPU devices
    python bench/bench_scaling.py --devices 1,2,4,8 --real  # real accelerators: the first n

Each device count runs in its own subprocess: on CPU, XLA_FLAGS=
--xla_force_host_platform_device_count=n splits the host into n devices (the same cores,
so no speed-up is expected; the point is that the sharded code path is what is timed).
With --real the child uses the first n of jax.devices() (GPUs/TPUs). The step is exactly
the one `finetune.fit` compiles: state replicated, the global batch's (K, M) micro-batch
layout from `finetune._batches` sharded over "data", every parameter trainable (method A's
fine-tune), in-graph augmentation on every row. Scaling efficiency = (img/s on n) /
(n x img/s on 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

from bench_backbones import machine_info
from bench_finetune import memory_of


def child(a) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from bt_jax import sharding
    from bt_jax.data import augment
    from bt_jax.models import registry
    from bt_jax.models.heads import Classifier, Head
    from bt_jax.train import finetune, partitions

    devices = jax.devices()[:a.n]
    assert len(devices) == a.n, f"asked for {a.n} devices, have {len(jax.devices())}"
    mesh = sharding.data_mesh(devices)
    spec = registry.get(a.model)
    dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    model = Classifier(backbone=spec.make(dtype=dtype), head=Head(256, 0.5))
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, a.size, a.size, 3))))(jax.random.PRNGKey(0))
    labels = partitions.trainable_labels(variables["params"], spec, "all")
    tx = partitions.make_tx(labels, lr=1e-5)
    state = sharding.replicate(finetune.init_state(variables, tx), mesh)
    rng = np.random.default_rng(0)
    b = a.batch
    data = finetune.FitData(images=rng.uniform(0, 1, (b, a.size, a.size, 3)).astype(np.float32),
                            labels=(np.arange(b) % 2).astype(np.int32), train_src=np.arange(b),
                            train_keys=rng.integers(0, 2 ** 32, (b, 2), dtype=np.uint32),
                            train_aug=np.ones(b, bool), val_idx=np.arange(0))
    fs = finetune.FitSpec(batch_size=b, grad_accum_steps=int(a.accum))
    batch = next(finetune._batches(data, fs, a.n, np.random.default_rng(0)))
    batch = sharding.shard_rows(batch, mesh, axis=1)
    aug = augment.AugmentParams(rotation=15.0, hflip=True)
    step = jax.jit(functools.partial(finetune.finetune_step, model, tx, labels, False, aug),
                   donate_argnums=0, out_shardings=NamedSharding(mesh, P()))
    key = jax.random.PRNGKey(1)
    t = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    times = []
    for i in range(a.warmup + a.repeats):
        t = time.perf_counter()
        state, m = compiled(state, batch, jax.random.fold_in(key, i))
        jax.block_until_ready((state, m))
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    print(json.dumps({"bench": "finetune_step_scaling", "model": a.model, "size": a.size,
                      "global_batch": b, "devices": a.n, "device": str(devices[0].platform),
                      "dtype": a.dtype, "grad_accum_steps": int(a.accum),
                      "images_per_s": round(b / sec, 2), "step_s_median": round(sec, 3),
                      "step_s_all": [round(x, 3) for x in times], "compile_s": round(compile_s, 1),
                      "xla_memory_bytes": memory_of(compiled).get("total_bytes"),
                      "loss": round(float(m["loss"]) / max(float(m["count"]), 1.0), 4),
                      "loadavg": [round(v, 2) for v in os.getloadavg()]}), flush=True)


def run_child(a, n: int, dtype: str, accum: int) -> dict:
    env = dict(os.environ)
    if not a.real:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, __file__, "--child", f"--n={n}", f"--dtype={dtype}", f"--accum={accum}",
           f"--model={a.model}", f"--size={a.size}", f"--batch={a.batch}",
           f"--warmup={a.warmup}", f"--repeats={a.repeats}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1,2,4")
    p.add_argument("--real", action="store_true", help="use real devices instead of simulated CPU ones")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtypes", default="float32,bfloat16", help="compared on one device")
    p.add_argument("--accum", default="1,4", help="grad_accum_steps compared on one device")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    print(json.dumps({"machine": machine_info()}), flush=True)
    rows = []
    for n in [int(x) for x in a.devices.split(",")]:
        rows.append(run_child(a, n, "float32", 1))
        print(json.dumps(rows[-1]), flush=True)
    one = rows[0]["images_per_s"]
    for r in rows:
        print(f"devices {r['devices']}: {r['images_per_s']:.1f} img/s, scaling efficiency "
              f"{r['images_per_s'] / (r['devices'] * one):.2f}, compile {r['compile_s']} s")
    for dtype in a.dtypes.split(",")[1:]:
        r = run_child(a, 1, dtype, 1)
        print(json.dumps(r), flush=True)
        print(f"{dtype}: {r['images_per_s']:.1f} img/s vs float32 {one:.1f} "
              f"({r['images_per_s'] / one:.2f}x)")
    for k in [int(x) for x in a.accum.split(",")][1:]:
        r = run_child(a, 1, "float32", k)
        print(json.dumps(r), flush=True)
        print(f"grad_accum_steps {k}: {r['images_per_s']:.1f} img/s ({r['images_per_s'] / one:.2f}x), "
              f"XLA memory {r['xla_memory_bytes'] / 2**20:.0f} MiB vs "
              f"{rows[0]['xla_memory_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
