"""Feature recipes (issue #10): backbones concatenated, flip-averaged or with an earlier
stage pooled, as one backbone that every pipeline, predict and Grad-CAM take."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bt_jax import config as cfg
from bt_jax.inference import gradcam
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier, Head, class_probs
from bt_jax.train import partitions
from bt_jax.weights import load
from fast_init import random_variables

L0, L1, L2 = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
SIZE = 64


def test_recipe_names_are_validated_with_the_key_and_the_part():
    assert mreg.split_recipe(f"{L1}+early+{L0}+flip") == ((L1, L0), ("flip", "early"))
    for bad, why in ((f"{L0}+flp", r"unknown part\(s\) \['flp'\]"), (f"{L0}+{L0}", "repeats"),
                     ("flip+early", "no backbone")):
        with pytest.raises(ValueError, match=why):
            mreg.split_recipe(bad)
    c = cfg.base_config()
    c.search.backbones = (L0, f"{L0}+vgg99")
    with pytest.raises(cfg.ConfigError, match=r"config.search.backbones.*'vgg99'"):
        cfg.validate(c)
    c = cfg.base_config()
    c.model.name = f"{L0}+{L1}+{L2}"
    cfg.validate(c)
    # known only to the registry: a user error (launch.py prints one line), still a KeyError
    from bt_jax.errors import UserError
    with pytest.raises(mreg.RecipeError, match="option 'early'.*vgg16") as e:
        mreg.get("vgg16+early")
    assert isinstance(e.value, UserError) and isinstance(e.value, KeyError)
    assert not mreg.is_known("vgg16+early")


def test_recipe_spec_sizes_widths_and_groups():
    spec = mreg.get(f"{L0}+{L1}+{L2}+early")
    assert spec.default_size == 260 and spec.depthwise
    assert spec.feature_dim == 3 * 1280 + 192 + 192 + 208   # Lite2 is 1.1x wider
    assert f"{L1}_block7" in spec.groups and f"{L2}_top" in spec.groups
    assert spec.layer_group(("params", L1, "block7a_project_conv", "kernel")).startswith(
        f"{L1}_block7")
    from bt_jax.models.composite import branch_sizes
    assert branch_sizes(260, [224, 240, 260]) == [224, 240, 260]
    assert branch_sizes(224, [224, 240, 260]) == [193, 207, 224]


def _apply(module, variables, x):
    return jax.jit(lambda v, x: module.apply(v, x, train=False)[1])(variables, x)


def _branch(variables, name):
    return {col: variables[col][name] for col in variables if name in variables[col]}


def test_stack_concatenates_resized_flipped_and_early_features():
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, SIZE, SIZE, 3))
    stack = mreg.get(f"{L0}+{L1}").make()
    v = random_variables(stack, SIZE, 1)
    out = _apply(stack, v, x)
    lite0, lite1 = (mreg.get(n).make() for n in (L0, L1))
    x0 = jax.image.resize(x, (3, 60, 60, 3), "linear", antialias=True)   # 64 * 224 / 240
    want = np.concatenate([_apply(lite0, _branch(v, L0), x0)["pre_logits"],
                           _apply(lite1, _branch(v, L1), x)["pre_logits"]], axis=1)
    assert out["pre_logits"].shape == (3, 2560)
    np.testing.assert_allclose(out["pre_logits"], want, rtol=1e-5, atol=1e-5)

    flip_early = mreg.get(f"{L0}+flip+early").make()
    v0 = random_variables(flip_early, SIZE, 2)
    got = _apply(flip_early, v0, x)
    a, b = (_apply(lite0, _branch(v0, L0), xi) for xi in (x, x[:, :, ::-1]))
    for part, key in ((slice(0, 192), "stage6"), (slice(192, None), "pre_logits")):
        pa, pb = ((o[key].mean(axis=(1, 2)) if key == "stage6" else o[key]) for o in (a, b))
        np.testing.assert_allclose(got["pre_logits"][:, part], (pa + pb) / 2, rtol=1e-5,
                                   atol=1e-5)
    # the flip-averaged map is the mean of the map and the mirrored map of the mirror
    np.testing.assert_allclose(got["features"][1], (a["features"] + b["features"][:, :, ::-1]) / 2,
                               rtol=1e-5, atol=1e-5)


def test_gradcam_of_a_recipe_follows_the_model():
    spec = mreg.get(f"{L0}+{L1}+early")
    model = Classifier(backbone=spec.make(), head=Head(8, 0.0, 1))
    v = random_variables(model, SIZE, 3)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, SIZE, SIZE, 3))
    cams, probs = gradcam.gradcam(model, v, np.asarray(x), batch_size=2)
    logits, _ = model.apply(v, x)
    np.testing.assert_allclose(probs, class_probs(logits), rtol=1e-5, atol=1e-6)
    assert cams.shape == (2, SIZE, SIZE) and 0 <= cams.min() and cams.max() <= 1
    assert np.isfinite(cams).all()


def test_one_map_gradcam_is_unchanged_by_the_multi_map_path():
    acts = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 5))
    grads = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 5))
    w = grads.mean(axis=(1, 2))
    ref = jax.image.resize(jax.nn.relu(jnp.einsum("bhwc,bc->bhw", acts, w)), (2, 16, 16),
                           "bilinear")
    ref = ref / ref.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(gradcam._cam(acts, grads, 16), ref, rtol=1e-5, atol=1e-6)
    # two maps of one grid: the same as one map with their channels side by side
    two = gradcam._cam((acts[..., :2], acts[..., 2:]), (grads[..., :2], grads[..., 2:]), 16)
    np.testing.assert_allclose(two, ref, rtol=1e-5, atol=1e-6)


def test_staged_selectors_reach_one_branch():
    spec = mreg.get(f"{L0}+{L1}")
    v = random_variables(spec.make(), SIZE)
    labels = partitions.trainable_labels({"backbone": v["params"], "head": {"w": 0}}, spec,
                                         [f"{L1}_block7"])
    flat = traverse_util.flatten_dict(labels["backbone"])
    trained = {k for k, lab in flat.items() if lab == "train"}
    assert trained and all(k[0] == L1 and k[1].startswith("block7") for k in trained)


def test_recipe_weights_are_each_backbones_own(tmp_path):
    w = cfg.base_config().weights
    w.cache_dir = str(tmp_path)
    found, errors = load.available([L0, f"{L0}+flip"], w)
    assert not errors and found[f"{L0}+flip"] == found[L0]
    _, single, d0 = load.load_backbone(L0, w, size=224)
    _, stacked, d = load.load_backbone(f"{L0}+flip", w, size=224)
    assert d != d0 and len(d) == 16
    jax.tree.map(np.testing.assert_array_equal, _branch(stacked, L0), single)
    # one branch without weights leaves the recipe out with the reason
    w.path, w.cache_dir = "", str(tmp_path / "empty")
    found, errors = load.available([f"{L0}+vgg16"], w)
    assert not found and "vgg16" in errors[f"{L0}+vgg16"]


@pytest.mark.e2e
def test_a_searched_recipe_is_fine_tuned_saved_and_predicted(tmp_path):
    """The quick method A run with a recipe as its backbone: model.json names it, and the
    model predict loads gives the stored validation probabilities for the same scans."""
    from bt_jax import inference, io
    from conftest import launch_quick_search
    recipe = f"{L0}+flip+early"
    w = tmp_path / "run"
    r = launch_quick_search(w, f"--config.search.backbones=('{recipe}',)",
                            f"--config.model.name={recipe}")
    assert r.returncode == 0, r.stderr[-4000:]
    card = io.read_json(w / "model.json")
    assert card["backbone"] == recipe
    val = io.read_json(w / "validation.json")
    root = w / "synthetic_phantoms"
    model = inference.load_model(w)
    rows = inference.predict_files(model, [root / n for n in val["names"]], progress=False)
    np.testing.assert_allclose([float(r["p_tumour"]) for r in rows], val["prob"], atol=2e-4)
    assert any((w / "eval").rglob("*.png"))


def test_method_b_refuses_a_recipe_by_name():
    c = cfg.base_config()
    c.pipeline, c.model.name = "staged", f"{L0}+{L1}"
    with pytest.raises(cfg.ConfigError, match=r"config.model.name.*method A only"):
        cfg.validate(c)
