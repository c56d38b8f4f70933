"""The one place pipelines get a backbone: ported ImageNet weights, or a random init.

    module, variables, digest = load_backbone(config.model.name, config.weights, size=224)

`weights.random_init=True` skips the weight files entirely (tests and benchmarks that
only need the architecture); its digest says so and reports carry it. `depthwise`
(config.model.depthwise) picks the DepthwiseConv implementation; the weights are the same.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp

from bt_jax.models import registry as mreg
from bt_jax.weights import registry as wreg

RANDOM_DIGEST = "random-init"


def input_size(config, name: str) -> int:
    """The side images are preprocessed to for backbone `name`: its native resolution
    (the one its ImageNet weights were trained at) with `preprocess.native_size`, else
    `preprocess.size`."""
    return mreg.get(name).default_size if config.preprocess.native_size else config.preprocess.size


def sized_config(config, name: str):
    """`config`, or a copy whose preprocess.size is `input_size(config, name)`: what a
    pipeline running backbone `name` reads (model.json records the size it trained at)."""
    size = input_size(config, name)
    if size == config.preprocess.size:
        return config
    out = config.copy_and_resolve_references()
    out.preprocess.size = size
    return out


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def load_backbone(name: str, weights, *, size: int, dtype: str = "float32", path: str | None = None,
                  depthwise: str = "auto"):
    """(module, variables, digest). A feature recipe loads each of its backbones' weights
    from the cache or installed packages (`path` names one backbone's file, so it is not
    used) under the branch's name; its digest is the recipe's name and theirs."""
    spec = mreg.get(name)
    if spec.recipe and not weights.random_init:
        parts = {s.name: load_backbone(s.name, weights, size=size, dtype=dtype, path="",
                                       depthwise=depthwise) for s in spec.recipe}
        variables = {col: {b: v[col] for b, (_, v, _) in parts.items() if col in v}
                     for col in ("params", "batch_stats")}
        blob = name + "".join(f":{b}={d}" for b, (_, _, d) in parts.items())
        return (mreg.make_module(spec, dtype=_dtype(dtype), depthwise=depthwise),
                {k: v for k, v in variables.items() if v},
                hashlib.sha256(blob.encode()).hexdigest()[:16])
    if weights.random_init:
        module = mreg.make_module(spec, dtype=_dtype(dtype), depthwise=depthwise)
        variables = jax.jit(lambda r: module.init(r, jnp.zeros((1, size, size, 3)), train=False))(
            jax.random.PRNGKey(0))
        return module, jax.device_get(variables), RANDOM_DIGEST
    module, variables, digest = wreg.load_variables(
        name, path=weights.path if path is None else path, cache_dir=weights.cache_dir,
        allow_download=weights.allow_download, dtype=_dtype(dtype), depthwise=depthwise)
    return module, variables, digest


def available(names, weights, preferred_path_for: str = "") -> tuple[dict, dict]:
    """({name: weight file or RANDOM_DIGEST}, {name: why not}) for the given backbones."""
    found, errors = {}, {}
    for name in names:
        if weights.random_init:
            found[name] = RANDOM_DIGEST
            continue
        recipe = mreg.get(name).recipe
        if recipe:   # loaded branch by branch (load_backbone); here: do all resolve?
            sub, why = available([s.name for s in recipe], weights)
            if why:
                errors[name] = "; ".join(f"{b}: {m}" for b, m in why.items())
            else:
                found[name] = "+".join(sub.values())
            continue
        try:
            found[name] = str(wreg.resolve_weights(
                name, path=weights.path if name == preferred_path_for else "",
                cache_dir=weights.cache_dir, allow_download=weights.allow_download))
        except wreg.WeightsNotFoundError as e:
            errors[name] = str(e)
    return found, errors
