"""Legacy Keras HDF5 reader and the strict port: layouts, conversions and bad files."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from bt_jax.models import registry as R
from bt_jax.porting.keras_h5 import KerasH5Error, keras_to_flax, read_keras_h5
from bt_jax.porting.merge import PortError


def _write_layers(group, layers: dict, chunks: int = 1):
    """Write {layer: {weight_name: array}} in the legacy layout, layer_names split in `chunks`."""
    names = [n.encode() for n in layers]
    if chunks == 1:
        group.attrs["layer_names"] = names
    else:
        for i, part in enumerate(np.array_split(np.array(names), chunks)):
            group.attrs[f"layer_names{i}"] = part
    for name, weights in layers.items():
        g = group.create_group(name)
        g.attrs["weight_names"] = [w.encode() for w in weights]
        for w, value in weights.items():
            g.create_dataset(w, data=value)


KERNEL = np.arange(3 * 3 * 4 * 1, dtype=np.float32).reshape(3, 3, 4, 1)
LAYERS = {   # Keras 2 naming: '/' inside layer names, ':0' suffixes, a weightless layer
    "conv1/conv": {"conv1/conv/kernel:0": np.ones((7, 7, 3, 8), np.float32)},
    "conv1/bn": {"conv1/bn/gamma:0": np.full(8, 2.0, np.float32),
                 "conv1/bn/beta:0": np.zeros(8, np.float32),
                 "conv1/bn/moving_mean:0": np.full(8, 0.5, np.float32),
                 "conv1/bn/moving_variance:0": np.full(8, 3.0, np.float32)},
    "pool1": {},
    "conv_dw_1": {"conv_dw_1/depthwise_kernel:0": KERNEL},
}


@pytest.mark.parametrize("layout", ["weights", "chunked", "full_model"])
def test_reads_legacy_layouts(tmp_path, layout):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        if layout == "full_model":
            f.attrs["model_config"] = b"{}"
            _write_layers(f.create_group("model_weights"), LAYERS)
        else:
            _write_layers(f, LAYERS, chunks=3 if layout == "chunked" else 1)
    layers = read_keras_h5(path)
    assert list(layers) == list(LAYERS)
    assert layers["pool1"] == []
    assert [w for w, _ in layers["conv1/bn"]] == list(LAYERS["conv1/bn"])
    np.testing.assert_array_equal(dict(layers["conv_dw_1"])["conv_dw_1/depthwise_kernel:0"], KERNEL)


def test_keras_to_flax_renames_and_transposes():
    layers = {k: list(v.items()) for k, v in LAYERS.items()}
    src = keras_to_flax(layers, origin="t.h5", depthwise=r"conv_dw_\d+")
    assert set(src) == {("params", "conv1_conv", "kernel"), ("params", "conv1_bn", "scale"),
                        ("params", "conv1_bn", "bias"), ("batch_stats", "conv1_bn", "mean"),
                        ("batch_stats", "conv1_bn", "var"), ("params", "conv_dw_1", "kernel")}
    assert src[("batch_stats", "conv1_bn", "var")][0] == 3.0
    dw = src[("params", "conv_dw_1", "kernel")]
    assert dw.shape == (3, 3, 1, 4)
    assert dw[1, 2, 0, 3] == KERNEL[1, 2, 3, 0]
    with pytest.raises(PortError, match="unknown weight name 'alpha'"):
        keras_to_flax({"prelu": [("prelu/alpha:0", np.ones(3))]}, origin="t.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("this is not a weight file\n" * 40)
    with pytest.raises(KerasH5Error, match="not an HDF5 file"):
        read_keras_h5(path)
    with pytest.raises(KerasH5Error, match="no such weight file"):
        read_keras_h5(tmp_path / "absent.h5")


def test_hdf5_but_not_keras(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 4)))
    with pytest.raises(KerasH5Error, match="not a Keras weight file"):
        read_keras_h5(path)


# ---- against real Keras-written files (see keras_reference.py) ----

def _template(arch, include_top=False, size=64):
    from keras_reference import template
    return template(arch, include_top, size)[1]


def _h5(arch, include_top=False, size=64):
    from keras_reference import reference
    return reference(arch, include_top, size).h5_path


def test_truncated_file(tmp_path):
    src = _h5("vgg19")
    data = open(src, "rb").read()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KerasH5Error, match="truncated"):
        read_keras_h5(path)
    with pytest.raises(KerasH5Error, match="truncated"):
        R.get("vgg19").port(path, _template("vgg19"))


def test_wrong_architecture_names_the_tensors():
    # VGG16 lacks VGG19's fourth conv of blocks 3-5
    with pytest.raises(PortError, match=r"(?s)vgg19.*no tensor in the file.*block3_conv4/kernel"):
        R.get("vgg19").port(_h5("vgg16"), _template("vgg19"))
    with pytest.raises(PortError,
                       match=r"(?s)270 file tensors have no model parameter.*conv2_block1_1_bn/mean"):
        R.get("vgg19").port(_h5("resnet50v2", True), _template("vgg19"))


def test_missing_layer(tmp_path):
    path = tmp_path / "edited.h5"
    shutil.copy(_h5("vgg19"), path)
    with h5py.File(path, "a") as f:
        del f["block5_conv3"]
    with pytest.raises(KerasH5Error, match="'block5_conv3' is listed in layer_names but has no group"):
        R.get("vgg19").port(path, _template("vgg19"))
    with h5py.File(path, "a") as f:   # now also unlisted: a consistent file short of one layer
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [n.encode() for n in names if n != "block5_conv3"]
    with pytest.raises(PortError, match=r"2 model parameters have no tensor.*block5_conv3/bias, "
                                        r"params/block5_conv3/kernel"):
        R.get("vgg19").port(path, _template("vgg19"))


def test_port_fills_every_tensor_from_the_file():
    path = _h5("vgg19")
    variables = R.get("vgg19").port(path, _template("vgg19"))
    layers = {k: dict(v) for k, v in read_keras_h5(path).items()}
    np.testing.assert_array_equal(variables["params"]["block5_conv4"]["kernel"],
                                  layers["block5_conv4"]["block5_conv4/kernel"])
    np.testing.assert_array_equal(variables["params"]["block1_conv1"]["bias"],
                                  layers["block1_conv1"]["block1_conv1/bias"])


def test_top_file_into_notop_model_and_back():
    spec = R.get("resnet50v2")
    top_file = _h5("resnet50v2", True)
    with_top = _template("resnet50v2", include_top=True)
    notop = {"params": {k: v for k, v in with_top["params"].items() if k != "predictions"},
             "batch_stats": with_top["batch_stats"]}
    variables = spec.port(top_file, notop)                         # classifier dropped
    assert "predictions" not in variables["params"]
    template = _template("vgg19", include_top=True)   # notop file: only the classifier is excused
    variables = R.get("vgg19").port(_h5("vgg19"), template)
    np.testing.assert_array_equal(variables["params"]["fc1"]["kernel"], template["params"]["fc1"]["kernel"])
    assert not np.array_equal(variables["params"]["block1_conv1"]["kernel"],
                              template["params"]["block1_conv1"]["kernel"])
