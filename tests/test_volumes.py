"""NIfTI volumes: axial slices by the area rule, one split group per volume (no patient on
both sides of a fold or of the test split), clear skips for files that cannot be sliced,
and predict on a volume."""

import collections
import json

import numpy as np
import pytest
from helpers import run_launch

from bt_jax.data import dataset, discover, volumes

nib = pytest.importorskip("nibabel")


def brain_volume(rng, lesion: bool, shape=(48, 56, 20), zooms=(1.0, 1.0, 3.0)):
    """An ellipsoid 'head' whose cross-section shrinks towards both ends of the z axis,
    with a bright blob when `lesion`."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.0) ** 2 <= 1
    vol = np.where(head, 300 + 40 * rng.standard_normal(shape), 0).astype(np.float32)
    if lesion:
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        vol[((x - cx) ** 2 + (y - cy) ** 2 <= 0.04) & (np.abs(z) < 0.5)] = 900
    return nib.Nifti1Image(vol, np.diag([*zooms, 1.0]))


def write_folder(root, n_per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for cls, lesion in (("no", False), ("yes", True)):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            nib.save(brain_volume(rng, lesion), root / cls / f"sub{i:02d}.nii.gz")
    return root


def test_area_rule_and_orientation(tmp_path):
    vol = brain_volume(np.random.default_rng(0), lesion=False)
    nib.save(vol, tmp_path / "a.nii.gz")
    data = vol.get_fdata()
    area = (data > 0.1 * np.percentile(data, 99.5)).sum(axis=(0, 1))
    want = [z for z in range(20) if area[z] >= 0.5 * area.max()]
    assert volumes.select_slices(tmp_path / "a.nii.gz", 0.5) == want and 0 < len(want) < 20
    img, info = volumes.read_slice(volumes.slice_path(tmp_path / "a.nii.gz", want[0]))
    assert img.shape == (56, 48, 3) and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1
    assert info["slice"] == want[0]
    # a flipped affine (LPS-like storage) gives the same canonical slice
    flipped = nib.Nifti1Image(data[::-1, ::-1].astype(np.float32),
                              np.diag([-1.0, -1.0, 3.0, 1.0]))
    nib.save(flipped, tmp_path / "b.nii.gz")
    img_b, _ = volumes.read_slice(volumes.slice_path(tmp_path / "b.nii.gz", want[0]))
    np.testing.assert_allclose(img_b, img, atol=1e-6)


def test_4d_sagittal_and_broken_files_are_clear_errors(tmp_path):
    rng = np.random.default_rng(1)
    four = nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4))
    nib.save(four, tmp_path / "four.nii.gz")
    nib.save(brain_volume(rng, False, shape=(12, 48, 56), zooms=(4.0, 1.0, 1.0)),
             tmp_path / "sag.nii")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    for name, why in (("four.nii.gz", "a 4D volume"), ("sag.nii", "sagittal plane"),
                      ("broken.nii.gz", "not a readable NIfTI volume")):
        with pytest.raises(volumes.VolumeError, match=why) as e:
            volumes.select_slices(tmp_path / name, 0.5)
        assert name in str(e.value)


def test_slices_of_a_volume_never_straddle_a_split(tmp_path, small_config):
    data = write_folder(tmp_path / "data", n_per_class=8)
    rng = np.random.default_rng(2)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)),
             data / "yes" / "fmri.nii.gz")
    nib.save(brain_volume(rng, True, shape=(12, 48, 56), zooms=(4.0, 1.0, 1.0)),
             data / "no" / "sagittal.nii.gz")
    before = discover.folder_fingerprint(data)
    small_config.data.dir = str(data)
    small_config.data.near_duplicate_bits = 0  # only the volume rule groups here
    ds = dataset.prepare_dataset(small_config, tmp_path / "w", progress=False)
    man = json.loads((tmp_path / "w" / "manifest.json").read_text())
    rows = {r["file"]: r for r in man["files"]}
    assert rows["yes/fmri.nii.gz"]["status"] == "skipped" and "4D" in rows["yes/fmri.nii.gz"]["reason"]
    assert "sagittal" in rows["no/sagittal.nii.gz"]["reason"]
    assert all("#z=" in n for n in ds.names) and len(ds.names) > 16
    split_of = collections.defaultdict(set)
    for r in man["files"]:
        if r["status"] == "used":
            split_of[volumes.volume_of(r["file"])].add(r["split"])
    assert len(split_of) == 16 and all(len(s) == 1 for s in split_of.values()), split_of
    assert {next(iter(s)) for s in split_of.values()} >= {"test", "fold0", "fold1", "fold2"}
    # the fold arrays agree with the manifest: a volume's slices share every fold
    vol = np.array([volumes.volume_of(n) for n in ds.names])
    for f in range(ds.splits.k):
        train = set(vol[ds.splits.fold_train(f).indices])
        assert not train & set(vol[ds.splits.fold_val(f)]) and not train & set(vol[ds.splits.test])
    assert discover.folder_fingerprint(data) == before  # nothing written into the data


def test_predict_reads_a_volume_as_its_slices(tmp_path):
    from bt_jax.data import scans
    nib.save(brain_volume(np.random.default_rng(3), True), tmp_path / "s.nii.gz")
    (tmp_path / "bad.nii").write_bytes(b"junk")
    paths = volumes.expand_paths(scans.find_inputs(tmp_path), 0.5)
    slices = [p for p in paths if "#z=" in str(p)]
    assert len(slices) == len(volumes.select_slices(tmp_path / "s.nii.gz", 0.5))
    img, info = scans.read_scan(slices[0])
    assert img.shape == (56, 48, 3) and info["format"] == "nifti"
    bad = [p for p in paths if p.name == "bad.nii"]
    with pytest.raises(volumes.VolumeError, match="bad.nii: not a readable NIfTI"):
        scans.read_scan(bad[0])


@pytest.mark.e2e
def test_a_folder_of_volumes_trains_and_predicts(tmp_path):
    """Method A on NIfTI volumes as users launch it, then predict on one volume."""
    import csv
    data = write_folder(tmp_path / "data", n_per_class=8, seed=4)

    def launch(config, workdir, *extra):
        r = run_launch(*extra, config=f"configs/{config}", workdir=workdir)
        assert r.returncode == 0, r.stderr[-3000:]
    launch("quickstart.py:quick", tmp_path / "w", f"--config.data.dir={data}",
           "--config.weights.random_init=True")
    man = json.loads((tmp_path / "w" / "manifest.json").read_text())
    split_of = collections.defaultdict(set)
    for r in man["files"]:
        if r["status"] == "used":
            split_of[volumes.volume_of(r["file"])].add(r["split"])
    assert len(split_of) == 16 and all(len(s) == 1 for s in split_of.values())
    assert (tmp_path / "w" / "model.json").exists()
    launch("predict.py", tmp_path / "p", f"--config.checkpoint={tmp_path / 'w'}",
           f"--config.inputs={data / 'yes' / 'sub00.nii.gz'}")
    with open(tmp_path / "p" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all("#z=" in r["file"] and r["status"] == "ok" for r in rows)
    assert all(0 <= float(r["p_tumour"]) <= 1 for r in rows)
