"""Depthwise 2-D convolution that is fast on XLA:CPU, with nn.Conv's parameters.

    y = DepthwiseConv((3, 3), strides=(2, 2), padding="SAME", name="block2a_dwconv")(x)
    y = depthwise_conv(x, kernel, (1, 1), ((1, 1), (1, 1)), impl="shift")   # kernel (kh, kw, 1, C)

XLA:CPU lowers `feature_group_count=C` convolutions to a slow generic kernel (jax#23713,
jax#13800). A depthwise conv is a sum over kernel taps of a strided slice of the padded
input times a per-channel weight; written that way ("shift") XLA fuses it into one
vectorised loop over channels. Inference never builds the padded copy (border regions
simply have fewer taps: `_shift`); training keeps one for the kernel gradient.
GPUs and TPUs have good grouped-conv kernels ("conv").
`impl="auto"` picks shift on CPU and conv elsewhere (`jax.default_backend()`).
The shift form has a custom backward, also shifts (gradients equal the conv's to ~1e-6).
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


def _tap_segments(n_in: int, n_out: int, k: int, s: int, lo: int):
    """[(first output, stop output, taps in range)] along one axis: output o of tap t reads
    input t - lo + s*o; near the borders some taps fall on the zero padding, and outputs
    with the same in-range taps form one segment (3 for a 3x3 SAME conv, 5 for 5x5)."""
    segs = []
    for o in range(n_out):
        taps = tuple(t for t in range(k) if 0 <= t - lo + s * o < n_in)
        if segs and segs[-1][2] == taps:
            segs[-1][1] = o + 1
        else:
            segs.append([o, o + 1, taps])
    return segs


def _shift(x, w, strides, pads=((0, 0), (0, 0))):
    """Depthwise conv of x (B, H, W, C) with w (kh, kw, C), zero-padded by pads, as
    multiply-adds of strided slices.

    The padding is never materialised: the output is cut into regions whose taps all fall
    inside x (the interior: every tap; border rows and columns: fewer), each a sum of
    slices of x, concatenated. XLA can fuse the lot, with the activation that produced x,
    into one pass; a padded copy of x first is a whole extra pass over the block's widest
    tensor (measured per layer: docs/benchmarks.md, "Depthwise layers without a padded
    copy")."""
    (kh, kw, _), (sh, sw) = w.shape, strides
    b, h, wd, c = x.shape
    ho, wo = (h + sum(pads[0]) - kh) // sh + 1, (wd + sum(pads[1]) - kw) // sw + 1
    acc_t = _acc_type(x.dtype)
    rows = []
    for o0, o1, ti in _tap_segments(h, ho, kh, sh, pads[0][0]):
        cols = []
        for p0, p1, tj in _tap_segments(wd, wo, kw, sw, pads[1][0]):
            acc = None
            for i in ti:
                for j in tj:
                    r, q = i - pads[0][0] + sh * o0, j - pads[1][0] + sw * p0
                    stop = (b, r + sh * (o1 - o0 - 1) + 1, q + sw * (p1 - p0 - 1) + 1, c)
                    tap = lax.slice(x, (0, r, q, 0), stop, (1, sh, sw, 1))
                    term = tap.astype(acc_t) * w[i, j].astype(acc_t)
                    acc = term if acc is None else acc + term
            cols.append(jnp.zeros((b, o1 - o0, p1 - p0, c), acc_t) if acc is None else acc)
        rows.append(jnp.concatenate(cols, axis=2))
    return jnp.concatenate(rows, axis=1).astype(x.dtype)


def _pad(x, pads):
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def _input_grad(g, w, x_shape, strides, pads):
    """d/dx: per stride phase, the cotangent padded and correlated with that phase's flipped taps.

    Padded-input position q*s + phase receives g[q - m] * w[phase + m*s] over m, a stride-1
    correlation with every s-th tap; the phases are interleaved and the padding cut off.
    (Autodiff's backward of the strided slices, a sum of kh*kw padded copies, is about 2x
    slower over Lite0's layers on CPU; stride 1 is the one phase, no interleave.)"""
    (_, _, c), (sh, sw) = w.shape, strides
    b, ho, wo, _ = g.shape
    hp, wp = x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1])
    qh, qw = -(-hp // sh), -(-wp // sw)
    phases = []
    for ph in range(sh):
        for pw in range(sw):
            sub = w[ph::sh, pw::sw][::-1, ::-1]
            if sub.size == 0:          # a phase without taps (kernel smaller than the stride)
                phases.append(jnp.zeros((b, qh, qw, c), g.dtype))
                continue
            mh, mw = sub.shape[:2]
            gp = lax.pad(g, jnp.zeros((), g.dtype),
                         [(0, 0, 0), (mh - 1, qh - ho, 0), (mw - 1, qw - wo, 0), (0, 0, 0)])
            phases.append(_shift(gp, sub, (1, 1)))
    if sh * sw == 1:
        dxp = phases[0]
    else:       # (sh, sw, B, qh, qw, C) -> (B, qh, sh, qw, sw, C) -> (B, qh*sh, qw*sw, C)
        dxp = jnp.stack(phases).reshape(sh, sw, b, qh, qw, c).transpose(2, 3, 0, 4, 1, 5)
        dxp = dxp.reshape(b, qh * sh, qw * sw, c)
    (top, _), (left, _) = pads
    return dxp[:, top:top + x_shape[1], left:left + x_shape[2]]


def _kernel_grad(xp, g, kh, kw, strides, block: int = 1 << 14):
    """d/dw (kh, kw, C): per tap and channel, the sum of g * tap over batch and positions.

    XLA:CPU reduces a (B, H, W, C) product to (C,) slowly, and one reduction per tap streams
    the input from memory kh*kw times. Instead a scan over output rows (of a few images at
    once, about `block` elements) adds each tap's products into its own (images, W, C)
    accumulator, elementwise, in cache; one small reduction at the end. Over Lite0's layers
    on a 2-core CPU that is several times faster than per-tap reductions (autodiff's)."""
    b, ho, wo, c = g.shape
    sh = strides[0]
    nb = max([d for d in range(1, b + 1) if b % d == 0 and d * wo * c <= block], default=1)
    acc_t = _acc_type(g.dtype)

    def body(acc, idx):
        bi, r = (idx // ho) * nb, idx % ho
        xs = lax.dynamic_slice(xp, (bi, r * sh, 0, 0), (nb, kh, xp.shape[2], c)).astype(acc_t)
        gs = lax.dynamic_slice(g, (bi, r, 0, 0), (nb, 1, wo, c))[:, 0].astype(acc_t)
        return tuple(a + tap[:, 0] * gs for a, (_, _, tap) in
                     zip(acc, _taps(xs, kh, kw, strides, (1, wo)))), None

    zeros = tuple(jnp.zeros((nb, wo, c), acc_t) for _ in range(kh * kw))
    acc, _ = lax.scan(body, zeros, jnp.arange(b // nb * ho))
    return jnp.stack([a.sum((0, 1)) for a in acc]).reshape(kh, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_conv(x, w, strides, pads):
    """Depthwise conv of x with w (kh, kw, C) by shifts. Its backward is shifts too (below):
    with autodiff's, a Lite0 training step on CPU was slower (bench/bench_backbones.py
    --train-step). No forward-mode (jvp)."""
    return _shift(x, w, strides, pads)


def _shift_conv_fwd(x, w, strides, pads):
    # Under differentiation the padded input is materialised once and kept for the kernel
    # gradient: the residual is needed anyway, and the padding-free regions of the
    # inference path made a Lite0 training step ~6% slower.
    xp = _pad(x, pads)
    return _shift(xp, w, strides), (xp, w)


def _shift_conv_bwd(strides, pads, res, g):
    xp, w = res
    (top, bottom), (left, right) = pads
    x_shape = (xp.shape[0], xp.shape[1] - top - bottom, xp.shape[2] - left - right, xp.shape[3])
    dx = _input_grad(g, w, x_shape, strides, pads)
    dw = _kernel_grad(xp, g, w.shape[0], w.shape[1], strides)
    return dx.astype(xp.dtype), dw.astype(w.dtype)


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)
# Jitted so that eager (op-by-op) callers get one compiled op, not kh*kw slices dispatched one
# by one; inside an outer jit it is inlined.
_shift_conv_jit = jax.jit(_shift_conv, static_argnums=(2, 3))


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
    return _shift_conv_jit(x, kernel[:, :, 0, :], strides, pads)


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
