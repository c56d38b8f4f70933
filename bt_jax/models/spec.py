"""What one backbone is: a BackboneSpec, defined in its family's module (`vgg.SPECS`, ...) and
collected by models/registry.py; the layers above take the spec, not its name.

    spec = registry.get("vgg19")
    model = spec.make(dtype=jnp.bfloat16, depthwise="auto", pointwise="auto", conv3x3="auto")
    source = spec.source(include_top=False)      # its official file: name, URL, hashes, package
    variables = spec.port(path, template)         # that file's tensors in the module's tree

A family module holds everything about its backbones in one place: the flax module, the
input convention (`preprocess`, applied inside the module), the layer groups, the weight
files with their hashes, and the port from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

# keras-applications' release folder of most Keras files
KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One official weight file of one backbone."""
    filename: str
    url: str | None                 # None: not downloadable (install `package` instead)
    sha256: str | None
    md5: str | None                 # Keras lists md5 file_hashes; used when sha256 is unknown
    has_top: bool                   # the file holds the ImageNet classifier
    format: str                     # "keras_h5" | "torch_pth"
    package: str | None = None      # importable package shipping the file ...
    package_dir: str = ""           # ... in this sub-folder
    pip_name: str | None = None


def keras_sources(folder: str, notop: str, top: str, md5_notop: str | None,
                  md5_top: str | None) -> dict[str, WeightSource]:
    """{"notop", "top"} of a Keras application: files `notop` and `top` under URL `folder`,
    with the md5 `file_hash`es Keras' own applications source lists (None: it lists none)."""
    return {"notop": WeightSource(notop, folder + notop, None, md5_notop, False, "keras_h5"),
            "top": WeightSource(top, folder + top, None, md5_top, True, "keras_h5")}


def keras_tf_sources(folder: str, stem: str, md5_notop: str | None,
                     md5_top: str | None) -> dict[str, WeightSource]:
    """keras_sources of the `<stem>_weights_tf_dim_ordering_tf_kernels[_notop].h5` pair."""
    name = f"{stem}_weights_tf_dim_ordering_tf_kernels"
    return keras_sources(folder, f"{name}_notop.h5", f"{name}.h5", md5_notop, md5_top)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build, size, group and fill one backbone.

    module(include_top, num_classes, dtype, pointwise, [depthwise,] [conv3x3,] [preprocess,] **kw)
    is the
    family's flax module with this backbone's architecture bound; `make` calls it with the
    spec's own facts. The module's __call__(x01, train=False, rows=None) returns
    (logits | None, out dict). default_size is the native input size (the weights' training
    resolution). layer_group(path) takes a parameter path tuple (with or without the
    leading 'params'/'batch_stats') and gives its finest group; `groups` lists the coarse
    ones from input to output. port(file, variables_template) -> variables reads the
    format of `sources` ({"notop"?, "top"}: the official files); None when there are none.
    """
    name: str
    module: Callable[..., Any]
    default_size: int
    feature_dim: int
    preprocess: str | None          # input convention (common.preprocess); None: per branch
    groups: tuple[str, ...]
    layer_group: Callable[[tuple], str]
    port: Callable | None
    sources: Mapping[str, WeightSource] = dataclasses.field(default_factory=dict)
    depthwise: bool = False         # has DepthwiseConv layers (EfficientNet, MobileNet, Xception)
    conv3x3: bool = False           # has 3x3 stride-1 Conv layers (VGG, ResNet, DenseNet, ...)
    early_output: str | None = None   # out[...] map a recipe's "early" option pools too
    early_dim: int = 0                # its channels
    recipe: tuple = ()              # a feature recipe's branch specs (models/composite.py)

    def make(self, *, include_top: bool = False, num_classes: int = 1000, dtype=jnp.float32,
             depthwise: str = "auto", pointwise: str = "auto", conv3x3: str = "auto", **kwargs):
        """The module. `depthwise` (DepthwiseConv), `pointwise` (1x1 Conv) and `conv3x3`
        (3x3 stride-1 Conv) pick implementations, not parameters (models/depthwise.py,
        common.Conv, models/winograd.py); depthwise and conv3x3 go only to backbones that
        have such layers. kwargs go to the module (e.g. name=)."""
        extra = {"depthwise": depthwise} if self.depthwise else {}
        if self.conv3x3:
            extra["conv3x3"] = conv3x3
        if self.preprocess is not None:
            extra["preprocess"] = self.preprocess
        return self.module(include_top=include_top, num_classes=num_classes, dtype=dtype,
                           pointwise=pointwise, **extra, **kwargs)

    def source(self, include_top: bool = False) -> WeightSource:
        """The official file: the no-top file unless a classifier is wanted (or none exists:
        each Lite package ships one file with its classifier). KeyError if it has none."""
        if not self.sources:
            raise KeyError(f"no weight file for backbone {self.name!r}")
        return self.sources["top"] if include_top or "notop" not in self.sources \
            else self.sources["notop"]
