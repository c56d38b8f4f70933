import collections
import json
import shutil

import cv2
import numpy as np
import pytest

from bt_jax.data import dataset, decode, discover


def _config(small_config, data_dir):
    small_config.data.dir = str(data_dir)
    return small_config


def _check_splits(ds, manifest):
    files = manifest["files"]
    # every duplicate group sits in one split
    by_group = collections.defaultdict(set)
    for r in files:
        if r["duplicate_group"]:
            by_group[r["duplicate_group"]].add(r["split"])
    assert all(len(v) == 1 for v in by_group.values())
    # near-duplicates too (grouped by default)
    split_of = {r["file"]: r["split"] for r in files}
    for r in files:
        for nd in r["near_duplicates"]:
            assert split_of[nd.rsplit(" (", 1)[0]] == r["split"]
    # folds stratified: class counts per fold within one of each other (README's promise)
    counts = manifest["split_counts"]
    for cls in ds.classes:
        per_fold = [counts[f"fold{i}"].get(cls, 0) for i in range(ds.splits.k)]
        assert max(per_fold) - min(per_fold) <= 1, per_fold


def test_reference_set(real_data_dir, tmp_path, small_config):
    before = discover.folder_fingerprint(real_data_dir)
    c = _config(small_config, real_data_dir)
    c.split.k = 5
    ds = dataset.prepare_dataset(c, tmp_path, progress=False)
    m = json.loads((tmp_path / "manifest.json").read_text())
    s = m["summary"]
    assert s["files_seen"] == 253 and s["used"] == 228
    assert s["duplicate_groups"] == 22 and s["files_in_duplicate_groups"] == 47
    assert ds.labels.sum() == 141 and (1 - ds.labels).sum() == 87
    assert ds.images.shape == (228, 64, 64, 3)
    x = np.asarray(ds.images)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert not m["synthetic"]
    assert len(ds.splits.test) == pytest.approx(23, abs=3)
    _check_splits(ds, m)
    assert discover.folder_fingerprint(real_data_dir) == before  # nothing written into the data
    csv_lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert len(csv_lines) == 254 and "yes/Y1.jpg" in "".join(csv_lines)


def test_exact_duplicates_kept_together_without_grouping_near(real_data_dir, tmp_path,
                                                             small_config):
    c = _config(small_config, real_data_dir)
    c.data.group_near_duplicates = False
    ds = dataset.prepare_dataset(c, tmp_path, progress=False)
    m = json.loads((tmp_path / "manifest.json").read_text())
    by_group = collections.defaultdict(set)
    for r in m["files"]:
        if r["duplicate_group"]:
            by_group[r["duplicate_group"]].add(r["split"])
    assert len(by_group) == 22 and all(len(v) == 1 for v in by_group.values())
    assert len(ds.names) == len(set(ds.names)) == 228


def test_phantoms_and_cache_reuse(phantom_dir, tmp_path, small_config, monkeypatch):
    c = _config(small_config, phantom_dir)
    ds = dataset.prepare_dataset(c, tmp_path, progress=False)
    assert ds.synthetic and len(ds.names) == 48
    assert json.loads((tmp_path / "manifest.json").read_text())["synthetic"] is True

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache holds this file")
    monkeypatch.setattr(decode, "decode_file", no_decoding)
    ds2 = dataset.prepare_dataset(c, tmp_path, progress=False)
    assert ds2.cache_hits == 48  # every distinct file
    np.testing.assert_array_equal(ds.images, ds2.images)
    assert all(np.array_equal(a, b) for a, b in zip(ds.splits.folds, ds2.splits.folds))


def test_bad_files_are_skipped_with_reasons(phantom_dir, tmp_path, small_config):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    bad = data / "yes"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    (bad / "Fake Scan.JPG").write_bytes(b"this is text")
    good = (data / "no" / "synthetic_no_000.png").read_bytes()
    (bad / "cut.png").write_bytes(good[: len(good) // 2])
    cv2.imwrite(str(bad / "tiny.png"), np.full((1, 1), 200, np.uint8))
    cv2.imwrite(str(bad / "black.bmp"), np.zeros((64, 64), np.uint8))
    (data / "no" / "copy of 000.PNG").write_bytes(good)
    before = discover.folder_fingerprint(data)
    ds = dataset.prepare_dataset(_config(small_config, data), tmp_path / "w", progress=False)
    assert discover.folder_fingerprint(data) == before
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    rows = {r["file"]: r for r in m["files"]}
    expect = {"yes/empty.jpg": "zero-byte", "yes/notes.txt": "not an image extension",
              "yes/Fake Scan.JPG": "not an image", "yes/cut.png": "truncated",
              "yes/tiny.png": "too small", "yes/black.bmp": "blank"}
    for f, why in expect.items():
        assert rows[f]["status"] == "skipped" and why in rows[f]["reason"], rows[f]
    pair = [rows["no/copy of 000.PNG"], rows["no/synthetic_no_000.png"]]
    assert sorted(r["status"] for r in pair) == ["duplicate", "used"]  # first path is kept
    assert pair[1]["duplicate_of"] == "no/copy of 000.PNG"
    assert pair[0]["split"] == pair[1]["split"] != ""
    assert m["summary"]["skipped"] == 6 and len(ds.names) == 48


def test_conflicting_labels_skipped(phantom_dir, tmp_path, small_config):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    shutil.copy(data / "no" / "synthetic_no_001.png", data / "yes" / "mislabelled.png")
    dataset.prepare_dataset(_config(small_config, data), tmp_path / "w", progress=False)
    rows = {r["file"]: r for r in json.loads((tmp_path / "w" / "manifest.json").read_text())["files"]}
    assert rows["yes/mislabelled.png"]["status"] == "skipped"
    assert rows["no/synthetic_no_001.png"]["status"] == "skipped"
    assert "identical pixels" in rows["yes/mislabelled.png"]["reason"]


@pytest.mark.parametrize("setup, msg", [
    (lambda d: None, "does not exist"),
    (lambda d: (d / "no").mkdir(parents=True) or (d / "yes").mkdir(), "is empty"),
    (lambda d: (d / "no").mkdir(parents=True) or (d / "no" / "a.png").write_bytes(b"x"),
     r"\['yes'\] not found"),
])
def test_layout_errors_before_work(tmp_path, small_config, setup, msg):
    d = tmp_path / "data"
    setup(d)
    with pytest.raises(discover.DataLayoutError, match=msg):
        dataset.prepare_dataset(_config(small_config, d), tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "manifest.json").exists()


def test_class_named_in_config_missing(phantom_dir, tmp_path, small_config):
    c = _config(small_config, phantom_dir)
    c.data.classes = ("no", "tumour")
    c.data.positive = "tumour"
    with pytest.raises(discover.DataLayoutError, match="tumour"):
        dataset.prepare_dataset(c, tmp_path, progress=False)
