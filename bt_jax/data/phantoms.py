"""Synthetic MRI-like phantoms: ellipse "heads", with or without a lesion (or a typed one).

    root = write_phantoms(workdir / "synthetic_phantoms", n_per_class=40, size=256, seed=0)
    # root/yes/synthetic_yes_000.png ... root/no/synthetic_no_000.png, root/SYNTHETIC.txt,
    # root/lesions.json (lesion centre and radii per positive file, for Grad-CAM checks)
    root = write_typed_phantoms(workdir / "typed", n_per_class=40, size=256, seed=0)
    # root/glioma/, root/meningioma/, root/pituitary/, root/no_tumour/ (any two or more of
    # them via class_names); lesion types differ in shape, place and brightness

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


def _head(rng: np.random.Generator, size: int):
    """Skull, brain and gyri-like texture: (float image, head centre, brain axes, angle)."""
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
    return img, c, inner, angle


def _finish(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """Blur, noise, frame and scanner brightness, then uint8."""
    img = cv2.GaussianBlur(img, (0, 0), size / 256)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    border = int(rng.uniform(0, 0.12) * size)              # black or near-black frame
    if border:
        level = rng.choice([0.0, 0.03])
        img[:border], img[-border:], img[:, :border], img[:, -border:] = level, level, level, level
    img *= rng.uniform(0.7, 1.0)                           # scanner brightness
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_phantom(rng: np.random.Generator, size: int, lesion: bool):
    """One (size, size) uint8 phantom and its lesion (cx, cy, rx, ry) or None."""
    img, c, inner, _ = _head(rng, size)
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
    return _finish(rng, img, size), box


def write_phantoms(root: Path, *, n_per_class: int, size: int, seed: int,
                   classes: tuple[str, str] = ("no", "yes")) -> Path:
    """Writes the phantom data set (idempotent for the same arguments)."""
    root = Path(root)
    spec = {"n_per_class": n_per_class, "size": size, "seed": seed, "classes": list(classes)}
    rng = np.random.default_rng(seed)

    def images():
        for cls, lesion in ((classes[0], False), (classes[1], True)):
            for _ in range(n_per_class):
                img, box = make_phantom(rng, size, lesion)
                yield cls, img, box and {"cx": box[0], "cy": box[1], "rx": box[2], "ry": box[3],
                                         "image_size": size}
    return _write_set(root, spec, classes, images)


def _write_set(root: Path, spec: dict, classes, images) -> Path:
    """Writes a phantom set unless `root` holds it already (same spec.json). images()
    yields (class, image, lesion entry or None). In a multi-process run process 0 writes
    and every process waits here until it has."""
    done = root / "spec.json"
    if not (done.exists() and json.loads(done.read_text()) == spec):
        lesions, counts = {}, dict.fromkeys(classes, 0)
        for cls in classes:
            (root / cls).mkdir(parents=True, exist_ok=True)
        for cls, img, entry in images():
            name = f"{cls}/synthetic_{cls}_{counts[cls]:03d}.png"
            counts[cls] += 1
            io.write_bytes(root / name, cv2.imencode(".png", img)[1].tobytes())
            if entry:
                lesions[name] = entry
        io.write_json(root / "lesions.json", lesions)
        io.write_text(root / MARKER, "SYNTHETIC phantoms made by bt_jax.data.phantoms; not MRI data.\n")
        io.write_json(done, spec, indent=None)
    io.barrier("phantoms")
    return root


def _on_brain(c, inner, angle: float, t: float, s: float) -> tuple[int, int]:
    """Point at parameter t on the brain ellipse shrunk by s (cv2.ellipse2Poly's formula),
    so lesion sites follow the head's tilt; y grows downwards, t = pi/2 is the skull base."""
    a, b, phi = inner[0] * s, inner[1] * s, np.deg2rad(angle)
    return (int(c[0] + a * np.cos(t) * np.cos(phi) - b * np.sin(t) * np.sin(phi)),
            int(c[1] + a * np.cos(t) * np.sin(phi) + b * np.sin(t) * np.cos(phi)))


def _glioma(rng, img, c, inner, angle):
    """Irregular, diffuse, intra-axial: overlapping lobes of mid intensity (below the skull)
    with a soft edge, anywhere in the central brain."""
    r = rng.uniform(0.20, 0.30) * min(inner)
    lc = _on_brain(c, inner, angle, rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.45))
    mask = np.zeros_like(img)
    for _ in range(4):
        p = (int(lc[0] + rng.uniform(-0.6, 0.6) * r), int(lc[1] + rng.uniform(-0.6, 0.6) * r))
        rr = (int(r * rng.uniform(0.45, 0.8)), int(r * rng.uniform(0.35, 0.7)))
        cv2.ellipse(mask, p, rr, rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.25 * r))  # infiltrative, no sharp rim
    img += mask * (float(rng.uniform(0.6, 0.72)) - img)
    return lc, (int(r), int(r))


def _meningioma(rng, img, c, inner, angle):
    """Extra-axial: a bright, round, sharply bounded lesion on the skull's inner edge,
    on the convexity (upper half), never at the skull base."""
    r = int(rng.uniform(0.13, 0.20) * min(inner))
    lc = _on_brain(c, inner, angle, rng.uniform(-0.85, -0.15) * np.pi, 0.92)
    cv2.circle(img, lc, r, float(rng.uniform(0.92, 1.0)), -1)
    return lc, (r, r)


def _pituitary(rng, img, c, inner, angle):
    """Sellar: a small bright lesion on the midline just above the skull base."""
    r = rng.uniform(0.09, 0.13) * min(inner)
    lc = _on_brain(c, inner, angle, np.pi / 2 + rng.uniform(-0.05, 0.05), rng.uniform(0.6, 0.72))
    rr = (int(r), int(r * rng.uniform(0.7, 0.9)))
    cv2.ellipse(img, lc, rr, angle, 0, 360, float(rng.uniform(0.9, 1.0)), -1)
    return lc, rr


# Lesion type -> drawer (None: no lesion). Folder names must be among these keys.
LESION_TYPES = {"glioma": _glioma, "meningioma": _meningioma, "pituitary": _pituitary,
                "no_tumour": None}


def make_typed_phantom(rng: np.random.Generator, size: int, lesion_type: str):
    """One (size, size) uint8 phantom with a lesion of `lesion_type` and its (cx, cy, rx, ry),
    or None for "no_tumour"."""
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"lesion_type: unknown type {lesion_type!r}; known: {list(LESION_TYPES)}")
    img, c, inner, angle = _head(rng, size)
    draw, box = LESION_TYPES[lesion_type], None
    if draw is not None:
        lc, rr = draw(rng, img, c, inner, angle)
        box = [lc[0], lc[1], rr[0], rr[1]]
    return _finish(rng, img, size), box


def write_typed_phantoms(root: Path, *, n_per_class: int, size: int, seed: int,
                         class_names: tuple[str, ...] = tuple(LESION_TYPES)) -> Path:
    """Writes a multi-class phantom set, one folder per lesion type (idempotent).

    Each type draws from its own stream (seed, type), so a type's images are the same in a
    3-class and a 4-class set. Layout, file names and marker follow `write_phantoms`;
    lesions.json also records each lesion's type.
    """
    names = tuple(str(n) for n in class_names)
    unknown = [n for n in names if n not in LESION_TYPES]
    if unknown:
        raise ValueError(f"class_names: unknown lesion type(s) {unknown}; known: {list(LESION_TYPES)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"class_names: expected at least two distinct types, got {list(names)}")
    root = Path(root)
    spec = {"kind": "typed", "n_per_class": n_per_class, "size": size, "seed": seed,
            "classes": list(names)}

    def images():
        for cls in names:
            rng = np.random.default_rng([seed, list(LESION_TYPES).index(cls)])
            for _ in range(n_per_class):
                img, box = make_typed_phantom(rng, size, cls)
                yield cls, img, box and {"type": cls, "cx": box[0], "cy": box[1], "rx": box[2],
                                         "ry": box[3], "image_size": size}
    return _write_set(root, spec, names, images)


def is_synthetic(root: Path) -> bool:
    return (Path(root) / MARKER).exists()
