"""models.common.max_pool (strided slices, own backward) against flax's nn.max_pool:
values and gradients, VALID and SAME, odd sizes, ties, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from bt_jax.models import common as C

CASES = [((2, 9, 9, 3), 3, 2, "VALID"), ((1, 8, 8, 4), 2, 2, "VALID"), ((2, 7, 10, 5), 3, 2, "SAME"),
         ((1, 11, 11, 2), 3, 1, "VALID"), ((1, 6, 9, 3), 3, 2, "SAME")]


def _ref(x, k, s, padding):
    return nn.max_pool(x, (k, k), strides=(s, s), padding=padding)


@pytest.mark.parametrize("shape,k,s,padding", CASES)
def test_values_and_gradients_equal_flax(shape, k, s, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)     # no ties
    y = C.max_pool(x, k, s, padding)
    np.testing.assert_array_equal(y, _ref(x, k, s, padding))
    g = jax.random.normal(jax.random.PRNGKey(1), y.shape)
    ours = jax.vjp(lambda x: C.max_pool(x, k, s, padding), x)[1](g)[0]
    ref = jax.vjp(lambda x: _ref(x, k, s, padding), x)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)   # overlapping windows: summation order
    jitted = jax.jit(jax.grad(lambda x: (C.max_pool(x, k, s, padding) * g).sum()))(x)
    np.testing.assert_allclose(jitted, ref, rtol=0, atol=1e-5)   # overlapping windows: summation order


def test_ties_send_the_gradient_to_one_position_per_window():
    x = jnp.zeros((1, 5, 5, 2))                   # every window ties (ReLU zeros, padding)
    g = jnp.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    dx = jax.vjp(lambda x: C.max_pool(x, 3, 2), x)[1](g)[0]
    assert float(dx.sum()) == float(g.sum())
    # the first tap of each window: rows and columns 0 and 2
    np.testing.assert_array_equal(dx[0, ::2, ::2][:2, :2], g[0])
    assert int((dx != 0).sum()) == g.size


def test_a_window_wider_than_the_input_gives_an_empty_output():
    x = jnp.ones((1, 2, 5, 3))
    assert C.max_pool(x, 3, 2).shape == _ref(x, 3, 2, "VALID").shape == (1, 0, 2, 3)


def test_bfloat16_and_a_bad_padding():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 9, 9, 3)).astype(jnp.bfloat16)
    y = C.max_pool(x, 3, 2, "SAME")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, _ref(x, 3, 2, "SAME"))
    with pytest.raises(ValueError, match="max_pool padding: expected 'VALID' or 'SAME', got 'FULL'"):
        C.max_pool(x, 3, 2, "FULL")
