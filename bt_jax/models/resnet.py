"""ResNet50 (v1, Keras "caffe" input) and ResNet50V2 (pre-activation, [-1, 1] input) in Flax.

    model = registry.get("resnet50v2").make()              # or "resnet50", include_top=True
    variables = port_resnet50v2_keras("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                      model.init(rng, jnp.zeros((1, 224, 224, 3))))
    logits, out = model.apply(variables, images01)         # out["pre_logits"]: (B, 2048)

Layer names are the Keras ones (`conv1_conv`, `conv2_block1_preact_bn`, ..., `post_bn`,
`predictions`), so the port is a name look-up. Layer groups: the stage prefix of the
layer name ("conv1" .. "conv5", "post" for v2's final BN, "top" for the classifier).
`SPECS`: both backbones' sizes, input convention, groups, weight files and port.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import common as C
from bt_jax.models.spec import KERAS_APPLICATIONS, BackboneSpec, keras_tf_sources
from bt_jax.porting.keras_h5 import port_keras

_EPS = 1.001e-5          # Keras ResNet BatchNorm epsilon (not the 1e-3 default)
_WIDTHS = (64, 128, 256, 512)


def _block_v1(x, filters, stride, conv_shortcut, name, train, rows, dtype, pointwise,
              conv3x3):
    bn = functools.partial(C.batch_norm, train=train, eps=_EPS, dtype=dtype, rows=rows)
    conv = functools.partial(C.conv, dtype=dtype, pointwise=pointwise, conv3x3=conv3x3,
                             train=train)
    if conv_shortcut:
        shortcut = conv(4 * filters, 1, stride, name=f"{name}_0_conv")(x)
        shortcut = bn(f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    # v1 (Keras/Caffe flavour) strides in the first 1x1 conv, not the 3x3.
    x = conv(filters, 1, stride, name=f"{name}_1_conv")(x)
    x = nn.relu(bn(f"{name}_1_bn")(x))
    x = conv(filters, 3, 1, name=f"{name}_2_conv", padding=((1, 1), (1, 1)))(x)
    x = nn.relu(bn(f"{name}_2_bn")(x))
    x = conv(4 * filters, 1, 1, name=f"{name}_3_conv")(x)
    x = bn(f"{name}_3_bn")(x)
    return nn.relu(shortcut + x)


def _block_v2(x, filters, stride, conv_shortcut, name, train, rows, dtype, pointwise,
              conv3x3):
    bn = functools.partial(C.batch_norm, train=train, eps=_EPS, dtype=dtype, rows=rows)
    conv = functools.partial(C.conv, dtype=dtype, pointwise=pointwise, conv3x3=conv3x3,
                             train=train)
    preact = nn.relu(bn(f"{name}_preact_bn")(x))
    if conv_shortcut:
        shortcut = conv(4 * filters, 1, stride, name=f"{name}_0_conv")(preact)
    else:
        # Keras: MaxPooling2D(1, strides=stride), i.e. plain subsampling of the raw input.
        shortcut = x[:, ::stride, ::stride, :] if stride > 1 else x
    x = conv(filters, 1, 1, name=f"{name}_1_conv", use_bias=False)(preact)
    x = nn.relu(bn(f"{name}_1_bn")(x))
    x = conv(filters, 3, stride, name=f"{name}_2_conv", use_bias=False)(C.pad(x, 1))
    x = nn.relu(bn(f"{name}_2_bn")(x))
    x = conv(4 * filters, 1, 1, name=f"{name}_3_conv")(x)
    return shortcut + x


class ResNet(nn.Module):
    """Keras-compatible ResNet; `preact=True` is ResNetV2. Returns (logits | None, out)."""
    preprocess: str                # input convention (common.preprocess): the spec's
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    preact: bool = True
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
        x = C.conv(64, 7, 2, name="conv1_conv", dtype=dt, pointwise=self.pointwise)(C.pad(x, 3))
        if not self.preact:
            x = nn.relu(C.batch_norm("conv1_bn", train, eps=_EPS, dtype=dt, rows=rows)(x))
        # Zero padding before the max pool, as Keras: it matters for v2, whose stem has no ReLU.
        x = C.max_pool(C.pad(x, 1), 3, 2)
        out["stem"] = x
        last = len(self.stage_sizes) - 1
        for i, (blocks, width) in enumerate(zip(self.stage_sizes, _WIDTHS)):
            for b in range(blocks):
                name = f"conv{i + 2}_block{b + 1}"
                if self.preact:   # v2 strides in the last block of conv2..conv4
                    stride = 2 if (b == blocks - 1 and i < last) else 1
                    x = _block_v2(x, width, stride, b == 0, name, train, rows, dt,
                                  self.pointwise, self.conv3x3)
                else:             # v1 strides in the first block of conv3..conv5
                    stride = 2 if (b == 0 and i > 0) else 1
                    x = _block_v1(x, width, stride, b == 0, name, train, rows, dt,
                                  self.pointwise, self.conv3x3)
            out[f"stage{i + 1}"] = x
        if self.preact:
            x = nn.relu(C.batch_norm("post_bn", train, eps=_EPS, dtype=dt, rows=rows)(x))
        out["features"] = x
        out["pre_logits"] = C.global_avg_pool(x)
        logits = None
        if self.include_top:
            logits = nn.Dense(self.num_classes, dtype=dt, name="predictions")(out["pre_logits"])
        return logits, out


KERAS_TOP = ("predictions",)


def layer_group(path: Sequence[str]) -> str:
    """Finest group of a parameter: its Keras layer name ('conv5_block3_2_conv', 'post_bn'),
    or 'top_predictions' for the classifier. Coarse groups are '_'-prefixes: 'conv5', 'top'."""
    layer = C.layer_of(path)
    return f"top_{layer}" if layer in KERAS_TOP else layer


def port_resnet50v2_keras(h5_path, variables_template):
    """ResNet50V2 from resnet50v2_weights_tf_dim_ordering_tf_kernels[_notop].h5."""
    return port_keras(h5_path, variables_template, arch="resnet50v2", top_layers=KERAS_TOP)


def port_resnet50_keras(h5_path, variables_template):
    """ResNet50 v1 from resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5 (the
    keras-applications/resnet/ files, whose layers are named like Keras' resnet.py)."""
    return port_keras(h5_path, variables_template, arch="resnet50", top_layers=KERAS_TOP)


_GROUPS = ("conv1", "conv2", "conv3", "conv4", "conv5")
SPECS = (
    BackboneSpec(
        name="resnet50v2", module=functools.partial(ResNet, preact=True), default_size=224,
        feature_dim=2048, preprocess="tf", groups=_GROUPS + ("post", "top"),
        layer_group=layer_group, port=port_resnet50v2_keras, conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "resnet/", "resnet50v2",
                                 "fac2f116257151a9d068a22e544a4917",
                                 "3ef43a0b657b3be2300d5770ece849e0")),
    BackboneSpec(
        name="resnet50", module=functools.partial(ResNet, preact=False), default_size=224,
        feature_dim=2048, preprocess="caffe", groups=_GROUPS + ("top",),
        layer_group=layer_group, port=port_resnet50_keras, conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "resnet/", "resnet50",
                                 "4d473c1dd8becc155b73f8504c6f6626",
                                 "2cb95161c43110f7111970584f804107")),
)
