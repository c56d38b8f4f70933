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

import functools
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


def _taps(x, kh, kw, strides, out_hw):
    """(i, j, x[:, i::sh, j::sw, :] cut to out_hw) for every kernel tap."""
    (sh, sw), (ho, wo) = strides, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, lax.slice(x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1,
                                                    j + (wo - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1))


def _acc_type(dtype):
    # At least float32: a bfloat16 sum of 25 taps would lose bits that the conv keeps.
    return jnp.promote_types(dtype, jnp.float32)


def _shift(x, w, strides):
    """VALID depthwise conv of padded x (B, H, W, C) with w (kh, kw, C) as kh*kw multiply-adds."""
    (kh, kw, _), (sh, sw) = w.shape, strides
    out_hw = ((x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1)
    acc_t = _acc_type(x.dtype)
    acc = None
    for i, j, tap in _taps(x, kh, kw, strides, out_hw):
        term = tap.astype(acc_t) * w[i, j].astype(acc_t)
        acc = term if acc is None else acc + term
    return acc.astype(x.dtype)


def _pad(x, pads):
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def _input_grad(g, w, x_shape, strides, pads):
    """d/dx: the cotangent, dilated by the stride and padded, correlated with the flipped kernel."""
    import os
    if os.environ.get("DW_DX") == "autodiff":
        return jax.vjp(lambda x: _shift(_pad(x, pads), w, strides), jnp.zeros(x_shape, g.dtype))[1](g)[0]
    kh, kw, _ = w.shape
    cfg = [(0, 0, 0), (0, 0, 0)]
    for d, (k, s, (lo, _)) in enumerate(zip((kh, kw), strides, pads)):
        n, m = x_shape[1 + d], g.shape[1 + d]
        cfg.insert(1 + d, (k - 1 - lo, n + lo - (m - 1) * s - 1, s - 1))
    gp = lax.pad(g, jnp.zeros((), g.dtype), cfg)
    return _shift(gp, w[::-1, ::-1], (1, 1))


def _kernel_grad(xp, g, kh, kw, strides, block: int = 1 << 17):
    """d/dw (kh, kw, C): per tap and channel, the sum of g * tap over batch and positions.

    One reduction per tap over the whole batch streams the input from memory kh*kw times;
    a scan over blocks of (images, rows) of about `block` elements keeps each block in
    cache for all taps (3-5x faster on a 2-core CPU)."""
    b, ho, wo, c = g.shape
    sh = strides[0]
    img = ho * wo * c
    if img <= block:
        nb_img, rows = max(d for d in range(1, b + 1) if b % d == 0 and d * img <= block), ho
    else:
        nb_img, rows = 1, max(d for d in range(1, ho + 1) if ho % d == 0 and (d == 1 or d * wo * c <= block))
    per_img = ho // rows
    acc_t = _acc_type(g.dtype)

    def body(acc, idx):
        bi, r = (idx // per_img) * nb_img, (idx % per_img) * rows
        xs = lax.dynamic_slice(xp, (bi, r * sh, 0, 0), (nb_img, (rows - 1) * sh + kh, xp.shape[2], c))
        gs = lax.dynamic_slice(g, (bi, r, 0, 0), (nb_img, rows, wo, c)).astype(acc_t)
        part = [jnp.sum(tap.astype(acc_t) * gs, axis=(0, 1, 2))
                for _, _, tap in _taps(xs, kh, kw, strides, (rows, wo))]
        return acc + jnp.stack(part), None

    acc, _ = lax.scan(body, jnp.zeros((kh * kw, c), acc_t), jnp.arange(b // nb_img * per_img))
    return acc.reshape(kh, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_conv(x, w, strides, pads):
    """Depthwise conv of x with w (kh, kw, C) by shifts; its backward is shifts and reductions too
    (autodiff's backward of the slices is several times slower on CPU)."""
    return _shift(_pad(x, pads), w, strides)


def _shift_conv_fwd(x, w, strides, pads):
    return _shift_conv(x, w, strides, pads), (x, w)


def _shift_conv_bwd(strides, pads, res, g):
    x, w = res
    dx = _input_grad(g, w, x.shape, strides, pads)
    dw = _kernel_grad(_pad(x, pads), g, w.shape[0], w.shape[1], strides)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


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
    import os
    if os.environ.get("DW_VJP") == "autodiff":
        return _shift(_pad(x, pads), kernel[:, :, 0, :], strides)
    return _shift_conv(x, kernel[:, :, 0, :], strides, pads)


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
