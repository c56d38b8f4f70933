"""The backbones: every family module's specs in one table, feature recipes of them, and
layer-group selection. The names allowed in a config are this table's (config.BACKBONES).

    spec = registry.get("vgg19")                               # or a recipe, "a+b+flip"
    model, template = registry.make_template(spec, rng)        # init at spec.default_size
    model = spec.make(dtype=jnp.bfloat16, depthwise=config.model.depthwise)
    variables = spec.port(h5_path, template)
    mask = registry.select_groups(variables["params"], spec, ["block5"])   # bool pytree

Layer groups. `spec.layer_group(path)` gives a parameter's *finest* group name, built so
that every coarser group is a '_'-prefix of it: 'block5_conv3' is in 'block5';
'conv5_block3_2_bn' is in 'conv5_block3' and 'conv5'; classifier layers are 'top_<layer>'.
`spec.groups` lists the coarse groups from input to output. A selector `s` covers group
`g` when g == s or g starts with s + '_' (`group_matches`); so configs may name coarse
groups ("block5", "top") or Keras layers ("block5_conv3").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
from flax import traverse_util

from bt_jax.errors import UserError
from bt_jax.models import (
    composite,
    densenet,
    efficientnet,
    inception,
    mobilenet,
    resnet,
    vgg,
    xception,
)
from bt_jax.models.spec import BackboneSpec

FAMILIES = (resnet, vgg, mobilenet, densenet, efficientnet, xception, inception)
BACKBONES: dict[str, BackboneSpec] = {s.name: s for family in FAMILIES for s in family.SPECS}
# Feature recipes: backbone names and options joined by '+', e.g.
# "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2" (features concatenated) or
# "efficientnet_lite1+flip+early" (models/composite.py). Anywhere a backbone is named.
RECIPE_OPTIONS = ("flip", "early")


def split_recipe(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(backbones, options) of a backbone name or feature recipe ('+'-joined): ValueError
    naming the part that is neither a backbone nor an option, a repeat, or no backbone."""
    parts = name.split("+")
    bad = [p for p in parts if p not in BACKBONES and p not in RECIPE_OPTIONS]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"backbone {name!r}: {'unknown part(s) ' + str(bad) if bad else 'a part repeats'}"
                         f"; expected backbones {tuple(BACKBONES)} and options {RECIPE_OPTIONS} "
                         "joined by '+'")
    backbones = tuple(p for p in parts if p in BACKBONES)
    if not backbones:
        raise ValueError(f"backbone {name!r}: no backbone among its parts")
    return backbones, tuple(o for o in RECIPE_OPTIONS if o in parts)


def get(name: str) -> BackboneSpec:
    """The spec of backbone `name` or of a feature recipe ("a+b+flip", `split_recipe`);
    a KeyError names the problem and lists the known names."""
    if name in BACKBONES:
        return BACKBONES[name]
    if "+" in name:
        return _recipe_spec(name)
    raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))} "
                   f"and recipes of them ('+'-joined, options {RECIPE_OPTIONS})")


def is_known(name: str) -> bool:
    try:
        get(name)
    except KeyError:
        return False
    return True


class RecipeError(UserError, KeyError):
    """A feature recipe that cannot be built (e.g. option 'early' on a backbone without a
    known earlier stage): a user's setting, so launch.py prints one line."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0])


def _stack(specs: tuple[BackboneSpec, ...], options: tuple[str, ...], name: str):
    """The recipe's module(include_top, num_classes, dtype, pointwise, depthwise, conv3x3,
    **kw)."""
    def module(include_top=False, num_classes=1000, dtype=jnp.float32, **kwargs):
        if include_top:
            raise ValueError(f"{name}: a feature recipe has no ImageNet classifier")
        branches = tuple(composite.Branch(s.name, functools.partial(s.make, dtype=dtype),
                                          s.default_size, s.early_output) for s in specs)
        return composite.FeatureStack(branches=branches, flip="flip" in options,
                                      early="early" in options, **kwargs)
    return module


@functools.cache
def _recipe_spec(name: str) -> BackboneSpec:
    """A FeatureStack of the recipe's backbones. Its layer groups are each branch's groups
    prefixed by the branch name ("efficientnet_lite1_block7" is in "efficientnet_lite1")."""
    try:
        names, options = split_recipe(name)
    except ValueError as e:
        raise RecipeError(str(e)) from None
    specs = tuple(BACKBONES[n] for n in names)
    if "early" in options:
        lacking = [s.name for s in specs if s.early_output is None]
        if lacking:
            raise RecipeError(f"backbone {name!r}: option 'early' needs a known earlier stage; "
                              f"{lacking} have none (EfficientNet family only)")
    by_name = {s.name: s for s in specs}

    def layer_group(path) -> str:
        path = tuple(path)
        if path and path[0] in ("params", "batch_stats"):
            path = path[1:]
        return f"{path[0]}_{by_name[path[0]].layer_group(path[1:])}"

    early = "early" in options
    return BackboneSpec(
        name=name, module=_stack(specs, options, name), default_size=max(s.default_size for s in specs),
        feature_dim=sum(s.feature_dim + (s.early_dim if early else 0) for s in specs),
        preprocess=None, groups=tuple(f"{s.name}_{g}" for s in specs for g in s.groups),
        layer_group=layer_group, port=None, depthwise=any(s.depthwise for s in specs),
        conv3x3=any(s.conv3x3 for s in specs),
        recipe=specs)


def group_matches(group: str, selector: str) -> bool:
    """Whether finest group `group` belongs to `selector` (itself, or a '_'-prefix of it)."""
    return group == selector or group.startswith(selector + "_")


def coarse_group(spec: BackboneSpec, group: str) -> str:
    """The entry of `spec.groups` containing finest group `group`; ValueError if none."""
    for coarse in spec.groups:
        if group_matches(group, coarse):
            return coarse
    raise ValueError(f"{spec.name}: layer group {group!r} is in none of {spec.groups}")


def layer_groups(params, spec: BackboneSpec):
    """A pytree shaped like `params` (or a whole variables dict) holding each leaf's finest group."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {k: spec.layer_group(tuple(str(p) for p in k)) for k in flat})


def select_groups(params, spec: BackboneSpec, selectors: Iterable[str]):
    """Bool pytree shaped like `params`: True where a leaf's group matches any selector.

    Raises ValueError naming each selector that matches no parameter (a typo in a staged
    config must not silently freeze everything).
    """
    selectors = list(selectors)
    flat = traverse_util.flatten_dict(layer_groups(params, spec))
    used = {s: False for s in selectors}
    mask = {}
    for k, group in flat.items():
        hits = [s for s in selectors if group_matches(group, s)]
        for s in hits:
            used[s] = True
        mask[k] = bool(hits)
    unknown = [s for s, u in used.items() if not u]
    if unknown:
        raise ValueError(f"{spec.name}: layer group selector(s) {unknown} match no parameter; "
                         f"coarse groups are {list(spec.groups)}, fine ones are Keras layer names")
    return traverse_util.unflatten_dict(mask)


def make_template(spec: BackboneSpec, rng, *, include_top: bool = False, size: int | None = None,
                  dtype=jnp.float32, depthwise: str = "auto", pointwise: str = "auto",
                  conv3x3: str = "auto"):
    """(model, variables) with init values; the template that `spec.port` fills."""
    model = spec.make(include_top=include_top, dtype=dtype, depthwise=depthwise,
                      pointwise=pointwise, conv3x3=conv3x3)
    size = size or spec.default_size
    init = jax.jit(functools.partial(model.init, train=False))
    return model, init(rng, jnp.zeros((1, size, size, 3), jnp.float32))
