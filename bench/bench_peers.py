"""bt_jax beside the frameworks users know: Keras 3 (TensorFlow and JAX backends) and PyTorch + timm.

    python3 -m venv .venv-peers && .venv-peers/bin/pip install -e ".[peers]"   # bench only
    .venv-peers/bin/python bench/bench_peers.py           # 6 backbones x every task and framework
    .venv-peers/bin/python bench/bench_peers.py --backbones efficientnet_lite0 --batch 2 --size 64 \
        --repeats 1 --tasks forward --out /tmp/peers_smoke.jsonl     # a smoke test
    python bench/tables.py                                # docs/benchmarks.md's table from the results

TensorFlow, Keras, torch and timm are never runtime dependencies: the `peers` extra lives in
its own venv (where PyPI's torch wheel is the CUDA build, it runs on CPU all the same;
PyTorch's CPU index, where reachable, gives a smaller one). A framework that cannot be
imported is skipped, and its rows say why.

Tasks, every side with random weights, float32, the same batch, size and thread count:
- `forward`: batch `--batch` (32) at `--size` (224) px to the last feature map (include_top=False).
- `train`: one training step, the backbone's own classifier (include_top) with 2 classes,
  softmax cross-entropy, Adam over every layer, batch `--train-batch` (16) at `--size` px.
- `train_b`: VGG19 as method B trains it (configs/vgg19_staged.py): `--method-b-size` (240) px,
  Flatten -> Dense(1024, relu) -> Dropout(0.3) -> Dense(256, relu) -> Dense(2).
Sides, each in its own child process (KERAS_BACKEND is read at import; heavy imports must
not share a process), pinned to `--threads` cores and told that thread count:
- `bt_jax`: `bench_backbones.ours` / `train_step` as the library runs them: inference programs
  with `compilation.forward_compiler_options()` (YNNPACK off on CPU), the process on huge
  pages (`bt_jax/hugepages.py`, what launch.py sets, glibc tunables are read at start).
- `bt_jax-defaults`: the same programs with XLA's default compiler options, on glibc's
  default 4 KiB pages: what a plain `jax.jit` script gets; the difference is what bt_jax's
  settings buy (the depthwise and 1x1 implementations are model code and stay).
- `keras-tensorflow`: `keras.applications` (`bench_backbones.keras_model`); forward: each of
  `predict_on_batch`, a `tf.function` and a `tf.function(jit_compile=True)`; training:
  `train_on_batch` after `compile(Adam)`, at Keras' default jit_compile (no XLA on TF's CPU)
  and with jit_compile=True. TF intra- and inter-op threads = `--threads`.
- `keras-jax`: the previous baseline (`bench_backbones.keras_fns`: `predict_on_batch` and a
  jitted `stateless_call`); training: `train_on_batch` after `compile(Adam)`.
- `pytorch`: `timm.create_model(pretrained=False)`, channels_last, `torch.set_num_threads`;
  forward in eval mode under `torch.inference_mode()`, eager and `torch.compile`; training:
  a plain eager loop (zero_grad, cross-entropy, backward, Adam step) and `torch.compile`d.
Every variant: one untimed first call (tracing, compiling; its seconds are `setup_s`), then
`--warmup` untimed and `--repeats` timed calls; images/s from the median. One JSON line per
(backbone, task, framework, variant) is appended to `--out` with the run's date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

BACKBONES = ("efficientnet_lite0", "efficientnetb0", "mobilenet", "xception", "resnet50v2", "vgg19")
TASKS = ("forward", "train", "train_b")
WORKERS = ("bt_jax", "bt_jax-defaults", "keras-tensorflow", "keras-jax", "pytorch")
TIMM = {"efficientnet_lite0": "efficientnet_lite0", "efficientnetb0": "efficientnet_b0",
        "mobilenet": "mobilenetv1_100", "xception": "legacy_xception",
        "resnet50v2": "resnetv2_50", "vgg19": "vgg19"}
PREFIX = "PEERS_ROW "   # marks the children's result lines among the frameworks' own output
FORWARDED = ("batch", "train_batch", "size", "method_b_size", "warmup", "repeats", "threads")


def shape_of(task: str, a) -> tuple[int, int]:
    """(batch, size) of a task."""
    return {"forward": (a.batch, a.size), "train": (a.train_batch, a.size),
            "train_b": (a.train_batch, a.method_b_size)}[task]


def method_b_layers():
    """Method B's head widths and dropout, from the config schema (configs/vgg19_staged.py keeps them)."""
    from bt_jax.config import base_config
    staged = base_config().staged
    return tuple(staged.head_hidden), float(staged.head_dropout)


def once(build):
    """build() the first time, the same object after: variants that share a model."""
    memo = []
    return lambda: memo[0] if memo else memo.append(build()) or memo[0]


# ---- bt_jax ------------------------------------------------------------------------------

def bt_jax_variants(name: str, task: str, batch: int, size: int, defaults: bool) -> list:
    """bt_jax as shipped (or with XLA's default options); where the backbone has 3x3 stride-1
    convolutions, also with the other model.conv3x3 ("xla" or "auto": Winograd per layer),
    so one run shows what the shipped choice buys."""
    import bench_backbones as bb
    from bt_jax.compilation import forward_compiler_options
    from bt_jax.models import registry

    def build(conv3x3=None):
        if task == "forward":   # "auto": forward_compiler_options(), as feature extraction runs
            fn, _, _ = bb.ours(name, batch, size, options=None if defaults else "auto",
                               conv3x3=conv3x3)
            opts = None if defaults else forward_compiler_options()
        else:   # the fine-tune step keeps XLA's default options either way (bench_backbones)
            fn, _, _ = bb.train_step(name, batch, size, head="flatten" if task == "train_b" else "top",
                                     conv3x3=conv3x3)
            opts = None
        return fn, {"compiler_options": opts, "conv3x3": conv3x3 or bb.shipped_conv3x3(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    if defaults:
        return [("xla-defaults", build)]
    other = "xla" if bb.shipped_conv3x3() == "auto" else "auto"
    extra = [(f"conv3x3={other}", lambda: build(other))] if registry.get(name).conv3x3 else []
    return [("shipped", build)] + extra


# ---- Keras -------------------------------------------------------------------------------

def keras_train_model(name: str, task: str, size: int):
    """include_top with 2 classes (Keras' own classifier, softmax), or method B's head."""
    import keras
    from bench_backbones import keras_model
    if task == "train":
        return keras_model(name, size, include_top=True, classes=2)
    hidden, dropout = method_b_layers()
    layers = [keras.Input((size, size, 3)), keras_model(name, size), keras.layers.Flatten()]
    for i, units in enumerate(hidden):
        layers.append(keras.layers.Dense(units, activation="relu"))
        if i == 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(2, activation="softmax"))
    return keras.Sequential(layers)


def keras_train_variants(name: str, task: str, batch: int, size: int, also_xla: bool) -> list:
    """`train_on_batch` after `compile(Adam)` at Keras' default jit_compile ("auto": XLA on
    JAX, not on TF's CPU), and with jit_compile=True where that differs (also_xla)."""
    import keras
    import numpy as np

    def build(jit):
        model = keras_train_model(name, task, size)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit,
                      loss=keras.losses.SparseCategoricalCrossentropy())
        x = np.random.default_rng(1).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
        y = np.arange(batch) % 2
        return (lambda: model.train_on_batch(x, y)), {"jit_compile": str(model.jit_compile)}
    out = [("train_on_batch", lambda: build("auto"))]
    return out + ([("train_on_batch(jit_compile=True)", lambda: build(True))] if also_xla else [])


def keras_tf_forward_variants(name: str, batch: int, size: int) -> list:
    import numpy as np
    import tensorflow as tf
    from bench_backbones import keras_model
    model = once(lambda: keras_model(name, size))
    x = np.random.default_rng(1).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)

    def graph(jit: bool):
        m, xt = model(), tf.constant(x)
        f = tf.function(lambda t: m(t, training=False), jit_compile=jit)
        return (lambda: f(xt).numpy()), {}
    return [("predict_on_batch", lambda: ((lambda: model().predict_on_batch(x)), {})),
            ("tf.function", lambda: graph(False)),
            ("tf.function(jit_compile=True)", lambda: graph(True))]


def keras_jax_forward_variants(name: str, batch: int, size: int) -> list:
    import bench_backbones as bb
    fns = once(lambda: bb.keras_fns(name, batch, size)[0])
    return [(how, lambda how=how: (fns()[how], {})) for how in ("predict_on_batch", "jit_stateless")]


# ---- PyTorch -----------------------------------------------------------------------------

def torch_model(name: str, task: str, size: int):
    import timm
    import torch.nn as nn
    if task == "forward":
        return timm.create_model(TIMM[name], pretrained=False, num_classes=0, global_pool="").eval()
    if task == "train":
        return timm.create_model(TIMM[name], pretrained=False, num_classes=2).train()
    hidden, dropout = method_b_layers()
    features = timm.create_model(TIMM[name], pretrained=False, num_classes=0).features
    width, layers = 512 * (size // 32) ** 2, [features, nn.Flatten()]   # VGG: 5 stride-2 pools
    for i, units in enumerate(hidden):
        layers += [nn.Linear(width, units), nn.ReLU()] + ([nn.Dropout(dropout)] if i == 0 else [])
        width = units
    return nn.Sequential(*layers, nn.Linear(width, 2)).train()


def torch_variants(name: str, task: str, batch: int, size: int, compile_: bool) -> list:
    import torch
    import torch.nn.functional as F
    model = torch_model(name, task, size).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.arange(batch) % 2
    opt = once(lambda: torch.optim.Adam(model.parameters(), lr=1e-4))

    def forward(m):
        def run():
            with torch.inference_mode():
                m(x)
        return run

    def step(m):
        def run():
            opt().zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt().step()
        return run
    make = forward if task == "forward" else step
    out = [("eager", lambda: (make(model), {}))]
    if compile_:
        out.append(("torch.compile", lambda: (make(torch.compile(model)), {})))
    return out


# ---- a child: one framework, one backbone ---------------------------------------------------

def setup_framework(kind: str, threads: int) -> dict:
    """Imports the framework, sets its thread count; {package: version}."""
    if kind.startswith("bt_jax"):
        import flax
        import jax
        return {"jax": jax.__version__, "flax": flax.__version__}
    if kind == "keras-tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        import keras
        return {"tensorflow": tf.__version__, "keras": keras.__version__}
    if kind == "keras-jax":
        import jax
        import keras
        return {"keras": keras.__version__, "jax": jax.__version__}
    import timm
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    return {"torch": torch.__version__, "timm": timm.__version__}


def variants_of(kind: str, name: str, task: str, a) -> list:
    batch, size = shape_of(task, a)
    if kind.startswith("bt_jax"):
        return bt_jax_variants(name, task, batch, size, defaults=kind == "bt_jax-defaults")
    if kind == "pytorch":
        return torch_variants(name, task, batch, size, compile_=not a.no_torch_compile)
    if task != "forward":
        return keras_train_variants(name, task, batch, size, also_xla=kind == "keras-tensorflow")
    if kind == "keras-tensorflow":
        return keras_tf_forward_variants(name, batch, size)
    return keras_jax_forward_variants(name, batch, size)


FRAMEWORK = {"bt_jax": "bt_jax", "bt_jax-defaults": "bt_jax", "keras-tensorflow": "keras-tensorflow",
             "keras-jax": "keras-jax", "pytorch": "pytorch"}
WHOLE = {"bt_jax": "shipped", "bt_jax-defaults": "xla-defaults"}   # a skipped child's variant


def base_row(kind: str, name: str, task: str, variant: str, a) -> dict:
    from bench_backbones import KERAS_REFERENCE
    batch, size = shape_of(task, a)
    ref = {"pytorch": f"timm {TIMM[name]}"}.get(kind, KERAS_REFERENCE[name] if "keras" in kind else "")
    ref += " + method B's Flatten head" if ref and task == "train_b" else ""
    return {"bench": "peers", "backbone": name, "task": task, "framework": FRAMEWORK[kind],
            "variant": WHOLE.get(kind, "-") if variant == "-" else variant, "batch": batch,
            "size": size, "dtype": "float32", "threads": a.threads, **({"reference": ref} if ref else {})}


def time_variant(build, batch: int, a) -> dict:
    from bench_backbones import median_time
    t = time.perf_counter()
    fn, settings = build()
    fn()   # first call: tracing and compiling where the framework does it lazily
    setup_s = time.perf_counter() - t
    sec, times = median_time(fn, warmup=a.warmup, repeats=a.repeats)
    return {"images_per_s": round(batch / sec, 3), "batch_s_median": round(sec, 4),
            "batch_s_all": [round(s, 4) for s in times], "setup_s": round(setup_s, 1),
            "warmup": a.warmup, "repeats": a.repeats, "settings": settings,
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


def emit(row: dict) -> None:
    print(PREFIX + json.dumps(row), flush=True)


def child(a) -> None:
    """Runs every task of one framework on one backbone, a JSON line per variant."""
    cpus = sorted(os.sched_getaffinity(0))
    if a.threads < len(cpus):   # XLA and the others size their pools from the affinity
        os.sched_setaffinity(0, cpus[:a.threads])
    kind, name = a.worker, a.backbones[0]
    try:
        versions = setup_framework(kind, a.threads)
    except Exception as e:   # not installed here: every task says so
        for task in a.tasks:
            emit({**base_row(kind, name, task, "-", a), "skipped": f"{type(e).__name__}: {e}"})
        return
    for task in a.tasks:
        try:
            variants = variants_of(kind, name, task, a)
        except Exception as e:
            emit({**base_row(kind, name, task, "-", a), "skipped": f"{type(e).__name__}: {e}"})
            continue
        for variant, build in variants:
            row = {**base_row(kind, name, task, variant, a), "versions": versions}
            try:
                row.update(time_variant(build, shape_of(task, a)[0], a))
            except Exception as e:   # e.g. torch.compile without a working compiler
                row["skipped"] = f"{type(e).__name__}: {str(e)[:300]}"
            emit(row)


# ---- the driver ------------------------------------------------------------------------------

def child_env(kind: str) -> dict:
    """The child's environment: Keras' backend; huge pages only for bt_jax as shipped (the
    peers and bt_jax-defaults at glibc's default pages); TF's info logging off."""
    from bt_jax import hugepages
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "GLIBC_TUNABLES")}
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.hugetlb")]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    if kind == "bt_jax" and hugepages.wanted_here(env):   # BT_JAX_HUGEPAGES=0 is respected
        env = hugepages.env_with_tunable(env)
    env[hugepages.OFF_SWITCH] = "0"   # a child never re-executes itself
    if kind.startswith("keras-"):
        env["KERAS_BACKEND"] = kind.removeprefix("keras-")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_child(kind: str, name: str, tasks: list[str], a) -> list[dict]:
    """One framework on one backbone in a child process; its rows, and a skipped row per task
    it did not report when it failed or ran out of time."""
    cmd = [a.python, str(Path(__file__).resolve()), "--worker", kind, "--backbones", name,
           "--tasks", *tasks, *(["--no-torch-compile"] if a.no_torch_compile else [])]
    for opt in FORWARDED:
        cmd += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
    try:
        p = subprocess.run(cmd, env=child_env(kind), capture_output=True, text=True,
                           timeout=a.child_timeout, cwd=ROOT)
        out, err, failed = p.stdout, p.stderr, (f"exited {p.returncode}" if p.returncode else "")
    except subprocess.TimeoutExpired as e:
        out, err = (x.decode() if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        failed = f"timed out after {a.child_timeout} s"
    rows = [json.loads(line[len(PREFIX):]) for line in out.splitlines() if line.startswith(PREFIX)]
    if failed:
        last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "")
        done = {r["task"] for r in rows}
        rows += [{**base_row(kind, name, t, "-", a), "skipped": f"child {failed}: {last[:300]}"}
                 for t in tasks if t not in done]
    return rows


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                   help="train_b (method B's head) runs for vgg19 only")
    p.add_argument("--frameworks", nargs="+", default=list(WORKERS), choices=WORKERS)
    p.add_argument("--batch", type=int, default=32, help="forward batch")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--method-b-size", type=int, default=240)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no-torch-compile", action="store_true")
    peers_python = ROOT / ".venv-peers" / "bin" / "python"
    p.add_argument("--python", default=str(peers_python if peers_python.exists() else sys.executable),
                   help="interpreter of the children (default: .venv-peers' if present)")
    p.add_argument("--child-timeout", type=int, default=5400, help="seconds per child")
    p.add_argument("--out", default=str(BENCH / "results" / "peers.jsonl"))
    p.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    a = parse(argv)
    if a.worker:
        child(a)
        return []
    from bench_backbones import machine_info
    import tables
    info = {**machine_info(), "threads": a.threads, "python": a.python}
    run, date = time.strftime("%Y-%m-%dT%H:%M:%S"), time.strftime("%Y-%m-%d")
    print(json.dumps({"bench": "machine", **info}), flush=True)
    rows = []
    for name in a.backbones:
        tasks = [t for t in a.tasks if t != "train_b" or name == "vgg19"]
        for kind in a.frameworks if tasks else ():
            new = [{**r, "run": run, "date": date, "machine": info}
                   for r in run_child(kind, name, tasks, a)]
            for r in new:
                print(json.dumps({k: v for k, v in r.items() if k != "machine"}), flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
    print("\n" + tables.peers_markdown(rows))
    return rows


if __name__ == "__main__":
    main()
