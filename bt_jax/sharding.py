"""Data parallelism: one mesh over every device of every process, and one padded
fixed-batch apply loop.

    initialize(config.distributed)                            # multi-host: before any JAX use
    mesh = data_mesh()                                        # axis "data" over jax.devices()
    fn = jax.jit(lambda v, x: model.apply(v, x)[0])           # any per-row function
    out = batched_apply(fn, variables, images, batch_size=32) # host arrays, N rows, in order
    state = replicate(state, mesh); batch = shard_rows(batch, mesh, axis=1)

Every caller that applies a model to many rows (features, prediction, Grad-CAM,
validation passes) goes through `batched_apply`: batches have one shape (the last is
zero-padded and the padding dropped), so a data set of any size compiles once; the batch
is rounded up to a multiple of the device count and sharded over the mesh, parameters
are replicated.

Training follows the same pattern (as big_vision does): one `jax.jit` over arrays placed
with `NamedSharding`s: parameters and optimiser state replicated, batch rows split over
"data". XLA inserts the gradient all-reduce and the cross-device means (BatchNorm batch
statistics are over the global batch). Several processes (hosts) are one JAX runtime
after `initialize`: `jax.devices()` lists every host's devices, each process passes the
same host batch and places only the rows of its own devices, and `to_host` gathers rows
that live on other hosts. The single-device path is the same code with a mesh of one.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bt_jax.data.store import prefetch


log = logging.getLogger(__name__)


def initialize(dist) -> bool:
    """Joins a multi-process run (`config.distributed`); True if one was joined.

    coordinator "" and no JAX_COORDINATOR_ADDRESS in the environment: one process, nothing
    to do. "auto": JAX reads the cluster scheduler's environment (SLURM, Open MPI, TPU
    pods, Kubernetes). "host:port": explicit, with num_processes and process_id (each
    may also come from JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    coordinator = dist.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if not coordinator or jax.distributed.is_initialized():
        return False
    env = os.environ.get
    kw = {}
    if coordinator != "auto":
        kw = {"coordinator_address": coordinator,
              "num_processes": int(env("JAX_NUM_PROCESSES", dist.num_processes)),
              "process_id": int(env("JAX_PROCESS_ID", dist.process_id))}
    if dist.cpu_collectives:  # CPU devices (tests, laptops) need one across processes
        jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
    jax.distributed.initialize(**kw)
    log.info("process %d of %d; %d local of %d devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def data_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def global_batch(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's device count."""
    ndev = mesh.devices.size
    return max(ndev, math.ceil(batch_size / ndev) * ndev)


def replicate(tree, mesh: Mesh):
    """Every leaf on every device of the mesh (parameters, optimiser state)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_rows(tree, mesh: Mesh, axis: int = 0):
    """Every leaf split along `axis` over "data" (its length: a multiple of the devices).
    Each process passes the same host arrays and places the rows of its own devices."""
    spec = P(*([None] * axis + ["data"]))
    return jax.device_put(tree, NamedSharding(mesh, spec))


def to_host(tree):
    """Host numpy copy of a pytree of arrays, gathering rows held by other processes."""
    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, tree)


def batched_apply(fn: Callable, variables, *arrays: np.ndarray, batch_size: int = 32,
                  mesh: Mesh | None = None, progress: bool = False, desc: str = "batches",
                  out: Any = None) -> Any:
    """fn(variables, *batch) -> pytree of arrays with a leading batch axis, applied to
    `arrays` (equal first dimension) in fixed batches; returns the pytree of host arrays
    with exactly len(arrays[0]) rows. Padding rows are zeros and never returned.
    out: host arrays of that structure and length to fill instead of new ones (e.g. a
    slice of a bigger array, so parts of a result never need concatenating)."""
    mesh = mesh or data_mesh()
    bs = global_batch(batch_size, mesh)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"batched_apply: arrays differ in length {[len(a) for a in arrays]}")
    variables = replicate(variables, mesh)
    steps = range(0, n, bs)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=desc, unit="batch", leave=False)

    def host_batches():  # read (e.g. from the on-disk image store) one batch ahead
        for s in steps:
            batch = []
            for a in arrays:
                x = np.asarray(a[s:s + bs])
                if len(x) < bs:
                    x = np.concatenate([x, np.zeros((bs - len(x),) + x.shape[1:], x.dtype)])
                batch.append(x)
            yield s, batch

    result = out  # one host array per output, filled batch by batch
    for s, batch in prefetch(host_batches()):
        out = to_host(fn(variables, *shard_rows(batch, mesh)))
        keep = min(bs, n - s)
        if result is None:
            result = jax.tree.map(lambda o: np.empty((n,) + o.shape[1:], o.dtype), out)
        # Copied out at once: a kept slice of the device's output would pin that buffer
        # (on CPU with huge pages, a 2 MiB page per batch: 6 GiB at 100,000 scans).
        jax.tree.map(lambda r, o, s=s, keep=keep: r.__setitem__(slice(s, s + keep), o[:keep]),
                     result, out)
    return result
