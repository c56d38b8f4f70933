"""Task heads and the backbone+head classifier used for end-to-end fine-tuning.

    model = Classifier(backbone=spec.make(), head=Head(1024, 0.6), head_input="pre_logits")
    logits, out = model.apply(variables, x01, train=True, bn_train=False, rngs={"dropout": rng})

Method A's head (GAP -> Dense -> Dropout -> Dense(1)) is `bt_jax.train.head.Head` applied
to the backbone's pooled "pre_logits", so the head trained on cached features drops in
unchanged. Method B's head is `FlattenHead` on the last feature map ("features").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class FlattenHead(nn.Module):
    """Method B: Flatten -> Dense(1024, relu) -> Dropout(0.3) -> Dense(256, relu) -> Dense(2)."""
    hidden: tuple[int, ...] = (1024, 256)
    dropout: float = 0.3
    num_classes: int = 2

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        x = nn.relu(nn.Dense(self.hidden[0], name="fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        for i, units in enumerate(self.hidden[1:], start=2):
            x = nn.relu(nn.Dense(units, name=f"fc{i}")(x))
        return nn.Dense(self.num_classes, name="out")(x)


class Classifier(nn.Module):
    """Backbone + head. `train` drives dropout; `bn_train` the backbone's BatchNorm.

    Keeping BatchNorm in inference mode while fine-tuning (bn_train=False) is Keras'
    behaviour for a frozen-then-unfrozen base and keeps tiny batches from wrecking the
    ImageNet statistics.
    """
    backbone: nn.Module
    head: nn.Module
    head_input: str = "pre_logits"
    stop_backbone_grad: bool = False  # head-only training: no backward pass through it

    @nn.compact
    def __call__(self, x, *, train: bool = False, bn_train: bool = False) -> tuple[Any, dict]:
        _, out = self.backbone(x, train=bn_train)
        h = out[self.head_input]
        if self.stop_backbone_grad:
            h = jax.lax.stop_gradient(h)
        return self.head(h.astype(jnp.float32), train=train), out
