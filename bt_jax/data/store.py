"""The on-disk image store: preprocessed images once per preprocessing key, read by index.

    w = StoreWriter(cache_dir, n_rows=len(todo), shape=(S, S, 3), dtype="uint16")
    w.put(row, image01)                       # or w.copy(row, old_store, old_row)
    store = w.commit(shas)                    # images-<fingerprint>.npy + .json, atomically
    store = ImageStore.latest(cache_dir)      # the newest complete store, or None
    images = store.rows(["<sha256>", ...])    # ImageRows: what `Dataset.images` is
    images[idx]                               # (len(idx), S, S, 3) float32 in [0, 1], from disk
    images.subset(idx)                        # a lazy view of some rows (nothing read)
    for batch in prefetch(batches): ...       # the next batch read while this one computes

Images are kept as uint16 (16-bit scans keep their depth) or uint8 in one memory-mapped
`.npy` per store, so memory does not grow with the number of scans: only the rows a batch
asks for are read. A store is written under a temporary name and renamed once complete;
its `.json` (row -> file sha256, dtype, shape) is written after it, so a store without its
index, or whose size does not match, is never read. A new store (new files in the folder)
copies the rows it can from the previous one and decodes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.errors import EnvironmentProblem

log = logging.getLogger(__name__)
STORE_DTYPES = {"uint16": (np.uint16, 65535.0), "uint8": (np.uint8, 255.0)}


class DiskSpaceError(EnvironmentProblem, OSError):
    """The cache cannot hold the store: raised before any work, naming both sizes."""

    hint = "finished work is kept in the workdir; run the same command again to resume"


def _scale(dtype) -> float:
    return STORE_DTYPES[np.dtype(dtype).name][1]


def quantise(image01: np.ndarray, dtype) -> np.ndarray:
    """Float image in [0, 1] -> the store's integer form."""
    return np.round(np.asarray(image01) * _scale(dtype)).astype(dtype)


class ImageRows:
    """Float32 images in [0, 1] backed by rows of a memory-mapped store; array-like.

    `len`, `shape`, `dtype`, `ndim`; indexing with an int, a slice, a bool mask or an integer
    array of any shape reads those rows only. `subset(idx)` is a lazy view (nothing read).
    `np.asarray(rows)` reads every row: for small sets (tests, research scripts) only.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self._array, self._rows = array, np.asarray(rows, np.int64)
        self._scale = _scale(array.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows),) + tuple(self._array.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stored_dtype(self) -> np.dtype:
        """What the store holds (uint16 or uint8): part of what the numbers depend on."""
        return self._array.dtype

    def __len__(self) -> int:
        return len(self._rows)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        flat = rows.ravel()
        # Sorted unique rows: one forward pass over the file, each row read once.
        uniq, inv = np.unique(flat, return_inverse=True)
        data = np.asarray(self._array[uniq])[inv.ravel()]
        out = data.astype(np.float32) / self._scale
        return out.reshape(rows.shape + out.shape[1:])

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self._read(self._rows[[idx]])[0]
        return self._read(self._rows[idx] if isinstance(idx, slice) else
                          self._rows[np.asarray(idx)])

    def subset(self, idx) -> ImageRows:
        return ImageRows(self._array, self._rows[np.asarray(idx)])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ImageRows(shape={self.shape}, stored as {self._array.dtype})"


def take(images, idx):
    """Rows `idx` of `images`, lazily for store-backed images (`ImageRows.subset`)."""
    return images.subset(idx) if hasattr(images, "subset") else images[np.asarray(idx)]


class ImageStore:
    """One complete store: a memory-mapped (M, S, S, 3) array and the sha256 of each row."""

    def __init__(self, path: Path, shas: list[str]):
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r")
        self.shas = list(shas)
        self.row_of = {s: i for i, s in enumerate(self.shas) if s}

    def rows(self, shas: Iterable[str]) -> ImageRows:
        return ImageRows(self.array, np.array([self.row_of[s] for s in shas], np.int64))

    def image(self, sha: str) -> np.ndarray:
        return np.asarray(self.array[self.row_of[sha]])

    @staticmethod
    def latest(directory: Path) -> ImageStore | None:
        """The newest complete store in `directory` (its index names its rows and shape)."""
        d = io.resolve(directory)
        for meta in sorted(d.glob("images-*.json"), key=lambda p: p.stat().st_mtime,
                           reverse=True):
            try:
                doc = json.loads(meta.read_text())
                store = ImageStore(meta.with_suffix(".npy"), doc["shas"])
            except (OSError, ValueError, KeyError) as e:
                log.warning("image store %s unreadable (%s): ignored", meta, e)
                continue
            if (list(store.array.shape) == doc["shape"] and store.array.dtype.name == doc["dtype"]
                    and len(store.shas) == doc["shape"][0]):
                return store
            log.warning("image store %s does not match its index: ignored", meta)
        return None


def check_free_space(directory: Path, need_bytes: int, what: str) -> None:
    """DiskSpaceError naming the space needed and free, before any work is done."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if need_bytes > free:
        raise DiskSpaceError(f"{what} needs {_size(need_bytes)} in {directory}, only "
                             f"{_size(free)} free; free some space or point --workdir at a "
                             "bigger disk")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class StoreWriter:
    """Fills a new store row by row in a temporary memory-mapped file; `commit` renames it
    into place and writes its index. Nothing is read from it before then."""

    def __init__(self, directory: Path, n_rows: int, shape: tuple[int, ...], dtype: str):
        self.directory = Path(directory)
        self.dtype = np.dtype(STORE_DTYPES[dtype][0])
        self.final_dir = self.directory if io.is_writer() else io.private_path(self.directory)
        need = n_rows * int(np.prod(shape)) * self.dtype.itemsize
        check_free_space(self.final_dir, need, f"the image store ({n_rows} images)")
        fd, self.tmp = tempfile.mkstemp(dir=self.final_dir, prefix=".images.", suffix=".tmp")
        os.close(fd)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype,
                                               shape=(n_rows,) + tuple(shape))

    def put(self, row: int, image01: np.ndarray) -> None:
        self.array[row] = quantise(image01, self.dtype)

    def copy(self, row: int, store: ImageStore, sha: str) -> None:
        src = store.image(sha)
        if src.dtype == self.dtype:
            self.array[row] = src
        else:  # another store dtype: through [0, 1]
            self.array[row] = quantise(src.astype(np.float32) / _scale(src.dtype), self.dtype)

    def commit(self, shas: list[str]) -> ImageStore:
        shape = list(self.array.shape)
        self.array.flush()
        del self.array
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        fp = hashlib.sha256(json.dumps([shas, shape, self.dtype.name]).encode()).hexdigest()[:16]
        path = self.final_dir / f"images-{fp}.npy"
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, path)
        # Beside the array, in this process's own folder (io.atomic_write would redirect
        # a non-writer's file a second time).
        fd, tmp = tempfile.mkstemp(dir=self.final_dir, prefix=".images.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"shas": shas, "shape": shape, "dtype": self.dtype.name}, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path.with_suffix(".json"))
        return ImageStore(path, shas)

    def abort(self) -> None:
        self.__dict__.pop("array", None)
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def remove_others(directory: Path, keep: ImageStore) -> None:
    """Older stores in `directory` (superseded by `keep`) and temporaries left by a kill."""
    d = keep.path.parent
    for p in list(d.glob("images-*.npy")) + list(d.glob("images-*.json")) + list(d.glob(".images.*.tmp")):
        if p.with_suffix("") != keep.path.with_suffix(""):
            p.unlink(missing_ok=True)


def prefetch(it: Iterable, depth: int = 2) -> Iterator:
    """Yields `it`'s items, produced `depth` ahead in a background thread (reading the next
    batch from disk while the device computes this one). Exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def fill():
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((False, e))

    t = threading.Thread(target=fill, daemon=True, name="bt_jax-prefetch")
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
