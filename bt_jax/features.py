"""Jitted, data-parallel feature extraction with an on-disk cache.

    extract_fn = make_extract_fn(module)                  # jitted (variables, x01) -> (B, D)
    feats = extract_features(module, variables, images)   # (N, D) float32, padded batches
    feats = cached(workdir, key_parts, lambda: extract_features(...))

The batch axis is sharded over every visible device (`jax.sharding.Mesh` named "data");
the last batch is padded, so one compiled function serves a whole data set. Cache entries
live in W/cache/features/<key>.npy, keyed by everything the numbers depend on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bt_jax import io
from bt_jax.compilation import forward_compiler_options
from bt_jax.sharding import batched_apply, data_mesh  # noqa: F401  (data_mesh: public)

log = logging.getLogger(__name__)
FEATURES_VERSION = 1


def extract_fn(module, variables, images, output: str = "pre_logits"):
    """Pure: images in [0, 1] (B, H, W, 3) -> float32 features named `output`."""
    _, out = module.apply(variables, images, train=False)
    return out[output].astype(jnp.float32)


def make_extract_fn(module, *, mesh: Mesh | None = None, output: str = "pre_logits"):
    """The jitted extractor for `module`, batch sharded over `mesh` (all devices by default)."""
    mesh = mesh or data_mesh()
    batch = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())
    return jax.jit(lambda v, x: extract_fn(module, v, x, output),
                   in_shardings=(repl, batch), out_shardings=batch,
                   compiler_options=forward_compiler_options())


def extract_features(module, variables, images: np.ndarray, *, batch_size: int = 32,
                     mesh: Mesh | None = None, output: str = "pre_logits", fn=None,
                     progress: bool = False, desc: str = "features",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Features of every image, in order (`sharding.batched_apply`: one compiled shape).
    out: a (len(images), D) float32 array to fill instead of a new one."""
    mesh = mesh or data_mesh()
    fn = fn or make_extract_fn(module, mesh=mesh, output=output)
    res = batched_apply(fn, variables, images, batch_size=batch_size, mesh=mesh,
                        progress=progress, desc=desc, out=out)
    return np.zeros((0, 0), np.float32) if res is None else res


def cache_key(parts: dict) -> str:
    blob = json.dumps({"v": FEATURES_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached(workdir: Path, parts: dict, compute: Callable[[], np.ndarray], *,
           name: str = "features") -> np.ndarray:
    """Loads W/cache/features/<key>.npy if present, else computes, saves and returns it."""
    d = Path(workdir) / "cache" / "features"
    d.mkdir(parents=True, exist_ok=True)
    key = cache_key(parts)
    path = d / f"{key}.npy"
    if path.exists():
        log.info("%s: reusing cached features %s", name, path)
        return load_aligned(path)
    arr = np.asarray(compute(), np.float32)
    if not io.is_writer():  # process 0 writes the cache, maybe later: keep this process's own
        out = aligned_empty(arr.shape, arr.dtype)
        out[...] = arr
        return out
    io.atomic_write(path, lambda f: np.save(f, arr), binary=True, cache=True)
    io.atomic_write(d / f"{key}.json", lambda f: json.dump(parts, f, sort_keys=True, default=str),
                    cache=True)
    log.info("%s: computed %s features, cached at %s", name, arr.shape, path)
    del arr   # read back aligned (from the page cache): one copy alive at a time
    return load_aligned(path)


ALIGN = 64  # XLA:CPU uses a host buffer in place (no copy) when it is 64-byte aligned


def load_aligned(path: Path) -> np.ndarray:
    """An .npy array in a 64-byte aligned buffer, so `jax.device_put` on a CPU aliases it
    instead of copying (np.load's buffers are 16-byte aligned: at 100k x 1280 the head
    search held the features twice)."""
    with open(path, "rb") as f:
        fmt = np.lib.format
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(
            fmt.read_magic(f))
        shape, fortran, dtype = read(f) if read else ((), True, None)
        if fortran or dtype.hasobject:
            return np.load(path)
        out = aligned_empty(shape, dtype)
        view = out.reshape(-1).view(np.uint8)
        if f.readinto(view) != view.nbytes:
            raise OSError(f"{path}: truncated .npy file (expected {view.nbytes} data bytes)")
    return out


def aligned_empty(shape, dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(n + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + n].view(dtype).reshape(shape)
