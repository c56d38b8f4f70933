"""DenseNet121 in Flax, Keras 3 layer names, ImageNet mean/std ("torch") input convention.

    model = registry.get("densenet121").make()
    variables = port_densenet121_keras("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                       model.init(rng, jnp.zeros((1, 224, 224, 3))))
    logits, out = model.apply(variables, images01)         # out["pre_logits"]: (B, 1024)

The official files come from Keras 2, whose stem layers were 'conv1/conv' and 'conv1/bn';
the port maps '/' to '_' (Keras 3's 'conv1_conv'). Layer groups: "conv1", "conv2", "pool2",
"conv3", "pool3", "conv4", "pool4", "conv5", "bn" (final BN), "top"; fine names are the
Keras layer names ('conv5_block16_2_conv') and 'top_predictions'. `SPECS`: its sizes,
input convention, groups, weight files and port.
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

_EPS = 1.001e-5
_GROWTH = 32
KERAS_TOP = ("predictions",)


class DenseNet(nn.Module):
    """Keras-compatible DenseNet (121: blocks (6, 12, 24, 16)). Returns (logits | None, out)."""
    preprocess: str                # input convention (common.preprocess): the spec's
    blocks: Sequence[int] = (6, 12, 24, 16)
    include_top: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    pointwise: str = "auto"      # 1x1 convolutions: "dot" | "conv" | "auto" (common.Conv)
    conv3x3: str = "auto"        # 3x3 stride-1 convs: "xla" | "winograd2" | "winograd4" | "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):
        dt = self.dtype
        conv = functools.partial(C.conv, dtype=dt, use_bias=False, pointwise=self.pointwise,
                                 conv3x3=self.conv3x3, train=train)

        def bn(name):
            return C.batch_norm(name, train, eps=_EPS, dtype=dt, rows=rows)

        out = {}
        x = C.preprocess(x, self.preprocess).astype(dt)
        x = conv(64, 7, 2, name="conv1_conv")(C.pad(x, 3))
        x = nn.relu(bn("conv1_bn")(x))
        x = C.max_pool(C.pad(x, 1), 3, 2)
        out["stem"] = x
        for s, n in enumerate(self.blocks):
            stage = f"conv{s + 2}"
            for b in range(1, n + 1):
                name = f"{stage}_block{b}"
                h = nn.relu(bn(f"{name}_0_bn")(x))
                h = conv(4 * _GROWTH, 1, 1, name=f"{name}_1_conv")(h)
                h = nn.relu(bn(f"{name}_1_bn")(h))
                h = conv(_GROWTH, 3, 1, name=f"{name}_2_conv", padding=((1, 1), (1, 1)))(h)
                x = jnp.concatenate([x, h], axis=-1)
            out[f"stage{s + 1}"] = x
            if s < len(self.blocks) - 1:   # transition: halve channels and resolution
                name = f"pool{s + 2}"
                x = nn.relu(bn(f"{name}_bn")(x))
                x = conv(x.shape[-1] // 2, 1, 1, name=f"{name}_conv")(x)
                x = C.avg_pool(x, 2, 2)
        x = nn.relu(bn("bn")(x))
        out["features"] = x
        out["pre_logits"] = C.global_avg_pool(x)
        logits = None
        if self.include_top:
            logits = nn.Dense(self.num_classes, dtype=dt, name="predictions")(out["pre_logits"])
        return logits, out


def layer_group(path: Sequence[str]) -> str:
    """Finest group: the Keras 3 layer name ('conv5_block16_2_conv', 'pool4_conv', 'bn');
    the classifier is 'top_predictions'."""
    layer = C.layer_of(path)
    return f"top_{layer}" if layer in KERAS_TOP else layer


def port_densenet121_keras(h5_path, variables_template):
    """DenseNet121 from densenet121_weights_tf_dim_ordering_tf_kernels[_notop].h5."""
    return port_keras(h5_path, variables_template, arch="densenet121", top_layers=KERAS_TOP)


SPECS = (
    BackboneSpec(
        name="densenet121", module=functools.partial(DenseNet, blocks=(6, 12, 24, 16)),
        default_size=224, feature_dim=1024, preprocess="torch",
        groups=("conv1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5", "bn",
                "top"),
        layer_group=layer_group, port=port_densenet121_keras, conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "densenet/", "densenet121",
                                 "30ee3e1110167f948a6b9946edeeb738",
                                 "9d60b8095a5708f2dcce2bca79d332c7")),
)
