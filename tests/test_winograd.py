"""winograd_conv equals lax.conv (3x3, stride 1) in values and both gradients over VGG19- and
ResNet50V2-like shapes (reduced batch and size), odd sizes, both paddings and bfloat16."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bt_jax.models import winograd
from bt_jax.models.winograd import choose, transform_kernel, winograd_conv

# Max |ours - ref| / max |ref|, float32 (ref at HIGHEST precision). Measured over the cases
# below (2026-12-06, 2-core VM): F(2x2) <= 1.4e-6 values and gradients; F(4x4) <= 8.3e-6
# values, 6.4e-6 input and 3.3e-6 kernel gradients (coefficients up to 8 and 1/24). ~6x.
TOL = {2: 1e-5, 4: 5e-5}
# bfloat16 in and out (float32 inside): the output's rounding dominates; measured 2.9e-3
# for both m, the same as lax.conv run in bfloat16.
TOL_BF16 = 1e-2

# (batch, H, W, Cin, Cout), padding: VGG19's and ResNet50V2's 3x3 layers with smaller
# spatial size and batch; 7, 15 and 9x13 leave ragged tiles for both m; Cin=3 is VGG's
# first layer; the other paddings on the small widths only (compiles dominate the time).
CASES = [
    ((1, 14, 14, 64, 128), "SAME"),
    ((2, 15, 15, 128, 128), "SAME"),
    ((1, 7, 7, 512, 512), "SAME"),
    ((1, 9, 13, 3, 64), "VALID"),
    ((2, 7, 9, 16, 24), ((0, 1), (2, 1))),
]


def _conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, precision=lax.Precision.HIGHEST,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grads(m, padding, x, w, ct):
    """(y, dx, dw) of winograd_conv (m) or lax.conv (m=0) pulled back along ct."""
    f = (lambda x, w: _conv(x, w, padding)) if m == 0 else \
        (lambda x, w: winograd_conv(x, w, padding, m))
    y, pull = jax.vjp(f, x, w)
    return (y, *pull(ct))


def _rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _inputs(shape, padding, dtype=jnp.float32, seed=0):
    n, h, w, ci, co = shape
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (n, h, w, ci), dtype)
    k = (jax.random.normal(kw, (3, 3, ci, co)) * (2.0 / (9 * ci)) ** 0.5).astype(dtype)
    out = jax.eval_shape(lambda: _conv(x, k, padding)).shape
    return x, k, jax.random.normal(kc, out, dtype)


def _errors(shape, padding, m) -> dict:
    x, w, ct = _inputs(shape, padding)
    ref = _value_and_grads(0, padding, x, w, ct)
    ours = _value_and_grads(m, padding, x, w, ct)
    return {name: _rel(a, b) for name, a, b in zip(("y", "dx", "dw"), ours, ref)}


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape,padding", CASES)
def test_values_and_gradients_match_lax_conv(shape, padding, m):
    for name, err in _errors(shape, padding, m).items():
        assert err <= TOL[m], f"{shape} {padding} F({m}) {name}: rel err {err:.2g} > {TOL[m]}"


@pytest.mark.parametrize("m", [2, 4])
def test_bfloat16(m):
    shape, padding = (1, 15, 15, 64, 64), "SAME"
    x, w, ct = _inputs(shape, padding, jnp.bfloat16)
    ours = _value_and_grads(m, padding, x, w, ct)
    ref = _value_and_grads(0, padding, *(a.astype(jnp.float32) for a in (x, w, ct)))
    assert all(a.dtype == jnp.bfloat16 for a in ours)
    for name, a, b in zip(("y", "dx", "dw"), ours, ref):
        err = _rel(a.astype(jnp.float32), b)
        assert err <= TOL_BF16, f"bfloat16 F({m}) {name}: rel err {err:.2g} > {TOL_BF16}"


def test_kernel_transform_is_linear_in_the_hwio_kernel():
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5))
    assert transform_kernel(w, 2).shape == (16, 4, 5)
    assert transform_kernel(w, 4).shape == (36, 4, 5)
    np.testing.assert_allclose(transform_kernel(2 * w, 4), 2 * transform_kernel(w, 4), rtol=1e-6)


def test_f4_first_pass_is_kept_in_memory_and_exact():
    """F(4x4) divides its first pass by a runtime 1.0 so that XLA:CPU writes it out instead
    of recomputing it in each of the 36 second-pass outputs: bit-identical values, no
    gradient into the kernel through the 1.0, and the divide survives compilation (F(2x2),
    tuned without it, has none)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    grid = [[x[:, i:i + 4, j:j + 4] for j in range(6)] for i in range(6)]
    bt = winograd._MATRICES[4][0]
    kept = winograd._transform2d(bt, grid, winograd._runtime_one(w))
    fused = winograd._transform2d(bt, grid)
    for row_a, row_b in zip(kept, fused):
        for a, b in zip(row_a, row_b):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.grad(lambda k: winograd._runtime_one(k))(w), 0)
    compiled = {m: jax.jit(functools.partial(winograd_conv, m=m)).lower(x, w).compile().as_text()
                for m in (2, 4)}
    assert " divide(" in compiled[4] and " divide(" not in compiled[2]


def test_rejects_what_it_does_not_compute():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="tile"):
        winograd_conv(x, jnp.zeros((3, 3, 4, 4)), "SAME", m=3)
    with pytest.raises(ValueError, match="kernel"):
        winograd_conv(x, jnp.zeros((5, 5, 4, 4)), "SAME")
    with pytest.raises(ValueError, match="padding"):
        winograd_conv(x, jnp.zeros((3, 3, 4, 4)), "FULL")


def test_choose():
    cpu = functools.partial(choose, backend="cpu")
    # Not a 3x3 stride-1 conv, or not a CPU: XLA's own.
    assert cpu((32, 56, 56, 64), (1, 1, 64, 256)) == "xla"
    assert cpu((32, 56, 56, 256), (3, 3, 256, 256), strides=(2, 2)) == "xla"
    assert choose((32, 28, 28, 512), (3, 3, 512, 512), backend="gpu") == "xla"
    # VGG's first layer (3 input channels) and ResNet's 7x7 stage: XLA, always.
    for train in (False, True):
        assert cpu((32, 224, 224, 3), (3, 3, 3, 64), train=train) == "xla"
        assert cpu((32, 7, 7, 512), (3, 3, 512, 512), train=train) == "xla"
    # Inference: F(4x4) on wide mid-size maps, F(2x2) at 14 px, XLA on narrow inputs.
    assert cpu((32, 224, 224, 64), (3, 3, 64, 64)) == "xla"
    assert cpu((32, 28, 28, 512), (3, 3, 512, 512)) == "winograd4"
    assert cpu((32, 14, 14, 256), (3, 3, 256, 256)) == "winograd2"
    # Training: F(2x2) wherever the layer is wide enough, ResNet's 56 px 64-channel conv too
    # (measured in the whole step), 64 channels below 56 px not.
    assert cpu((16, 224, 224, 64), (3, 3, 64, 64), train=True) == "winograd2"
    assert cpu((16, 28, 28, 512), (3, 3, 512, 512), train=True) == "winograd2"
    assert cpu((16, 56, 56, 64), (3, 3, 64, 64), train=True) == "winograd2"
    assert cpu((16, 56, 56, 64), (3, 3, 64, 64)) == "xla"
    assert cpu((16, 28, 28, 64), (3, 3, 64, 64), train=True) == "xla"
