"""Data parallelism: one mesh over every device, and one padded fixed-batch apply loop.

    mesh = data_mesh()                                        # axis "data" over jax.devices()
    fn = jax.jit(lambda v, x: model.apply(v, x)[0])           # any per-row function
    out = batched_apply(fn, variables, images, batch_size=32) # host arrays, N rows, in order

Every caller that applies a model to many rows (features, prediction, Grad-CAM,
validation passes) goes through `batched_apply`: batches have one shape (the last is
zero-padded and the padding dropped), so a data set of any size compiles once; the batch
is rounded up to a multiple of the device count and sharded over the mesh, parameters
are replicated.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def global_batch(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's device count."""
    ndev = mesh.devices.size
    return max(ndev, math.ceil(batch_size / ndev) * ndev)


def batched_apply(fn: Callable, variables, *arrays: np.ndarray, batch_size: int = 32,
                  mesh: Mesh | None = None, progress: bool = False, desc: str = "batches") -> Any:
    """fn(variables, *batch) -> pytree of arrays with a leading batch axis, applied to
    `arrays` (equal first dimension) in fixed batches; returns the pytree of host arrays
    with exactly len(arrays[0]) rows. Padding rows are zeros and never returned."""
    mesh = mesh or data_mesh()
    bs = global_batch(batch_size, mesh)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"batched_apply: arrays differ in length {[len(a) for a in arrays]}")
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    rows = NamedSharding(mesh, P("data"))
    steps = range(0, n, bs)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=desc, unit="batch", leave=False)
    chunks = []
    for s in steps:
        batch = []
        for a in arrays:
            x = np.asarray(a[s:s + bs])
            if len(x) < bs:
                x = np.concatenate([x, np.zeros((bs - len(x),) + x.shape[1:], x.dtype)])
            batch.append(jax.device_put(x, rows))
        out = fn(variables, *batch)
        chunks.append(jax.tree.map(lambda o: np.asarray(o)[:min(bs, n - s)], out))
    if not chunks:
        return None
    return jax.tree.map(lambda *cs: np.concatenate(cs), *chunks)
