"""The head-training program: many independent runs ("lanes") in one compiled call.

A lane is one head setting trained on one split (a search trial's fold). `run_lanes`
trains L lanes at once: `jax.vmap` over lanes (GPU/TPU: fills the device), or `lax.map`
(one lane after another inside the same program: on a CPU a lane that early-stops stops
costing), or chunks of both.

Everything a trial may change is a traced per-lane value: lr, dropout, momentum,
patience, the optimiser (Adam or SGD, a select inside one fused update), the hidden width
and the batch size.
Only the allocation is static (`Capacity`: hidden width, rows per step, steps per
epoch, epochs, logits): a lane uses the first `units` hidden units (the rest are masked
to zero and never move) and the first `batch_size` rows of each step (the rest are
masked; a lane runs only its own number of steps per epoch). So one program can serve
a whole search space, and a lane trained inside a larger allocation gives the same
numbers as with an exact one: initial weights and dropout masks are drawn so that element (unit j,
position p) depends only on (key, j, p), never on the allocation
(`tests/test_head.py::test_capacity_does_not_change_the_result`).

    cap = Capacity(units=256, batch=64, steps=13, epochs=10)
    out = run_lanes(cap, lane_batch, features, labels, lanes, shared, rngs)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bt_jax.compilation import forward_compiler_options
from bt_jax.models.heads import class_probs, correct, per_example_loss
from bt_jax.train import callbacks

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-7   # Keras' Adam defaults
HP_KEYS = ("units", "batch", "lr", "dropout", "momentum", "patience", "adam")
CURVES = ("train_loss", "train_acc", "val_loss", "val_acc")


class Capacity(NamedTuple):
    """What one compiled program allocates (static, hashable)."""
    units: int      # hidden width; a lane uses its first `units`
    batch: int      # rows per step; a lane uses its first `batch_size`
    steps: int      # steps per epoch: enough for the smallest batch size served
    epochs: int
    outputs: int = 1

    def serves(self, need: Capacity) -> bool:
        """Whether this allocation can train what `need` (capacity_for) describes."""
        return (self.units >= need.units and self.batch >= need.batch
                and self.steps >= need.steps and self.epochs == need.epochs
                and self.outputs == need.outputs)


def capacity_for(units, batch_sizes, n_train: int, epochs: int, outputs: int) -> Capacity:
    """The smallest allocation serving every (units, batch size) given, for training
    index arrays of length n_train."""
    return Capacity(int(max(units)), int(max(batch_sizes)),
                    max(1, math.ceil(n_train / int(min(batch_sizes)))), int(epochs),
                    int(outputs))


def init_params(rng, cap: Capacity, d: int, units):
    """Glorot-uniform kernels for the lane's true width (Keras' initialiser), zero biases.
    Drawn unit-major, so unit j's weights do not depend on cap.units."""
    k1, k2 = jax.random.split(rng)
    u = units.astype(jnp.float32)
    lim1, lim2 = jnp.sqrt(6.0 / (d + u)), jnp.sqrt(6.0 / (u + cap.outputs))
    w1 = jax.random.uniform(k1, (cap.units, d), jnp.float32, -1.0, 1.0).T * lim1
    w2 = jax.random.uniform(k2, (cap.units, cap.outputs), jnp.float32, -1.0, 1.0) * lim2
    return {"hidden": {"kernel": w1, "bias": jnp.zeros((cap.units,), jnp.float32)},
            "out": {"kernel": w2, "bias": jnp.zeros((cap.outputs,), jnp.float32)}}


def forward(params, x, unit_mask, keep=None, keep_p=None):
    """Dense(relu) -> [dropout] -> Dense: `models.heads.Head` with masked hidden units."""
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    h = jnp.where(unit_mask, h, 0.0)
    if keep is not None:
        h = jnp.where(keep, h / keep_p, 0.0)   # inverted dropout, as Keras
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def opt_init(params) -> dict:
    """One state for both optimisers: slot "a" is Adam's first moment or SGD's momentum
    trace, "b" Adam's second moment (SGD leaves it at zero)."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"a": zeros, "b": zeros, "count": jnp.zeros((), jnp.int32)}


def opt_apply(params, grads, state: dict, hp: dict):
    """One step of Adam (optax.adam, eps=1e-7) or heavy-ball SGD (optax.sgd), chosen by
    the traced hp["adam"] -> (params, state).

    Written as one elementwise expression per parameter, so XLA makes one pass over each
    weight matrix (reading parameter, moments and gradient once) instead of a pass per
    moment, per update and per add, and no `lax.cond` that copies the state it passes
    through (the measured gain: docs/benchmarks.md, "Head search"). Adam's bias
    corrections are folded into
    two scalars: lr*m_hat/(sqrt(v_hat)+eps) = [lr*sqrt(c2)/c1] * m / (sqrt(v) + eps*sqrt(c2)).
    """
    adam, count = hp["adam"], state["count"] + 1
    c1 = 1 - ADAM_B1 ** count.astype(jnp.float32)
    root_c2 = jnp.sqrt(1 - ADAM_B2 ** count.astype(jnp.float32))
    scale = jnp.where(adam, hp["lr"] * root_c2 / c1, hp["lr"])
    eps = ADAM_EPS * root_c2

    def leaf(p, a, b, g):
        a = jnp.where(adam, ADAM_B1 * a + (1 - ADAM_B1) * g, g + hp["momentum"] * a)
        b = jnp.where(adam, ADAM_B2 * b + (1 - ADAM_B2) * g * g, b)
        return p - scale * a / jnp.where(adam, jnp.sqrt(b) + eps, 1.0), a, b

    tree = jax.tree.structure(params)
    new = [leaf(*xs) for xs in zip(*(jax.tree.leaves(t) for t in
                                     (params, state["a"], state["b"], grads)))]
    p, a, b = (jax.tree.unflatten(tree, [n[i] for n in new]) for i in range(3))
    return p, {"a": a, "b": b, "count": count}


def _epoch_draws(rng, mask, cap: Capacity, keep_p):
    """One epoch's shuffle (real entries first, in random order) and dropout keep-masks
    by (epoch position, unit). Element (j, p) of a draw depends only on (key, j, p)
    (jax_threefry_partitionable), so neither depends on the allocation."""
    k_order, k_drop = jax.random.split(rng)
    u = jax.random.uniform(k_order, mask.shape)
    order = jnp.argsort(jnp.where(mask, u, 2.0), stable=True)
    n = cap.steps * cap.batch
    keep = jax.vmap(lambda j: jax.random.bernoulli(jax.random.fold_in(k_drop, j), keep_p,
                                                   (n,)))(jnp.arange(cap.units))
    return order, keep.T                                          # (T,), (n, units)


def _div(a, b):
    return jnp.where(b > 0, a / jnp.maximum(b, 1), jnp.nan).astype(jnp.float32)


def _loss_and_hits(params, x, y, m, unit_mask, keep=None, keep_p=None):
    logits = forward(params, x, unit_mask, keep, keep_p)
    per = per_example_loss(logits, y) * m
    return per.sum(), (jnp.sum(correct(logits, y) & m), logits)


def _train_epoch(cap, features, labels, ti, tm, hp, rng, params, opt, unit_mask):
    """One epoch of masked mini-batch steps -> (params, opt, (loss_sum, correct, count)).
    A `fori_loop` over the lane's own number of steps: a lane with a larger batch size
    than the allocation's smallest runs fewer steps, and nothing runs for padding."""
    keep_p = 1.0 - hp["dropout"]
    order, keep = _epoch_draws(rng, tm, cap, keep_p)
    pad = cap.steps * cap.batch - ti.shape[0]
    idx, m = jnp.pad(ti[order], (0, pad)), jnp.pad(tm[order], (0, pad))
    lanes = jnp.arange(cap.batch) < hp["batch"]
    n_steps = (tm.sum() + hp["batch"] - 1) // hp["batch"]   # real rows come first in order

    def step(s, carry):
        params, opt, sums = carry
        start = s * hp["batch"]
        rows = jax.lax.dynamic_slice(idx, (start,), (cap.batch,))
        rm = jax.lax.dynamic_slice(m, (start,), (cap.batch,)) & lanes
        kp = jax.lax.dynamic_slice(keep, (start, 0), (cap.batch, cap.units))
        x, y = features[rows], labels[rows]

        def loss(p):
            total, aux = _loss_and_hits(p, x, y, rm, unit_mask, kp, keep_p)
            return total / jnp.maximum(rm.sum(), 1), (total, aux[0])
        (_, (total, hits)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        params, opt = opt_apply(params, grads, opt, hp)
        return params, opt, jax.tree.map(jnp.add, sums, (total, hits, rm.sum()))

    zero = (jnp.float32(0), jnp.int32(0), jnp.int32(0))
    return jax.lax.fori_loop(0, n_steps, step, (params, opt, zero))


def _val_scores(logits, y, mask):
    """(ROC AUC, probabilities with NaN in padding); C > 2: macro one-vs-rest AUC, (V, C)."""
    prob = class_probs(logits)
    if prob.ndim == 1:
        return masked_auc(logits[:, 0], y, mask), jnp.where(mask, prob, jnp.nan)
    yi = y.astype(jnp.int32)
    aucs = jax.vmap(lambda p, c: masked_auc(p, (yi == c).astype(jnp.float32), mask),
                    in_axes=(1, 0))(prob, jnp.arange(prob.shape[1]))
    return aucs.mean(), jnp.where(mask[:, None], prob, jnp.nan)


def masked_auc(scores, y, mask):
    """ROC AUC as the Mann-Whitney statistic (ties count 1/2); NaN if a class is absent.
    Each positive's wins are counted by binary search in the sorted negatives: O(V log V)
    time and O(V) memory (the all-pairs form needs V x V: 1.6 GB at 20k rows a fold)."""
    pos, neg = mask & (y > 0.5), mask & (y <= 0.5)
    negs = jnp.sort(jnp.where(neg, scores, jnp.inf))              # the negatives first
    below = jnp.searchsorted(negs, scores, side="left")
    upto = jnp.minimum(jnp.searchsorted(negs, scores, side="right"), neg.sum())
    n_pos, n_neg = pos.sum(), neg.sum()
    # per positive, its share of negatives beaten: each term exact, the mean in float32
    share = (below + upto).astype(jnp.float32) / (2.0 * jnp.maximum(n_neg, 1))
    auc = jnp.sum(jnp.where(pos, share, 0.0)) / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)


def lane_start(cap: Capacity, features, hp: dict, rng) -> dict:
    """A lane's state before its first epoch: initial params, optimiser, early stopping,
    NaN curves, epoch 0 (what `lane_epochs` carries)."""
    init_rng, _ = jax.random.split(rng)
    params = init_params(init_rng, cap, features.shape[1], hp["units"])
    nan_curve = jnp.full((cap.epochs,), jnp.nan, jnp.float32)
    return dict(params=params, opt=opt_init(params), es=callbacks.early_stopping_init(params),
                curves={k: nan_curve for k in CURVES}, epoch=jnp.asarray(0, jnp.int32))


def lane_epochs(cap: Capacity, features, labels, ti, tm, vi, vm, hp: dict, rng, state: dict,
                until) -> dict:
    """Epochs of one lane from `state` until epoch `until` (traced; at most cap.epochs)
    or until early stopping fires: a `lax.while_loop` over epochs around a
    `lax.fori_loop` over steps. Epoch e draws from fold_in(rng, e), so running the epochs
    in chunks gives the same lane as running them in one call."""
    _, loop_rng = jax.random.split(rng)
    unit_mask = jnp.arange(cap.units) < hp["units"]
    xv, yv = features[vi], labels[vi]

    def epoch_body(c):
        params, opt, (tl, tc, tn) = _train_epoch(
            cap, features, labels, ti, tm, hp, jax.random.fold_in(loop_rng, c["epoch"]),
            c["params"], c["opt"], unit_mask)
        vl, (vc, _) = _loss_and_hits(params, xv, yv, vm, unit_mask)
        vn = vm.sum()
        val_loss = _div(vl, vn)
        es = callbacks.early_stopping_update(c["es"], val_loss, c["epoch"], params,
                                             patience=hp["patience"])
        e = c["epoch"]
        new = {"train_loss": _div(tl, tn), "train_acc": _div(tc, tn), "val_loss": val_loss,
               "val_acc": _div(vc, vn)}
        curves = {k: v.at[e].set(new[k]) for k, v in c["curves"].items()}
        return dict(params=params, opt=opt, es=es, curves=curves, epoch=e + 1)

    last = jnp.minimum(until, cap.epochs)
    return jax.lax.while_loop(lambda c: (c["epoch"] < last) & ~c["es"].stopped,
                              epoch_body, state)


def lane_result(cap: Capacity, features, labels, vi, vm, hp: dict, state: dict) -> dict:
    """Restore-best: curves (epochs,), best/stopped epoch, epochs run, validation
    loss/accuracy/AUC/probabilities at the best params, and the best params (allocated
    shapes)."""
    unit_mask = jnp.arange(cap.units) < hp["units"]
    xv, yv = features[vi], labels[vi]
    es = state["es"]
    vl, (vc, logits) = _loss_and_hits(es.best_params, xv, yv, vm, unit_mask)
    val_auc, val_prob = _val_scores(logits, yv, vm)
    return dict(**state["curves"], best_epoch=es.best_epoch, stopped_epoch=es.stopped_epoch,
                epochs_run=state["epoch"], val_loss_best=_div(vl, vm.sum()),
                val_acc_best=_div(vc, vm.sum()), val_auc=val_auc, val_prob=val_prob,
                params=es.best_params)


def lane_fn(cap: Capacity, features, labels, ti, tm, vi, vm, hp: dict, rng) -> dict:
    """Whole training of one lane (pure): `lane_start`, every epoch (`lane_epochs`) and
    `lane_result`."""
    state = lane_epochs(cap, features, labels, ti, tm, vi, vm, hp, rng,
                        lane_start(cap, features, hp, rng), cap.epochs)
    return lane_result(cap, features, labels, vi, vm, hp, state)


def _hp(lane: dict, shared: dict) -> dict:
    return {**shared, **{k: lane[k] for k in HP_KEYS if k in lane}}


def _map_lanes(fn, lane_batch: int, xs, n: int):
    """fn over the leading (lane) axis of xs: lane_batch lanes in lockstep (vmap), chunks
    one after another (`lax.map`); lane_batch >= n: one vmap."""
    if lane_batch >= n:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=None if lane_batch == 1 else lane_batch)


def run_lanes(cap: Capacity, lane_batch: int, features, labels, lanes: dict, shared: dict,
              rngs) -> dict:
    """L lanes -> outputs with a leading lane axis. lanes: per-lane arrays (L, ...) with
    ti/tm/vi/vm and any of HP_KEYS; shared: the other HP_KEYS as scalars."""
    def one(args):
        lane, rng = args
        return lane_fn(cap, features, labels, lane["ti"], lane["tm"], lane["vi"], lane["vm"],
                       _hp(lane, shared), rng)
    return _map_lanes(one, lane_batch, (lanes, rngs), rngs.shape[0])


# The same lanes in epoch chunks (a pruned search reads each chunk's scores): three
# programs whose composition is `run_lanes`, lane for lane (tests/test_pruning.py).

def start_lanes(cap: Capacity, lane_batch: int, features, lanes: dict, shared: dict, rngs):
    return _map_lanes(lambda a: lane_start(cap, features, _hp(a[0], shared), a[1]),
                      lane_batch, (lanes, rngs), rngs.shape[0])


def advance_lanes(cap: Capacity, lane_batch: int, features, labels, lanes: dict, shared: dict,
                  rngs, states: dict, until) -> dict:
    """Each lane's epochs up to its own `until` (L,) (a lane at or past it stays as it is)."""
    def one(args):
        lane, rng, state, u = args
        return lane_epochs(cap, features, labels, lane["ti"], lane["tm"], lane["vi"],
                           lane["vm"], _hp(lane, shared), rng, state, u)
    return _map_lanes(one, lane_batch, (lanes, rngs, states, until), rngs.shape[0])


def finish_lanes(cap: Capacity, lane_batch: int, features, labels, lanes: dict, shared: dict,
                 states: dict) -> dict:
    def one(args):
        lane, state = args
        return lane_result(cap, features, labels, lane["vi"], lane["vm"], _hp(lane, shared),
                           state)
    return _map_lanes(one, lane_batch, (lanes, states), lanes["vi"].shape[0])


# XLA:CPU hands the head's few-row matmuls (rows = batch size) to YNNPACK, where they run
# many times slower than XLA's own dot (docs/benchmarks.md, "Head search"): the head
# program opts out of YNNPACK as inference programs do (models.common).
_JITTED: dict[tuple, object] = {}


def jitted(fn=run_lanes):
    """`fn` (run_lanes or a chunk program) jitted for the default backend (static: cap,
    lane_batch); `advance_lanes` reuses the buffers of the states it is given."""
    key = (jax.default_backend(), fn.__name__)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(fn, static_argnums=(0, 1),
                               donate_argnums=(7,) if fn is advance_lanes else (),
                               compiler_options=forward_compiler_options())
    return _JITTED[key]


def run_lanes_jit(cap: Capacity, lane_batch: int, *args) -> dict:
    """`run_lanes`, compiled once per allocation and lane_batch."""
    return jitted()(cap, lane_batch, *args)
