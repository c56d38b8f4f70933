"""Layers and conventions shared by the Keras-ported backbones.

    x = preprocess(images01, "caffe")           # each backbone applies its own input convention
    y = conv(64, 7, 2, name="conv1_conv", dtype=dt, pointwise=self.pointwise)(pad(x, 3))
    y = batch_norm("conv1_bn", train, eps=1.001e-5, dtype=dt, rows=rows)(y)

Backbones create their layers through these factories inside their `@nn.compact`
`__call__`, named exactly like the Keras layers, so the weight port is a name look-up.
Every backbone has the field `pointwise` (how `Conv` computes 1x1 convolutions), those with
3x3 stride-1 convolutions the field `conv3x3` (how `Conv` computes them; each such layer
gets the backbone's `train`), and `__call__(x01, train=False, rows=None)` (`rows`: the
batch rows that count in BatchNorm's statistics): explicit choices, part of the module and
its programs, not trace-time state.
Keras 'same' padding with stride 2 is asymmetric (more at the bottom/right); the
backbones copy Keras' explicit ZeroPadding2D + 'valid' pairs rather than rely on it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bt_jax.models import narrow_conv, winograd

# Keras `imagenet_utils.preprocess_input` modes, applied to x in [0, 1].
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("caffe", "tf", "torch", "lite")
# config.model.dtype -> the backbones' compute dtype (parameters stay float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def preprocess(x, mode: str):
    """Map RGB images in [0, 1] to a backbone's input convention (float32).

    caffe: RGB->BGR on 0..255 minus the ImageNet BGR mean (VGG, ResNet50 v1);
    tf: [-1, 1] (ResNet50V2, MobileNet); torch: ImageNet mean/std on [0, 1] (DenseNet);
    lite: (x - 127) / 128 on 0..255 (TF's efficientnet_lite_builder; EfficientNet-Lite).
    """
    x = jnp.asarray(x, jnp.float32)
    if mode == "caffe":
        return x[..., ::-1] * 255.0 - jnp.asarray(_CAFFE_BGR_MEAN, jnp.float32)
    if mode == "tf":
        return x * 2.0 - 1.0
    if mode == "torch":
        return (x - jnp.asarray(_TORCH_MEAN, jnp.float32)) / jnp.asarray(_TORCH_STD, jnp.float32)
    if mode == "lite":
        return (x - 127.0 / 255.0) / (128.0 / 255.0)
    raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {PREPROCESS_MODES}")


POINTWISE_IMPLS = ("auto", "dot", "conv")


def resolve_pointwise(impl: str) -> str:
    """'dot' or 'conv' for `impl` on the current default backend ("auto": dot on CPU)."""
    if impl not in POINTWISE_IMPLS:
        raise ValueError(f"pointwise impl: expected one of {POINTWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "dot" if jax.default_backend() == "cpu" else "conv"
    return impl


def _pointwise_as_dot(m: Conv) -> bool:
    pads = m.padding if isinstance(m.padding, str) else np.asarray(m.padding)
    return (resolve_pointwise(m.pointwise) == "dot" and tuple(m.kernel_size) == (1, 1)
            and m.feature_group_count == 1
            and m.input_dilation in (None, 1, (1, 1)) and m.kernel_dilation in (None, 1, (1, 1))
            and m.mask is None and (isinstance(pads, str) or not pads.any()))


def _plain(m: Conv) -> bool:
    """Ungrouped, undilated, unmasked, with SAME/VALID or explicit pair padding: the convs
    that Winograd and `narrow_conv` can take."""
    pads = m.padding
    pads_ok = (pads.upper() in ("SAME", "VALID")) if isinstance(pads, str) \
        else np.shape(pads) == (2, 2)
    return (pads_ok and m.feature_group_count == 1 and m.mask is None
            and m.input_dilation in (None, 1, (1, 1)) and m.kernel_dilation in (None, 1, (1, 1)))


def _strides(m: Conv) -> tuple[int, int]:
    return (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides or (1, 1))


def _narrow(m: Conv, x_shape) -> bool:
    """A stem conv (few input channels, a kernel of 5x5 or more: ResNet's and DenseNet's 7x7)
    whose kernel gradient `narrow_conv` computes. 3x3 stems stay XLA's: there the same path
    lost or tied in the training step (docs/benchmarks.md, "The 7x7 stem's kernel gradient")."""
    return (len(x_shape) == 4 and x_shape[-1] <= narrow_conv.MAX_CHANNELS
            and len(m.kernel_size) == 2 and min(m.kernel_size) >= 5 and _plain(m))


def _conv3x3_impl(m: Conv, x_shape) -> str:
    """"xla", "winograd2" or "winograd4" for this layer: Winograd only for an ungrouped,
    undilated, unmasked 3x3 stride-1 conv with SAME/VALID or explicit pair padding."""
    impl = m.conv3x3
    if impl not in winograd.CHOICES + (winograd.AUTO_TRAIN,):
        raise ValueError(f"conv3x3 impl: expected one of {winograd.CHOICES}, got {impl!r}")
    strides = _strides(m)
    if len(x_shape) != 4 or tuple(m.kernel_size) != (3, 3) or strides != (1, 1) or not _plain(m):
        return "xla"
    return winograd.resolve(impl, x_shape, (3, 3, x_shape[-1], m.features), strides,
                            train=m.train)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_dot(x, kernel, precision=None):
    """x (..., Cin) @ kernel (Cin, Cout), a 1x1 convolution as one matmul. Its kernel
    gradient puts the narrower of x and the output gradient on the left: JAX's own rule
    always puts the output gradient there, and XLA:CPU then copies it into a transposed
    layout with the BatchNorm backward fused in, a strided pass that cost Lite0's training
    step more than all its pointwise matmuls (figures: docs/benchmarks.md)."""
    return jnp.dot(x, kernel, precision=precision)


def _pointwise_fwd(x, kernel, precision):
    return pointwise_dot(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, res, g):
    x, kernel = res
    cin, cout = kernel.shape
    dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    x2, g2 = x.reshape(-1, cin), g.reshape(-1, cout)
    over_rows = (((0,), (0,)), ((), ()))
    if cin <= cout:
        dk = lax.dot_general(x2, g2, over_rows, precision=precision)
    else:
        dk = lax.dot_general(g2, x2, over_rows, precision=precision).T
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


pointwise_dot.defvjp(_pointwise_fwd, _pointwise_bwd)


class Conv(nn.Conv):
    """nn.Conv (same parameters, names and initialisers) whose 1x1 convolutions run as one
    matmul over all positions on CPU, and whose 3x3 stride-1 convolutions may run by
    Winograd (models/winograd.py). XLA:CPU's convolution kernel is slower than its dot
    on the 1x1 shapes of EfficientNet, ResNet, MobileNet and Xception (figures:
    docs/benchmarks.md, "Depthwise and 1x1 convolutions on CPU"), and than Winograd on
    the wide 3x3 layers of VGG and ResNet, above all in the backward pass.
    `pointwise` ("dot", "conv" or "auto": dot on CPU) and `conv3x3` ("xla", "winograd2",
    "winograd4" or "auto": winograd.choose per layer shape, for training if `train`) are
    fields, so they are part of the module and of every program traced from it: two
    settings are two programs. A 1x1 kernel needs no padding ('SAME' and 'VALID' agree),
    so a stride is a slice."""
    pointwise: str = "auto"
    conv3x3: str = "auto"
    train: bool = False          # the backbone's mode: "auto" picks by the training rule

    @nn.compact
    def __call__(self, inputs):
        if inputs.ndim == 4 and _pointwise_as_dot(self):      # (B, H, W, C) only
            return self._as_dot(inputs)
        impl = _conv3x3_impl(self, inputs.shape)
        if impl == "xla" and _narrow(self, inputs.shape):
            return self._narrow(inputs)
        if impl == "xla":
            return super().__call__(inputs)
        x, kernel, bias = self._params(inputs, (3, 3))
        y = winograd.winograd_conv(x, kernel, self.padding, m=2 if impl == "winograd2" else 4)
        return y if bias is None else y + bias

    def _params(self, inputs, window):
        """(inputs, kernel, bias) in the compute dtype: nn.Conv's parameters, names and
        initialisers for a `window`-sized kernel."""
        kernel = self.param("kernel", self.kernel_init, (*window, inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
            if self.use_bias else None
        return nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)

    def _narrow(self, inputs):
        x, kernel, bias = self._params(inputs, tuple(self.kernel_size))
        strides, pads = _strides(self), self.padding
        if isinstance(pads, str):
            pads = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, pads)
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        y = narrow_conv.narrow_conv(x, kernel, strides, pads, self.precision)
        return y if bias is None else y + bias

    def _as_dot(self, inputs):
        x, kernel, bias = self._params(inputs, (1, 1))
        sh, sw = _strides(self)
        y = pointwise_dot(x[:, ::sh, ::sw], kernel[0, 0], self.precision)
        return y if bias is None else y + bias


def conv(features: int, kernel: int, stride: int = 1, *, name: str, dtype, use_bias: bool = True,
         padding="VALID", pointwise: str = "auto", conv3x3: str = "auto",
         train: bool = False) -> Conv:
    """A Keras-like Conv2D (HWIO kernel, bias on by default as in Keras); `train`: the
    backbone's mode, for conv3x3="auto"."""
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                use_bias=use_bias, dtype=dtype, pointwise=pointwise, conv3x3=conv3x3,
                train=train, name=name)


class BatchNorm(nn.BatchNorm):
    """Flax BatchNorm whose training-mode batch mean and variance are taken over `rows`
    ((B,) bool; None: all) only: the padding that fills a fixed or device-divisible batch
    must not shift the statistics. The backbones take `rows` as an argument of their
    `__call__` beside `train` and hand it to each layer. Under a data-sharded `jit` the
    batch mean is a mean over the global batch (XLA inserts the cross-device reduction)."""
    rows: Any = None

    def __call__(self, x, use_running_average=None, *, mask=None):
        if mask is None and self.rows is not None:
            mask = jnp.reshape(self.rows, (-1,) + (1,) * (x.ndim - 1))
        return super().__call__(x, use_running_average, mask=mask)


def batch_norm(name: str, train: bool, *, eps: float, dtype, use_scale: bool = True,
               rows=None) -> BatchNorm:
    """Keras BatchNormalization: momentum 0.99 means the same update rule in Flax."""
    return BatchNorm(use_running_average=not train, momentum=0.99, epsilon=eps,
                     use_scale=use_scale, dtype=dtype, rows=rows, name=name)


def pad(x, top: int, bottom: int | None = None, left: int | None = None, right: int | None = None):
    """Keras ZeroPadding2D: zeros (not -inf) even before a max pool, as Keras does."""
    bottom = top if bottom is None else bottom
    left = top if left is None else left
    right = left if right is None else right
    return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def max_pool(x, window: int, stride: int, padding: str = "VALID"):
    """nn.max_pool over a square window, "VALID" or "SAME" (padded with -inf, as nn.max_pool
    pads), by strided slices with its own backward (`_max_pool`)."""
    if padding == "SAME":
        pads = lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), "SAME")
        low = jnp.asarray(-jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else
                          jnp.iinfo(x.dtype).min, x.dtype)
        x = lax.pad(x, low, [(0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
    elif padding != "VALID":
        raise ValueError(f"max_pool padding: expected 'VALID' or 'SAME', got {padding!r}")
    if min(x.shape[1:3]) < window:      # an empty output (a small input's last stages)
        return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")
    return _max_pool(x, window, stride, x.shape[1:3])


def _pool_taps(x, k: int, s: int):
    """(the max over a k x k window at stride s, the index of the first tap that holds it)."""
    b, h, w, c = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    y = first = None
    for t in range(k * k):
        i, j = divmod(t, k)
        tap = lax.slice(x, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                        (1, s, s, 1))
        if y is None:
            y, first = tap, jnp.zeros(tap.shape, jnp.int8)
        else:
            first = jnp.where(tap > y, jnp.int8(t), first)
            y = jnp.maximum(y, tap)          # NaN propagates, as in reduce_window
    return y, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, k: int, s: int, hw: tuple[int, int]):
    """Max pool, VALID, as a max over strided slices (one fused, parallel pass). Its backward
    routes each output gradient to the window's first maximum, as XLA's select-and-scatter
    does, but as a sum of k*k interleaved pads that XLA fuses into one parallel loop: the
    select-and-scatter of autodiff ran single-threaded on XLA:CPU (ResNet50V2's stem: a
    trace, docs/benchmarks.md)."""
    return _pool_taps(x, k, s)[0]


def _max_pool_fwd(x, k, s, hw):
    return _pool_taps(x, k, s)


def _max_pool_bwd(k, s, hw, first, g):
    h, w = hw
    _, ho, wo, _ = g.shape
    zero = jnp.zeros((), g.dtype)
    dx = None
    for t in range(k * k):
        i, j = divmod(t, k)
        part = lax.pad(jnp.where(first == t, g, zero), zero,
                       [(0, 0, 0), (i, h - i - s * (ho - 1) - 1, s - 1),
                        (j, w - j - s * (wo - 1) - 1, s - 1), (0, 0, 0)])
        dx = part if dx is None else dx + part
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool(x, window: int, stride: int):
    return nn.avg_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def global_avg_pool(x):
    """(B, H, W, C) -> (B, C), accumulated in float32 whatever the compute dtype."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def relu6(x):
    return jnp.clip(x, 0.0, 6.0)


_COLLECTIONS = ("params", "batch_stats")


def layer_of(path) -> str:
    """The top-level module (= Keras layer) of a parameter path, with or without its
    collection: ('params', 'block5_conv3', 'kernel') and ('block5_conv3', 'kernel') alike."""
    path = tuple(str(p) for p in path)
    if len(path) > 1 and path[0] in _COLLECTIONS:
        path = path[1:]
    return path[0]
