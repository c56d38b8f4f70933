"""Synthetic MRI-like phantoms: ellipse "heads", half of them with a bright lesion.

    root = write_phantoms(workdir / "synthetic_phantoms", n_per_class=40, size=256, seed=0)
    # root/yes/synthetic_yes_000.png ... root/no/synthetic_no_000.png, root/SYNTHETIC.txt,
    # root/lesions.json (lesion centre and radii per positive file, for Grad-CAM checks)

For the quickstart and for tests that must run without ../shared. Everything made from
them is marked synthetic: file names, a marker file, and the manifest/report flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from bt_jax import io

MARKER = "SYNTHETIC.txt"


def make_phantom(rng: np.random.Generator, size: int, lesion: bool):
    """One (size, size) uint8 phantom and its lesion (cx, cy, rx, ry) or None."""
    img = np.zeros((size, size), np.float32)
    c = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    axes = rng.uniform(0.28, 0.42, 2) * size              # head size varies
    angle = rng.uniform(-20, 20)
    centre = (int(c[0]), int(c[1]))
    ax = (int(axes[0]), int(axes[1]))
    cv2.ellipse(img, centre, ax, angle, 0, 360, 0.75, -1)  # skull
    inner = (int(axes[0] * 0.88), int(axes[1] * 0.88))
    cv2.ellipse(img, centre, inner, angle, 0, 360, 0.35, -1)  # brain
    for _ in range(6):  # gyri-like texture
        p = (int(c[0] + rng.uniform(-0.5, 0.5) * inner[0]), int(c[1] + rng.uniform(-0.5, 0.5) * inner[1]))
        r = (int(rng.uniform(0.1, 0.3) * inner[0]), int(rng.uniform(0.1, 0.3) * inner[1]))
        cv2.ellipse(img, p, r, rng.uniform(0, 180), 0, 360, float(rng.uniform(0.25, 0.5)), -1)
    box = None
    if lesion:
        # Brighter than the skull and big enough to see at 64 px: histogram equalisation
        # maps the skull ring and the lesion to the same top levels, and a lesion of
        # 2-4 px there cannot be learnt from a few hundred images (tests/test_explain.py).
        r = rng.uniform(0.16, 0.30) * min(inner)
        off = rng.uniform(-0.45, 0.45, 2) * np.array(inner)
        lc = (int(c[0] + off[0]), int(c[1] + off[1]))
        rr = (int(r), int(r * rng.uniform(0.7, 1.0)))
        tilt, level = rng.uniform(0, 180), float(rng.uniform(0.92, 1.0))
        cv2.ellipse(img, lc, rr, tilt, 0, 360, level, -1)
        box = [lc[0], lc[1], rr[0], rr[1]]
    img = cv2.GaussianBlur(img, (0, 0), size / 256)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    border = int(rng.uniform(0, 0.12) * size)              # black or near-black frame
    if border:
        level = rng.choice([0.0, 0.03])
        img[:border], img[-border:], img[:, :border], img[:, -border:] = level, level, level, level
    img *= rng.uniform(0.7, 1.0)                           # scanner brightness
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), box


def write_phantoms(root: Path, *, n_per_class: int, size: int, seed: int,
                   classes: tuple[str, str] = ("no", "yes")) -> Path:
    """Writes the phantom data set (idempotent for the same arguments)."""
    root = Path(root)
    spec = {"n_per_class": n_per_class, "size": size, "seed": seed, "classes": list(classes)}
    done = root / "spec.json"
    if done.exists() and json.loads(done.read_text()) == spec:
        return root
    rng = np.random.default_rng(seed)
    lesions = {}
    for cls, lesion in ((classes[0], False), (classes[1], True)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, box = make_phantom(rng, size, lesion)
            name = f"{cls}/synthetic_{cls}_{i:03d}.png"
            cv2.imwrite(str(root / name), img)
            if box:
                lesions[name] = {"cx": box[0], "cy": box[1], "rx": box[2], "ry": box[3],
                                 "image_size": size}
    io.write_json(root / "lesions.json", lesions)
    io.write_text(root / MARKER, "SYNTHETIC phantoms made by bt_jax.data.phantoms; not MRI data.\n")
    io.write_json(done, spec, indent=None)
    return root


def is_synthetic(root: Path) -> bool:
    return (Path(root) / MARKER).exists()
