"""InceptionV3 (Keras applications layout, [-1, 1] input) in Flax.

    model = registry.get("inceptionv3").make()            # default size 299, >= 75 px
    variables = port_inceptionv3_keras("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                       model.init(rng, jnp.zeros((1, 299, 299, 3))))
    logits, out = model.apply(variables, images01)        # out["mixed0".."mixed10"], out["pre_logits"]

Keras builds all 94 conv+BN pairs through `conv2d_bn(..., name=None)`, so the file names
them `conv2d_1..94` / `batch_normalization_1..94` (Keras 2; Keras 3 numbers per session).
Ours carry meaning (`stem_conv1`, `mixed4_b7x7dbl_3`, each a `<name>_conv` + `<name>_bn`
pair); `conv_names()` lists them in Keras' creation order, which is what the port pairs
with the files' numeric suffixes. BatchNorm has no scale (Keras `scale=False`), eps 1e-3.
Average pools exclude the padding from the mean, as TF's 'same' pooling does.
Stages: stage1 = mixed2 (35x35), stage2 = mixed7 (17x17), stage3 = mixed10 (8x8) = features.
`SPECS`: its sizes, input convention, groups, weight files and port.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import common as C
from bt_jax.models.spec import KERAS_APPLICATIONS, BackboneSpec, keras_tf_sources
from bt_jax.models.xception import rename_keras_layers
from bt_jax.porting.merge import merge_with_classifier
from bt_jax.porting.keras_h5 import keras_to_flax, read_keras_h5

_EPS = 1e-3
KERAS_TOP = ("predictions",)

# Branch layouts in Keras creation order: (name, filters, (kh, kw), stride, padding, input).
# input: "x" = block input, "pool" = 3x3 average pool of it, else the named earlier conv.
_A = lambda pool: (("b1x1", 64, (1, 1)), ("b5x5_1", 48, (1, 1)), ("b5x5_2", 64, (5, 5), "b5x5_1"),
                   ("b3x3dbl_1", 64, (1, 1)), ("b3x3dbl_2", 96, (3, 3), "b3x3dbl_1"),
                   ("b3x3dbl_3", 96, (3, 3), "b3x3dbl_2"), ("pool", pool, (1, 1), "avgpool"))
_C = lambda c: (("b1x1", 192, (1, 1)), ("b7x7_1", c, (1, 1)), ("b7x7_2", c, (1, 7), "b7x7_1"),
                ("b7x7_3", 192, (7, 1), "b7x7_2"), ("b7x7dbl_1", c, (1, 1)),
                ("b7x7dbl_2", c, (7, 1), "b7x7dbl_1"), ("b7x7dbl_3", c, (1, 7), "b7x7dbl_2"),
                ("b7x7dbl_4", c, (7, 1), "b7x7dbl_3"), ("b7x7dbl_5", 192, (1, 7), "b7x7dbl_4"),
                ("pool", 192, (1, 1), "avgpool"))
_E = (("b1x1", 320, (1, 1)), ("b3x3", 384, (1, 1)), ("b3x3_a", 384, (1, 3), "b3x3"),
      ("b3x3_b", 384, (3, 1), "b3x3"), ("b3x3dbl_1", 448, (1, 1)),
      ("b3x3dbl_2", 384, (3, 3), "b3x3dbl_1"), ("b3x3dbl_a", 384, (1, 3), "b3x3dbl_2"),
      ("b3x3dbl_b", 384, (3, 1), "b3x3dbl_2"), ("pool", 192, (1, 1), "avgpool"))
# Block outputs: concatenation order of the branches ("maxpool" = 3x3/2 max pool of x).
_A_OUT = ("b1x1", "b5x5_2", "b3x3dbl_3", "pool")
_C_OUT = ("b1x1", "b7x7_3", "b7x7dbl_5", "pool")
_E_OUT = ("b1x1", "b3x3_a", "b3x3_b", "b3x3dbl_a", "b3x3dbl_b", "pool")
_BLOCKS = (
    ("mixed0", _A(32), _A_OUT), ("mixed1", _A(64), _A_OUT), ("mixed2", _A(64), _A_OUT),
    ("mixed3", (("b3x3", 384, (3, 3), "x", 2), ("b3x3dbl_1", 64, (1, 1)),
                ("b3x3dbl_2", 96, (3, 3), "b3x3dbl_1"), ("b3x3dbl_3", 96, (3, 3), "b3x3dbl_2", 2)),
     ("b3x3", "b3x3dbl_3", "maxpool")),
    ("mixed4", _C(128), _C_OUT), ("mixed5", _C(160), _C_OUT), ("mixed6", _C(160), _C_OUT),
    ("mixed7", _C(192), _C_OUT),
    ("mixed8", (("b3x3_1", 192, (1, 1)), ("b3x3_2", 320, (3, 3), "b3x3_1", 2),
                ("b7x7x3_1", 192, (1, 1)), ("b7x7x3_2", 192, (1, 7), "b7x7x3_1"),
                ("b7x7x3_3", 192, (7, 1), "b7x7x3_2"), ("b7x7x3_4", 192, (3, 3), "b7x7x3_3", 2)),
     ("b3x3_2", "b7x7x3_4", "maxpool")),
    ("mixed9", _E, _E_OUT), ("mixed10", _E, _E_OUT),
)
_STEM = (("stem_conv1", 32, (3, 3), 2, "VALID"), ("stem_conv2", 32, (3, 3), 1, "VALID"),
         ("stem_conv3", 64, (3, 3), 1, "SAME"), ("stem_conv4", 80, (1, 1), 1, "VALID"),
         ("stem_conv5", 192, (3, 3), 1, "VALID"))


def conv_names() -> list[str]:
    """Our conv+BN unit names in Keras' creation order (= its conv2d_N / batch_normalization_N)."""
    return [s[0] for s in _STEM] + [f"{blk}_{spec[0]}" for blk, specs, _ in _BLOCKS for spec in specs]


def _conv_bn(x, name, filters, kernel, stride, padding, train, rows, dtype, impls):
    """impls: the module's (pointwise, conv3x3) choices."""
    x = C.Conv(filters, kernel, strides=(stride, stride), padding=padding, use_bias=False,
               dtype=dtype, pointwise=impls[0], conv3x3=impls[1], train=train,
               name=f"{name}_conv")(x)
    x = C.batch_norm(f"{name}_bn", train, eps=_EPS, dtype=dtype, use_scale=False, rows=rows)(x)
    return nn.relu(x)


class InceptionV3(nn.Module):
    preprocess: str                # input convention (common.preprocess): the spec's
    include_top: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    pointwise: str = "auto"      # 1x1 convolutions: "dot" | "conv" | "auto" (common.Conv)
    conv3x3: str = "auto"        # 3x3 stride-1 convs: "xla" | "winograd2" | "winograd4" | "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):
        dt = self.dtype
        out = {}
        x = C.preprocess(x, self.preprocess).astype(dt)
        for i, (name, filters, kernel, stride, padding) in enumerate(_STEM):
            x = _conv_bn(x, name, filters, kernel, stride, padding, train, rows, dt,
                         (self.pointwise, self.conv3x3))
            if i in (2, 4):
                x = C.max_pool(x, 3, 2)
        out["stem"] = x
        for blk, specs, outputs in _BLOCKS:
            t = {"x": x, "maxpool": C.max_pool(x, 3, 2),
                 "avgpool": nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME",
                                        count_include_pad=False)}
            for name, filters, kernel, *rest in specs:
                src = rest[0] if rest else "x"
                stride = rest[1] if len(rest) > 1 else 1
                t[name] = _conv_bn(t[src], f"{blk}_{name}", filters, kernel, stride,
                                   "VALID" if stride == 2 else "SAME", train, rows, dt,
                                   (self.pointwise, self.conv3x3))
            x = jnp.concatenate([t[o] for o in outputs], axis=-1)
            out[blk] = x
        out["stage1"], out["stage2"], out["stage3"] = out["mixed2"], out["mixed7"], out["mixed10"]
        out["features"] = x
        out["pre_logits"] = C.global_avg_pool(x)
        logits = None
        if self.include_top:
            logits = nn.Dense(self.num_classes, dtype=dt, name="predictions")(out["pre_logits"])
        return logits, out


GROUPS = ("stem", *(f"mixed{i}" for i in range(11)), "top")


def layer_group(path) -> str:
    """Finest group: the conv+BN unit ('mixed4_b7x7dbl_3', 'stem_conv2', 'top_predictions');
    the coarse group (`GROUPS`: stem, mixed0 .. mixed10, top) is its first '_' field."""
    layer = C.layer_of(path)
    if layer in KERAS_TOP:
        return f"top_{layer}"
    return layer.rsplit("_", 1)[0] if layer.endswith(("_conv", "_bn")) else layer


def port_inceptionv3_keras(h5_path, variables_template):
    """InceptionV3 from inception_v3_weights_tf_dim_ordering_tf_kernels[_notop].h5."""
    origin = f"{os.fspath(h5_path)} (ported as inceptionv3)"
    pairs = [(f"{n}_conv", f"{n}_bn") for n in conv_names()]
    layers = rename_keras_layers(read_keras_h5(h5_path), origin, pairs)
    source = keras_to_flax(layers, origin=origin, rename=lambda k: k)
    return merge_with_classifier(variables_template, source, origin=origin)


SPECS = (
    BackboneSpec(
        name="inceptionv3", module=InceptionV3, default_size=299, feature_dim=2048,
        preprocess="tf", groups=GROUPS, layer_group=layer_group, port=port_inceptionv3_keras,
        conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "inception_v3/", "inception_v3",
                                 "bcbd6486424b2319ff4ef7d526e38f63",
                                 "9a0d58056eeedaa3f26cb7ebd46da564")),
)
