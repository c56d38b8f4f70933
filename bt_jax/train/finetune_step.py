"""The fine-tune's compiled pieces: one optimiser update over (micro-)batches with
augmentation inside, and the per-row evaluation, as pure functions (jit them).

    state = init_state(variables, tx)
    state, sums = finetune_step(model, tx, labels, False, aug, state, batch, rng)
    loss, hit, prob = eval_step(model, variables, x, y)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bt_jax import compilation
from bt_jax.data import augment
from bt_jax.models.heads import class_probs, correct, per_example_loss


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def init_state(variables, tx) -> TrainState:
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def _hits(logits, y, prob):
    """Binary: P(label 1) >= 0.5 is a tumour call; C > 2 classes: the argmax."""
    if logits.shape[-1] > 2:
        return correct(logits, y)
    return (prob >= 0.5) == (y == 1)


def _sums(logits, y, w):
    loss = per_example_loss(logits, y)
    hit = _hits(logits, y, class_probs(logits))
    return {"loss": jnp.sum(loss * w), "correct": jnp.sum(hit * w), "count": jnp.sum(w)}


def _stat_rows(real):
    """The rows that count in BatchNorm's batch statistics: the real ones, or all of an
    all-padding micro-batch (whose statistics are then discarded)."""
    return jnp.where(jnp.any(real), real, True)


def _micro_grads(model, bn_train: bool, aug: augment.AugmentParams, state: TrainState,
                 mb: dict, rng, total_w):
    """Gradients of sum(loss * w) / total_w over one micro-batch, its new BatchNorm
    statistics and its metric sums. Padding rows (w == 0) count neither in the loss nor in
    the batch statistics; an all-padding micro-batch leaves the statistics as they were."""
    x = jnp.where(mb["aug"][:, None, None, None],
                  augment.augment_batch_fn(mb["x"], mb["keys"], aug), mb["x"])
    w = mb["w"].astype(jnp.float32)
    real = w > 0
    any_real = jnp.any(real)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if bn_train:
            (logits, _), upd = model.apply(variables, x, train=True, bn_train=True,
                                           rows=_stat_rows(real), rngs={"dropout": rng},
                                           mutable=["batch_stats"])
            stats = jax.tree.map(lambda n, o: jnp.where(any_real, n, o), upd["batch_stats"],
                                 state.batch_stats)
        else:
            logits, _ = model.apply(variables, x, train=True, bn_train=False, rngs={"dropout": rng})
            stats = state.batch_stats
        loss = jnp.sum(per_example_loss(logits, mb["y"]) * w) / total_w
        return loss, (logits, stats)

    grads, (logits, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return grads, stats, _sums(logits, mb["y"], w)


def finetune_step(model, tx, labels, bn_train: bool, aug: augment.AugmentParams,
                  state: TrainState, batch: dict, rng):
    """One optimiser update. batch: arrays with two leading axes (K, M): K micro-batches
    of M rows — x (K,M,H,W,3) in [0,1], keys (K,M,2) uint32, aug (K,M) bool, y (K,M),
    w (K,M) weights (0 for padding). Rows flagged `aug` are augmented inside the step with
    their own key. With K > 1 (gradient accumulation) the micro-batches run one after the
    other in a `lax.scan` (one micro-batch's activations in memory at a time) and their
    gradients are summed, so K micro-batches of M rows make the same update as one batch
    of K*M rows (BatchNorm statistics, when trained, update per micro-batch).
    `labels` ('train'/'frozen' per leaf) keeps frozen gradients out of the accumulator."""
    total_w = jnp.maximum(jnp.sum(batch["w"].astype(jnp.float32)), 1.0)
    k = batch["w"].shape[0]
    if k == 1:
        mb = jax.tree.map(lambda a: a[0], batch)
        grads, stats, sums = _micro_grads(model, bn_train, aug, state, mb, rng, total_w)
    else:
        def body(carry, xs):
            acc, stats = carry
            mb, i = xs
            g, stats, m = _micro_grads(model, bn_train, aug, state.replace(batch_stats=stats),
                                       mb, jax.random.fold_in(rng, i), total_w)
            acc = jax.tree.map(lambda a, b, l: a + b if l == "train" else a, acc, g, labels)
            return (acc, stats), m
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, stats), sums = jax.lax.scan(body, (zeros, state.batch_stats),
                                            (batch, jnp.arange(k)))
        sums = jax.tree.map(jnp.sum, sums)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
    return new, sums


def _eval_jit(model):
    """eval_step jitted as an inference program (compilation.forward_compiler_options)."""
    return jax.jit(functools.partial(eval_step, model),
                   compiler_options=compilation.forward_compiler_options())


def eval_step(model, variables, x, y):
    """Per row, inference mode: (loss, correct, P(positive) (B,) or class probs (B, C))."""
    logits, _ = model.apply(variables, x, train=False)
    prob = class_probs(logits)
    return per_example_loss(logits, y), _hits(logits, y, prob), prob
