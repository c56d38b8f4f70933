"""Depthwise 2-D convolution that is fast on XLA:CPU, with nn.Conv's parameters.

    y = DepthwiseConv((3, 3), strides=(2, 2), padding="SAME", name="block2a_dwconv")(x)
    y = depthwise_conv(x, kernel, (1, 1), ((1, 1), (1, 1)), impl="shift")   # kernel (kh, kw, 1, C)

XLA:CPU lowers `feature_group_count=C` convolutions to a slow generic kernel (jax#23713,
jax#13800). A depthwise conv is a sum over kernel taps of a strided slice of the padded
input times a per-channel weight; written that way ("shift") XLA fuses it into one
vectorised loop over channels. GPUs and TPUs have good grouped-conv kernels ("conv").
`impl="auto"` picks shift on CPU and conv elsewhere (`jax.default_backend()`).
The parameters are nn.Conv's (`kernel` (kh, kw, 1, C), optional `bias`, same initialisers),
so ported weights and checkpoints of `nn.Conv(..., feature_group_count=C)` load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "shift", "conv")
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: str) -> str:
    """'shift' or 'conv' for `impl` on the current default backend."""
    if impl not in IMPLS:
        raise ValueError(f"depthwise impl: expected one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shift" if jax.default_backend() == "cpu" else "conv"
    return impl


def _pads(padding, in_hw, window, strides) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, window, strides, padding))
    if isinstance(padding, int):
        return ((padding, padding),) * 2
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _shift(x, w, strides):
    """VALID depthwise conv of padded x (B, H, W, C) with w (kh, kw, C) as kh*kw multiply-adds.

    Accumulates in float32 at least (a bfloat16 sum of 25 taps would lose bits the conv keeps)."""
    (kh, kw, _), (sh, sw) = w.shape, strides
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    acc_t = jnp.promote_types(x.dtype, jnp.float32)
    acc = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1,
                                              j + (wo - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1))
            term = tap.astype(acc_t) * w[i, j].astype(acc_t)
            acc = term if acc is None else acc + term
    return acc.astype(x.dtype)


def depthwise_conv(x, kernel, strides: Sequence[int] = (1, 1),
                   padding: Any = "SAME", *, impl: str = "auto"):
    """Depthwise conv of x (B, H, W, C) with an nn.Conv-shaped kernel (kh, kw, 1, C).

    padding: "SAME" | "VALID" | int | ((top, bottom), (left, right)), as nn.Conv takes it."""
    kh, kw, one, c = kernel.shape
    if one != 1 or c != x.shape[-1]:
        raise ValueError(f"depthwise kernel {kernel.shape} does not fit input channels {x.shape[-1]}")
    strides = tuple(strides)
    pads = _pads(padding, x.shape[1:3], (kh, kw), strides)
    if resolve_impl(impl) == "conv":
        return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMS,
                                        feature_group_count=c)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return _shift(x, kernel[:, :, 0, :], strides)


class DepthwiseConv(nn.Module):
    """nn.Conv(C, kernel_size, feature_group_count=C) with a choice of implementation.

    The channel count comes from the input; `impl` is "auto" | "shift" | "conv"."""
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.linear.default_kernel_init
    bias_init: Any = nn.initializers.zeros_init()
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, c), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = depthwise_conv(x, kernel, self.strides, self.padding, impl=self.impl)
        return y if bias is None else y + bias
