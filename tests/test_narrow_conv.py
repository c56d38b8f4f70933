"""models.narrow_conv (the 7x7 RGB stems' kernel gradient by per-image matmuls) against
lax.conv's autodiff, and which layers of common.Conv take it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.models import common as C
from bt_jax.models import narrow_conv as narrow_module
from bt_jax.models.narrow_conv import narrow_conv

DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("shape,k,strides,pads,dtype,tol", [
    ((2, 29, 29, 3), 7, (2, 2), ((3, 3), (3, 3)), jnp.float32, 1e-5),
    ((3, 12, 15, 1), 5, (1, 1), ((2, 2), (2, 2)), jnp.float32, 1e-5),
    ((2, 16, 16, 4), 7, (2, 2), ((2, 3), (2, 3)), jnp.float32, 1e-5),
    ((2, 29, 29, 3), 7, (2, 2), ((3, 3), (3, 3)), jnp.bfloat16, 2e-2),
])
def test_values_and_both_gradients_equal_lax_conv(shape, k, strides, pads, dtype, tol):
    x = jax.random.normal(jax.random.PRNGKey(0), shape).astype(dtype)
    w = (jax.random.normal(jax.random.PRNGKey(1), (k, k, shape[-1], 8)) * 0.1).astype(dtype)

    def ref(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DIMS)
    y = narrow_conv(x, w, strides, pads)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref(x, w), np.float32))
    g = jax.random.normal(jax.random.PRNGKey(2), y.shape).astype(dtype)
    ours = jax.jit(lambda x, w: jax.vjp(lambda x, w: narrow_conv(x, w, strides, pads), x, w)[1](g))(x, w)
    theirs = jax.vjp(ref, x, w)[1](g)
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max())


def test_only_wide_kernels_on_few_channels_take_it(monkeypatch):
    calls = []
    monkeypatch.setattr(narrow_module, "narrow_conv",
                        lambda *a: calls.append(a) or narrow_conv(*a))

    def _uses_narrow(conv, shape):
        calls.clear()
        conv.init(jax.random.PRNGKey(0), jnp.ones(shape))
        return bool(calls)

    stem = C.conv(64, 7, 2, name="conv1_conv", dtype=jnp.float32)
    assert _uses_narrow(stem, (1, 21, 21, 3))
    assert not _uses_narrow(stem, (1, 21, 21, 16))                     # many channels
    assert not _uses_narrow(C.conv(8, 3, 2, name="c", dtype=jnp.float32), (1, 9, 9, 3))
    same = C.Conv(8, (5, 5), padding="SAME")
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 11, 11, 3))
    v = same.init(jax.random.PRNGKey(4), x)
    np.testing.assert_allclose(same.apply(v, x), nn.Conv(8, (5, 5), padding="SAME").apply(v, x),
                               atol=1e-5)
