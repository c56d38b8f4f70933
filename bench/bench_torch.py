"""Backbone forward throughput of bt_jax vs PyTorch + timm, same process, same machine.

    pip install -e ".[bench]"      # torch and timm: this bench only, never a runtime dependency
    python bench/bench_torch.py                        # ResNetV2-50, EfficientNet-Lite0, VGG19
    python bench/bench_torch.py --batch 16 --repeats 5

Ours: `bench_backbones.ours` (random init, jitted `apply(train=False)` to the last feature
map, preprocessing inside the graph, depthwise "auto"). PyTorch: `timm.create_model(name,
pretrained=False, num_classes=0, global_pool="")` in eval mode under
`torch.inference_mode()`, channels_last, float32, at torch's default thread count (the
issue's setting). Batch 32 at 224 px by default; each model: `--warmup` untimed calls,
then the median of `--repeats` timed calls. Pairs: resnet50v2 / resnetv2_50,
efficientnet_lite0 / efficientnet_lite0, vgg19 / vgg19 (same architectures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbones import machine_info, median_time, ours  # noqa: E402

PAIRS = {"resnet50v2": "resnetv2_50", "efficientnet_lite0": "efficientnet_lite0", "vgg19": "vgg19"}


def torch_fn(name: str, batch: int, size: int):
    import timm
    import torch
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            model(x)
    return run


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    import torch
    print(json.dumps({**machine_info(), "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()}))
    rows = []
    for name in a.models:
        fn, _, compile_s = ours(name, a.batch, a.size)
        t_ours, _ = median_time(fn, warmup=a.warmup, repeats=a.repeats)
        fn_t = torch_fn(PAIRS[name], a.batch, a.size)
        t0 = time.perf_counter()
        t_torch, _ = median_time(fn_t, warmup=a.warmup, repeats=a.repeats)
        row = {"model": name, "timm": PAIRS[name], "batch": a.batch, "size": a.size,
               "bt_jax_img_s": round(a.batch / t_ours, 2), "torch_img_s": round(a.batch / t_torch, 2),
               "ratio": round(t_torch / t_ours, 2), "bt_jax_compile_s": round(compile_s, 1),
               "torch_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| model | bt_jax images/s | PyTorch (timm) images/s | bt_jax / PyTorch |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['bt_jax_img_s']} | {r['torch_img_s']} | {r['ratio']} |")
    return rows


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
