"""Read legacy Keras HDF5 weight files and port them into Flax variables.

    layers = read_keras_h5("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    layers["block1_conv1"]          # [("block1_conv1/kernel:0", array(3, 3, 3, 64)), ...]
    variables = port_keras(path, model.init(rng, x), arch="vgg19", top_layers=("fc1", "fc2", "predictions"))

The layout is the one of the keras-applications files (and of `model.save_weights(*.h5)`
in Keras 2, or Keras 3's legacy writer): root attribute `layer_names`; one group per
layer with attribute `weight_names`; full-model files nest all that under `model_weights/`.
Porting is read -> rename/convert -> `strict_merge` (every tensor used once, shapes equal).
Nothing here imports Keras or TensorFlow.
"""

from __future__ import annotations

from bt_jax.errors import UserError
import os
import re
from collections.abc import Callable, Iterable

import h5py
import numpy as np

from bt_jax.porting.merge import PortError, strict_merge

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class KerasH5Error(UserError, ValueError):
    """The file is missing, not HDF5, not a Keras weight file, or truncated/corrupt."""


def _is_hdf5(path: str) -> bool:
    # The superblock may sit after a user block at 0, 512, 1024, 2048, ... bytes.
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _str_list(group, name: str) -> list[str] | None:
    """A string-list attribute; Keras splits long ones into name0, name1, ... chunks."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v)
            for chunk in chunks for v in np.atleast_1d(chunk)]


def read_keras_h5(path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every layer of a legacy Keras weight file, in file order, with its named tensors.

    Layers without weights (pads, activations) map to empty lists. Raises KerasH5Error
    naming the file and what is wrong with it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KerasH5Error(f"{path}: no such weight file")
    if not _is_hdf5(path):
        raise KerasH5Error(f"{path}: not an HDF5 file (no HDF5 signature); "
                           "expected a Keras .h5 weight file")
    try:
        with h5py.File(path, "r") as f:
            root = f
            if "layer_names" not in f.attrs and "layer_names0" not in f.attrs \
                    and isinstance(f.get("model_weights"), h5py.Group):
                root = f["model_weights"]     # a full-model file (model.save)
            names = _str_list(root, "layer_names")
            if names is None:
                raise KerasH5Error(f"{path}: HDF5 without a 'layer_names' attribute: "
                                   "not a Keras weight file")
            layers = {}
            for name in names:
                group = root.get(name)
                if not isinstance(group, h5py.Group):
                    raise KerasH5Error(f"{path}: layer {name!r} is listed in layer_names "
                                       "but has no group in the file (truncated or edited file)")
                weight_names = _str_list(group, "weight_names") or []
                tensors = []
                for wname in weight_names:
                    dset = group.get(wname)
                    if not isinstance(dset, h5py.Dataset):
                        raise KerasH5Error(f"{path}: tensor {wname!r} of layer {name!r} is "
                                           "listed in weight_names but missing")
                    tensors.append((wname, np.asarray(dset[()])))
                layers[name] = tensors
            return layers
    except OSError as e:   # h5py reports truncation and corruption as OSError
        raise KerasH5Error(f"{path}: truncated or corrupt HDF5 file ({e})") from e


def short_name(weight_name: str) -> str:
    """'conv1/conv/kernel:0' -> 'kernel' (Keras 2 and Keras 3 naming alike)."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def keras_layer_name(name: str) -> str:
    """Keras 2 allowed '/' in layer names (DenseNet's 'conv1/conv'); Keras 3 and our
    Flax modules use '_' ('conv1_conv')."""
    return name.replace("/", "_")


# Keras weight name -> (Flax collection, Flax leaf name). Conv2D/Dense kernels are HWIO /
# (in, out) in both frameworks, so they need no transpose.
_LEAVES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}


def keras_to_flax(layers: dict, *, origin: str, rename: Callable[[str], str] = keras_layer_name,
                  depthwise: str | None = None) -> dict[tuple[str, ...], np.ndarray]:
    """Convert `read_keras_h5` output to {(collection, module, leaf): array}.

    `depthwise`: regex (full match on the renamed layer) of DepthwiseConv2D layers, whose
    Keras kernel (kh, kw, C, 1) becomes Flax's grouped-conv kernel (kh, kw, 1, C).
    """
    source, seen = {}, {}
    for raw, tensors in layers.items():
        if not tensors:
            continue
        layer = rename(raw)
        if layer in seen:
            raise PortError(f"{origin}: layers {seen[layer]!r} and {raw!r} both map to {layer!r}")
        seen[layer] = raw
        is_dw = bool(depthwise and re.fullmatch(depthwise, layer))
        for wname, value in tensors:
            short = short_name(wname)
            if is_dw and short in ("depthwise_kernel", "kernel"):
                if value.ndim != 4 or value.shape[3] != 1:
                    raise PortError(f"{origin}: depthwise kernel {wname!r} has shape "
                                    f"{value.shape}; expected (kh, kw, C, 1)")
                source[("params", layer, "kernel")] = value.transpose(0, 1, 3, 2)
                continue
            if short not in _LEAVES:
                raise PortError(f"{origin}: tensor {wname!r} of layer {raw!r} has an unknown "
                                f"weight name {short!r}; known: {sorted(_LEAVES)}")
            collection, leaf = _LEAVES[short]
            key = (collection, layer, leaf)
            if key in source:
                raise PortError(f"{origin}: two tensors of layer {raw!r} map to {'/'.join(key)}")
            source[key] = value
    return source


def port_keras(path, template, *, arch: str, top_layers: Iterable[str],
               rename: Callable[[str], str] = keras_layer_name, depthwise: str | None = None):
    """Port a Keras application weight file into `template` (= `model.init(...)` variables).

    `top_layers` names the classifier layers. A file without them may fill a model with a
    top (the classifier keeps its init values, the only excused parameters); a file with
    them filling a model without a top drops exactly those layers. Anything else that does
    not match raises PortError naming the tensors.
    """
    origin = f"{os.fspath(path)} (ported as {arch})"
    top_layers = tuple(top_layers)
    raw = read_keras_h5(path)
    renamed = {k: rename(k) for k, v in raw.items() if v}
    file_top = [name for name in top_layers if name in renamed.values()]
    model_top = [name for name in top_layers if name in template.get("params", {})]
    excuse = None
    if model_top and not file_top:
        excuse = r"^params/(" + "|".join(map(re.escape, model_top)) + r")/"
    elif file_top and not model_top:
        raw = {k: v for k, v in raw.items() if renamed.get(k) not in top_layers}
    source = keras_to_flax(raw, origin=origin, rename=rename, depthwise=depthwise)
    return strict_merge(template, source, origin=origin, excuse=excuse)
