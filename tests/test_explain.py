"""Grad-CAM: the two target modes agree, maps are well-formed for registry backbones, and on
the phantoms a model trained to find the bright lesion points at the lesion."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bt_jax import explain
from bt_jax.data import decode, preprocess
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier
from bt_jax.train.head import Head

SIZE = 64


class ConvRelu(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, (3, 3), strides=self.strides)(x))


class TinyNet(nn.Module):
    """Follows the backbone contract: (logits, out) with out["features"] and "pre_logits"."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvRelu(16, name="block1")(x)
        x = ConvRelu(32, strides=2, name="block2")(x)
        x = ConvRelu(32, name="block3")(x)
        return None, {"features": x, "pre_logits": x.mean(axis=(1, 2))}


def _tiny(rng=0):
    module = Classifier(backbone=TinyNet(), head=Head(16, 0.0))
    return module, module.init(jax.random.PRNGKey(rng), jnp.zeros((1, SIZE, SIZE, 3)))


def test_feature_and_module_targets_agree():
    module, variables = _tiny()
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 3)).astype(np.float32)
    cam_f, p_f = explain.make_gradcam_fn(module)(variables, x)
    cam_m, p_m = explain.make_gradcam_fn(module, "module:backbone/block3")(variables, x)
    np.testing.assert_allclose(cam_f, cam_m, atol=1e-5)
    np.testing.assert_allclose(p_f, p_m, rtol=1e-6)
    assert cam_f.shape == (3, SIZE, SIZE) and float(cam_f.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no module at that path"):
        explain.make_gradcam_fn(module, "module:backbone/nope")(variables, x)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "vgg16"])
def test_registry_backbones(name):
    module = Classifier(backbone=mreg.get(name).make(), head=Head(4, 0.0))
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    cams, probs = explain.gradcam(module, variables, x, batch_size=2)
    logits, _ = module.apply(variables, x)
    np.testing.assert_allclose(probs, jax.nn.sigmoid(logits[:, 0]), rtol=1e-5)
    assert cams.shape == (2, 32, 32) and 0 <= cams.min() and cams.max() <= 1


def _phantom_set(root):
    """Preprocessed phantoms, labels, and each positive's lesion in preprocessed pixels."""
    lesions = json.loads((root / "lesions.json").read_text())
    params = preprocess.PreprocessParams(size=SIZE)
    xs, ys, boxes = [], [], []
    for f in sorted(root.glob("*/*.png")):
        rel = f"{f.parent.name}/{f.name}"
        img, _ = decode.decode_file(f)
        out, info = preprocess.preprocess_image(img, params)
        xs.append(out)
        ys.append(int(f.parent.name == "yes"))
        box = None
        if rel in lesions:
            x0, y0, x1, y1 = info["crop_box"]
            le = lesions[rel]
            sx, sy = SIZE / (x1 - x0), SIZE / (y1 - y0)
            box = ((le["cx"] - x0) * sx, (le["cy"] - y0) * sy, le["rx"] * sx, le["ry"] * sy)
        boxes.append(box)
    return np.stack(xs), np.array(ys), boxes


@pytest.mark.slow  # ~45 s on 2 busy cores; and see the note in the assertion below
def test_gradcam_peak_falls_on_the_lesion(phantom_dir):
    # Known open problem: this tiny net reaches ~0.94 training accuracy but its CAM peaks at
    # the skull border, not on the lesion (a histogram/brightness shortcut), so this fails.
    x, y, boxes = _phantom_set(phantom_dir)
    module, variables = _tiny(1)
    tx = optax.adam(3e-3)
    params = variables["params"]
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss(p):
            logits, _ = module.apply({"params": p}, x)
            return optax.sigmoid_binary_cross_entropy(logits[:, 0], y).mean()
        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(params, u), opt

    for _ in range(200):
        params, opt = step(params, opt)
    cams, probs = explain.gradcam(module, {"params": params}, x, batch_size=len(x))
    assert np.mean((probs >= 0.5) == y) >= 0.9          # the model did learn the task
    hits = []
    for cam, box in zip(cams, boxes):
        if box is None:
            continue
        px, py = explain.peak(cam)
        cx, cy, rx, ry = box
        tol = 3.0  # pixels of the 64-px input: ~one cell of the stride-2 feature map
        hits.append(((px - cx) / (max(rx, 1) + tol)) ** 2 + ((py - cy) / (max(ry, 1) + tol)) ** 2
                    <= 1.0)
    assert np.mean(hits) >= 0.75, f"peak on the lesion for only {np.mean(hits):.2f} of positives"


def test_save_overlay(tmp_path):
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    p = explain.save_overlay(img, np.eye(32), tmp_path / "o.png", title="P(yes) = 0.5")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
