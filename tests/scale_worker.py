"""Run by tests/test_scale_out.py in a subprocess with N simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, which must be set before JAX starts).

    python tests/scale_worker.py devices OUT.npz    # fits on 1 and on every device

For each case (a method A fine-tune epoch with BatchNorm statistics trained; a method B
stage with its Flatten head, block5 trainable and a plateau schedule) and each batch size
(one divisible by the device count, one not), it fits once on a one-device mesh and once on
a mesh over every device, and stores both parameter sets; plus a control run on every
device with the BatchNorm row mask switched off (padding rows counted).
"""

import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bt_jax.data import augment
from bt_jax.models import registry
from bt_jax.models.heads import Classifier, FlattenHead, Head
from bt_jax.sharding import data_mesh
from bt_jax.train import finetune, finetune_step

SIZE = 32


def fit_data(n_train: int = 12, n_val: int = 6) -> finetune.FitData:
    rng = np.random.default_rng(0)
    n = n_train + n_val
    images = rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int32)
    images[labels == 1, 8:16, 8:16] = 1.0
    keys = np.asarray(augment.copy_keys(0, np.arange(n_train), np.zeros(n_train, int)))
    return finetune.FitData(images=images, labels=labels, train_src=np.arange(n_train),
                            train_keys=keys, train_aug=np.arange(n_train) % 3 == 0,
                            val_idx=np.arange(n_train, n),
                            aug_params=augment.AugmentParams(rotation=10.0, hflip=True))


def case(name: str):
    """(spec, model, variables, FitSpec kwargs) for 'finetune' (method A) or 'stage' (B)."""
    if name == "finetune":
        spec = registry.get("mobilenet")
        model = Classifier(backbone=spec.make(), head=Head(16, 0.0), head_input="pre_logits")
        # SGD and a small step: random-init BatchNorm networks at 32 px amplify float
        # rounding, and a well-conditioned comparison is what shows rounding-level agreement.
        kw = dict(lr=1e-4, optimizer="sgd", trainable="all", bn_train=True)
    else:
        spec = registry.get("vgg19")
        model = Classifier(backbone=spec.make(), head=FlattenHead(hidden=(32, 16), dropout=0.0),
                           head_input="features")
        kw = dict(lr=1e-2, optimizer="sgd", trainable=("block5",), plateau_factor=0.5, plateau_patience=1)
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, SIZE, SIZE, 3))))(jax.random.PRNGKey(0))
    return spec, model, jax.tree.map(np.asarray, variables), kw


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(tree).items()}


def main(out: str) -> None:
    data = fit_data()
    arrays = {"n_devices": np.int32(jax.device_count())}
    meshes = {"1": data_mesh(jax.devices()[:1]), "all": data_mesh()}
    for name in ("finetune", "stage"):
        spec, model, variables, kw = case(name)
        for k, v in flat(variables).items():
            arrays[f"{name}|start|{k}"] = v
        for bs in (8, 6):
            fs = finetune.FitSpec(epochs=1, batch_size=bs, patience=5, **kw)
            runs = dict(meshes)
            if name == "finetune" and bs == 6:
                runs["all_unmasked"] = meshes["all"]  # control: padding counted in BatchNorm
            for label, mesh in runs.items():
                unmasked = label.endswith("unmasked")
                with _no_row_mask() if unmasked else contextlib.nullcontext():
                    res = finetune.fit(model, variables, spec, data, fs, progress=False, mesh=mesh)
                for k, v in flat(res.last).items():
                    arrays[f"{name}|{bs}|{label}|{k}"] = v
    np.savez(out, **arrays)


@contextlib.contextmanager
def _no_row_mask():
    saved = finetune_step._stat_rows
    finetune_step._stat_rows = lambda real: None      # every row counts in BatchNorm's statistics
    try:
        yield
    finally:
        finetune_step._stat_rows = saved


if __name__ == "__main__":
    assert sys.argv[1] == "devices", sys.argv
    main(sys.argv[2])
