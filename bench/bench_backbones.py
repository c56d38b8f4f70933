"""Backbone forward throughput (images/s) of bt_jax vs Keras 3 (JAX backend), same run, same machine.

    python bench/bench_backbones.py                         # resnet50v2 vgg19 efficientnet_lite0, batch 32, 224
    python bench/bench_backbones.py --models vgg19 --repeats 5 --size 224 --batch 32
    python bench/bench_backbones.py --no-keras              # ours only (no keras installed)
    python bench/bench_backbones.py --models efficientnet_lite0 efficientnetb0 mobilenet xception \
        --depthwise shift conv --train-step efficientnet_lite0      # depthwise impls side by side
    python bench/bench_backbones.py --pointwise dot conv    # 1x1 convs as matmuls vs convolutions

Ours: `registry.get(name).make()` with random init, `jax.jit` of `apply(..., train=False)`
returning the last feature map (what Keras' include_top=False model returns); the input
preprocessing (caffe / tf / lite mean-std) is inside our graph, as it is in the pipelines.
Keras: `keras.applications.<Net>(weights=None, include_top=False)` timed two ways, Keras'
own jitted `predict_on_batch` and a `jax.jit` of `model.stateless_call(..., training=False)`;
the faster is Keras' number. EfficientNet-Lite0 has no Keras application: the reference is
Keras' own EfficientNet builder with Lite0's changes (ReLU6, no squeeze-excitation), which
is the same architecture; EfficientNetB0 (`--models efficientnetb0`) compares against
`keras.applications.EfficientNetB0` directly.
FLOPs come from XLA's cost analysis of each compiled forward; the roofline fraction is
model GFLOP/s over the measured GFLOP/s of a jitted float32 2048x2048 matmul, timed at the
start of the run ("roofline") and, for bt_jax's forwards, also paired with each model call
("paired": the median of `--repeats` back-to-back model-call/matmul ratios, which a drifting
shared machine disturbs far less) (on GPU the
FLOPs come from a CPU compile, as XLA:GPU counts none for cuDNN convolutions, and f32 matmuls
may run as TF32 there).
Backbones with depthwise layers run once per `--depthwise` implementation (models/depthwise.py:
"shift", "conv" = grouped convolution, "auto"); their roofline uses the model FLOPs of the
"conv" graph for every impl (same work, XLA counts the shift form's multiply-adds differently).
`--pointwise` picks how `models.common.Conv` computes 1x1 convolutions (dot = one matmul over
positions, the CPU default; conv = XLA's convolution); several are timed side by side.
`--ynn` times each with XLA:CPU's YNNPACK fusions on, off, for its single dots or
convolutions only (dot, conv), or as bt_jax sets them ("auto", the default: off for forward
programs on CPU, on for the fine-tune step; `compilation.forward_compiler_options`).
`--train-step` times one fine-tune step per impl: forward (train-mode BatchNorm, dropout) +
backward + Adam update of the whole backbone with a 2-class top, jitted with donated state;
its roofline counts 3x the forward's model FLOPs.
Each timing: `--warmup` untimed calls, then `--repeats` timed calls, median reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")   # before any keras import; Keras 3 defaults to TF

from bt_jax.compilation import YNN_OFF, forward_compiler_options
from bt_jax.models.common import POINTWISE_IMPLS
from keras_models import KERAS_REFERENCE, keras_fns

DEFAULT_MODELS = ("resnet50v2", "vgg19", "efficientnet_lite0")
DEPTHWISE = ("efficientnetb0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
             "mobilenet", "xception")


def machine_info() -> dict:
    import jax
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    dev = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
            "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
            "loadavg_start": [round(v, 2) for v in os.getloadavg()]}


def median_time(fn, *, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of fn() (fn must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):     # older jax: one dict per computation
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def xla_flops(fn, *args, compiled=None) -> float:
    """XLA's FLOP count of jit(fn)(*args). XLA:GPU reports no FLOPs for cuDNN convolutions,
    so off CPU the count comes from a CPU compile of the same function (not run)."""
    import jax
    if jax.default_backend() == "cpu" and compiled is not None:
        return flops_of(compiled)
    cpu_args = jax.device_put(args, jax.devices("cpu")[0])
    return flops_of(jax.jit(fn).lower(*cpu_args).compile())


def matmul_fn(n: int = 2048):
    """(callable running one jitted float32 n x n x n matmul, its FLOPs): the roofline probe."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    return (lambda: f(a, b).block_until_ready()), 2 * n ** 3


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Float32 n x n x n matmul throughput: the machine's practical FLOP roofline."""
    fn, flops = matmul_fn(n)
    sec, _ = median_time(fn, warmup=2, repeats=repeats)
    return flops / sec / 1e9


def paired_roofline(fn, flops: float, probe, probe_flops: float, repeats: int) -> float:
    """Median over `repeats` back-to-back (model call, matmul) pairs of model FLOP/s over
    matmul FLOP/s. On a shared VM the machine's speed drifts within minutes (the run-start
    matmul moved 106-140 GFLOP/s between runs); a pair sees the same moment."""
    fracs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        t_model = time.perf_counter() - t
        t = time.perf_counter()
        probe()
        t_probe = time.perf_counter() - t
        fracs.append((flops / t_model) / (probe_flops / t_probe))
    return statistics.median(fracs)


def shipped_conv3x3() -> str:
    """model.conv3x3 as the config ships it: benches time what users run unless told otherwise."""
    from bt_jax.config import base_config
    return base_config().model.conv3x3


def ours(name: str, batch: int, size: int, depthwise: str = "auto", options="auto",
         pointwise: str = "auto", conv3x3: str | None = None):
    """(callable, flops per batch, compile seconds) of our jitted forward; options: XLA
    compiler options for this program ("auto": what bt_jax's feature extraction and
    predict use, `compilation.forward_compiler_options`)."""
    import jax
    from bt_jax.models import registry
    spec = registry.get(name)
    model, variables = registry.make_template(spec, jax.random.PRNGKey(0), size=size,
                                              depthwise=depthwise, pointwise=pointwise,
                                              conv3x3=conv3x3 or shipped_conv3x3())
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, 3))

    def fwd(v, x):
        return model.apply(v, x, train=False)[1]["features"]

    t = time.perf_counter()
    if options == "auto":
        options = forward_compiler_options()
    compiled = jax.jit(fwd).lower(variables, x).compile(compiler_options=options)
    compile_s = time.perf_counter() - t
    flops = xla_flops(fwd, variables, x, compiled=compiled)
    return (lambda: compiled(variables, x).block_until_ready()), flops, compile_s


def train_module(spec, head: str = "top", depthwise: str = "auto", pointwise: str = "auto",
                 conv3x3: str | None = None):
    """The module a fine-tune step trains: "top" = the backbone's own classifier
    (include_top) with 2 classes; "flatten" = method B's Flatten head (configs/vgg19_staged.py:
    Flatten -> staged.head_hidden -> 2, dropout staged.head_dropout) on the last feature map."""
    from bt_jax.config import base_config
    from bt_jax.models.heads import Classifier, FlattenHead
    from bt_jax.models import winograd
    convs = dict(depthwise=depthwise, pointwise=pointwise,
                 conv3x3=winograd.for_training(conv3x3 or shipped_conv3x3()))
    if head == "top":
        return spec.make(include_top=True, num_classes=2, **convs)
    staged = base_config().staged
    return Classifier(backbone=spec.make(**convs),
                      head=FlattenHead(hidden=tuple(staged.head_hidden), dropout=staged.head_dropout,
                                       num_classes=2), head_input="features")


def train_step(name: str, batch: int, size: int, depthwise: str = "auto", options="auto",
               head: str = "top", pointwise: str = "auto", conv3x3: str | None = None):
    """(callable running one step, flops per step, compile seconds): forward in training mode,
    backward and an Adam update of every parameter, the fine-tuning step of a whole backbone
    (head: `train_module`). Backbones without BatchNorm (VGG) train their params only."""
    import jax
    import jax.numpy as jnp
    import optax
    from bt_jax.models import registry
    model = train_module(registry.get(name), head, depthwise, pointwise, conv3x3)
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False))(
        jax.random.PRNGKey(0))
    tx = optax.adam(1e-4)
    state = (variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"]))
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, 3))
    y = jnp.arange(batch) % 2

    def step(state, x, y, rng):
        params, stats, opt = state

        def loss_fn(p):
            v = {"params": p, **({"batch_stats": stats} if stats else {})}
            (logits, _), upd = model.apply(v, x, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), upd.get("batch_stats", stats), opt), loss

    rng = jax.random.PRNGKey(2)
    t = time.perf_counter()
    options = None if options == "auto" else options   # the fine-tune step keeps XLA's defaults
    compiled = jax.jit(step, donate_argnums=0).lower(state, x, y, rng).compile(
        compiler_options=options)
    compile_s = time.perf_counter() - t
    flops = xla_flops(step, state, x, y, rng, compiled=compiled)
    holder = [state]

    def run():
        holder[0], loss = compiled(holder[0], x, y, rng)
        loss.block_until_ready()
    return run, flops, compile_s


def row(impl, name, batch, size, sec, times, flops, compile_s, roof, extra=None,
        bench="backbone_forward") -> dict:
    ips = batch / sec
    r = {"bench": bench, "model": name, "impl": impl, "batch": batch, "size": size,
         "images_per_s": round(ips, 2), "batch_s_median": round(sec, 4),
         "batch_s_all": [round(t, 4) for t in times],
         "gflops_per_image": round(flops / batch / 1e9, 3),
         "achieved_gflops": round(flops / sec / 1e9, 1),
         "roofline_fraction": round(flops / sec / 1e9 / roof, 3),
         "compile_s": round(compile_s, 1), "loadavg": [round(v, 2) for v in os.getloadavg()]}
    r.update(extra or {})
    return r


YNN_KEY = next(iter(YNN_OFF))
YNN_CHOICES = {"auto": "auto", "on": None, "off": YNN_OFF,
               "dot": {YNN_KEY: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
               "conv": {YNN_KEY: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}}


def _impls(name: str, a) -> list[tuple[str, str, str, dict | None]]:
    """(label, depthwise impl, pointwise impl, XLA options) to time for `name`: every
    `--depthwise` for backbones with depthwise layers x every `--pointwise` x every `--ynn`;
    "-" when there is one of each."""
    dws = a.depthwise if name in DEPTHWISE else ["auto"]
    out = []
    for dw in dws:
        for pw in a.pointwise:
            for ynn in a.ynn:
                parts = (([dw] if name in DEPTHWISE else [])
                         + ([f"pw-{pw}"] if len(a.pointwise) > 1 else [])
                         + ([f"ynn-{ynn}"] if len(a.ynn) > 1 else []))
                opts = YNN_CHOICES[ynn]
                out.append(("/".join(parts) or "-", dw, pw, opts))
    return out


def _model_flops(results: dict, conv_flops) -> float:
    """The model's FLOPs: XLA's count of the "conv" graph (the shift form counts its
    multiply-adds differently); compiled (not run) just for the count when conv was not timed."""
    if "conv" in results:
        return results["conv"][2]
    if "-" in results:
        return results["-"][2]
    return conv_flops()


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the roofline matmul")
    p.add_argument("--no-keras", action="store_true", help="time our models only")
    p.add_argument("--depthwise", nargs="+", default=["auto"], choices=("auto", "shift", "conv"),
                   help="DepthwiseConv impls to time, side by side, for backbones that have them")
    p.add_argument("--pointwise", nargs="+", default=["auto"], choices=POINTWISE_IMPLS,
                   help="1x1 convolution impls (models/common.Conv: dot = matmul, conv) to time")
    p.add_argument("--ynn", nargs="+", default=["auto"], choices=tuple(YNN_CHOICES),
                   help="XLA:CPU's YNNPACK fusions per program: on (XLA's default), off, "
                        "dot / conv (only its single dots / convolutions), or auto (bt_jax's "
                        "choice: off for forward programs on CPU)")
    p.add_argument("--train-step", nargs="*", default=[], metavar="MODEL",
                   help="also time a fine-tune step (fwd + bwd + Adam) of these, per impl")
    p.add_argument("--train-repeats", type=int, default=2)
    p.add_argument("--out", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)

    info = machine_info()
    roof = matmul_gflops(a.matmul_n)
    probe = matmul_fn(a.matmul_n)
    info["matmul_n"] = a.matmul_n
    info["matmul_f32_gflops"] = round(roof, 1)
    print(json.dumps({"bench": "machine", **info}), flush=True)
    rows = []
    for name in a.models:
        results = {}
        for impl, dw, pw, opts in _impls(name, a):
            fn, flops, comp = ours(name, a.batch, a.size, dw, opts, pointwise=pw)
            results[impl] = (*median_time(fn, warmup=a.warmup, repeats=a.repeats), flops, comp,
                             fn)
        model_flops = _model_flops(results, lambda: ours(name, a.batch, a.size, "conv")[1])
        for impl, (sec, times, flops, comp, fn) in results.items():
            label = "bt_jax" if impl == "-" else f"bt_jax/{impl}"
            paired = paired_roofline(fn, model_flops, *probe, a.repeats)
            rows.append(row(label, name, a.batch, a.size, sec, times, model_flops, comp, roof,
                            {"xla_flops_this_graph": flops, "roofline_paired": round(paired, 3)}))
            print(json.dumps(rows[-1]), flush=True)
        results.clear()   # frees the compiled programs
        if a.no_keras or name not in KERAS_REFERENCE:
            continue
        fns, kflops, kcomp = keras_fns(name, a.batch, a.size)
        best = None
        for how, kfn in fns.items():
            sec, times = median_time(kfn, warmup=a.warmup, repeats=a.repeats)
            r = row("keras", name, a.batch, a.size, sec, times, kflops, kcomp, roof,
                    {"keras_call": how, "reference": KERAS_REFERENCE[name]})
            print(json.dumps(r), flush=True)
            if best is None or r["images_per_s"] > best["images_per_s"]:
                best = r
        rows.append(best)
        del fns
    for name in a.train_step:
        results = {}
        for impl, dw, pw, opts in _impls(name, a):
            fn, flops, comp = train_step(name, a.batch, a.size, dw, opts, pointwise=pw)
            results[impl] = (*median_time(fn, warmup=1, repeats=a.train_repeats), flops, comp)
            del fn
        # 3x the forward's model FLOPs (backward ~2x forward): XLA's count of the conv graph's
        # backward is inflated (it counts depthwise weight gradients as dense convolutions).
        step_flops = 3 * ours(name, a.batch, a.size, "conv")[1]
        for impl, (sec, times, flops, comp) in results.items():
            rows.append(row("bt_jax" if impl == "-" else f"bt_jax/{impl}", name, a.batch, a.size,
                            sec, times, step_flops, comp, roof, {"xla_flops_this_graph": flops},
                            bench="finetune_step"))
            print(json.dumps(rows[-1]), flush=True)

    print(f"\n{info['cpu']}, {info['cores']} cores, jax {info['jax']} on {info['device']}; "
          f"f32 matmul {a.matmul_n}^3: {roof:.1f} GFLOP/s; batch {a.batch}, {a.size}x{a.size}, "
          f"median of {a.repeats} after {a.warmup} warm-up")
    hdr = (f"{'bench':<17}{'model':<20}{'impl':<14}{'img/s':>9}{'GFLOP/img':>11}{'GFLOP/s':>9}"
           f"{'roofline':>10}{'paired':>8}  keras call")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['bench']:<17}{r['model']:<20}{r['impl']:<14}{r['images_per_s']:>9.2f}"
              f"{r['gflops_per_image']:>11.2f}{r['achieved_gflops']:>9.1f}"
              f"{r['roofline_fraction']:>10.2f}{r.get('roofline_paired', float('nan')):>8.2f}"
              f"  {r.get('keras_call', '')}")
    by = {}
    for r in rows:
        by.setdefault((r["bench"], r["model"]), {})[r["impl"]] = r["images_per_s"]
    for (bench, name), d in by.items():
        ours_ = {k: v for k, v in d.items() if k.startswith("bt_jax")}
        if "keras" in d:
            print(f"{bench} {name}: " + ", ".join(f"{k} / keras = {v / d['keras']:.2f}"
                                                  for k, v in ours_.items()))
        if "bt_jax/shift" in d and "bt_jax/conv" in d:
            print(f"{bench} {name}: shift / conv = {d['bt_jax/shift'] / d['bt_jax/conv']:.2f}")
    if a.out:
        with open(a.out, "a") as f:
            for r in [{"bench": "machine", **info}] + rows:
                f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
