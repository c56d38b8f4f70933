"""Backbone registry: name -> constructor, input size, feature width, layer groups, weight port.

    spec = registry.get("vgg19")
    model, template = registry.make_template(spec, rng)        # init at spec.default_size
    model = registry.make_module(spec, dtype=jnp.bfloat16, depthwise=config.model.depthwise)
    variables = spec.port_keras(h5_path, template)
    mask = registry.select_groups(variables["params"], spec, ["block5"])   # bool pytree

Layer groups. `spec.layer_group(path)` gives a parameter's *finest* group name, built so
that every coarser group is a '_'-prefix of it: 'block5_conv3' is in 'block5';
'conv5_block3_2_bn' is in 'conv5_block3' and 'conv5'; classifier layers are 'top_<layer>'.
`spec.groups` lists the coarse groups from input to output. A selector `s` covers group
`g` when g == s or g starts with s + '_' (`group_matches`); so configs may name coarse
groups ("block5", "top") or Keras layers ("block5_conv3").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from bt_jax import config as cfg
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


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build, size, group and fill one backbone.

    make(include_top=False, num_classes=1000, dtype=jnp.float32) -> flax module whose
    __call__(x01, train=False) returns (logits | None, out dict). layer_group(path) takes a
    parameter path tuple (with or without the leading 'params'/'batch_stats') and returns the
    finest group name. port_keras(h5_path, variables_template) -> variables, or None when no
    Keras file exists. keras_files: {"notop": filename, "top": filename} of the official files.
    default_size is the native input size (the weights' training resolution). Backbones with
    depthwise layers (`depthwise=True`) also take make(..., depthwise="auto"|"shift"|"conv");
    `make_module` passes it only to those.
    """
    name: str
    make: Callable[..., Any]
    default_size: int
    feature_dim: int
    groups: tuple[str, ...]
    layer_group: Callable[[tuple], str]
    port_keras: Callable | None
    keras_files: Mapping[str, str]
    # PyTorch-sourced weights (efficientnet_lite*): port_torch(pth_path, variables_template).
    port_torch: Callable | None = None
    torch_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    depthwise: bool = False     # has DepthwiseConv layers (EfficientNet, MobileNet, Xception)
    early_output: str | None = None   # out[...] map a recipe's "early" option pools too
    early_dim: int = 0                # its channels
    recipe: tuple = ()          # a feature recipe's branch specs (models/composite.py)


def _keras_names(stem: str) -> dict[str, str]:
    return {"notop": f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "top": f"{stem}_weights_tf_dim_ordering_tf_kernels.h5"}


def _lite(name: str, make, port, file: str) -> BackboneSpec:
    """EfficientNet-Lite<n>: native size from `efficientnet.LITE`, weights from its .pth."""
    return BackboneSpec(
        name=name, make=make, default_size=efficientnet.LITE[name][2], feature_dim=1280,
        groups=efficientnet.GROUPS, layer_group=efficientnet.layer_group, port_keras=None,
        keras_files={}, port_torch=port, torch_files={"top": file}, depthwise=True,
        early_output=EARLY_EFFICIENTNET,
        early_dim=efficientnet.scaled_stages(efficientnet.LITE[name][0])[5][3])


EARLY_EFFICIENTNET = "stage6"   # the stage before the last block group (192 channels in Lite0)
_RESNET_GROUPS = ("conv1", "conv2", "conv3", "conv4", "conv5")
_VGG_GROUPS = ("block1", "block2", "block3", "block4", "block5", "top")

BACKBONES: dict[str, BackboneSpec] = {
    "resnet50v2": BackboneSpec(
        name="resnet50v2", make=resnet.ResNet50V2, default_size=224, feature_dim=2048,
        groups=_RESNET_GROUPS + ("post", "top"), layer_group=resnet.layer_group,
        port_keras=resnet.port_resnet50v2_keras, keras_files=_keras_names("resnet50v2")),
    "resnet50": BackboneSpec(
        name="resnet50", make=resnet.ResNet50, default_size=224, feature_dim=2048,
        groups=_RESNET_GROUPS + ("top",), layer_group=resnet.layer_group,
        port_keras=resnet.port_resnet50_keras, keras_files=_keras_names("resnet50")),
    "vgg16": BackboneSpec(
        name="vgg16", make=vgg.VGG16, default_size=224, feature_dim=512,
        groups=_VGG_GROUPS, layer_group=vgg.layer_group,
        port_keras=vgg.port_vgg16_keras, keras_files=_keras_names("vgg16")),
    "vgg19": BackboneSpec(
        name="vgg19", make=vgg.VGG19, default_size=224, feature_dim=512,
        groups=_VGG_GROUPS, layer_group=vgg.layer_group,
        port_keras=vgg.port_vgg19_keras, keras_files=_keras_names("vgg19")),
    "mobilenet": BackboneSpec(
        name="mobilenet", make=mobilenet.MobileNet, default_size=224, feature_dim=1024,
        groups=("conv1",) + tuple(f"block{i}" for i in range(1, 14)) + ("top",),
        layer_group=mobilenet.layer_group, port_keras=mobilenet.port_mobilenet_keras,
        keras_files={"notop": "mobilenet_1_0_224_tf_no_top.h5", "top": "mobilenet_1_0_224_tf.h5"},
        depthwise=True),
    "densenet121": BackboneSpec(
        name="densenet121", make=densenet.DenseNet121, default_size=224, feature_dim=1024,
        groups=("conv1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5", "bn", "top"),
        layer_group=densenet.layer_group, port_keras=densenet.port_densenet121_keras,
        keras_files=_keras_names("densenet121")),
    "efficientnetb0": BackboneSpec(
        name="efficientnetb0", make=efficientnet.EfficientNetB0, default_size=224, feature_dim=1280,
        groups=efficientnet.GROUPS, layer_group=efficientnet.layer_group,
        port_keras=efficientnet.port_efficientnetb0_keras,
        keras_files={"notop": "efficientnetb0_notop.h5", "top": "efficientnetb0.h5"}, depthwise=True,
        early_output=EARLY_EFFICIENTNET, early_dim=efficientnet.scaled_stages()[5][3]),
    "efficientnet_lite0": _lite("efficientnet_lite0", efficientnet.EfficientNetLite0,
                                efficientnet.port_efficientnet_lite0_torch,
                                "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": _lite("efficientnet_lite1", efficientnet.EfficientNetLite1,
                                efficientnet.port_efficientnet_lite1_torch,
                                "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": _lite("efficientnet_lite2", efficientnet.EfficientNetLite2,
                                efficientnet.port_efficientnet_lite2_torch,
                                "efficientnet-lite2-9656183e.pth"),
    "xception": BackboneSpec(
        name="xception", make=xception.Xception, default_size=299, feature_dim=2048,
        groups=xception.GROUPS, layer_group=xception.layer_group,
        port_keras=xception.port_xception_keras, keras_files=_keras_names("xception"),
        depthwise=True),
    "inceptionv3": BackboneSpec(
        name="inceptionv3", make=inception.InceptionV3, default_size=299, feature_dim=2048,
        groups=inception.GROUPS, layer_group=inception.layer_group,
        port_keras=inception.port_inceptionv3_keras, keras_files=_keras_names("inception_v3")),
}


def get(name: str) -> BackboneSpec:
    """The spec of backbone `name` or of a feature recipe ("a+b+flip", config.split_recipe);
    a KeyError names the problem and lists the known names."""
    if name in BACKBONES:
        return BACKBONES[name]
    if "+" in name:
        return _recipe_spec(name)
    raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))} "
                   f"and recipes of them ('+'-joined, options {cfg.RECIPE_OPTIONS})")


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


@functools.cache
def _recipe_spec(name: str) -> BackboneSpec:
    """A FeatureStack of the recipe's backbones. Its layer groups are each branch's groups
    prefixed by the branch name ("efficientnet_lite1_block7" is in "efficientnet_lite1")."""
    try:
        names, options = cfg.split_recipe(name)
    except ValueError as e:
        raise RecipeError(str(e)) from None
    specs = tuple(BACKBONES[n] for n in names)
    if "early" in options:
        lacking = [s.name for s in specs if s.early_output is None]
        if lacking:
            raise RecipeError(f"backbone {name!r}: option 'early' needs a known earlier stage; "
                           f"{lacking} have none (EfficientNet family only)")
    by_name = {s.name: s for s in specs}

    def make(include_top=False, num_classes=1000, dtype=jnp.float32, **kwargs):
        if include_top:
            raise ValueError(f"{name}: a feature recipe has no ImageNet classifier")
        branches = tuple(composite.Branch(
            s.name, functools.partial(make_module, s, dtype=dtype),
            s.default_size, s.early_output) for s in specs)
        return composite.FeatureStack(branches=branches, flip="flip" in options,
                                      early="early" in options, **kwargs)

    def layer_group(path) -> str:
        path = tuple(path)
        if path and path[0] in ("params", "batch_stats"):
            path = path[1:]
        return f"{path[0]}_{by_name[path[0]].layer_group(path[1:])}"

    early = "early" in options
    return BackboneSpec(
        name=name, make=make, default_size=max(s.default_size for s in specs),
        feature_dim=sum(s.feature_dim + (s.early_dim if early else 0) for s in specs),
        groups=tuple(f"{s.name}_{g}" for s in specs for g in s.groups),
        layer_group=layer_group, port_keras=None, keras_files={},
        depthwise=any(s.depthwise for s in specs), recipe=specs)


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


def make_module(spec: BackboneSpec, *, include_top: bool = False, num_classes: int = 1000,
                dtype=jnp.float32, depthwise: str = "auto", pointwise: str = "auto", **kwargs):
    """spec.make(...), with the depthwise implementation for backbones that have such layers
    and the 1x1 convolutions' (the parameters are the same whichever implementation; see
    models/depthwise.py and common.Conv). kwargs go to the module (e.g. name=)."""
    extra = {"depthwise": depthwise} if spec.depthwise else {}
    return spec.make(include_top=include_top, num_classes=num_classes, dtype=dtype,
                     pointwise=pointwise, **extra, **kwargs)


def make_template(spec: BackboneSpec, rng, *, include_top: bool = False, size: int | None = None,
                  dtype=jnp.float32, depthwise: str = "auto", pointwise: str = "auto"):
    """(model, variables) with init values; the template that `spec.port_keras` fills."""
    model = make_module(spec, include_top=include_top, dtype=dtype, depthwise=depthwise,
                        pointwise=pointwise)
    size = size or spec.default_size
    init = jax.jit(functools.partial(model.init, train=False))
    return model, init(rng, jnp.zeros((1, size, size, 3), jnp.float32))
