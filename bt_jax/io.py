"""Atomic file writes: readers never see a half-written file, a crash leaves no debris.

    from bt_jax import io
    io.write_text(W / "report.md", text)
    io.write_json(W / "model.json", card)              # indent 1, UTF-8
    io.write_bytes(cache / "x.npy", blob)
    io.atomic_write(W / "plot.png", lambda f: fig.savefig(f, format="png"), binary=True)

Every file the project writes goes through `atomic_write`: a temp file beside the target,
then `os.replace`, which is atomic on POSIX and Windows. A run killed mid-write keeps the
previous complete version (or none), never a truncated one.

In a multi-process run (`sharding.initialize`) every process computes the same results but
only process 0 writes into the (shared) workdir. The others write into a private overlay
folder that mirrors absolute paths and is removed at exit; `read_*`/`exists`/`resolve`
look there first, so a process reads back exactly what it wrote itself and never depends
on how far process 0 has got. Cache entries (`cache=True`) are not kept by the others.
`barrier(name)` makes every process wait for the rest (e.g. after process 0 wrote data).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax


_OVERLAY: list[Path] = []  # this process's private copies (processes > 0 only)


def is_writer() -> bool:
    """False on every process but 0 of a multi-process run."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def _overlay(path) -> Path:
    if not _OVERLAY:
        _OVERLAY.append(Path(tempfile.mkdtemp(prefix=f"bt_jax-process{jax.process_index()}-")))
        atexit.register(shutil.rmtree, _OVERLAY[0], True)
    return _OVERLAY[0] / Path(path).absolute().relative_to(Path(path).absolute().anchor)


def private_path(path) -> Path:
    """Where this process writes `path` when it must read it back itself (a memory-mapped
    file): `path` on process 0, its private overlay copy on the others."""
    return Path(path) if is_writer() else _overlay(path)


def resolve(path) -> Path:
    """Where this process reads `path`: its own overlay copy if it wrote one, else `path`."""
    if _OVERLAY:
        own = _overlay(path)
        if own.exists():
            return own
    return Path(path)


def exists(path) -> bool:
    return resolve(path).exists()


def read_text(path) -> str:
    return resolve(path).read_text(encoding="utf-8")


def read_bytes(path) -> bytes:
    return resolve(path).read_bytes()


def read_json(path) -> Any:
    return json.loads(read_text(path))


def barrier(name: str) -> None:
    """Every process of a multi-process run waits here for all the others."""
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"bt_jax:{name}")


def atomic_write(path, write: Callable, *, binary: bool = False, cache: bool = False) -> Path:
    """Calls write(file) on a temp file beside `path`, then renames it into place. Returns
    `path` (on processes > 0 the bytes went to their overlay, or nowhere for a cache)."""
    given = path = Path(path)
    if not is_writer():
        if cache:
            return given
        path = _overlay(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w",
                       **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return given


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), binary=True)


def write_json(path, obj: Any, *, indent: int | None = 1, default=None, **kw) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=default, **kw))
