"""Test helper: Keras 3 reference models saved as legacy Keras HDF5 weight files.

    ref = reference("vgg19", include_top=False, size=64)
    ref.h5_path, ref.x01, ref.output       # file to port, input batch in [0, 1], Keras' output

Keras is a test-only dependency (the `dev` extra), run on its JAX backend; bt_jax never
imports it. Models are built with weights=None, then every BatchNorm gets random
non-trivial gamma/beta/moving statistics and every bias a random value, so a port that
mixes up names, transposes or epsilons cannot pass by accident.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

# arch -> (keras.applications constructor, keras.applications submodule with preprocess_input)
KERAS_APPS = {
    "resnet50v2": ("ResNet50V2", "resnet_v2"),
    "resnet50": ("ResNet50", "resnet50"),
    "vgg16": ("VGG16", "vgg16"),
    "vgg19": ("VGG19", "vgg19"),
    "mobilenet": ("MobileNet", "mobilenet"),
    "densenet121": ("DenseNet121", "densenet"),
}

_DIR = tempfile.mkdtemp(prefix="bt_jax_keras_ref_")


@dataclasses.dataclass(frozen=True)
class Reference:
    arch: str
    include_top: bool
    size: int
    h5_path: str
    x01: np.ndarray          # (2, size, size, 3) float32 in [0, 1]
    output: np.ndarray       # Keras model output: last feature map, or logits with the top


def _randomise(model, rng: np.random.Generator):
    for layer in model.layers:
        for w in layer.weights:
            leaf = w.path.rsplit("/", 1)[-1]
            shape = tuple(w.shape)
            if leaf == "gamma":
                w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif leaf in ("beta", "bias"):
                w.assign(rng.normal(0.0, 0.1, shape).astype("float32"))
            elif leaf == "moving_mean":
                w.assign(rng.normal(0.0, 0.2, shape).astype("float32"))
            elif leaf == "moving_variance":
                w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))


def build_keras(arch: str, include_top: bool, size: int, seed: int = 0):
    ctor, _ = KERAS_APPS[arch]
    keras.utils.set_random_seed(seed)
    kwargs = {"classifier_activation": None} if include_top else {}
    model = getattr(keras.applications, ctor)(weights=None, include_top=include_top,
                                              input_shape=(size, size, 3), **kwargs)
    _randomise(model, np.random.default_rng(seed))
    return model


def save_legacy_h5(model, path: str) -> str:
    """The layout of the keras-applications files: root `layer_names`, one group per layer."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def keras_preprocess(arch: str, x01: np.ndarray) -> np.ndarray:
    _, family = KERAS_APPS[arch]
    module = getattr(keras.applications, family)
    return np.asarray(module.preprocess_input(np.array(x01 * 255.0, dtype=np.float32)))


@functools.lru_cache(maxsize=None)
def reference(arch: str, include_top: bool = False, size: int = 64, seed: int = 0) -> Reference:
    """Build, randomise, save and run one Keras model (cached for the test session)."""
    model = build_keras(arch, include_top, size, seed)
    path = os.path.join(_DIR, f"{arch}_{'top' if include_top else 'notop'}_{size}_{seed}.h5")
    save_legacy_h5(model, path)
    x01 = np.random.default_rng(seed + 1).uniform(0.0, 1.0, (2, size, size, 3)).astype(np.float32)
    output = np.asarray(model.predict(keras_preprocess(arch, x01), verbose=0))
    del model
    keras.backend.clear_session()
    return Reference(arch, include_top, size, path, x01, output)


@functools.lru_cache(maxsize=None)
def template(arch: str, include_top: bool = False, size: int = 64):
    """(model, init variables) of our backbone, shared by the test modules: a ResNet init
    compiles for ~15 s on two cores (~6 s with the rbg PRNG), so each is made once."""
    import jax

    from bt_jax.models import registry

    return registry.make_template(registry.get(arch), jax.random.key(0, impl="unsafe_rbg"),
                                  include_top=include_top, size=size)
