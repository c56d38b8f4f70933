"""The backbones' `conv3x3` field (common.Conv, models/winograd.py): forcing XLA, F(2x2) or
F(4x4) changes neither the parameters nor, beyond rounding, the outputs and gradients;
"auto" picks Winograd on CPU by layer shape and mode; config.model.conv3x3 is checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.config import ConfigError, base_config, validate
from bt_jax.models import common as C
from bt_jax.models import registry, winograd

IMPLS = ("xla", "winograd2", "winograd4")
# max |ours - xla| / max |xla| over a whole backbone (16 Winograd layers in a row), per
# leaf; measured for ResNet50V2 at 48 px <= 4e-6 (2026-12-06, 2-core VM).
TOL = {"winograd2": 1e-4, "winograd4": 1e-4}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _fwd_bwd(name: str, impl: str, size: int, train: bool):
    """(features, d loss / d params, d loss / d x) of backbone `name` with conv3x3=impl."""
    model = registry.get(name).make(conv3x3=impl)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, 3))
    variables = jax.jit(lambda r: model.init(r, x[:1], train=False))(jax.random.PRNGKey(0))
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss(p, x):
        if train and rest:
            (_, out), _ = model.apply({"params": p, **rest}, x, train=True, mutable=["batch_stats"])
        else:
            _, out = model.apply({"params": p, **rest}, x, train=train)
        f = out["features"]
        return jnp.sum(f * jnp.cos(jnp.arange(f.size, dtype=f.dtype).reshape(f.shape))), f

    (_, f), (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return f, gp, gx


# Inference mode: training-mode BatchNorm over batch 2 on 1-3 px maps amplifies rounding
# (measured 2e-4 in the features, and the gradients of conv biases ahead of a BatchNorm
# are zero up to noise), which would test BatchNorm rather than the convolutions.
@pytest.mark.parametrize("name,size,train", [("vgg19", 32, False), ("resnet50v2", 48, False)])
def test_backbone_outputs_and_gradients_agree(name, size, train):
    ref = _fwd_bwd(name, "xla", size, train)
    for impl in IMPLS[1:]:
        got = _fwd_bwd(name, impl, size, train)
        assert _rel(got[0], ref[0]) < TOL[impl], (impl, "features", _rel(got[0], ref[0]))
        assert _rel(got[2], ref[2]) < TOL[impl], (impl, "d/dx", _rel(got[2], ref[2]))
        grads = zip(jax.tree.leaves(got[1]), jax.tree.leaves(ref[1]), strict=True)
        worst = max(_rel(a, b) for a, b in grads)
        assert worst < TOL[impl], (impl, "d/dparams", worst)


def test_same_parameters_whatever_the_impl():
    shapes = {impl: jax.eval_shape(
        lambda m=registry.get("resnet50v2").make(conv3x3=impl): m.init(
            jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))) for impl in IMPLS + ("auto",)}
    want = jax.tree.map(lambda s: (s.shape, s.dtype), shapes["xla"])
    for impl, tree in shapes.items():
        assert jax.tree.map(lambda s: (s.shape, s.dtype), tree) == want, impl


def _convolutions(model, train: bool, size: int = 224) -> list[str]:
    """The convolution ops of model.apply's lowered program (no compile)."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape)))
    text = jax.jit(lambda v, x: model.apply(v, x, train=train)).lower(v, x).as_text()
    return [line for line in text.splitlines() if "stablehlo.convolution" in line]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' means XLA off CPU")
def test_auto_picks_winograd_for_vgg19_on_cpu():
    spec = registry.get("vgg19")
    assert len(_convolutions(spec.make(conv3x3="xla"), False)) == 16
    infer = _convolutions(spec.make(), False)
    train = _convolutions(spec.make(), True)
    assert 0 < len(infer) < 16 and 0 < len(train) < 16
    assert infer != train          # the inference and the training rule are two programs
    # block3_conv2: 56 px, 256 -> 256
    assert winograd.choose((1, 56, 56, 256), (3, 3, 256, 256), train=False) == "winograd4"
    assert winograd.choose((1, 56, 56, 256), (3, 3, 256, 256), train=True) == "winograd2"


def test_forced_winograd_leaves_other_convs_to_xla():
    x = jnp.ones((1, 8, 8, 4))
    for kernel, strides in (((3, 3), (2, 2)), ((1, 3), (1, 1)), ((5, 5), (1, 1))):
        m = C.Conv(4, kernel, strides=strides, padding="SAME", conv3x3="winograd4")
        v = m.init(jax.random.PRNGKey(0), x)
        ref = m.clone(conv3x3="xla").apply(v, x)
        np.testing.assert_array_equal(m.apply(v, x), ref)


def test_unknown_impl_is_a_one_line_error():
    with pytest.raises(ValueError, match="conv3x3 impl.*'bogus'"):
        C.Conv(3, (3, 3), conv3x3="bogus").init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 2)))
    c = base_config()
    c.model.conv3x3 = "winograd3"
    with pytest.raises(ConfigError, match=r"^config\.model\.conv3x3: .*winograd3") as e:
        validate(c)
    assert "\n" not in str(e.value)


def test_a_trained_backbone_takes_the_training_rule_whatever_its_batchnorm_mode():
    """Fine-tuning keeps BatchNorm in inference mode (train=False) while gradients flow:
    for_training makes "auto" pick by the training rule there; forced choices stay."""
    spec = registry.get("vgg19")
    conv = C.Conv(64, (3, 3), conv3x3=winograd.for_training("auto"))
    shape = (16, 120, 120, 128)
    assert C._conv3x3_impl(conv, shape) == winograd.choose(shape, (3, 3, 128, 64), train=True)
    assert C._conv3x3_impl(conv.clone(conv3x3="auto"), shape) == winograd.choose(
        shape, (3, 3, 128, 64), train=False)
    assert winograd.for_training("winograd4") == "winograd4"
    trained = winograd.for_training_module(spec.make(conv3x3="auto"))
    assert trained.conv3x3 == winograd.AUTO_TRAIN
    assert winograd.for_training_module(spec.make(conv3x3="xla")).conv3x3 == "xla"
    with pytest.raises(ValueError, match="conv3x3"):
        C._conv3x3_impl(conv.clone(conv3x3="fast"), shape)
