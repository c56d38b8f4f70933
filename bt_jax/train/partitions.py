"""Which parameters train, and how: optax masked partitions and the learning-rate recipe.

    labels = trainable_labels(variables["params"], spec, ["block5"])   # 'train'/'frozen' tree
    tx = make_tx(labels, lr=lr_schedule(fs, steps_per_epoch), backbone_lr_factor=0.1,
                 weight_decay=0.01)

Frozen leaves get `optax.set_to_zero()`; the backbone's trainable leaves and the head get
their own optimiser instances, so the backbone can learn at a fraction of the head's rate
(the plateau callback scales every instance alike, keeping the ratio).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from bt_jax.models import registry


def trainable_labels(params, spec: registry.BackboneSpec, trainable) -> Any:
    """'train'/'frozen' per leaf of {'backbone': ..., 'head': ...} params.

    trainable: "all", "none" (head only) or a list of layer-group selectors
    (registry.group_matches: "block5" covers "block5_conv3"). The head always trains.
    """
    bb = params["backbone"]
    if trainable == "all":
        mask = jax.tree.map(lambda _: True, bb)
    elif trainable in ("none", (), []):
        mask = jax.tree.map(lambda _: False, bb)
    else:
        mask = registry.select_groups(bb, spec, list(trainable))
    labels = {"backbone": jax.tree.map(lambda m: "train" if m else "frozen", mask),
              "head": jax.tree.map(lambda _: "train", params["head"])}
    # Every parameter labelled exactly once (an exception, not an assert: `python -O`
    # drops asserts, and an unlabelled leaf would make optax.multi_transform fail late).
    flat, want = traverse_util.flatten_dict(labels), traverse_util.flatten_dict(params)
    missing = sorted("/".join(k) for k in set(want) - set(flat))
    bad = sorted("/".join(k) for k, v in flat.items() if v not in ("train", "frozen"))
    if missing or bad or set(flat) != set(want):
        raise ValueError(f"trainable_labels: parameters without a label {missing[:5]}, "
                         f"labels that are neither 'train' nor 'frozen' {bad[:5]}")
    return labels


def count_trainable(params, labels) -> tuple[int, int]:
    sizes = jax.tree.map(lambda p, l: (int(np.size(p)), l == "train"), params, labels)
    flat = jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple))
    return sum(n for n, t in flat if t), sum(n for n, _ in flat)


def _kernels(params):
    """Weight decay applies to matrices and filters, not to biases or BatchNorm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _optimizer(name: str, lr, momentum: float, weight_decay: float):
    if name == "adam" and weight_decay:
        # static: inject_hyperparams would call a callable mask as a schedule of the step
        return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=lr, eps=1e-7, weight_decay=weight_decay, mask=_kernels)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=1e-7)
    if name == "sgd":
        sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
        if not weight_decay:
            return sgd
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=_kernels), sgd)
    raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {name!r}")


def lr_schedule(fs, steps_per_epoch: int):
    """The learning rate of a FitSpec `fs`: constant `fs.lr` (plateau callbacks may lower it), or linear
    warm-up from 0 over `warmup_epochs` then cosine decay to 0 at the last epoch."""
    if fs.schedule == "constant":
        return fs.lr
    total = max(1, fs.epochs * steps_per_epoch)
    warm = min(total - 1, max(0, round(fs.warmup_epochs * steps_per_epoch)))
    return optax.warmup_cosine_decay_schedule(0.0, fs.lr, warm, total, end_value=0.0)


def make_tx(labels, *, lr, optimizer: str = "adam", momentum: float = 0.9,
            backbone_lr_factor: float = 1.0, weight_decay: float = 0.0):
    """Trainable leaves get the optimiser (learning rate injectable for plateau
    schedules, or a schedule `step -> lr`); frozen leaves get exact zeros. The backbone's
    trainable leaves learn at `lr * backbone_lr_factor`, the head at `lr`."""
    scaled = (lr * backbone_lr_factor if not callable(lr)
              else (lambda step: lr(step) * backbone_lr_factor))
    parts = {"head": _optimizer(optimizer, lr, momentum, weight_decay),
             "train": _optimizer(optimizer, scaled, momentum, weight_decay),
             "frozen": optax.set_to_zero()}
    tx_labels = {**labels, "head": jax.tree.map(lambda _: "head", labels["head"])}
    return optax.multi_transform(parts, tx_labels)
