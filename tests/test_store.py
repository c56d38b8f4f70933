"""The on-disk image store: reads by index, atomic and fingerprinted, incremental, space
checked first; lazy copies and the prefetch thread."""

import json
import shutil
from collections import namedtuple

import numpy as np
import pytest
from helpers import run_launch

from bt_jax.data import augment, dataset, decode, store


def _images(n, size=8, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _write(tmp_path, imgs, dtype="uint16"):
    w = store.StoreWriter(tmp_path, len(imgs), imgs.shape[1:], dtype)
    for i, im in enumerate(imgs):
        w.put(i, im)
    return w.commit([f"sha{i}" for i in range(len(imgs))])


def test_rows_read_by_any_index_as_float32(tmp_path):
    imgs = _images(10)
    s = _write(tmp_path, imgs)
    rows = s.rows([f"sha{i}" for i in (3, 1, 4, 1, 5)])
    want = np.round(imgs[[3, 1, 4, 1, 5]] * 65535).astype(np.uint16).astype(np.float32) / 65535.0
    assert rows.shape == (5, 8, 8, 3) and len(rows) == 5 and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[:], want)
    np.testing.assert_array_equal(rows[2], want[2])
    np.testing.assert_array_equal(rows[np.array([[0, 4], [2, 2]])], want[[[0, 4], [2, 2]]])
    np.testing.assert_array_equal(rows[np.array([True, False, True, False, False])], want[[0, 2]])
    np.testing.assert_array_equal(store.take(rows, [4, 0]).__array__(), want[[4, 0]])
    np.testing.assert_allclose(np.asarray(rows), imgs[[3, 1, 4, 1, 5]], atol=1 / 65535)
    # never mapped into the process (a map's pages would count in its resident memory)
    with open("/proc/self/maps") as f:
        assert str(s.path) not in f.read()
    np.testing.assert_array_equal(np.load(s.path, mmap_mode="r")[[3, 1]],  # a plain .npy
                                  np.round(imgs[[3, 1]] * 65535).astype(np.uint16))


def test_uint8_store_is_within_half_a_step(tmp_path):
    imgs = _images(4)
    s = _write(tmp_path, imgs, "uint8")
    assert s.file.dtype == np.uint8 and s.rows(["sha0"]).stored_dtype == np.uint8
    np.testing.assert_allclose(s.rows([f"sha{i}" for i in range(4)])[:], imgs, atol=0.5 / 255 + 1e-7)


def test_incomplete_or_mismatched_stores_are_never_read(tmp_path):
    s = _write(tmp_path, _images(3))
    assert store.ImageStore.latest(tmp_path).path == s.path
    meta = json.loads(s.path.with_suffix(".json").read_text())
    meta["shape"][0] = 4  # an index that does not describe its array
    s.path.with_suffix(".json").write_text(json.dumps(meta))
    assert store.ImageStore.latest(tmp_path) is None
    meta["shape"][0] = 3
    s.path.with_suffix(".json").write_text(json.dumps(meta))
    with open(s.path, "r+b") as f:  # an array cut short
        f.truncate(s.path.stat().st_size - 10)
    assert store.ImageStore.latest(tmp_path) is None
    s.path.with_suffix(".json").unlink()  # an array without its index (killed before it)
    assert store.ImageStore.latest(tmp_path) is None


def test_writer_abort_leaves_nothing(tmp_path):
    w = store.StoreWriter(tmp_path, 2, (4, 4, 3), "uint16")
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_no_space_is_one_line_before_any_work(tmp_path, monkeypatch, phantom_dir, small_config):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the store cannot be written")
    monkeypatch.setattr(decode, "decode_file", no_decoding)
    small_config.data.dir = str(phantom_dir)
    with pytest.raises(store.DiskSpaceError, match=r"image store \(48 images\) needs 1\.1 MiB "
                       r"in .*store-uint16, only 0\.0 MiB free"):
        dataset.prepare_dataset(small_config, tmp_path, progress=False)


def test_new_files_decode_only_themselves(tmp_path, phantom_dir, small_config, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    small_config.data.dir = str(data)
    w = tmp_path / "w"
    ds = dataset.prepare_dataset(small_config, w, progress=False)
    first = ds.images.subset(np.arange(len(ds.names)))[:]
    shutil.copy(data / "yes" / "synthetic_yes_000.png", data / "no" / "copy.png")  # a duplicate
    extra = data / "yes" / "new.png"
    import cv2
    cv2.imwrite(str(extra), (np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8))
    decoded = []
    real = decode.decode_file
    monkeypatch.setattr(decode, "decode_file", lambda p, **k: decoded.append(p.name) or real(p, **k))
    ds2 = dataset.prepare_dataset(small_config, w, progress=False)
    assert decoded == ["new.png"]  # the copy has the bytes of a stored file
    stores = list((w / "cache" / "preprocessed").glob("*/store-uint16/images-*.npy"))
    assert len(stores) == 1  # the old store was replaced, not kept beside the new one
    assert "yes/new.png" in ds2.names
    same = [ds2.names.index(n) for n in ds.names if n in ds2.names]
    np.testing.assert_array_equal(ds2.images[same], first[[ds.names.index(ds2.names[i]) for i in same]])


def test_copy_rows_equal_make_copies(tmp_path):
    imgs = _images(6, size=16)
    s = _write(tmp_path, imgs)
    rows = s.rows([f"sha{i}" for i in range(6)])
    plan = augment.CopyPlan(source=np.array([0, 2, 2, 5, 1]), copy=np.array([0, 0, 1, 0, 0]),
                            label=np.zeros(5, int), rng=augment.copy_keys(0, [0, 2, 2, 5, 1],
                                                                          [0, 0, 1, 0, 0]),
                            seed=0)
    params = augment.AugmentParams(rotation=20, shift=0.1, hflip=True, brightness=0.1)
    eager, _, _ = augment.make_copies(rows[:], np.zeros(6, int), plan, params, chunk=4)
    lazy = augment.CopyRows(rows, plan, params, chunk=4)
    assert lazy.shape == eager.shape
    np.testing.assert_allclose(lazy[:], eager, atol=1e-6)
    np.testing.assert_allclose(lazy[np.array([4, 0])], eager[[4, 0]], atol=1e-6)
    np.testing.assert_allclose(lazy.subset([3])[:], eager[[3]], atol=1e-6)


def test_prefetch_keeps_order_raises_and_stops_early():
    assert list(store.prefetch(iter(range(50)), depth=3)) == list(range(50))

    def boom():
        yield 1
        raise ValueError("bad batch")
    with pytest.raises(ValueError, match="bad batch"):
        list(store.prefetch(boom()))
    it = store.prefetch(iter(range(10**6)), depth=2)
    assert next(it) == 0
    it.close()  # the producer thread is told to stop and unblocked


def test_full_disk_is_one_line_and_exit_3(tmp_path, phantom_dir):
    """A real small file system (tmpfs, root only) too small for the store."""
    import os
    import subprocess
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    w = tmp_path / "small"
    w.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(w)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = run_launch("--config.pipeline=prepare", f"--config.data.dir={phantom_dir}",
                       "--config.compilation_cache=False", config="configs/quickstart.py:quick",
                       workdir=w, timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(w)])
    err = [ln for ln in r.stderr.splitlines() if not ln[:1] in "IWE" or ln.startswith("error")]
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert any(ln.startswith("error: the image store (48 images) needs 1.1 MiB") and "free" in ln
               for ln in err), err
