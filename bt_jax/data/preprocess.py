"""Method A's preprocessing: crop to the brain, equalise brightness, resize, in [0, 1].

    out, info = preprocess_image(img, PreprocessParams.from_config(config.preprocess))
    info["crop"]  # "ok" | "no_contour" | "tiny_contour" | "off"

Each step is switchable in the config. Equalisation works on the luminance (YCrCb Y)
quantised to 16 bits for histogram equalisation (16-bit scans keep their depth; CLAHE
works at 8 bits), and leaves the colour balance untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import cv2
import numpy as np

PREPROCESS_VERSION = 1  # bump when the numbers a given config produces change


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    crop: bool = True
    crop_threshold: int = 45
    crop_margin: float = 0.02
    equalize: str = "hist"
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    size: int = 224

    @classmethod
    def from_config(cls, c) -> "PreprocessParams":
        return cls(**{f.name: getattr(c, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def record(cls, c) -> dict:
        """What config.preprocess `c` does to an image, as model.json and cache keys hold
        it (the resolved size, not how it was chosen)."""
        return dataclasses.asdict(cls.from_config(c))

    def key(self) -> str:
        blob = json.dumps({"v": PREPROCESS_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crop_box(img: np.ndarray, threshold: int, margin: float) -> tuple[tuple[int, int, int, int], str]:
    """(x0, y0, x1, y1) around the largest bright contour's extreme points, and a status.

    Threshold + erode/dilate removes the near-black border and speckle noise, as in
    method A. If nothing survives, or the contour is a speck, the whole image is kept.
    """
    h, w = img.shape[:2]
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    gray8 = np.round(gray * 255).astype(np.uint8)
    blur = cv2.GaussianBlur(gray8, (5, 5), 0)
    mask = cv2.threshold(blur, threshold, 255, cv2.THRESH_BINARY)[1]
    mask = cv2.dilate(cv2.erode(mask, None, iterations=2), None, iterations=2)
    contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
    if not contours:
        return (0, 0, w, h), "no_contour"
    c = max(contours, key=cv2.contourArea)[:, 0, :]
    x0, y0 = int(c[:, 0].min()), int(c[:, 1].min())
    x1, y1 = int(c[:, 0].max()) + 1, int(c[:, 1].max()) + 1
    if (x1 - x0) < 0.1 * w or (y1 - y0) < 0.1 * h:
        return (0, 0, w, h), "tiny_contour"
    mx, my = int(round(margin * (x1 - x0))), int(round(margin * (y1 - y0)))
    return (max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)), "ok"


def equalize(img: np.ndarray, method: str, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    if method == "none":
        return img
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
    y16 = np.round(np.clip(ycc[:, :, 0], 0, 1) * 65535).astype(np.uint16)
    if method == "hist":
        hist = np.bincount(y16.ravel(), minlength=65536)
        cdf = np.cumsum(hist).astype(np.float64)
        lo = cdf[cdf > 0][0]
        lut = (cdf - lo) / max(cdf[-1] - lo, 1.0)
        y = np.clip(lut[y16], 0, 1).astype(np.float32)
    elif method == "clahe":
        # 8-bit on purpose: OpenCV's 16-bit CLAHE spreads the clip limit over 65536
        # bins, which leaves the image almost unchanged.
        clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
        y = clahe.apply((y16 >> 8).astype(np.uint8)).astype(np.float32) / 255.0
    else:
        raise ValueError(f"equalize: expected 'none', 'hist' or 'clahe', got {method!r}")
    ycc = ycc.copy()
    ycc[:, :, 0] = y
    return np.clip(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), 0, 1)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_CUBIC
    return np.clip(cv2.resize(img, (size, size), interpolation=interp), 0, 1)


def preprocess_image(img: np.ndarray, p: PreprocessParams) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float32 RGB in [0, 1] -> (size, size, 3) float32 in [0, 1], info."""
    info = {"crop": "off", "crop_box": None}
    if p.crop:
        (x0, y0, x1, y1), status = crop_box(img, p.crop_threshold, p.crop_margin)
        img = img[y0:y1, x0:x1]
        info = {"crop": status, "crop_box": [x0, y0, x1, y1]}
    img = equalize(np.ascontiguousarray(img, np.float32), p.equalize, p.clahe_clip, p.clahe_tiles)
    return resize(img, p.size).astype(np.float32), info
