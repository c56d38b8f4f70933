"""Xception (Keras applications layout, [-1, 1] input) in Flax.

    model = registry.get("xception").make()               # default size 299, >= 71 px
    variables = port_xception_keras("xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                    model.init(rng, jnp.zeros((1, 299, 299, 3))))
    logits, out = model.apply(variables, images01)        # out["pre_logits"]: (B, 2048)

Layer names are Keras' (`block1_conv1`, `block4_sepconv2_bn`, `block14_sepconv2`). Keras
leaves the four strided 1x1 shortcut convs (and their BatchNorms) unnamed, so files call
them `conv2d_1..4` / `batch_normalization_1..4` (Keras 2) or `conv2d`, `conv2d_1`, ...
(Keras 3, numbered per session); ours are `block{2,3,4,13}_residual_conv|_bn`, and the
port pairs them by creation order (the numeric suffix). SeparableConv2D is a depthwise
conv (`<name>_dw`) followed by a 1x1 pointwise conv (`<name>_pw`), neither with bias.
Stages: stage1..3 = entry-flow blocks 2..4 (strides 4, 8, 16), stage4 = end of the
middle flow (block12), stage5 = exit flow (block14) = features. `SPECS`: its sizes, input
convention, groups, weight files and port.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import common as C
from bt_jax.models.depthwise import DepthwiseConv
from bt_jax.models.spec import KERAS_APPLICATIONS, BackboneSpec, keras_tf_sources
from bt_jax.porting.keras_h5 import keras_to_flax, read_keras_h5, short_name
from bt_jax.porting.merge import PortError, merge_with_classifier

_EPS = 1e-3                     # Keras BatchNormalization default
_RESIDUAL_BLOCKS = (2, 3, 4, 13)
KERAS_TOP = ("predictions",)


def _sep(x, features, name, dtype, depthwise, pointwise):
    x = DepthwiseConv((3, 3), padding="SAME", dtype=dtype, impl=depthwise, name=f"{name}_dw")(x)
    return C.Conv(features, (1, 1), use_bias=False, dtype=dtype, pointwise=pointwise,
                  name=f"{name}_pw")(x)


class Xception(nn.Module):
    preprocess: str                # input convention (common.preprocess): the spec's
    include_top: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    depthwise: str = "auto"      # DepthwiseConv impl: "auto" | "shift" | "conv"
    pointwise: str = "auto"      # 1x1 convolutions: "dot" | "conv" | "auto" (common.Conv)
    conv3x3: str = "auto"        # 3x3 stride-1 convs: "xla" | "winograd2" | "winograd4" | "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):
        dt = self.dtype
        bn = functools.partial(C.batch_norm, train=train, eps=_EPS, dtype=dt, rows=rows)
        sep = functools.partial(_sep, dtype=dt, depthwise=self.depthwise, pointwise=self.pointwise)
        conv = functools.partial(C.conv, dtype=dt, use_bias=False, pointwise=self.pointwise,
                                 conv3x3=self.conv3x3, train=train)
        out = {}
        x = C.preprocess(x, self.preprocess).astype(dt)
        x = nn.relu(bn("block1_conv1_bn")(conv(32, 3, 2, name="block1_conv1")(x)))
        x = nn.relu(bn("block1_conv2_bn")(conv(64, 3, 1, name="block1_conv2")(x)))
        out["stem"] = x
        for stage, (block, width) in enumerate(((2, 128), (3, 256), (4, 728))):
            residual = conv(width, 1, 2, name=f"block{block}_residual_conv")(x)
            residual = bn(f"block{block}_residual_bn")(residual)
            if block > 2:       # block2 follows block1's ReLU directly
                x = nn.relu(x)
            x = bn(f"block{block}_sepconv1_bn")(sep(x, width, f"block{block}_sepconv1"))
            x = bn(f"block{block}_sepconv2_bn")(sep(nn.relu(x), width, f"block{block}_sepconv2"))
            x = C.max_pool(x, 3, 2, "SAME") + residual
            out[f"stage{stage + 1}"] = x
        for block in range(5, 13):
            residual = x
            for i in (1, 2, 3):
                name = f"block{block}_sepconv{i}"
                x = bn(f"{name}_bn")(sep(nn.relu(x), 728, name))
            x = x + residual
        out["stage4"] = x
        residual = bn("block13_residual_bn")(
            conv(1024, 1, 2, name="block13_residual_conv")(x))
        x = bn("block13_sepconv1_bn")(sep(nn.relu(x), 728, "block13_sepconv1"))
        x = bn("block13_sepconv2_bn")(sep(nn.relu(x), 1024, "block13_sepconv2"))
        x = C.max_pool(x, 3, 2, "SAME") + residual
        x = nn.relu(bn("block14_sepconv1_bn")(sep(x, 1536, "block14_sepconv1")))
        x = nn.relu(bn("block14_sepconv2_bn")(sep(x, 2048, "block14_sepconv2")))
        out["stage5"] = out["features"] = x
        out["pre_logits"] = C.global_avg_pool(x)
        logits = None
        if self.include_top:
            logits = nn.Dense(self.num_classes, dtype=dt, name="predictions")(out["pre_logits"])
        return logits, out


GROUPS = tuple(f"block{i}" for i in range(1, 15)) + ("top",)
FLOWS = {"entry": GROUPS[:4], "middle": GROUPS[4:12], "exit": GROUPS[12:14]}


def layer_group(path) -> str:
    """Finest group: the layer name ('block7_sepconv2_dw', 'top_predictions'); the coarse
    group (`GROUPS`: block1 .. block14, top) is its first '_' field; `FLOWS` bundles them."""
    layer = C.layer_of(path)
    return f"top_{layer}" if layer in KERAS_TOP else layer


def _unnamed(layers, prefix):
    """Keras auto-named layers ('conv2d', 'conv2d_3', ...) holding weights, in creation order."""
    found = [k for k, v in layers.items() if v and re.fullmatch(rf"{prefix}(_\d+)?", k)]
    return sorted(found, key=lambda k: int(k.rpartition("_")[2]) if k[-1].isdigit() else 0)


def rename_keras_layers(layers: dict, origin: str, pairs) -> dict:
    """Renames auto-named conv/BN layers to `pairs` [(conv, bn), ...] by creation order and
    splits SeparableConv2D layers into their depthwise and pointwise halves."""
    convs, bns = _unnamed(layers, "conv2d"), _unnamed(layers, "batch_normalization")
    if len(convs) != len(pairs) or len(bns) != len(pairs):
        raise PortError(f"{origin}: expected {len(pairs)} unnamed Conv2D and BatchNormalization "
                        f"layers, found {len(convs)} ({convs[:4]}...) and {len(bns)}")
    renamed = {}
    for (conv, bn), c, b in zip(pairs, convs, bns):
        renamed[c], renamed[b] = conv, bn
    out = {}
    for name, tensors in layers.items():
        if not tensors:
            continue
        by = {short_name(w): (w, v) for w, v in tensors}
        if "depthwise_kernel" in by and "pointwise_kernel" in by:
            if len(by) != 2:
                raise PortError(f"{origin}: separable conv {name!r} holds {sorted(by)}, "
                                "expected depthwise_kernel and pointwise_kernel (no bias)")
            out[f"{name}_dw"] = [by["depthwise_kernel"]]
            pw_name, pw = by["pointwise_kernel"]
            out[f"{name}_pw"] = [(pw_name.replace("pointwise_kernel", "kernel"), pw)]
        else:
            out[renamed.get(name, name)] = tensors
    return out


def port_xception_keras(h5_path, variables_template):
    """Xception from xception_weights_tf_dim_ordering_tf_kernels[_notop].h5."""
    origin = f"{os.fspath(h5_path)} (ported as xception)"
    pairs = [(f"block{b}_residual_conv", f"block{b}_residual_bn") for b in _RESIDUAL_BLOCKS]
    layers = rename_keras_layers(read_keras_h5(h5_path), origin, pairs)
    source = keras_to_flax(layers, origin=origin, rename=lambda k: k, depthwise=r".*_dw")
    return merge_with_classifier(variables_template, source, origin=origin)


SPECS = (
    BackboneSpec(
        name="xception", module=Xception, default_size=299, feature_dim=2048, preprocess="tf",
        groups=GROUPS, layer_group=layer_group, port=port_xception_keras, depthwise=True,
        conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "xception/", "xception",
                                 "b0042744bf5b25fce3cb969f33bebb97",
                                 "0a58e3b7378bc2990ea3b43d5981f1f6")),
)
