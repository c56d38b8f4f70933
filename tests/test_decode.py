import struct
import zlib

import cv2
import numpy as np
import pytest

from bt_jax.data import decode


def _png_palette(path, idx, palette):
    """A real 8-bit palette PNG (OpenCV cannot write one)."""
    h, w = idx.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in idx.astype(np.uint8))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
           + chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).ravel()))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(png)


@pytest.fixture
def gradient():
    x = np.linspace(0, 1, 40, dtype=np.float32)
    return np.outer(x, x[::-1] * 0 + 1) * 0.9 + 0.05


def test_gray_8bit_replicated(tmp_path, gradient):
    p = tmp_path / "g.png"
    cv2.imwrite(str(p), np.round(gradient * 255).astype(np.uint8))
    img, info = decode.decode_file(p)
    assert img.shape == (40, 40, 3) and img.dtype == np.float32
    assert info["bits"] == 8 and info["channels"] == 1
    np.testing.assert_allclose(img[..., 0], img[..., 2])
    np.testing.assert_allclose(img[..., 0], gradient, atol=1 / 255)


def test_16bit_keeps_depth(tmp_path, gradient):
    p = tmp_path / "g16.png"
    cv2.imwrite(str(p), np.round(gradient * 65535).astype(np.uint16))
    img, info = decode.decode_file(p)
    assert info["bits"] == 16
    np.testing.assert_allclose(img[..., 0], gradient, atol=1e-4)


def test_16bit_tiff(tmp_path, gradient):
    p = tmp_path / "scan.TIF"
    cv2.imwrite(str(p), np.round(gradient * 65535).astype(np.uint16))
    img, info = decode.decode_file(p)
    assert info["format"] == "tiff" and info["bits"] == 16
    assert abs(float(img.max()) - float(gradient.max())) < 1e-4


def test_rgb_order_and_rgba(tmp_path):
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR
    cv2.imwrite(str(tmp_path / "red.bmp"), bgr)
    img, _ = decode.decode_file(tmp_path / "red.bmp")
    assert img[0, 0, 0] == pytest.approx(200 / 255) and img[0, 0, 2] == 0
    bgra = np.zeros((20, 20, 4), np.uint8)
    bgra[..., 1] = 255
    bgra[..., 3] = 128
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img, info = decode.decode_file(tmp_path / "a.png")
    assert info["channels"] == 4 and img.shape == (20, 20, 3)
    assert img[0, 0, 1] == pytest.approx(128 / 255, abs=1e-3)  # composited on black


def test_palette_png(tmp_path):
    idx = np.tile(np.arange(4), (20, 5))
    _png_palette(tmp_path / "pal.png", idx, [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    img, _ = decode.decode_file(tmp_path / "pal.png")
    np.testing.assert_allclose(img[0, 1], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[0, 3], [0, 0, 1], atol=1e-6)


def test_png_named_jpg(tmp_path, gradient):
    p = tmp_path / "liar.jpg"
    cv2.imwrite(str(tmp_path / "x.png"), np.round(gradient * 255).astype(np.uint8))
    p.write_bytes((tmp_path / "x.png").read_bytes())
    assert decode.decode_file(p)[1]["format"] == "png"


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "zero-byte"),
    (lambda p: p.write_bytes(b"hello, not an image"), "not an image"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4), "truncated JPEG"),
    (lambda p: cv2.imwrite(str(p.with_suffix(".png")), np.zeros((1, 1), np.uint8))
     and p.write_bytes(p.with_suffix(".png").read_bytes()), "too small"),
    (lambda p: cv2.imwrite(str(p.with_suffix(".png")), np.zeros((64, 64), np.uint8))
     and p.write_bytes(p.with_suffix(".png").read_bytes()), "blank"),
])
def test_bad_files_raise_with_reason(tmp_path, make, reason):
    p = tmp_path / "bad.jpg"
    make(p)
    with pytest.raises(decode.DecodeError, match=reason):
        decode.decode_file(p)


def test_truncated_real_jpeg(tmp_path, gradient):
    cv2.imwrite(str(tmp_path / "ok.jpg"), np.round(gradient * 255).astype(np.uint8))
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(decode.DecodeError, match="truncated"):
        decode.decode_file(tmp_path / "cut.jpg")


def test_hashes():
    from bt_jax.data.phantoms import make_phantom
    img = make_phantom(np.random.default_rng(0), 128, lesion=True)[0]
    img = np.repeat(img[..., None], 3, 2).astype(np.float32) / 255
    assert decode.pixel_hash(img) == decode.pixel_hash(img.copy())
    assert decode.pixel_hash(img) != decode.pixel_hash(img * 0.9)
    small = cv2.resize(img, (77, 77), interpolation=cv2.INTER_AREA)
    assert decode.hamming(decode.perceptual_hash(img), decode.perceptual_hash(small)) <= 6
    other = np.ascontiguousarray(img[::-1, ::-1])
    assert decode.hamming(decode.perceptual_hash(img), decode.perceptual_hash(other)) > 6
