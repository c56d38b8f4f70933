"""The sides of bench_peers.py: how each framework builds a timed call for a backbone and task.

A side is a list of variants `(name, build)`; `build()` returns `(fn, settings)`, where `fn()`
runs one batch and blocks until its result is ready, and `settings` are recorded in the row.
Heavy imports happen inside the builders, so one child process imports one framework only.
"""

from __future__ import annotations

import os

TIMM = {"efficientnet_lite0": "efficientnet_lite0", "efficientnetb0": "efficientnet_b0",
        "mobilenet": "mobilenetv1_100", "xception": "legacy_xception",
        "resnet50v2": "resnetv2_50", "vgg19": "vgg19"}


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
    from keras_models import keras_model
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
    from keras_models import keras_model
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
    from keras_models import keras_fns
    fns = once(lambda: keras_fns(name, batch, size)[0])
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


def variants_of(kind: str, name: str, task: str, batch: int, size: int, torch_compile: bool) -> list:
    """The variants of one side for one backbone and task."""
    if kind.startswith("bt_jax"):
        return bt_jax_variants(name, task, batch, size, defaults=kind == "bt_jax-defaults")
    if kind == "pytorch":
        return torch_variants(name, task, batch, size, compile_=torch_compile)
    if task != "forward":
        return keras_train_variants(name, task, batch, size, also_xla=kind == "keras-tensorflow")
    if kind == "keras-tensorflow":
        return keras_tf_forward_variants(name, batch, size)
    return keras_jax_forward_variants(name, batch, size)
