"""The Keras references of bt_jax's backbones (random weights), for the benches: the
`keras.applications` model, its description, and its two jitted forwards on the JAX backend.

    model = keras_model("resnet50v2", 224)              # include_top=False
    fns, flops, compile_s = keras_fns("vgg19", 32, 224)  # {"predict_on_batch", "jit_stateless"}
"""

from __future__ import annotations

import time


def keras_model(name: str, size: int, include_top: bool = False, classes: int = 1000):
    """The Keras reference of backbone `name`, random weights (include_top: with Keras' own
    classifier for `classes` classes)."""
    import keras
    kw = dict(weights=None, include_top=include_top, classes=classes, input_shape=(size, size, 3))
    apps = {"resnet50v2": "ResNet50V2", "vgg19": "VGG19", "efficientnetb0": "EfficientNetB0",
            "mobilenet": "MobileNet", "xception": "Xception"}
    if name in apps:
        return getattr(keras.applications, apps[name])(**kw)
    if name == "efficientnet_lite0":
        # Keras' EfficientNet builder with Lite0's changes (as in TF efficientnet_lite_builder):
        # ReLU6, no squeeze-excitation; width/depth 1.0 keep stem 32 and head 1280 as in Lite0.
        from keras.src.applications import efficientnet as ke
        blocks = [dict(b, se_ratio=0.0) for b in ke.DEFAULT_BLOCKS_ARGS]
        return ke.EfficientNet(1.0, 1.0, size, activation=keras.activations.relu6,
                               blocks_args=blocks, name="efficientnet_lite0_ref", **kw)
    raise ValueError(f"no Keras reference for backbone {name!r}")


KERAS_REFERENCE = {"resnet50v2": "keras.applications.ResNet50V2",
                   "vgg19": "keras.applications.VGG19",
                   "efficientnetb0": "keras.applications.EfficientNetB0",
                   "mobilenet": "keras.applications.MobileNet",
                   "xception": "keras.applications.Xception",
                   "efficientnet_lite0": "Keras EfficientNet builder, ReLU6, no SE (= Lite0)"}


def keras_fns(name: str, batch: int, size: int):
    """{'predict_on_batch': fn, 'jit_stateless': fn}, flops per batch, compile seconds."""
    import jax
    import numpy as np

    from bench_backbones import xla_flops
    model = keras_model(name, size)
    x_np = np.random.default_rng(1).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    x = jax.numpy.asarray(x_np)
    # Copies: Keras' jitted predict function donates the model's own variable buffers.
    tv = [jax.numpy.copy(v.value) for v in model.trainable_variables]
    ntv = [jax.numpy.copy(v.value) for v in model.non_trainable_variables]

    def call(tv, ntv, x):
        return model.stateless_call(tv, ntv, x, training=False)[0]

    t = time.perf_counter()
    compiled = jax.jit(call).lower(tv, ntv, x).compile()
    compile_s = time.perf_counter() - t
    fns = {"predict_on_batch": lambda: np.asarray(model.predict_on_batch(x_np)),
           "jit_stateless": lambda: compiled(tv, ntv, x).block_until_ready()}
    return fns, xla_flops(call, tv, ntv, x, compiled=compiled), compile_s
