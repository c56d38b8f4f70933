"""MobileNet v1 (alpha 1.0, depth multiplier 1) in Flax, Keras layer names, [-1, 1] input.

    model = registry.get("mobilenet").make()
    variables = port_mobilenet_keras("mobilenet_1_0_224_tf_no_top.h5",
                                     model.init(rng, jnp.zeros((1, 224, 224, 3))))
    logits, out = model.apply(variables, images01)         # out["pre_logits"]: (B, 1024)

Layer groups: "conv1" (stem), "block1".."block13" (fine: "block13_conv_dw_13",
"block13_conv_pw_13", with their BNs) and "top" ("top_conv_preds"). `SPEC`: its sizes,
input convention, groups, weight files and port.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import common as C
from bt_jax.models.depthwise import DepthwiseConv
from bt_jax.models.spec import KERAS_APPLICATIONS, BackboneSpec, keras_sources
from bt_jax.porting.keras_h5 import port_keras

_EPS = 1e-3   # Keras' BatchNormalization default, which MobileNet keeps
# (pointwise filters, stride) of depthwise-separable blocks 1..13
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# the last block of each resolution ends a stage
_STAGE_ENDS = {1: "stage1", 3: "stage2", 5: "stage3", 11: "stage4", 13: "stage5"}
KERAS_TOP = ("conv_preds",)


class MobileNet(nn.Module):
    """Keras-compatible MobileNet v1 (alpha 1). Returns (logits | None, out)."""
    preprocess: str                # input convention (common.preprocess): the spec's
    include_top: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    depthwise: str = "auto"      # DepthwiseConv impl: "auto" | "shift" | "conv"
    pointwise: str = "auto"      # 1x1 convolutions: "dot" | "conv" | "auto" (common.Conv)

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):
        dt = self.dtype
        conv = functools.partial(C.conv, dtype=dt, pointwise=self.pointwise)

        def bn(name):
            return C.batch_norm(name, train, eps=_EPS, dtype=dt, rows=rows)

        out = {}
        x = C.preprocess(x, self.preprocess).astype(dt)
        # Keras 3 uses padding="same" here (TF-style: (0, 1) for even sizes), Flax's SAME is the same rule.
        x = conv(32, 3, 2, name="conv1", use_bias=False, padding="SAME")(x)
        x = C.relu6(bn("conv1_bn")(x))
        out["stem"] = x
        for i, (filters, stride) in enumerate(BLOCKS, start=1):
            if stride == 1:
                x = C.pad(x, 1)
            else:      # Keras: ZeroPadding2D(((0, 1), (0, 1))) then a 'valid' strided conv
                x = C.pad(x, 0, 1, 0, 1)
            x = DepthwiseConv((3, 3), (stride, stride), "VALID", dtype=dt, impl=self.depthwise,
                              name=f"conv_dw_{i}")(x)
            x = C.relu6(bn(f"conv_dw_{i}_bn")(x))
            x = conv(filters, 1, 1, name=f"conv_pw_{i}", use_bias=False)(x)
            x = C.relu6(bn(f"conv_pw_{i}_bn")(x))
            if i in _STAGE_ENDS:
                out[_STAGE_ENDS[i]] = x
        out["features"] = x
        out["pre_logits"] = C.global_avg_pool(x)
        logits = None
        if self.include_top:
            # Keras' classifier is a 1x1 Conv2D on the (B, 1, 1, C) pooled map (dropout is
            # left to the heads); keeping it a conv keeps the h5 kernel shape as it is.
            h = out["pre_logits"].astype(dt)[:, None, None, :]
            logits = conv(self.num_classes, 1, 1, name="conv_preds")(h)
            logits = logits.reshape((logits.shape[0], self.num_classes))
        return logits, out


_BLOCK_LAYER = re.compile(r"conv_(?:dw|pw)_(\d+)(?:_bn)?")


def layer_group(path: Sequence[str]) -> str:
    """Finest group: 'conv1'/'conv1_bn' (stem), 'block<i>_<keras layer>' for the
    depthwise-separable block i ('block13_conv_pw_13_bn'), 'top_conv_preds'."""
    layer = C.layer_of(path)
    if layer in KERAS_TOP:
        return f"top_{layer}"
    m = _BLOCK_LAYER.fullmatch(layer)
    return f"block{m.group(1)}_{layer}" if m else layer


def port_mobilenet_keras(h5_path, variables_template):
    """MobileNet from mobilenet_1_0_224_tf[_no_top].h5 (depthwise kernels transposed)."""
    return port_keras(h5_path, variables_template, arch="mobilenet", top_layers=KERAS_TOP,
                      depthwise=r"conv_dw_\d+")


SPECS = (
    BackboneSpec(
        name="mobilenet", module=MobileNet, default_size=224, feature_dim=1024, preprocess="tf",
        groups=("conv1",) + tuple(f"block{i}" for i in range(1, 14)) + ("top",),
        layer_group=layer_group, port=port_mobilenet_keras, depthwise=True,
        # Keras lists no hash for these files
        sources=keras_sources(KERAS_APPLICATIONS + "mobilenet/", "mobilenet_1_0_224_tf_no_top.h5",
                              "mobilenet_1_0_224_tf.h5", None, None)),
)
