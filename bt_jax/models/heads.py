"""Task heads and the backbone+head classifier used for end-to-end fine-tuning.

    model = Classifier(backbone=spec.make(), head=Head(1024, 0.6), head_input="pre_logits")
    logits, out = model.apply(variables, x01, train=True, bn_train=False, rngs={"dropout": rng})

Method A's head (GAP -> Dense -> Dropout -> Dense(1)) is `Head` applied
to the backbone's pooled "pre_logits", so the head trained on cached features drops in
unchanged. Method B's head is `FlattenHead` on the last feature map ("features").

Classes: with two, method A's head has one logit (sigmoid) and method B's two (softmax),
and every probability is P(label 1), shape (N,). With C > 2 both heads have C logits and
probabilities are softmax rows (N, C). `class_probs`, `per_example_loss` and `correct`
decide by the number of logits, so training and inference code has one path.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def n_outputs(n_classes: int, head_type: str = "gap_dense") -> int:
    """Logits of a head for `n_classes` classes (method A's binary head has one)."""
    return 1 if n_classes == 2 and head_type == "gap_dense" else n_classes


class Head(nn.Module):
    """Dense(units, relu) -> Dropout(dropout) -> Dense(outputs); returns logits (B, outputs).

    Keras initialisers (glorot_uniform kernels, zero biases) as in method A. Dropout is
    written out rather than nn.Dropout so that the rate may be a traced value (one
    compilation serves every dropout a search tries); inverted scaling as in Keras.
    """
    units: int
    dropout: Any = 0.0
    outputs: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool = False, keep_mask=None):
        """keep_mask: optional precomputed (B, units) bool dropout mask (train=True)."""
        init = dict(kernel_init=nn.initializers.glorot_uniform(),
                    bias_init=nn.initializers.zeros)
        x = nn.relu(nn.Dense(self.units, name="hidden", **init)(x))
        if train:
            keep = 1.0 - jnp.asarray(self.dropout, x.dtype)
            kept = keep_mask if keep_mask is not None else jax.random.bernoulli(
                self.make_rng("dropout"), keep, x.shape)
            x = jnp.where(kept, x / keep, 0.0)
        return nn.Dense(self.outputs, name="out", **init)(x)


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
    """Backbone + head. `train` drives dropout; `bn_train` the backbone's BatchNorm, whose
    batch statistics count only `rows` ((B,) bool; None: all) when given.

    Keeping BatchNorm in inference mode while fine-tuning (bn_train=False) is Keras'
    behaviour for a frozen-then-unfrozen base and keeps tiny batches from wrecking the
    ImageNet statistics.
    """
    backbone: nn.Module
    head: nn.Module
    head_input: str = "pre_logits"
    stop_backbone_grad: bool = False  # head-only training: no backward pass through it

    @nn.compact
    def __call__(self, x, *, train: bool = False, bn_train: bool = False,
                 rows=None) -> tuple[Any, dict]:
        _, out = self.backbone(x, train=bn_train, rows=rows)
        h = out[self.head_input]
        if self.stop_backbone_grad:
            h = jax.lax.stop_gradient(h)
        return self.head(h.astype(jnp.float32), train=train), out


def class_probs(logits):
    """P(label 1) (N,) for one- or two-logit heads; softmax rows (N, C) for C > 2 logits."""
    if logits.shape[-1] <= 2:
        return positive_prob(logits)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def per_example_loss(logits, y):
    """Sigmoid BCE for one logit (method A, binary), softmax CE over class indices else."""
    if logits.shape[-1] == 1:
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], y.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))


def correct(logits, y):
    """Per-example hit: logit > 0 for one logit, argmax otherwise (ties: the first class)."""
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0) == (y > 0.5)
    return jnp.argmax(logits, axis=-1) == y.astype(jnp.int32)


def predicted_labels(prob, threshold: float = 0.5) -> np.ndarray:
    """Host-side decisions: P(label 1) >= threshold for (N,) probabilities, the argmax
    (first class on ties) for (N, C) rows."""
    prob = np.asarray(prob)
    return (prob >= threshold).astype(int) if prob.ndim == 1 else prob.argmax(axis=1)


def positive_prob(logits):
    """P(label 1): sigmoid of a one-logit head, softmax column 1 of a two-logit head."""
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[:, 0])
    return jax.nn.softmax(logits, axis=-1)[:, 1]
