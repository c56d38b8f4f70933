"""Atomic file writes: readers never see a half-written file, a crash leaves no debris.

    from bt_jax import io
    io.write_text(W / "report.md", text)
    io.write_json(W / "model.json", card)              # indent 1, UTF-8
    io.write_bytes(cache / "x.npy", blob)
    io.atomic_write(W / "plot.png", lambda f: fig.savefig(f, format="png"), binary=True)

Every file the project writes goes through `atomic_write`: a temp file beside the target,
then `os.replace`, which is atomic on POSIX and Windows. A run killed mid-write keeps the
previous complete version (or none), never a truncated one. In a multi-process run
(`sharding.initialize`) only process 0 writes; the others compute the same results and
skip the write, so a shared workdir gets each file once.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax


def is_writer() -> bool:
    """False on every process but 0 of a multi-process run."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def atomic_write(path, write: Callable, *, binary: bool = False) -> Path:
    """Calls write(file) on a temp file beside `path`, then renames it into place."""
    path = Path(path)
    if not is_writer():
        return path
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
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), binary=True)


def write_json(path, obj: Any, *, indent: int | None = 1, default=None, **kw) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=default, **kw))
