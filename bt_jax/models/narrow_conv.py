"""Wide-kernel convolutions of few input channels (7x7 stems: RGB in), with a faster kernel
gradient.

    y = narrow_conv(x, kernel, strides=(2, 2), pads=((3, 3), (3, 3)))   # == lax.conv

The forward is lax.conv. The kernel gradient of a 3-channel stem is a reduction over every
output position of the batch into a small (kh*kw*3, Cout) matrix; XLA:CPU's convolution
kernel parallelises that poorly (ResNet50V2's 7x7 stem, by a trace: docs/benchmarks.md,
"The 7x7 stem's kernel gradient"). Here it is one matmul per image over that image's patches (im2col: kh*kw*Cin
values per position) and a sum over images: a batched
matmul that both cores share. `common.Conv` sends 5x5-and-wider kernels on up to
`MAX_CHANNELS` inputs here (its `_narrow`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

MAX_CHANNELS = 4       # inputs up to this many channels take this path (RGB, RGBA)
_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, strides, pads, precision):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMS,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def narrow_conv(x, kernel, strides, pads, precision=None):
    """lax.conv_general_dilated(x, kernel, strides, pads) for NHWC x and an HWIO kernel;
    pads: ((top, bottom), (left, right))."""
    return _conv(x, kernel, strides, pads, precision)


def _fwd(x, kernel, strides, pads, precision):
    return _conv(x, kernel, strides, pads, precision), (x, kernel)


def _bwd(strides, pads, precision, res, g):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = g.shape
    (sh, sw) = strides
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
    taps = [lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=-1).reshape(n, ho * wo, kh * kw * cin)
    # (images, Cout, patch) per image, the output gradient on the left: the faster order
    per_image = lax.dot_general(g.reshape(n, ho * wo, cout), patches, (((1,), (1,)), ((0,), (0,))),
                                precision=precision)
    dk = per_image.sum(0).T.reshape(kh, kw, cin, cout)
    dx = jax.vjp(lambda x: _conv(x, kernel, strides, pads, precision), x)[1](g)[0]
    return dx, dk.astype(kernel.dtype)


narrow_conv.defvjp(_fwd, _bwd)
