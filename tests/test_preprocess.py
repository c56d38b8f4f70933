import numpy as np
import pytest

from bt_jax.data import preprocess
from bt_jax.data.phantoms import make_phantom


def _rgb(u8):
    return np.repeat(u8[..., None], 3, 2).astype(np.float32) / 255


def test_crop_removes_black_border():
    img = np.zeros((200, 300, 3), np.float32)
    img[50:150, 100:220] = 0.6
    (x0, y0, x1, y1), status = preprocess.crop_box(img, 45, 0.0)
    assert status == "ok"
    assert abs(x0 - 100) <= 2 and abs(x1 - 220) <= 2 and abs(y0 - 50) <= 2 and abs(y1 - 150) <= 2


def test_crop_near_black_noisy_border_and_margin():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 0.08, (200, 200, 3)).astype(np.float32)  # near-black noise
    img[60:140, 40:160] = 0.7
    (x0, y0, x1, y1), status = preprocess.crop_box(img, 45, 0.1)
    assert status == "ok"
    assert 25 <= x0 <= 32 and 168 <= x1 <= 175 and 50 <= y0 <= 54


@pytest.mark.parametrize("img, status", [
    (np.full((64, 64, 3), 0.05, np.float32), "no_contour"),
])
def test_crop_keeps_whole_image_when_nothing_found(img, status):
    box, st = preprocess.crop_box(img, 45, 0.02)
    assert st == status and box == (0, 0, 64, 64)


def test_tiny_contour_keeps_whole_image():
    img = np.zeros((200, 200, 3), np.float32)
    img[100:110, 100:110] = 1.0
    assert preprocess.crop_box(img, 45, 0.02)[1] == "tiny_contour"


@pytest.mark.parametrize("method", ["hist", "clahe"])
def test_equalize_spreads_luminance(method):
    u8, _ = make_phantom(np.random.default_rng(1), 128, lesion=False)
    img = _rgb(u8) * 0.5  # a dim scan
    out = preprocess.equalize(img, method)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert out.std() > 1.3 * img.std()
    if method == "hist":
        assert out.max() > 0.99  # the brightest level maps to 1
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=2e-3)  # gray stays gray


def test_equalize_none_is_identity():
    img = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
    assert preprocess.equalize(img, "none") is img


def test_preprocess_image_shape_range_and_switches():
    u8, _ = make_phantom(np.random.default_rng(2), 256, lesion=True)
    img = _rgb(u8)
    p = preprocess.PreprocessParams(size=96)
    out, info = preprocess.preprocess_image(img, p)
    assert out.shape == (96, 96, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1 and info["crop"] == "ok"
    out2, info2 = preprocess.preprocess_image(img, preprocess.PreprocessParams(size=96, crop=False,
                                                                                equalize="none"))
    assert info2["crop"] == "off" and not np.allclose(out, out2)


def test_params_key_depends_on_every_field():
    a = preprocess.PreprocessParams()
    assert a.key() == preprocess.PreprocessParams().key()
    assert a.key() != preprocess.PreprocessParams(size=240).key()
    assert a.key() != preprocess.PreprocessParams(equalize="clahe").key()
