"""Tests for bt_jax.data.phantoms' multi-class (typed) phantoms: layout, marker, determinism,
and lesion types that differ in intensity, size and place."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bt_jax.data import discover, phantoms

FOUR = ("glioma", "meningioma", "pituitary", "no_tumour")
THREE = ("glioma", "pituitary", "no_tumour")


@pytest.fixture(scope="module")
def typed4(tmp_path_factory):
    return phantoms.write_typed_phantoms(tmp_path_factory.mktemp("typed4"), n_per_class=12,
                                         size=96, seed=0)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("names", [FOUR, THREE])
def test_layout_counts_and_marker(tmp_path, names):
    root = phantoms.write_typed_phantoms(tmp_path / "d", n_per_class=5, size=64, seed=1,
                                         class_names=names)
    assert phantoms.is_synthetic(root)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(names)
    for cls in names:
        files = sorted((root / cls).iterdir())
        assert [f.name for f in files] == [f"synthetic_{cls}_{i:03d}.png" for i in range(5)]
        assert cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED).shape == (64, 64)
    lesions = json.loads((root / "lesions.json").read_text())
    assert len(lesions) == 5 * sum(n != "no_tumour" for n in names)
    assert {v["type"] for v in lesions.values()} == set(names) - {"no_tumour"}
    assert all(k.startswith(v["type"] + "/") for k, v in lesions.items())
    records = discover.discover(root, classes=names, extensions=(".png",))
    assert [sum(r.label == i for r in records) for i in range(len(names))] == [5] * len(names)


def test_deterministic_by_seed_and_stable_across_subsets(tmp_path):
    kw = {"n_per_class": 4, "size": 64}
    a = _hashes(phantoms.write_typed_phantoms(tmp_path / "a", seed=2, **kw))
    assert a == _hashes(phantoms.write_typed_phantoms(tmp_path / "b", seed=2, **kw))
    c = _hashes(phantoms.write_typed_phantoms(tmp_path / "c", seed=3, **kw))
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))
    sub = _hashes(phantoms.write_typed_phantoms(tmp_path / "s", seed=2, class_names=THREE, **kw))
    assert all(sub[k] == a[k] for k in sub if k.endswith(".png"))  # a type's own seed stream


def test_rewritten_only_when_the_spec_changes(tmp_path):
    root = phantoms.write_typed_phantoms(tmp_path / "d", n_per_class=2, size=64, seed=0)
    f = root / "glioma" / "synthetic_glioma_000.png"
    f.write_bytes(b"stale")
    phantoms.write_typed_phantoms(root, n_per_class=2, size=64, seed=0)
    assert f.read_bytes() == b"stale"  # same spec: nothing redone
    phantoms.write_typed_phantoms(root, n_per_class=2, size=64, seed=1)
    assert f.read_bytes()[:4] == b"\x89PNG"


def test_lesion_types_differ_in_intensity_size_and_place(typed4):
    stats = {t: [] for t in FOUR[:3]}
    for name, b in json.loads((typed4 / "lesions.json").read_text()).items():
        img = cv2.imread(str(typed4 / name), cv2.IMREAD_GRAYSCALE).astype(float)
        core = np.zeros_like(img)
        cv2.circle(core, (b["cx"], b["cy"]), max(1, min(b["rx"], b["ry"]) // 2), 1, -1)
        brain = np.median(img[img > 20])
        stats[b["type"]].append((img[core > 0].mean() / brain, b["rx"],
                                 b["cx"] - b["image_size"] / 2, b["cy"] - b["image_size"] / 2))
    s = {t: np.array(v) for t, v in stats.items()}
    glioma, men, pit = s["glioma"], s["meningioma"], s["pituitary"]
    assert (glioma[:, 0] > 1.15).all()  # every lesion stands out from the brain ...
    assert glioma[:, 0].mean() + 0.5 < min(men[:, 0].mean(), pit[:, 0].mean())  # ... glioma dimmer
    assert pit[:, 1].mean() < men[:, 1].mean() < glioma[:, 1].mean()  # small, round, large
    assert (pit[:, 3] > 0).all() and (np.abs(pit[:, 2]) < np.abs(pit[:, 3])).all()  # skull base
    assert (men[:, 3] < 0).all()  # convexity, upper half
    assert np.hypot(*glioma[:, 2:].T).mean() < np.hypot(*men[:, 2:].T).mean()  # deep vs at edge


def test_no_tumour_phantom_is_the_plain_negative_phantom():
    # Both draw the same head and finish with no lesion in between: one generator, one look.
    a, box_a = phantoms.make_phantom(np.random.default_rng(5), 96, lesion=False)
    b, box_b = phantoms.make_typed_phantom(np.random.default_rng(5), 96, "no_tumour")
    assert np.array_equal(a, b) and box_a is None and box_b is None


def test_unknown_or_too_few_types_raise(tmp_path):
    with pytest.raises(ValueError, match=r"unknown lesion type\(s\) \['notumor'\].*'no_tumour'"):
        phantoms.write_typed_phantoms(tmp_path, n_per_class=1, size=64, seed=0,
                                      class_names=("glioma", "notumor"))
    with pytest.raises(ValueError, match="at least two distinct"):
        phantoms.write_typed_phantoms(tmp_path, n_per_class=1, size=64, seed=0,
                                      class_names=("glioma",))
    with pytest.raises(ValueError, match="unknown type 'astro'"):
        phantoms.make_typed_phantom(np.random.default_rng(0), 64, "astro")
