"""The on-disk image store: preprocessed images once per preprocessing key, read by index.

    w = StoreWriter(cache_dir, n_rows=len(todo), shape=(S, S, 3), dtype="uint16")
    w.put(row, image01)                       # or w.copy(row, old_store, old_row)
    store = w.commit(shas)                    # images-<fingerprint>.npy + .json, atomically
    store = ImageStore.latest(cache_dir)      # the newest complete store, or None
    images = store.rows(["<sha256>", ...])    # ImageRows: what `Dataset.images` is
    images[idx]                               # (len(idx), S, S, 3) float32 in [0, 1], from disk
    images.subset(idx)                        # a lazy view of some rows (nothing read)
    for batch in prefetch(batches): ...       # the next batch read while this one computes

Images are kept as uint16 (16-bit scans keep their depth) or uint8 in one `.npy` per store
(`np.load(path, mmap_mode="r")` opens it for a look), read and written row by row with
pread/pwrite, never mapped, so memory does not grow with the number of scans: only the
rows a batch asks for are read, into fresh arrays. A store is written under a temporary name and renamed once complete;
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


class RowFile:
    """An (M, ...) `.npy` file read and written row by row with pread/pwrite. Never mapped
    into memory: rows read are copied into fresh arrays (the kernel's page cache keeps
    hot files fast without counting in the process's resident memory, as a memory map's
    pages would), so a 30 GB store costs a batch's worth of RAM."""

    def __init__(self, path: Path, writable: bool = False):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array is not an image store")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted, unique) as one array; runs of consecutive rows in one read each."""
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if not len(run):
                continue
            n = len(run) * self.row_bytes
            buf = os.pread(self.fd, n, self.offset + int(rows[run[0]]) * self.row_bytes)
            if len(buf) != n:
                raise OSError(f"{self.path}: short read (file truncated?)")
            flat[run[0]:run[-1] + 1] = np.frombuffer(buf, np.uint8).reshape(len(run), -1)
        return out

    def write(self, row: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, self.dtype).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"row of {len(data)} bytes, the store holds {self.row_bytes}")
        os.pwrite(self.fd, data, self.offset + row * self.row_bytes)

    def close(self, _close=os.close) -> None:  # bound now: __del__ may run at shutdown
        if self.fd >= 0:
            _close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


class ImageRows:
    """Float32 images in [0, 1] backed by rows of an on-disk store; array-like.

    `len`, `shape`, `dtype`, `ndim`; indexing with an int, a slice, a bool mask or an integer
    array of any shape reads those rows only. `subset(idx)` is a lazy view (nothing read).
    `np.asarray(rows)` reads every row: for small sets (tests, research scripts) only.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, file: RowFile, rows: np.ndarray):
        self._file, self._rows = file, np.asarray(rows, np.int64)
        self._scale = _scale(file.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows),) + tuple(self._file.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stored_dtype(self) -> np.dtype:
        """What the store holds (uint16 or uint8): part of what the numbers depend on."""
        return self._file.dtype

    def __len__(self) -> int:
        return len(self._rows)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        flat = rows.ravel()
        # Sorted unique rows: one forward pass over the file, each row read once.
        uniq, inv = np.unique(flat, return_inverse=True)
        data = self._file.read(uniq)[inv.ravel()]
        out = data.astype(np.float32) / self._scale
        return out.reshape(rows.shape + out.shape[1:])

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self._read(self._rows[[idx]])[0]
        return self._read(self._rows[idx] if isinstance(idx, slice) else
                          self._rows[np.asarray(idx)])

    def subset(self, idx) -> ImageRows:
        return ImageRows(self._file, self._rows[np.asarray(idx)])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ImageRows(shape={self.shape}, stored as {self._file.dtype})"


def take(images, idx):
    """Rows `idx` of `images`, lazily for store-backed images (`ImageRows.subset`)."""
    return images.subset(idx) if hasattr(images, "subset") else images[np.asarray(idx)]


class ImageStore:
    """One complete store: an (M, S, S, 3) row file and the sha256 of each row."""

    def __init__(self, path: Path, shas: list[str]):
        self.path = Path(path)
        self.file = RowFile(self.path)
        self.shas = list(shas)
        self.row_of = {s: i for i, s in enumerate(self.shas) if s}

    @property
    def shape(self) -> tuple[int, ...]:
        return self.file.shape

    def rows(self, shas: Iterable[str]) -> ImageRows:
        return ImageRows(self.file, np.array([self.row_of[s] for s in shas], np.int64))

    def image(self, sha: str) -> np.ndarray:
        return self.file.read(np.array([self.row_of[sha]]))[0]

    @staticmethod
    def latest(directory: Path) -> ImageStore | None:
        """The newest complete store in `directory` (its index names its rows and shape)."""
        d = io.resolve(directory)
        for meta in sorted(d.glob("images-*.json"), key=lambda p: p.stat().st_mtime,
                           reverse=True):
            try:
                doc = json.loads(meta.read_text())
                store = ImageStore(meta.with_suffix(".npy"), doc["shas"])
                size = store.path.stat().st_size
            except (OSError, ValueError, KeyError) as e:
                log.warning("image store %s unreadable (%s): ignored", meta, e)
                continue
            f = store.file
            if (list(f.shape) == doc["shape"] and f.dtype.name == doc["dtype"]
                    and len(store.shas) == doc["shape"][0]
                    and size == f.offset + f.shape[0] * f.row_bytes):
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
    """Fills a new store row by row in a temporary file; `commit` renames it into place
    and writes its index. Nothing is read from it before then."""

    def __init__(self, directory: Path, n_rows: int, shape: tuple[int, ...], dtype: str):
        self.directory = Path(directory)
        self.dtype = np.dtype(STORE_DTYPES[dtype][0])
        self.final_dir = self.directory if io.is_writer() else io.private_path(self.directory)
        need = n_rows * int(np.prod(shape)) * self.dtype.itemsize
        check_free_space(self.final_dir, need, f"the image store ({n_rows} images)")
        fd, self.tmp = tempfile.mkstemp(dir=self.final_dir, prefix=".images.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # the .npy header, then a sparse file of rows
            np.lib.format.write_array_header_2_0(
                f, {"descr": self.dtype.str, "fortran_order": False,
                    "shape": (n_rows,) + tuple(shape)})
            f.truncate(f.tell() + need)
        self.file = RowFile(Path(self.tmp), writable=True)

    def put(self, row: int, image01: np.ndarray) -> None:
        self.file.write(row, quantise(image01, self.dtype))

    def copy(self, row: int, store: ImageStore, sha: str) -> None:
        src = store.image(sha)
        if src.dtype == self.dtype:
            self.file.write(row, src)
        else:  # another store dtype: through [0, 1]
            self.file.write(row, quantise(src.astype(np.float32) / _scale(src.dtype), self.dtype))

    def commit(self, shas: list[str]) -> ImageStore:
        shape = list(self.file.shape)
        os.fsync(self.file.fd)
        self.file.close()
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
        self.file.close()
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
