"""Decode image files with OpenCV into float32 RGB arrays in [0, 1].

    img, info = decode_file(path)   # (H, W, 3) float32, {"format": "png", "bits": 16, ...}
    # raises DecodeError("zero-byte file") etc. for anything that is not a usable image

Handles 8/16-bit, grayscale (replicated to 3 channels), RGB, RGBA (alpha composited on
black, the MRI background), palette images and files whose extension lies about their
format (the reference set has PNGs named .jpg): the format comes from the magic bytes.
A truncated JPEG/PNG is refused rather than half-decoded, because OpenCV silently fills
the missing rows with grey.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import cv2
import numpy as np


class DecodeError(ValueError):
    """A file is not a usable image; str(e) is the reason recorded in the manifest."""


_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff_format(data: bytes) -> str | None:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def _check_complete(data: bytes, fmt: str) -> None:
    tail = data[-4096:]
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        raise DecodeError("truncated JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in tail:
        raise DecodeError("truncated PNG (no IEND chunk)")


def _to_unit_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype in (np.float32, np.float64):
        arr = arr.astype(np.float32)
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        return np.clip(arr / hi if hi > 1.0 else arr, 0.0, 1.0)
    raise DecodeError(f"unsupported pixel type {arr.dtype}")


def decode_bytes(data: bytes) -> tuple[np.ndarray, dict]:
    """Bytes of an image file -> ((H, W, 3) float32 RGB in [0, 1], info)."""
    if len(data) == 0:
        raise DecodeError("zero-byte file")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError("not an image (unknown file signature)")
    _check_complete(data, fmt)
    buf = np.frombuffer(data, np.uint8)
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise DecodeError(f"corrupt {fmt} (OpenCV could not decode it)")
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    info = {"format": fmt, "bits": int(raw.dtype.itemsize * 8), "channels": int(channels),
            "height": int(raw.shape[0]), "width": int(raw.shape[1])}
    if fmt == "jpeg" and channels == 4:
        # A 4-channel JPEG is CMYK; IMREAD_COLOR makes OpenCV convert it to BGR.
        raw = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        channels = 3
    img = _to_unit_float(raw)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif channels == 4:
        alpha = img[:, :, 3:4]
        img = cv2.cvtColor(img[:, :, :3] * alpha, cv2.COLOR_BGR2RGB)
    elif channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif channels == 2:  # gray + alpha
        img = np.repeat(img[:, :, :1] * img[:, :, 1:2], 3, axis=2)
    else:
        raise DecodeError(f"unsupported channel count {channels}")
    return np.ascontiguousarray(img, dtype=np.float32), info


def decode_file(path: str | Path, *, min_size: int = 16) -> tuple[np.ndarray, dict]:
    """Decodes and checks that the image is usable (big enough, not blank)."""
    data = Path(path).read_bytes()
    img, info = decode_bytes(data)
    check_usable(img, min_size)
    return img, info


def check_usable(img: np.ndarray, min_size: int) -> None:
    """DecodeError if an image is too small or blank (every pixel the same)."""
    h, w = img.shape[:2]
    if min(h, w) < min_size:
        raise DecodeError(f"image too small ({w}x{h}, need at least {min_size} px a side)")
    if float(img.max()) - float(img.min()) < 1e-3:
        raise DecodeError(f"blank image (every pixel is {float(img.max()):.3f})")


def pixel_hash(img: np.ndarray) -> str:
    """Hash of decoded pixels: equal for byte-identical files and re-encoded lossless copies."""
    q = np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)
    h = hashlib.sha256(np.asarray(q.shape, np.int64).tobytes())
    h.update(q.tobytes())
    return h.hexdigest()[:32]


THUMB = 32  # side of the grey thumbnails that confirm near-duplicate candidates


def thumbnail(img: np.ndarray) -> np.ndarray:
    """(THUMB, THUMB) uint8 grey thumbnail of an image in [0, 1] (grey or RGB)."""
    img = np.ascontiguousarray(img, np.float32)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    small = cv2.resize(gray, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)


def thumb_to_text(thumb: np.ndarray) -> str:
    return base64.b64encode(np.asarray(thumb, np.uint8).tobytes()).decode("ascii")


def thumb_from_text(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.uint8).reshape(THUMB, THUMB)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails (1: the same picture up to brightness and
    contrast; a flat thumbnail correlates 0 with anything)."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


# Small scalings and shifts (in thumbnail pixels) tried when aligning two thumbnails.
_SCALES, _SHIFTS = (0.9, 0.95, 1.0, 1.05, 1.1), (-2, -1, 0, 1, 2)


def aligned_correlation(a: np.ndarray, b: np.ndarray, stop_at: float | None = None) -> float:
    """The best correlation of thumbnail `a`'s centre with `b` scaled by up to +-10% and
    shifted by up to 2 px (6% of the side): copies cropped or re-framed a little still
    match, different scans of similar anatomy do not (bench/bench_near_duplicates.py).
    With `stop_at`, returns as soon as an alignment reaches it (the unmoved one first)."""
    inner = (slice(4, THUMB - 4),) * 2
    a = np.asarray(a, np.float64)[inner].ravel()
    a = a - a.mean()
    norm_a = np.sqrt((a * a).sum())
    b = np.asarray(b, np.float32)
    c = (THUMB - 1) / 2
    best = -1.0
    for s, dx, dy in _ALIGNMENTS:
        m = np.float32([[s, 0, c - s * c + dx], [0, s, c - s * c + dy]])
        w = cv2.warpAffine(b, m, (THUMB, THUMB), flags=cv2.INTER_LINEAR,
                           borderValue=0)[inner].ravel().astype(np.float64)
        w = w - w.mean()
        den = norm_a * np.sqrt((w * w).sum())
        best = max(best, float((a * w).sum() / den) if den > 0 else 0.0)
        if stop_at is not None and best >= stop_at:
            break
    return best


# The unmoved alignment first (most copies stop there), then every other one.
_ALIGNMENTS = sorted(((s, dx, dy) for s in _SCALES for dx in _SHIFTS for dy in _SHIFTS),
                     key=lambda t: (t != (1.0, 0, 0), t))


def perceptual_hash(img: np.ndarray) -> int:
    """64-bit DCT pHash of the luminance: near-duplicates differ in a few bits."""
    gray = cv2.cvtColor(np.ascontiguousarray(img, np.float32), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low[1:] > np.median(low[1:])  # skip DC: it only encodes mean brightness
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")
