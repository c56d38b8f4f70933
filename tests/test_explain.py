"""Grad-CAM: the two target modes agree, maps are well-formed for registry backbones, nets
with hand-set weights give the maps they must (peak, support, sign, the ReLU after the
channel sum), and on the phantoms a model trained to find the bright lesion points at it."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fast_init import random_variables

from bt_jax.data import decode, phantoms, preprocess
from bt_jax.inference import gradcam as explain
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier, Head

SIZE = 64


class ConvRelu(nn.Module):
    features: int
    strides: int = 1
    bias: float = 0.0  # initial bias

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(self.features, (3, 3), strides=self.strides,
                       bias_init=nn.initializers.constant(self.bias))
        return nn.relu(conv(x))


class TinyNet(nn.Module):
    """Follows the backbone contract: (logits, out) with out["features"] and "pre_logits"."""

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # the backbone contract
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


@pytest.mark.parametrize("name", [pytest.param("efficientnet_lite0", marks=pytest.mark.e2e),
                                  "vgg16"])
def test_registry_backbones(name):
    module = Classifier(backbone=mreg.get(name).make(), head=Head(4, 0.0))
    variables = random_variables(module, 32)
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    cams, probs = explain.gradcam(module, variables, x, batch_size=2)
    logits, _ = module.apply(variables, x)
    np.testing.assert_allclose(probs, jax.nn.sigmoid(logits[:, 0]), rtol=1e-5)
    assert cams.shape == (2, 32, 32) and 0 <= cams.min() and cams.max() <= 1


class BrightBlobNet(nn.Module):
    """Hand-set backbone with a known answer: one feature channel, relu(mean RGB - 0.9)."""

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # the backbone contract
        x = ConvRelu(1, name="block1")(x)
        return None, {"features": x, "pre_logits": x.mean(axis=(1, 2))}


def _bright_blob_model(sign):
    """Logit = sign * mean(feature) (Head with one hidden unit, weights set by hand)."""
    module = Classifier(backbone=BrightBlobNet(), head=Head(1, 0.0))
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[1, 1, :, 0] = 1 / 3  # centre tap only: the pixel's own mean RGB
    params = {"backbone": {"block1": {"Conv_0": {"kernel": kernel, "bias": np.array([-0.9])}}},
              "head": {"hidden": {"kernel": np.ones((1, 1)), "bias": np.zeros(1)},
                       "out": {"kernel": np.full((1, 1), float(sign)), "bias": np.zeros(1)}}}
    return module, {"params": jax.tree.map(jnp.asarray, params)}


def test_known_answer_cam_is_the_evidence_map():
    # A bright blob at x=12, y=40 (deliberately not on the diagonal, so a transposed map
    # fails) on a dim noisy background: the only positive evidence is the blob.
    rng = np.random.default_rng(0)
    img = rng.uniform(0.0, 0.5, (SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img[(xx - 12) ** 2 + (yy - 40) ** 2 <= 9] = 0.95
    img[40, 12] = 1.0
    x = np.repeat(img[None, ..., None], 3, -1)
    module, variables = _bright_blob_model(+1)
    for target in ("features", "module:backbone/block1"):
        cam, prob = explain.make_gradcam_fn(module, target)(variables, x)
        evidence = np.maximum(img - 0.9, 0)
        np.testing.assert_allclose(cam[0], evidence / evidence.max(), atol=1e-5)
        assert explain.peak(np.asarray(cam[0])) == (12, 40)
        assert float(prob[0]) > 0.5
    # Evidence against the class is not shown: Grad-CAM keeps only the positive part.
    module, variables = _bright_blob_model(-1)
    cam, prob = explain.make_gradcam_fn(module)(variables, x)
    assert float(prob[0]) < 0.5 and float(np.abs(cam).max()) == 0.0


class PooledBlobNet(nn.Module):
    """The bright-blob detector of BrightBlobNet, then 4x4 average pooling: a 16x16 map
    (one cell = 4x4 input pixels) that Grad-CAM must upsample back to the input."""

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # the backbone contract
        x = nn.avg_pool(ConvRelu(1, name="block1")(x), (4, 4), strides=(4, 4))
        return None, {"features": x, "pre_logits": x.mean(axis=(1, 2))}


def test_known_answer_cam_on_a_downsampled_map():
    # Blobs filling one map cell each: image 0 at cell (row 10, col 3) = pixels y 40..43,
    # x 12..15; image 1 at cell (2, 12); image 2 has none (nothing to show: an all-zero map).
    rng = np.random.default_rng(1)
    img = rng.uniform(0.0, 0.5, (3, SIZE, SIZE)).astype(np.float32)
    img[0, 40:44, 12:16] = 1.0
    img[1, 8:12, 48:52] = 1.0
    module, variables = _bright_blob_model(+1)
    module = module.clone(backbone=PooledBlobNet())
    cam, prob = explain.make_gradcam_fn(module)(variables, np.repeat(img[..., None], 3, -1))
    cam = np.asarray(cam)
    for i, (y0, x0) in enumerate([(40, 12), (8, 48)]):
        px, py = explain.peak(cam[i])
        assert x0 <= px < x0 + 4 and y0 <= py < y0 + 4, (i, px, py)
        assert cam[i].max() == pytest.approx(1.0)
        # zero beyond the blob's cell and its neighbours (bilinear upsampling reaches
        # no further), positive across the blob
        outside = np.ones((SIZE, SIZE), bool)
        outside[max(y0 - 4, 0):y0 + 8, max(x0 - 4, 0):x0 + 8] = False
        assert np.abs(cam[i][outside]).max() < 1e-6
        assert cam[i][y0 + 1:y0 + 3, x0 + 1:x0 + 3].min() > 0.5
        # the logit is the blob's mean evidence: 16 pixels of (1.0 - 0.9) over 64 x 64
        assert float(prob[i]) == pytest.approx(1 / (1 + np.exp(-16 * 0.1 / SIZE**2)), rel=1e-5)
    assert np.abs(cam[2]).max() == 0.0 and float(prob[2]) == pytest.approx(0.5)


class RedGreenNet(nn.Module):
    """Two hand-set channels: relu(R - 0.5) (red evidence) and relu(G - 0.5) (green)."""

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # the backbone contract
        x = ConvRelu(2, name="block1")(x)
        return None, {"features": x, "pre_logits": x.mean(axis=(1, 2))}


def _red_green_model(w_red, w_green):
    """Logit = w_red * mean(red map) + w_green * mean(green map)."""
    module = Classifier(backbone=RedGreenNet(), head=Head(2, 0.0))
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[1, 1, 0, 0] = kernel[1, 1, 1, 1] = 1.0   # centre tap: the pixel's R, its G
    params = {"backbone": {"block1": {"Conv_0": {"kernel": kernel, "bias": np.full(2, -0.5)}}},
              "head": {"hidden": {"kernel": np.eye(2), "bias": np.zeros(2)},
                       "out": {"kernel": np.array([[w_red], [w_green]]), "bias": np.zeros(1)}}}
    return module, {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)}


def test_known_answer_cam_with_two_channels_of_opposite_weight():
    """Grad-CAM weights each channel by its mean gradient (here +2/HW red, -1/HW green),
    sums, THEN keeps the positive part: red evidence 1.0, a yellow blob (both channels)
    2 x 0.5 - 0.5 = 0.5, green 0. A per-channel ReLU, or |gradient| weights, would give
    yellow 1.0 or green > 0. Following the negative class flips the signs."""
    img = np.full((SIZE, SIZE, 3), 0.2, np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blobs = {"red": ((12, 40), (1.0, 0.2, 0.2)), "green": ((50, 10), (0.2, 1.0, 0.2)),
             "yellow": ((40, 52), (1.0, 1.0, 0.2))}
    for (cx, cy), colour in blobs.values():
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 16] = colour
    red, green = np.maximum(img[..., 0] - 0.5, 0), np.maximum(img[..., 1] - 0.5, 0)
    module, variables = _red_green_model(2.0, -1.0)
    for target in ("features", "module:backbone/block1"):
        cam, prob = explain.make_gradcam_fn(module, target)(variables, img[None])
        np.testing.assert_allclose(cam[0], np.maximum(2 * red - green, 0), atol=1e-5)
        px, py = explain.peak(np.asarray(cam[0]))
        assert (px - 12) ** 2 + (py - 40) ** 2 <= 16    # on the red disc
        assert float(cam[0][52, 40]) == pytest.approx(0.5, abs=1e-5)
        assert float(cam[0][10, 50]) == 0.0
        assert float(prob[0]) == pytest.approx(
            1 / (1 + np.exp(-(2 * red.mean() - green.mean()))), rel=1e-5)
    cam, _ = explain.make_gradcam_fn(module, class_index=0)(variables, img[None])
    want = np.maximum(green - 2 * red, 0)
    np.testing.assert_allclose(cam[0], want / want.max(), atol=1e-5)
    assert float(cam[0][52, 40]) == 0.0 and float(cam[0][40, 12]) == 0.0


def _to_input(u8):
    """A phantom as decode_file returns it: gray replicated to RGB, in [0, 1]."""
    return np.repeat(u8[..., None], 3, -1).astype(np.float32) / 255


def _lesion_in_input(le, crop_box):
    """A lesion (cx, cy, rx, ry in original pixels) in the preprocessed SIZE-px image."""
    x0, y0, x1, y1 = crop_box
    sx, sy = SIZE / (x1 - x0), SIZE / (y1 - y0)
    return ((le[0] - x0) * sx, (le[1] - y0) * sy, le[2] * sx, le[3] * sy)


def _phantom_set(root):
    """Preprocessed phantom files, labels, and each positive's lesion (from lesions.json)."""
    lesions = json.loads((root / "lesions.json").read_text())
    params = preprocess.PreprocessParams(size=SIZE)
    xs, ys, boxes = [], [], []
    for f in sorted(root.glob("*/*.png")):
        rel = f"{f.parent.name}/{f.name}"
        img, _ = decode.decode_file(f)
        out, info = preprocess.preprocess_image(img, params)
        xs.append(out)
        ys.append(int(f.parent.name == "yes"))
        le = lesions.get(rel)
        boxes.append(None if le is None else
                     _lesion_in_input((le["cx"], le["cy"], le["rx"], le["ry"]), info["crop_box"]))
    return np.stack(xs), np.array(ys), boxes


def _training_set(n, seed, size=96):
    """n fresh phantoms (half positive), preprocessed as the pipeline does (crop + equalise)."""
    rng = np.random.default_rng(seed)
    params = preprocess.PreprocessParams(size=SIZE)
    xs, ys = [], []
    for i in range(n):
        u8, _ = phantoms.make_phantom(rng, size, lesion=bool(i % 2))
        xs.append(preprocess.preprocess_image(_to_input(u8), params)[0])
        ys.append(i % 2)
    return np.stack(xs), np.array(ys)


class LesionNet(nn.Module):
    """Backbone-contract net sized to learn the lesion in seconds on a CPU.

    Two stride-2 convolutions give a 16x16 map (one cell = 4 px of the 64-px input) and a
    15-px receptive field, wider than the skull ring: after histogram equalisation the ring
    is as bright as the lesion, so only shape and surroundings (a round blob in grey tissue
    vs a band next to black background) tell them apart.
    Equalised images share one histogram, so at initialisation every image pools to nearly
    the same features and training sits on a plateau (0.69 loss) for a seed-dependent
    100-1000 steps. Centring the input and a negative first-layer bias (sparse responses
    that fire on bright structures only) cut it to < ~400 steps for each of the 10 seeds tried.
    """

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # the backbone contract
        x = x * 2.0 - 1.0
        x = ConvRelu(16, strides=2, bias=-0.5, name="block1")(x)
        x = ConvRelu(16, strides=2, name="block2")(x)
        x = ConvRelu(32, name="block3")(x)
        return None, {"features": x, "pre_logits": x.mean(axis=(1, 2))}


class _DidNotLearn(AssertionError):
    """_train_lesion_net stayed on the plateau in every initialisation."""


def _train_lesion_net(x, y, *, seed, attempts=4, max_steps=1500, batch=32, lr=3e-3,
                      check_every=100):
    """Adam until the training phantoms are learnt (>= 97% of them right).

    How long the initial plateau lasts depends on the initialisation and on the CPU's float
    rounding (seed 1 sat at 0.69 loss for 4000 steps on one VM and left it in 300 on another),
    so a run that has not left it after max_steps restarts from a fresh initialisation. The
    test is about where Grad-CAM looks in a net that learnt the task, not about the plateau."""
    module = Classifier(backbone=LesionNet(), head=Head(16, 0.0))
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            logits, _ = module.apply({"params": p}, xb)
            return optax.sigmoid_binary_cross_entropy(logits[:, 0], yb).mean()
        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(params, u), opt

    @jax.jit
    def train_acc(params):
        logits, _ = module.apply({"params": params}, x[:256])
        return jnp.mean((logits[:, 0] > 0) == (y[:256] > 0))

    rng = np.random.default_rng(seed)
    for attempt in range(attempts):
        key = jax.random.PRNGKey(seed + 1000 * attempt)
        params = module.init(key, jnp.zeros((1, SIZE, SIZE, 3)))["params"]
        opt = tx.init(params)
        for s in range(1, max_steps + 1):
            idx = rng.choice(len(x), batch, replace=False)
            params, opt = step(params, opt, x[idx], y[idx])
            if s % check_every == 0 and float(train_acc(params)) >= 0.97:
                return module, {"params": params}
    raise _DidNotLearn(f"LesionNet did not learn the training phantoms in {attempts} "
                       f"initialisations of {max_steps} steps (seed {seed})")


def _peak_on_lesion(cam, box, tol):
    """The CAM maximum lies in the lesion ellipse grown by `tol` px on each radius."""
    px, py = explain.peak(cam)
    cx, cy, rx, ry = box
    return ((px - cx) / (max(rx, 1) + tol)) ** 2 + ((py - cy) / (max(ry, 1) + tol)) ** 2 <= 1.0


LESION_SEEDS = range(5)


def _lesion_scores(phantom_dir, seed):
    """(held-out accuracy, share of positives whose CAM peak lies within one map cell of
    the lesion, share inside it) of a LesionNet trained with `seed`; zeros if it never
    learnt its training phantoms."""
    x, y = _training_set(480, seed=1000 + seed)
    try:
        module, variables = _train_lesion_net(x, y, seed=seed)
    except _DidNotLearn:
        return 0.0, 0.0, 0.0
    xt, yt, boxes = _phantom_set(phantom_dir)
    cams, probs = explain.gradcam(module, variables, xt, batch_size=len(xt))
    pos = [i for i, b in enumerate(boxes) if b is not None]
    assert len(pos) == int(yt.sum()) > 0
    cell = SIZE / 16  # px: one cell of LesionNet's 16x16 feature map
    return (float(np.mean((probs >= 0.5) == yt)),
            float(np.mean([_peak_on_lesion(cams[i], boxes[i], cell) for i in pos])),
            float(np.mean([_peak_on_lesion(cams[i], boxes[i], 0.0) for i in pos])))


@pytest.mark.slow
def test_gradcam_peak_falls_on_the_lesion(phantom_dir):
    """A net trained to find the bright lesion points at it: trained on fresh phantoms,
    scored on the held-out phantom files with lesion positions from their lesions.json.

    One seed's score depends on the VM (float rounding steers training: one VM put the
    peak inside the lesion for 0.46 of positives where this one gives 0.92), so the bound
    is on the median of five seeds, and a seed that does not learn the task only counts
    against it. Measured on the 2-core dev VM (2026-12): accuracy 0.98-1.0, near 1.0,
    inside 0.92-1.0 for each of seeds 0-7, ~25 s a seed. What Grad-CAM computes is
    checked exactly, without training, by the known-answer tests above."""
    scores = np.array([_lesion_scores(phantom_dir, s) for s in LESION_SEEDS])
    acc, near, inside = scores.T
    table = "; ".join(f"seed {s}: acc {a:.2f} near {n:.2f} inside {i:.2f}"
                      for s, (a, n, i) in zip(LESION_SEEDS, scores))
    assert (acc >= 0.85).sum() >= 3, f"the nets did not learn the task: {table}"
    assert np.median(near) >= 0.8, f"CAM peak within one map cell of the lesion: {table}"
    assert np.median(inside) >= 0.6, f"CAM peak inside the lesion: {table}"


def test_save_overlay(tmp_path):
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    p = explain.save_overlay(img, np.eye(32), tmp_path / "o.png", title="P(yes) = 0.5")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
