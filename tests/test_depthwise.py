"""DepthwiseConv: "shift" equals "conv" (= nn.Conv with feature_group_count=C) in values and
gradients for every padding the backbones use, and swapping it in left the parameters alone."""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bt_jax.config import ConfigError, base_config, validate
from bt_jax.models import registry as R
from bt_jax.models.depthwise import DepthwiseConv, depthwise_conv, resolve_impl

# SAME (EfficientNet, Xception), VALID after Keras' ZeroPadding2D (MobileNet), explicit pairs.
PADDINGS = ["SAME", "VALID", ((1, 1), (1, 1)), ((0, 1), (0, 1))]


def _vjp(impl, x, w, stride, padding, ct):
    """(plain forward, forward under vjp, dx, dw): inference and training run different
    forwards (training keeps a padded copy of x for the kernel gradient)."""
    def f(x, w):
        return depthwise_conv(x, w, (stride, stride), padding, impl=impl)
    y, pull = jax.vjp(f, x, w)
    return (f(x, w), y, *pull(ct))


def _assert_shift_matches_conv(shape, kernel, stride, padding, key):
    """shift == conv for the plain forward, the forward under vjp and both gradients."""
    kx, kw, kc = jax.random.split(key, 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (kernel, kernel, 1, shape[-1]))
    ct = jax.random.normal(kc, depthwise_conv(x, w, (stride, stride), padding, impl="conv").shape)
    f = jax.jit(_vjp, static_argnums=(0, 3, 4))   # as the models run it (eager compiles per op)
    pad = padding if isinstance(padding, str) else tuple(padding)
    got, ref = f("shift", x, w, stride, pad, ct), f("conv", x, w, stride, pad, ct)
    for name, a, b in zip(("y", "y_vjp", "dx", "dw"), got, ref):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


# Explicit pads come with 3x3 kernels only (MobileNet); SAME and VALID with 3x3 and 5x5.
CASES = [(k, s, p) for k in (3, 5) for s in (1, 2) for p in (PADDINGS if k == 3 else PADDINGS[:2])]


@pytest.mark.parametrize("kernel,stride,padding", CASES, ids=[f"k{k}s{s}-{p}" for k, s, p in CASES])
def test_shift_matches_conv_values_and_gradients(kernel, stride, padding):
    _assert_shift_matches_conv((2, 9, 8, 6), kernel, stride, padding,   # odd height, even width
                               jax.random.PRNGKey(kernel * 10 + stride))


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((1, 2, 3, 4), 5, 1, "SAME"),                  # kernel larger than the input
    ((1, 3, 2, 4), 5, 2, "SAME"),
    ((1, 4, 5, 4), 3, 1, ((3, 2), (0, 4))),       # rows/columns that read only padding
], ids=["k5-on-2x3", "k5s2-on-3x2", "padding-only-rows"])
def test_shift_matches_conv_at_the_borders(shape, kernel, stride, padding):
    """The padding-free forward cuts the output into border and interior regions; tiny
    inputs and wide explicit pads give regions with few taps or none."""
    _assert_shift_matches_conv(shape, kernel, stride, padding, jax.random.PRNGKey(0))


def test_module_is_nn_conv_with_groups_bias_and_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 4))
    ours = DepthwiseConv((3, 3), (2, 2), "SAME", use_bias=True, impl="shift", name="dw")
    theirs = nn.Conv(4, (3, 3), (2, 2), "SAME", use_bias=True, feature_group_count=4, name="dw")
    v = ours.init(jax.random.PRNGKey(1), x)
    v_ref = theirs.init(jax.random.PRNGKey(1), x)
    # same names, shapes and initial values: a drop-in for checkpoints and random inits alike
    jax.tree.map(np.testing.assert_array_equal, v, v_ref)
    v = jax.tree.map(lambda a: a + 0.1, v)        # non-zero bias
    np.testing.assert_allclose(jax.jit(ours.apply)(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-6)
    bf = jax.jit(ours.clone(dtype=jnp.bfloat16).apply)(v, x)
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf, np.float32), theirs.apply(v, x), rtol=0.05, atol=0.05)


def test_auto_and_unknown_impl():
    assert resolve_impl("auto") == ("shift" if jax.default_backend() == "cpu" else "conv")
    with pytest.raises(ValueError, match="bogus"):
        resolve_impl("bogus")
    c = base_config()
    c.model.depthwise = "bogus"
    with pytest.raises(ConfigError, match="model.depthwise"):
        validate(c)


@pytest.mark.parametrize("name,size", [("efficientnet_lite0", 32), ("efficientnetb0", 32),
                                       ("efficientnet_lite2", 32), ("mobilenet", 32),
                                       ("xception", 71)])
def test_backbone_parameters_do_not_depend_on_impl(name, size):
    spec = R.get(name)
    x = jnp.zeros((1, size, size, 3))
    trees = {}
    for impl in ("shift", "conv"):
        model = spec.make(include_top=True, depthwise=impl)
        shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
        trees[impl] = {k: (v.shape, v.dtype) for k, v in traverse_util.flatten_dict(shapes).items()}
    assert trees["shift"] == trees["conv"]
    dw = {k: s for k, (s, _) in trees["shift"].items() if re.search(r"(_dwconv|conv_dw_\d+|_dw)$", k[1])}
    assert dw and all(k[-1] == "kernel" and s[2] == 1 and s[0] == s[1] for k, s in dw.items())
