"""models.common.Conv: its 1x1 convolutions as matmuls ("dot") equal nn.Conv ("conv") in
parameters, values and gradients; larger kernels are nn.Conv itself; whole backbones agree;
the choice is a field of the module, so two settings are two programs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fast_init import random_variables

from bt_jax.models import common as C
from bt_jax.models import registry as R

# (kernel, stride, padding, bias): the backbones' 1x1 (EfficientNet SAME, ResNet/Xception
# strided shortcuts VALID, explicit zero pads) and a 3x3 that must stay a convolution.
CASES = [((1, 1), 1, "SAME", False), ((1, 1), 2, "VALID", True), ((1, 1), 2, "SAME", False),
         ((1, 1), 1, ((0, 0), (0, 0)), True), ((1, 1), (2, 1), "VALID", True),
         ((3, 3), 2, "SAME", True)]


def _run(module, impl, v, x, ct):
    y, pull = jax.vjp(jax.jit(module.clone(pointwise=impl).apply), v, x)
    return (y, *pull(ct))


@pytest.mark.parametrize("kernel,stride,padding,bias", CASES)
def test_dot_equals_conv_in_parameters_values_and_gradients(kernel, stride, padding, bias):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 6))      # odd height, even width
    strides = stride if isinstance(stride, tuple) else (stride, stride)
    ours = C.Conv(5, kernel, strides, padding, use_bias=bias, name="c")
    ref = nn.Conv(5, kernel, strides, padding, use_bias=bias, name="c")
    v = ours.clone(pointwise="dot").init(jax.random.PRNGKey(1), x)
    # same names, shapes and initial values: checkpoints and ported weights load unchanged
    jax.tree.map(np.testing.assert_array_equal, v, ref.init(jax.random.PRNGKey(1), x))
    v = jax.tree.map(lambda a: a + 0.1, v)                          # non-zero bias
    ct = jax.random.normal(jax.random.PRNGKey(2), ref.apply(v, x).shape)
    got, want = _run(ours, "dot", v, x, ct), _run(ours, "conv", v, x, ct)
    assert got[0].shape == ref.apply(v, x).shape
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin,cout", [(3, 8), (8, 3), (5, 5)])   # either operand on the left
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_pointwise_dot_gradients_equal_autodiff_of_the_matmul(cin, cout, dtype, tol):
    """pointwise_dot's own backward (the narrower operand first in the kernel gradient)
    against JAX's rule for jnp.dot: values and both gradients, in the input's dtype."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, (2, 7, 5, cin)).astype(dtype)
    w = jax.random.normal(k2, (cin, cout)).astype(dtype)
    ct = jax.random.normal(k3, (2, 7, 5, cout)).astype(dtype)
    got_y, pull = jax.vjp(jax.jit(C.pointwise_dot), x, w)
    want_y, want_pull = jax.vjp(jnp.dot, x, w)
    got, want = (got_y, *pull(ct)), (want_y, *want_pull(ct))
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=tol, atol=tol * 10)


def test_dot_is_a_matmul_only_for_one_by_one_kernels():
    x = jnp.ones((1, 6, 6, 4))
    hlo = {}
    for kernel in ((1, 1), (3, 3)):
        m = C.Conv(3, kernel, pointwise="dot", name="c")
        v = m.init(jax.random.PRNGKey(0), x)
        hlo[kernel] = jax.jit(m.apply).lower(v, x).as_text()
    assert "convolution" not in hlo[(1, 1)] and "dot_general" in hlo[(1, 1)]
    assert "convolution" in hlo[(3, 3)]
    with pytest.raises(ValueError, match="pointwise impl.*'matmul'"):
        C.Conv(3, (1, 1), pointwise="matmul").init(jax.random.PRNGKey(0), x)


def test_two_settings_are_two_programs():
    """The choice is part of the module, hence of the program: one function jitted with the
    module as a static argument holds one program per setting, each with its own kernels
    (a trace-time switch, not part of jit's key, reused the first setting's program)."""
    x = jnp.ones((2, 6, 6, 4))
    v = C.Conv(3, (1, 1)).init(jax.random.PRNGKey(0), x)
    apply = jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0)
    dot, conv = C.Conv(3, (1, 1), pointwise="dot"), C.Conv(3, (1, 1), pointwise="conv")
    for m in (dot, conv, dot):
        apply(m, v, x)
    assert apply._cache_size() == 2
    text = {m.pointwise: apply.lower(m, v, x).as_text() for m in (dot, conv)}
    assert "convolution" not in text["dot"] and "dot_general" in text["dot"]
    assert "convolution" in text["conv"]
    # a whole backbone built with each setting: two different programs from one spec
    spec = R.get("mobilenet")
    lowered = {impl: jax.jit(spec.make(pointwise=impl).apply).lower(
        random_variables(spec.make(), 32), jnp.ones((1, 32, 32, 3))).as_text()
        for impl in ("dot", "conv")}
    assert lowered["dot"].count("convolution") < lowered["conv"].count("convolution")


def test_bfloat16_computes_in_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 8))
    m = C.Conv(4, (1, 1), dtype=jnp.bfloat16, pointwise="dot", name="c")
    v = m.init(jax.random.PRNGKey(1), x)
    y = jax.jit(m.apply)(v, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), nn.Conv(4, (1, 1)).apply(v, x),
                               rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50v2", "xception"])
def test_backbones_give_the_same_features_either_way(name):
    spec = R.get(name)
    v = random_variables(spec.make(), 96, seed=3)
    x = jax.random.uniform(jax.random.PRNGKey(4), (2, 96, 96, 3))
    out = {}
    for impl in ("dot", "conv"):
        model = spec.make(pointwise=impl)
        out[impl] = np.asarray(jax.jit(lambda v, x, m=model: m.apply(v, x, train=False)[1][
            "pre_logits"])(v, x))
    scale = np.abs(out["conv"]).max()
    np.testing.assert_allclose(out["dot"], out["conv"], rtol=1e-4, atol=1e-4 * scale)

