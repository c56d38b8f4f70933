"""lax.conv (XLA's default) vs Winograd F(2x2,3x3) and F(4x4,3x3) per 3x3 stride-1 layer shape.

    python bench/bench_winograd.py                       # VGG19 and ResNet50V2 shapes, 224 px
    python bench/bench_winograd.py --only vgg19 --fwd-batch 8 --train-batch 4 --repeats 2

For each distinct 3x3 stride-1 SAME conv of VGG19 and ResNet50V2 at 224 px: the jitted
forward at --fwd-batch and the jitted forward+backward (jax.grad of the output's sum with
respect to input and kernel of 0.5 * sum(y^2), so the forward is kept) at --train-batch, median of --repeats after one warm-up.
One JSON line per (shape, impl, pass) to bench/results/winograd.jsonl, and a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from bench_backbones import machine_info, median_time
from bt_jax.models.winograd import winograd_conv

# (family, spatial, Cin, Cout, layers of that shape) of the 3x3 stride-1 convolutions.
SHAPES = [
    ("vgg19", 224, 3, 64, 1), ("vgg19", 224, 64, 64, 1), ("vgg19", 112, 64, 128, 1),
    ("vgg19", 112, 128, 128, 1), ("vgg19", 56, 128, 256, 1), ("vgg19", 56, 256, 256, 3),
    ("vgg19", 28, 256, 512, 1), ("vgg19", 28, 512, 512, 3), ("vgg19", 14, 512, 512, 4),
    # Keras ResNet50V2 strides the 3x3 conv of each stage's last block (not 7x7: stage 4's).
    ("resnet50v2", 56, 64, 64, 2), ("resnet50v2", 28, 128, 128, 3),
    ("resnet50v2", 14, 256, 256, 5), ("resnet50v2", 7, 512, 512, 3),
]


def conv_fn(impl: str):
    if impl == "xla":
        return lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return lambda x, k: winograd_conv(x, k, "SAME", m=int(impl[-1]))


def time_one(impl: str, pass_: str, batch: int, hw: int, cin: int, cout: int, repeats: int):
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (batch, hw, hw, cin))
    k = jax.random.normal(kk, (3, 3, cin, cout)) * (2.0 / (9 * cin)) ** 0.5
    f = conv_fn(impl)
    if pass_ == "fwd":
        run = jax.jit(f)
    else:
        # A sum of squares, not a plain sum: d(sum y)/dx needs no forward and XLA drops it.
        run = jax.jit(jax.grad(lambda x, k: 0.5 * jnp.sum(jnp.square(f(x, k))), argnums=(0, 1)))
    med, times = median_time(lambda: jax.block_until_ready(run(x, k)), warmup=1, repeats=repeats)
    return med, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fwd-batch", type=int, default=32)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="a family: vgg19 or resnet50v2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "winograd.jsonl"))
    a = ap.parse_args()
    info, date = machine_info(), datetime.date.today().isoformat()
    rows = []
    for fam, hw, cin, cout, count in SHAPES:
        if a.only and fam != a.only:
            continue
        for pass_, batch in (("fwd", a.fwd_batch), ("fwd+bwd", a.train_batch)):
            line = {}
            for impl in ("xla", "winograd2", "winograd4"):
                med, times = time_one(impl, pass_, batch, hw, cin, cout, a.repeats)
                rec = {"bench": "winograd", "family": fam, "hw": hw, "cin": cin, "cout": cout,
                       "layers": count, "impl": impl, "pass": pass_, "batch": batch,
                       "median_s": round(med, 5), "times_s": [round(t, 5) for t in times],
                       "date": date, "machine": info}
                with open(a.out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                line[impl] = med
            rows.append((fam, hw, cin, cout, pass_, batch, line))
            print(_row(rows[-1]), flush=True)
    print("\n" + _table(rows))


def _row(r) -> str:
    fam, hw, cin, cout, pass_, batch, t = r
    best = min(t, key=t.get)
    return (f"| {fam} | {hw}x{hw} {cin}->{cout} | {pass_} b{batch} | {t['xla'] * 1e3:.0f} | "
            f"{t['winograd2'] * 1e3:.0f} | {t['winograd4'] * 1e3:.0f} | "
            f"{t['xla'] / t['winograd2']:.2f} | {t['xla'] / t['winograd4']:.2f} | {best} |")


def _table(rows) -> str:
    head = ("| family | shape | pass | xla ms | F2 ms | F4 ms | xla/F2 | xla/F4 | best |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---|")
    return "\n".join([head] + [_row(r) for r in rows])


if __name__ == "__main__":
    main()
