"""VGG16 / VGG19 in Flax, Keras layer names, Keras "caffe" input convention applied inside.

    model = registry.get("vgg19").make()                   # include_top=True needs 224x224
    variables = port_vgg19_keras("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                 model.init(rng, jnp.zeros((1, 224, 224, 3))))
    logits, out = model.apply(variables, images01)         # out["features"]: block5_pool

Layer groups: "block1".."block5" (with fine names such as "block5_conv3") and "top"
("top_fc1", "top_fc2", "top_predictions"). `SPECS`: both backbones' sizes, input
convention, groups, weight files and port.
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

_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
KERAS_TOP = ("fc1", "fc2", "predictions")


class VGG(nn.Module):
    """Keras-compatible VGG; `depth` 16 or 19. Returns (logits | None, out)."""
    preprocess: str                # input convention (common.preprocess): the spec's
    depth: int = 16
    include_top: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    pointwise: str = "auto"      # 1x1 convolutions: "dot" | "conv" | "auto" (common.Conv)
    conv3x3: str = "auto"        # 3x3 stride-1 convs: "xla" | "winograd2" | "winograd4" | "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # rows: no BatchNorm here
        if self.depth not in CONVS_PER_BLOCK:
            raise ValueError(f"VGG depth must be one of {sorted(CONVS_PER_BLOCK)}, got {self.depth}")
        dt = self.dtype
        out = {}
        x = C.preprocess(x, self.preprocess).astype(dt)
        for b, (n, width) in enumerate(zip(CONVS_PER_BLOCK[self.depth], _WIDTHS), start=1):
            for c in range(1, n + 1):
                x = nn.relu(C.conv(width, 3, 1, name=f"block{b}_conv{c}", dtype=dt,
                                   padding=((1, 1), (1, 1)), pointwise=self.pointwise,
                                   conv3x3=self.conv3x3, train=train)(x))
                if b == 1 and c == 1:
                    out["stem"] = x
            x = C.max_pool(x, 2, 2)
            out[f"stage{b}"] = x
        out["features"] = x
        out["pre_logits"] = C.global_avg_pool(x)
        logits = None
        if self.include_top:
            # Keras flattens channels-last (h, w, c) order, the same as reshaping NHWC here;
            # the tf_dim_ordering files hold fc1 in that order, so no transpose.
            h = x.reshape((x.shape[0], -1))
            h = nn.relu(nn.Dense(4096, dtype=dt, name="fc1")(h))
            h = nn.relu(nn.Dense(4096, dtype=dt, name="fc2")(h))
            out["fc2"] = h
            logits = nn.Dense(self.num_classes, dtype=dt, name="predictions")(h)
        return logits, out


def layer_group(path: Sequence[str]) -> str:
    """Finest group: the Keras layer name ('block5_conv3'); classifier layers 'top_<name>'."""
    layer = C.layer_of(path)
    return f"top_{layer}" if layer in KERAS_TOP else layer


def port_vgg16_keras(h5_path, variables_template):
    """VGG16 from vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5."""
    return port_keras(h5_path, variables_template, arch="vgg16", top_layers=KERAS_TOP)


def port_vgg19_keras(h5_path, variables_template):
    """VGG19 from vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5."""
    return port_keras(h5_path, variables_template, arch="vgg19", top_layers=KERAS_TOP)


GROUPS = ("block1", "block2", "block3", "block4", "block5", "top")
SPECS = (
    BackboneSpec(
        name="vgg16", module=functools.partial(VGG, depth=16), default_size=224,
        feature_dim=512, preprocess="caffe", groups=GROUPS, layer_group=layer_group,
        port=port_vgg16_keras, conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "vgg16/", "vgg16",
                                 "6d6bbae143d832006294945121d1f1fc",
                                 "64373286793e3c8b2b4e3219cbf3544b")),
    BackboneSpec(
        name="vgg19", module=functools.partial(VGG, depth=19), default_size=224,
        feature_dim=512, preprocess="caffe", groups=GROUPS, layer_group=layer_group,
        port=port_vgg19_keras, conv3x3=True,
        sources=keras_tf_sources(KERAS_APPLICATIONS + "vgg19/", "vgg19",
                                 "253f8cb515780f3b799900260a226db6",
                                 "cbe5617147190e668d6c5d5026f83318")),
)
