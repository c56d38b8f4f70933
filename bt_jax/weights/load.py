"""The one place pipelines get a backbone: ported ImageNet weights, or a random init.

    module, variables, digest = load_backbone(config.model.name, config.weights, size=224)

The backbone's name (a config value) is looked up here, once; its spec goes on down
(weights/files.py: resolve, verify, port).

`weights.random_init=True` skips the weight files entirely (tests and benchmarks that
only need the architecture); its digest says so and reports carry it. `depthwise`
(config.model.depthwise) picks the DepthwiseConv implementation and `conv3x3`
(config.model.conv3x3) that of 3x3 stride-1 convolutions; the weights are the same.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp

from bt_jax.models import common, registry
from bt_jax.models.spec import BackboneSpec
from bt_jax.weights import files

RANDOM_DIGEST = "random-init"


def input_size(config, name: str) -> int:
    """The side images are preprocessed to for backbone `name`: its native resolution
    (the one its ImageNet weights were trained at) with `preprocess.native_size`, else
    `preprocess.size`."""
    return registry.get(name).default_size if config.preprocess.native_size else config.preprocess.size


def sized_config(config, name: str):
    """`config`, or a copy whose preprocess.size is `input_size(config, name)`: what a
    pipeline running backbone `name` reads (model.json records the size it trained at)."""
    size = input_size(config, name)
    if size == config.preprocess.size:
        return config
    out = config.copy_and_resolve_references()
    out.preprocess.size = size
    return out


def load_backbone(name: str | BackboneSpec, weights, *, size: int, dtype: str = "float32",
                  path: str | None = None, depthwise: str = "auto", conv3x3: str = "auto"):
    """(module, variables, digest) of backbone or recipe `name` (or its spec, looked up
    once by the caller), weights as `weights` (config.weights) say; `path` instead of
    weights.path."""
    spec = registry.get(name) if isinstance(name, str) else name
    return _load(spec, weights, size=size, dtype=common.DTYPES[dtype],
                 path=weights.path if path is None else path,
                 impls={"depthwise": depthwise, "conv3x3": conv3x3})


def _load(spec: BackboneSpec, weights, *, size: int, dtype, path: str, impls: dict):
    """A feature recipe loads each of its backbones' weights from the cache or installed
    packages (`path` names one backbone's file, so it is not used) under the branch's name;
    its digest is the recipe's name and theirs. `impls`: spec.make's depthwise and conv3x3."""
    if spec.recipe and not weights.random_init:
        parts = {s.name: _load(s, weights, size=size, dtype=dtype, path="", impls=impls)
                 for s in spec.recipe}
        variables = {col: {b: v[col] for b, (_, v, _) in parts.items() if col in v}
                     for col in ("params", "batch_stats")}
        blob = spec.name + "".join(f":{b}={d}" for b, (_, _, d) in parts.items())
        return (spec.make(dtype=dtype, **impls),
                {k: v for k, v in variables.items() if v},
                hashlib.sha256(blob.encode()).hexdigest()[:16])
    if weights.random_init:
        module = spec.make(dtype=dtype, **impls)
        variables = jax.jit(lambda r: module.init(r, jnp.zeros((1, size, size, 3)), train=False))(
            jax.random.PRNGKey(0))
        return module, jax.device_get(variables), RANDOM_DIGEST
    return files.load_variables(spec, path=path, cache_dir=weights.cache_dir,
                                allow_download=weights.allow_download, dtype=dtype,
                                **impls)


def available(names, weights, preferred_path_for: str = "") -> tuple[dict, dict]:
    """({name: weight file or RANDOM_DIGEST}, {name: why not}) for the given backbones."""
    found, errors = {}, {}
    for name in names:
        if weights.random_init:
            found[name] = RANDOM_DIGEST
            continue
        try:
            found[name] = _weight_files(registry.get(name), weights,
                                        weights.path if name == preferred_path_for else "")
        except files.WeightsNotFoundError as e:
            errors[name] = str(e)
    return found, errors


def _weight_files(spec: BackboneSpec, weights, path: str) -> str:
    """The weight file of `spec`; a recipe's files '+'-joined (its branches load from the
    cache or packages, as `_load` does). WeightsNotFoundError naming each one missing."""
    if not spec.recipe:
        return str(files.resolve_weights(spec, path=path, cache_dir=weights.cache_dir,
                                         allow_download=weights.allow_download))
    found, missing = [], []
    for s in spec.recipe:
        try:
            found.append(_weight_files(s, weights, ""))
        except files.WeightsNotFoundError as e:
            missing.append(f"{s.name}: {e}")
    if missing:
        raise files.WeightsNotFoundError("; ".join(missing))
    return "+".join(found)
