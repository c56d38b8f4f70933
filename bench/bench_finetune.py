"""Method B fine-tuning throughput per stage (VGG19 + FlattenHead), and peak memory of the final stage.

    python bench/bench_finetune.py                          # 112x112, batch 32, every stage of config.staged
    python bench/bench_finetune.py --size 224 --repeats 2   # the paper's size (slow on a small CPU)
    python bench/bench_finetune.py --memory-only            # only the peak-memory subprocess

One train step = in-graph augmentation + forward + backward + optax update, jitted exactly as
`finetune.fit` does: `jax.jit(partial(finetune_step, model, tx, labels, False, aug), donate_argnums=0)`,
with `trainable_labels` / `make_tx` from the stage's groups (frozen groups: optax.set_to_zero).
Every row is augmented (config.augment ranges), as most of method B's training rows are.
The head-only baseline runs twice: as the pipeline builds it (Classifier without
stop_backbone_grad) and with stop_backbone_grad=True, to show whether XLA already drops
the backbone's backward pass when set_to_zero never reads those gradients. Per stage we
also report XLA's FLOPs and the number of convolutions in the optimised HLO (VGG19 has 16
forward convolutions; each trainable conv adds a weight-gradient conv, and the backward
pass adds an input-gradient conv per layer above the lowest trainable one).
Peak memory: a subprocess runs only the final stage (compile + steps) and reports
ru_maxrss, plus XLA's memory_analysis() of the compiled step.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from bench_backbones import machine_info  # same machine description in every bench


def stages_from_config() -> tuple:
    from bt_jax.config import base_config, parse_stages
    return parse_stages(base_config().staged.stages)


def build(stage, size: int, batch: int, stop_backbone_grad: bool, count_flops: bool = True):
    """(compiled step, state, batch, rng, compile seconds, trainable / total params, FLOPs)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bt_jax.config import base_config
    from bt_jax.data import augment
    from bt_jax.models import registry
    from bt_jax.models.heads import Classifier, FlattenHead
    from bt_jax.train import finetune, partitions

    cfg = base_config()
    spec = registry.get("vgg19")
    model = Classifier(backbone=spec.make(), head=FlattenHead(tuple(cfg.staged.head_hidden),
                                                               cfg.staged.head_dropout),
                       head_input="features", stop_backbone_grad=stop_backbone_grad)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    labels = partitions.trainable_labels(variables["params"], spec, stage.trainable)
    tx = partitions.make_tx(labels, lr=stage.lr, optimizer=cfg.staged.optimizer)
    state = finetune.init_state(variables, tx)
    aug = augment.make_augment_params(cfg.augment)
    rng = np.random.default_rng(0)
    data = {"x": rng.uniform(0, 1, (1, batch, size, size, 3)).astype(np.float32),
            "keys": rng.integers(0, 2 ** 32, (1, batch, 2), dtype=np.uint32),
            "aug": np.ones((1, batch), bool), "y": rng.integers(0, 2, (1, batch)).astype(np.int32),
            "w": np.ones((1, batch), np.float32)}  # one micro-batch (no accumulation)
    step = jax.jit(functools.partial(finetune.finetune_step, model, tx, labels, False, aug),
                   donate_argnums=0)
    key = jax.random.PRNGKey(1)
    t = time.perf_counter()
    compiled = step.lower(state, data, key).compile()
    compile_s = time.perf_counter() - t
    flops = flops_of(compiled)
    if count_flops and jax.default_backend() != "cpu":   # XLA:GPU counts no FLOPs for cuDNN convolutions
        cpu = jax.devices("cpu")[0]
        flops = flops_of(step.lower(*jax.device_put((state, data, key), cpu)).compile())
    n_train, n_total = partitions.count_trainable(state.params, labels)
    return compiled, state, data, key, compile_s, n_train, n_total, flops


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def memory_of(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in
           ("temp", "argument", "output", "alias", "generated_code")}
    # Donated state aliases its output buffers: count those bytes once.
    out["total_bytes"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def conv_count(compiled) -> int:
    """Convolutions in the optimised HLO (incl. oneDNN custom calls XLA:CPU may rewrite them to)."""
    text = compiled.as_text() or ""
    return len(re.findall(r"\bconvolution\(", text)) + len(
        re.findall(r'custom_call_target="__(?:onednn|cudnn)\$conv', text))


def time_steps(compiled, state, data, key, *, warmup: int, repeats: int):
    import jax
    holder = [state]

    def once(i):
        holder[0], m = compiled(holder[0], data, jax.random.fold_in(key, i))
        jax.block_until_ready((holder[0], m))

    for i in range(warmup):
        once(i)
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        once(warmup + i)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def bench_stage(stage, size, batch, stop, warmup, repeats) -> dict:
    compiled, state, data, key, compile_s, n_train, n_total, flops = build(stage, size, batch, stop)
    convs, mem = conv_count(compiled), memory_of(compiled)
    sec, times = time_steps(compiled, state, data, key, warmup=warmup, repeats=repeats)
    trainable = stage.groups
    return {"bench": "finetune_step", "stage": stage.name + ("+stopgrad" if stop else ""),
            "trainable": trainable, "stop_backbone_grad": stop, "size": size, "batch": batch,
            "trainable_params": n_train, "total_params": n_total,
            "images_per_s": round(batch / sec, 2), "step_s_median": round(sec, 3),
            "step_s_all": [round(t, 3) for t in times],
            "gflops_per_step": round(flops / 1e9, 1), "hlo_convolutions": convs,
            "xla_memory_bytes": mem.get("total_bytes"), "xla_memory": mem, "compile_s": round(compile_s, 1),
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


def memory_child(stage_name: str, size: int, batch: int, steps: int) -> dict:
    """Runs in a fresh process: one stage only, so ru_maxrss is that stage's peak."""
    stage = next(s for s in stages_from_config() if s.name == stage_name)
    compiled, state, data, key, compile_s, _, _, _ = build(stage, size, batch, False, count_flops=False)
    mem = memory_of(compiled)
    time_steps(compiled, state, data, key, warmup=0, repeats=steps)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return {"bench": "finetune_memory", "stage": stage_name, "size": size, "batch": batch,
            "steps": steps, "peak_rss_mib": round(rss_kib / 1024, 1),
            "xla_temp_mib": round(mem.get("temp", 0) / 2 ** 20, 1),
            "xla_argument_mib": round(mem.get("argument", 0) / 2 ** 20, 1),
            "xla_output_mib": round(mem.get("output", 0) / 2 ** 20, 1),
            "xla_alias_mib": round(mem.get("alias", 0) / 2 ** 20, 1),
            "xla_total_mib": round(mem.get("total_bytes", 0) / 2 ** 20, 1)}


def run_memory_child(stage: str, size: int, batch: int, steps: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", stage, "--size", str(size),
           "--batch", str(batch), "--mem-steps", str(steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"memory subprocess {' '.join(cmd)} failed (rc {res.returncode}):\n"
                           f"{res.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=112, help="input side (224 is the paper's; slow on CPU)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", nargs="*", default=None, help="stage names (default: all)")
    p.add_argument("--no-stopgrad-variant", action="store_true",
                   help="skip the extra head-only run with stop_backbone_grad=True")
    p.add_argument("--memory-stage", default="final")
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)

    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, a.size, a.batch, a.mem_steps)), flush=True)
        return []

    info = machine_info()
    print(json.dumps({"bench": "machine", **info}), flush=True)
    rows = []
    if not a.memory_only:
        for st in stages_from_config():
            if a.stages and st.name not in a.stages:
                continue
            variants = [False]
            if st.trainable == "none" and not a.no_stopgrad_variant:
                variants.append(True)
            for stop in variants:
                rows.append(bench_stage(st, a.size, a.batch, stop, a.warmup, a.repeats))
                print(json.dumps(rows[-1]), flush=True)
    mem = None
    if not a.no_memory:
        mem = run_memory_child(a.memory_stage, a.size, a.batch, a.mem_steps)
        print(json.dumps(mem), flush=True)

    print(f"\n{info['cpu']}, {info['cores']} cores, jax {info['jax']} on {info['device']}; VGG19 + "
          f"FlattenHead, batch {a.batch}, {a.size}x{a.size}, adam, augment in-step, "
          f"median of {a.repeats} steps after {a.warmup} warm-up")
    hdr = (f"{'stage':<18}{'trainable':<28}{'params':>12}{'img/s':>8}{'step s':>8}"
           f"{'GFLOP/step':>11}{'convs':>6}{'XLA MiB':>9}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        mib = r["xla_memory_bytes"] / 2 ** 20 if r["xla_memory_bytes"] else float("nan")
        print(f"{r['stage']:<18}{r['trainable']:<28}{r['trainable_params']:>12,}"
              f"{r['images_per_s']:>8.2f}{r['step_s_median']:>8.2f}{r['gflops_per_step']:>11.1f}"
              f"{r['hlo_convolutions']:>6}{mib:>9.0f}")
    by = {r["stage"]: r for r in rows}
    if "baseline" in by and "final" in by:
        b, f = by["baseline"], by["final"]
        print(f"baseline / final throughput: {b['images_per_s'] / f['images_per_s']:.2f}x "
              f"(FLOPs {f['gflops_per_step'] / b['gflops_per_step']:.2f}x fewer)")
    if "baseline" in by and "baseline+stopgrad" in by:
        b, s = by["baseline"], by["baseline+stopgrad"]
        print(f"head-only without / with stop_backbone_grad: {b['images_per_s']:.2f} / "
              f"{s['images_per_s']:.2f} img/s, {b['gflops_per_step']:.1f} / {s['gflops_per_step']:.1f} "
              f"GFLOP, {b['hlo_convolutions']} / {s['hlo_convolutions']} convolutions")
    if mem:
        print(f"{mem['stage']} stage peak RSS {mem['peak_rss_mib']:.0f} MiB (subprocess, "
              f"{mem['steps']} steps); XLA: temp {mem['xla_temp_mib']:.0f} + args "
              f"{mem['xla_argument_mib']:.0f} + out {mem['xla_output_mib']:.0f} - aliased "
              f"{mem['xla_alias_mib']:.0f} = {mem['xla_total_mib']:.0f} MiB")
    if a.out:
        with open(a.out, "a") as fh:
            for r in [{"bench": "machine", **info}] + rows + ([mem] if mem else []):
                fh.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
