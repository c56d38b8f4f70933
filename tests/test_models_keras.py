"""Keras-parity and layer-group tests of the Keras-ported backbones (resnet, vgg, mobilenet, densenet)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import assert_close

from bt_jax.models import registry as R

MINE = ("resnet50v2", "resnet50", "vgg16", "vgg19", "mobilenet", "densenet121")


@functools.lru_cache(maxsize=None)
def _ported(arch, include_top, size):
    from keras_reference import reference, template

    ref = reference(arch, include_top, size)
    model, variables = template(arch, include_top, size)
    variables = R.get(arch).port(ref.h5_path, variables)
    logits, out = jax.jit(functools.partial(model.apply, train=False))(variables, ref.x01)
    return ref, model, variables, logits, out


def _check_parity(arch, include_top, size):
    ref, _, _, logits, out = _ported(arch, include_top, size)
    if include_top:
        assert_close(logits, ref.output)
    else:
        assert logits is None
        assert_close(out["features"], ref.output)
        assert_close(out["pre_logits"], ref.output.mean(axis=(1, 2)))


# The two backbones of the paper's methods run by default; the rest are slow (Keras builds
# of these take 10-30 s each on two busy cores).
@pytest.mark.parametrize("arch,include_top,size", [
    ("resnet50v2", True, 64),
    ("vgg19", False, 64),
    pytest.param("resnet50v2", False, 64, marks=pytest.mark.slow),
    pytest.param("resnet50", False, 64, marks=pytest.mark.slow),
    pytest.param("vgg16", False, 64, marks=pytest.mark.slow),
    pytest.param("mobilenet", False, 64, marks=pytest.mark.slow),
    pytest.param("mobilenet", True, 96, marks=pytest.mark.slow),
    pytest.param("densenet121", False, 64, marks=pytest.mark.slow),
    pytest.param("vgg16", True, 224, marks=pytest.mark.slow),   # flatten top needs 224
])
def test_keras_parity(arch, include_top, size):
    _check_parity(arch, include_top, size)


def test_resnet50v2_named_outputs():
    _, _, variables, _, out = _ported("resnet50v2", True, 64)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes == {"stem": (2, 16, 16, 64), "stage1": (2, 8, 8, 256), "stage2": (2, 4, 4, 512),
                      "stage3": (2, 2, 2, 1024), "stage4": (2, 2, 2, 2048),
                      "features": (2, 2, 2, 2048), "pre_logits": (2, 2048)}
    # the ported batch statistics are the file's, not init values
    assert not np.allclose(variables["batch_stats"]["post_bn"]["var"], 1.0)


def _shapes(arch, include_top=False, size=224, dtype=jnp.float32):
    spec = R.get(arch)
    model = spec.make(include_top=include_top, dtype=dtype)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    outputs = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    return spec, variables, outputs


@pytest.mark.parametrize("arch", MINE)
def test_contract_shapes_and_groups(arch):
    spec, variables, (logits, out) = _shapes(arch, include_top=True)
    assert logits.shape == (1, 1000)
    assert out["pre_logits"].shape == (1, spec.feature_dim)
    assert out["features"].shape[-1] == spec.feature_dim
    assert {"stem", "stage1", "features", "pre_logits"} <= set(out)
    groups = jax.tree_util.tree_leaves(R.layer_groups(variables, spec))
    coarse = {R.coarse_group(spec, g) for g in groups}
    assert [g for g in spec.groups if g in coarse] == list(spec.groups), "every group is used"
    assert spec.source().filename.endswith(".h5") and not spec.source().has_top
    assert spec.source(include_top=True).filename.endswith(".h5") and spec.source(True).has_top
    # train mode traces and updates exactly the batch statistics it was given
    model = spec.make(include_top=True)
    _, updates = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                                variables, jnp.zeros((2, 224, 224, 3)))
    assert jax.tree_util.tree_structure(updates.get("batch_stats", {})) == \
        jax.tree_util.tree_structure(variables.get("batch_stats", {}))


def test_vgg19_layer_groups():
    spec, variables, _ = _shapes("vgg19", include_top=True)
    groups = traverse_util.flatten_dict(R.layer_groups(variables["params"], spec))
    assert groups[("block5_conv3", "kernel")] == "block5_conv3"
    assert spec.layer_group(("params", "block5_conv3", "kernel")) == "block5_conv3"
    g = groups[("block5_conv3", "kernel")]
    assert R.group_matches(g, "block5") and R.group_matches(g, "block5_conv3")
    assert not R.group_matches(g, "block4") and not R.group_matches(g, "block5_conv")
    assert R.group_matches(groups[("fc1", "kernel")], "top")
    mask = traverse_util.flatten_dict(R.select_groups(variables["params"], spec, ["block5_conv4", "top"]))
    on = sorted({k[0] for k, v in mask.items() if v})
    assert on == ["block5_conv4", "fc1", "fc2", "predictions"]
    with pytest.raises(ValueError, match="block6"):
        R.select_groups(variables["params"], spec, ["block5", "block6"])


def test_resnet_and_mobilenet_groups_are_hierarchical():
    spec = R.get("resnet50v2")
    g = spec.layer_group(("batch_stats", "conv5_block3_2_bn", "mean"))
    assert R.group_matches(g, "conv5") and R.group_matches(g, "conv5_block3")
    assert not R.group_matches(g, "conv5_block1")
    assert R.coarse_group(spec, spec.layer_group(("post_bn", "scale"))) == "post"
    spec = R.get("mobilenet")
    g = spec.layer_group(("params", "conv_pw_1_bn", "scale"))
    assert g == "block1_conv_pw_1_bn"
    assert not R.group_matches(spec.layer_group(("conv_pw_13", "kernel")), "block1")


def test_registry_get_names_known_backbones():
    with pytest.raises(KeyError, match="resnet50v2.*vgg19|vgg19.*resnet50v2"):
        R.get("resnet51")
    assert set(MINE) <= set(R.BACKBONES)


def test_bfloat16_compute_keeps_float32_params():
    _, variables, (_, out) = _shapes("mobilenet", size=64, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert out["features"].dtype == jnp.bfloat16
    assert out["pre_logits"].dtype == jnp.float32
