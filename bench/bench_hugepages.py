"""XLA:CPU with and without glibc's huge-page tunable (bt_jax/hugepages.py), side by side.

    python bench/bench_hugepages.py [--models efficientnet_lite0 resnet50v2] [--batch 32]
        [--rounds 2] [--train-step]

Each (model, setting) runs in its own child process, the two settings alternating for
`--rounds` rounds: "4k" (GLIBC_TUNABLES unset: glibc's default, 4 KiB pages) and "huge"
(GLIBC_TUNABLES=glibc.malloc.hugetlb=1, what launch.py sets). A child times the jitted
forward as `bench_backbones.py` builds it (and, with --train-step, Lite0's full fine-tune
step) and reports images/s, minor page faults per call and kernel (sys) CPU seconds per
call from getrusage. Prints one row per run and one JSON line per run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bt_jax import hugepages

HERE = Path(__file__).resolve().parent
SETTINGS = ("4k", "huge")


def child(kind: str, model: str, batch: int, repeats: int) -> dict:
    """Runs in the child: one program, timed after two warm-up calls."""
    sys.path.insert(0, str(HERE))
    import bench_backbones as bb
    make = bb.train_step if kind == "train_step" else bb.ours
    fn = make(model, batch, 224)[0]
    for _ in range(2):
        fn()
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(repeats):
        fn()
    sec = (time.perf_counter() - t) / repeats
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": round(batch / sec, 2),
            "faults_per_call": round((r1.ru_minflt - r0.ru_minflt) / repeats),
            "sys_s_per_call": round((r1.ru_stime - r0.ru_stime) / repeats, 3),
            "user_s_per_call": round((r1.ru_utime - r0.ru_utime) / repeats, 3)}


def run(setting: str, kind: str, model: str, batch: int, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if setting == "huge":
        env = hugepages.env_with_tunable(env)
    out = subprocess.run([sys.executable, __file__, "--child", kind, model, str(batch),
                          str(repeats)], env=env, capture_output=True, text=True, check=True)
    return {"bench": "hugepages", "setting": setting, "kind": kind, "model": model,
            "batch": batch, **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    if sys.argv[1:2] == ["--child"]:
        kind, model, batch, repeats = sys.argv[2:6]
        print(json.dumps(child(kind, model, int(batch), int(repeats))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50v2"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-step", action="store_true", help="also Lite0's fine-tune step")
    a = ap.parse_args()
    jobs = [("forward", m) for m in a.models] + [("train_step", "efficientnet_lite0")] * a.train_step
    print(f"{'model':20s} {'kind':10s} {'setting':7s} {'images/s':>9s} {'faults/call':>12s} "
          f"{'sys s/call':>10s} {'user s/call':>11s}")
    for r in range(a.rounds):
        for kind, model in jobs:
            for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                res = run(setting, kind, model, a.batch, a.repeats)
                print(f"{model:20s} {kind:10s} {setting:7s} {res['images_per_s']:9.2f} "
                      f"{res['faults_per_call']:12d} {res['sys_s_per_call']:10.3f} "
                      f"{res['user_s_per_call']:11.3f}", flush=True)
                print(json.dumps(res), file=sys.stderr)


if __name__ == "__main__":
    main()
