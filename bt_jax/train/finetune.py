"""End-to-end fine-tuning: frozen layer groups as optax masked partitions, jitted steps,
early stopping / plateau callbacks, a best and a last checkpoint, resume after a kill.

    labels = partitions.trainable_labels(variables["params"], spec, ["block5"])
    tx = partitions.make_tx(labels, lr=1e-4, optimizer="adam")      # (train/partitions.py)
    state = init_state(variables, tx)
    state, m = finetune_step(model, tx, labels, False, aug, state, batch, rng)  # finetune_step.py
    result = fit(model, variables, spec, data, FitSpec(...), rng, ckpt=Checkpoints(dir))

Freezing is `optax.multi_transform` with `optax.set_to_zero()` for frozen groups: no
parameter copying, no Python-side gradient surgery. Because the zeroed gradients are
never read, XLA drops their computation (bench/bench_finetune.py counts the compiled
convolutions: 16 for head-only VGG19, 47 for the full network; head-only compiles to the
same graph as an explicit stop_gradient at the backbone output).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bt_jax import compilation, sharding
from bt_jax.data import augment, store
from bt_jax.models import registry
from bt_jax.sharding import batched_apply
from bt_jax.train import callbacks
from bt_jax.train.partitions import count_trainable, lr_schedule, make_tx, trainable_labels
from bt_jax.train.checkpoint import Checkpoints
from bt_jax.train.finetune_step import (  # noqa: F401  (public API)
    TrainState, _eval_jit, eval_step, finetune_step, init_state)

log = logging.getLogger(__name__)
# Early stopping keeps the best weights with one select per parameter: run eagerly, that
# compiles one tiny program per parameter shape (~10 s for Lite0 on a 2-core CPU).
_early_stopping_update = jax.jit(callbacks.early_stopping_update,
                                 static_argnames=("patience", "min_delta", "mode"))


# ----------------------------------------------------------------------------- loop

@dataclasses.dataclass(frozen=True)
class FitSpec:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-5
    optimizer: str = "adam"
    momentum: float = 0.9
    patience: int = 4                 # early stopping on val loss, restore best
    plateau_factor: float = 0.0       # 0: no ReduceLROnPlateau
    plateau_patience: int = 3
    plateau_min_lr: float = 0.0
    plateau_monitor: str = "val_acc"  # "val_acc" (max) or "val_loss" (min)
    schedule: str = "constant"        # or "warmup_cosine" (no plateau callback then)
    warmup_epochs: float = 1.0
    backbone_lr_factor: float = 1.0   # backbone lr = lr * factor; the head learns at lr
    weight_decay: float = 0.0         # decoupled (AdamW) on kernels only
    augment_all: bool = False         # every training row augmented, fresh keys each epoch
    bn_train: bool = False
    trainable: Any = "all"            # "all" | "none" | tuple of group selectors
    seed: int = 0
    grad_accum_steps: int = 1         # K micro-batches per update (same update, less memory)


@dataclasses.dataclass
class FitData:
    """Images on the host; training rows index into them, optionally augmented."""
    images: Any                       # (N, S, S, 3) float32 in [0, 1]: store.ImageRows or array
    labels: np.ndarray                # (N,) int
    train_src: np.ndarray             # (T,) int rows of images
    train_keys: np.ndarray            # (T, 2) uint32
    train_aug: np.ndarray             # (T,) bool
    val_idx: np.ndarray               # (V,) int
    aug_params: augment.AugmentParams = augment.AugmentParams()  # ranges for rows flagged aug


@dataclasses.dataclass
class FitResult:
    variables: dict                   # best by validation loss (may be the starting point)
    history: dict                     # per epoch: train_loss, train_acc, val_loss, val_acc, lr
    best_epoch: int
    stopped_epoch: int
    resumed_from: int = -1
    last: dict | None = None          # the state after the last epoch run


def evaluate(model, variables, images, labels, idx, *, batch_size: int = 32, fn=None, mesh=None):
    """(mean loss, accuracy, probs) over images[idx] (`sharding.batched_apply`)."""
    fn = fn or _eval_jit(model)
    idx = np.asarray(idx, np.int64)
    if not len(idx):
        return float("nan"), float("nan"), np.zeros(0)
    v = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    loss, correct, prob = batched_apply(fn, v, store.take(images, idx), labels[idx],
                                        batch_size=batch_size, mesh=mesh)
    return float(loss.mean()), float(correct.mean()), prob


def _batches(data: FitData, fs: FitSpec, n_devices: int, rng: np.random.Generator,
             epoch: int = 0):
    """Shuffled batches of `fs.batch_size` rows, each laid out as K = grad_accum_steps
    micro-batches of M rows: ceil(batch_size / K) rounded up to a multiple of the device
    count. Rows added by the rounding, and missing at the end of an epoch, are padding:
    copies of a real row with weight 0, so every batch has one compiled shape. With
    `fs.augment_all` every row is augmented with a key of (row, seed, epoch): a new draw
    each epoch."""
    k = fs.grad_accum_steps
    micro = math.ceil(fs.batch_size / k)
    m = n_devices * math.ceil(micro / n_devices)
    order = rng.permutation(len(data.train_src))
    for s in range(0, len(order), fs.batch_size):
        rows = order[s:s + fs.batch_size]
        idx, w = np.full((k, m), rows[0]), np.zeros((k, m), np.float32)
        for j in range(k):
            part = rows[j * micro:(j + 1) * micro]
            idx[j, :len(part)], w[j, :len(part)] = part, 1.0
        src = data.train_src[idx]
        keys, aug = data.train_keys[idx], data.train_aug[idx]
        if fs.augment_all:
            keys = np.stack([idx, np.full_like(idx, (fs.seed * 100003 + epoch) % 2**32)], -1)
            keys, aug = keys.astype(np.uint32), np.ones_like(aug)
        yield {"x": data.images[src], "keys": keys, "aug": aug, "y": data.labels[src], "w": w}


@dataclasses.dataclass
class Loop:
    """What the epoch loop carries (and a checkpoint stores): state, callbacks, history."""
    state: TrainState
    es: Any                           # callbacks.EarlyStopping (best params inside)
    pl: Any                           # callbacks.Plateau
    history: dict
    start: int = 0                    # first epoch still to run


def _new_loop(variables, tx, fs: FitSpec) -> Loop:
    state = init_state(variables, tx)
    # Copies: the train step donates the state's buffers, callbacks must not alias them.
    es = callbacks.early_stopping_init(jax.tree.map(jnp.copy, _weights(state)))
    pl = callbacks.plateau_init(fs.lr, mode=_plateau_mode(fs))
    history = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
    return Loop(state, es, pl, history)


def _weights(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _plateau_mode(fs: FitSpec) -> str:
    return "max" if fs.plateau_monitor == "val_acc" else "min"


def _resume(loop: Loop, ckpt: Checkpoints | None, desc: str) -> Loop:
    """The loop after the last checkpointed epoch, if any (a killed run goes on from there)."""
    if ckpt is None:
        return loop
    tree, meta = ckpt.restore_last({"state": loop.state, "es": loop.es, "pl": loop.pl})
    if tree is None:
        return loop
    log.info("%s: resuming after epoch %d from %s", desc, meta["epoch"], ckpt.root)
    return Loop(tree["state"], tree["es"], tree["pl"], meta["history"], meta["epoch"] + 1)


def _score_start(loop: Loop, validate, fs: FitSpec, ckpt, desc: str) -> Loop:
    """The starting weights are a candidate too (epoch -1): a fine-tune that never beats
    them on validation loss restores them instead of keeping a worse network."""
    init = jax.tree.map(jnp.copy, _weights(loop.state))
    vl0, va0 = validate(init)
    es = _early_stopping_update(loop.es, vl0, -1, init, patience=fs.patience)
    loop.es = es.replace(wait=jnp.zeros_like(es.wait))
    loop.history["initial_val_loss"], loop.history["initial_val_acc"] = float(vl0), float(va0)
    if ckpt is not None:
        ckpt.save_best(-1, init, vl0)
    log.info("%s: starting point val loss %.4f acc %.3f", desc, vl0, va0)
    return loop


def _train_epoch(step, state: TrainState, data: FitData, fs: FitSpec, epoch: int, mesh):
    """One pass over the shuffled training rows -> (state, mean loss, accuracy). Every
    process draws the same order and keys (seeded by seed and epoch) and places the rows
    of its own devices."""
    sums = None
    key = jax.random.fold_in(jax.random.PRNGKey(fs.seed), epoch)
    batches = _batches(data, fs, mesh.devices.size, np.random.default_rng([fs.seed, epoch]),
                       epoch)
    # The next batch is read from the store while this one trains; metrics stay summed
    # on the device and are read once per epoch.
    for b, batch in enumerate(store.prefetch(batches)):
        state, m = step(state, sharding.shard_rows(batch, mesh, axis=1), jax.random.fold_in(key, b))
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    if sums is None:
        return state, float("nan"), float("nan")
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    c = max(sums["count"], 1.0)
    return state, sums["loss"] / c, sums["correct"] / c


def _end_epoch(loop: Loop, epoch: int, train: tuple[float, float], val: tuple[float, float],
               fs: FitSpec, ckpt, on_epoch=None) -> Loop:
    """History, early stopping (a NaN/inf training loss stops it), plateau schedule and both
    checkpoints after one epoch.
    `on_epoch` sees the history before the checkpoint is saved: a kill in between reruns
    the epoch, and the logger rewrites it rather than missing it."""
    (tl, ta), (vl, va) = train, val
    for k, v in (("train_loss", tl), ("train_acc", ta), ("val_loss", vl), ("val_acc", va),
                 ("lr", float(loop.pl.lr))):
        loop.history[k].append(float(v))
    if on_epoch is not None:
        on_epoch(loop.history)
    cur = _weights(loop.state)
    improved = vl < float(loop.es.best)
    loop.es = _early_stopping_update(loop.es, vl, epoch, cur, patience=fs.patience)
    if not math.isfinite(tl):
        # the NaN check, on the epoch's one read of the metrics: NaN/inf weights stay so
        log.warning("training loss %s in epoch %d (the learning rate is probably too high): "
                    "stopping, best weights from epoch %d", tl, epoch, int(loop.es.best_epoch))
        loop.es = loop.es.replace(stopped=jnp.asarray(True),
                                  stopped_epoch=jnp.asarray(epoch, jnp.int32))
    if fs.plateau_factor > 0:
        mode = _plateau_mode(fs)
        loop.pl = callbacks.plateau_update(loop.pl, va if mode == "max" else vl,
                                           factor=fs.plateau_factor, patience=fs.plateau_patience,
                                           min_lr=fs.plateau_min_lr, mode=mode)
        # scaled, so the backbone keeps its ratio to the head's learning rate
        ratio = jnp.asarray(loop.pl.lr / max(loop.history["lr"][-1], 1e-30), jnp.float32)
        loop.state = loop.state.replace(opt_state=callbacks.set_learning_rate(
            loop.state.opt_state, ratio, scale=True))
    if ckpt is not None:
        if improved:
            ckpt.save_best(epoch, cur, vl)
        ckpt.save_last(epoch, {"state": loop.state, "es": loop.es, "pl": loop.pl},
                       {"history": loop.history})
    return loop


def epoch_history(history: dict, lr, steps_per_epoch: int) -> dict:
    """`history` with "lr" the rate of each epoch's last update. The history keeps the
    plateau callback's base rate; under a schedule (`lr` callable) that is not the rate used."""
    if not callable(lr):
        return history
    last = np.arange(1, len(history["lr"]) + 1) * steps_per_epoch - 1
    return {**history, "lr": [float(v) for v in np.asarray(lr(last))]}


def fit(model, variables, spec: registry.BackboneSpec, data: FitData, fs: FitSpec, *,
        ckpt: Checkpoints | None = None, progress: bool = True, desc: str = "fine-tune",
        mesh=None, on_epoch=None) -> FitResult:
    """Trains `fs.trainable` groups (+ the head) with early stopping and restore-best; with
    `ckpt`, every epoch is checkpointed and a relaunch resumes after the last one saved.
    Data-parallel over `mesh` (default: every device of every process). `on_epoch(history)`
    runs after each epoch with every epoch so far, resumed ones included (`epoch_history`)."""
    labels = trainable_labels(variables["params"], spec, fs.trainable)
    steps_per_epoch = math.ceil(len(data.train_src) / fs.batch_size)
    lr = lr_schedule(fs, steps_per_epoch)
    tx = make_tx(labels, lr=lr, optimizer=fs.optimizer, momentum=fs.momentum,
                 backbone_lr_factor=fs.backbone_lr_factor, weight_decay=fs.weight_decay)
    mesh = mesh or sharding.data_mesh()
    loop = _resume(_new_loop(variables, tx, fs), ckpt, desc)
    loop.state = sharding.replicate(loop.state, mesh)  # a checkpoint from any device count
    resumed_from = loop.start - 1
    step = compilation.CompileOnFirstCall(jax.jit(
        functools.partial(finetune_step, model, tx, labels, fs.bn_train, data.aug_params),
        donate_argnums=0, out_shardings=NamedSharding(mesh, P())))
    ev = _eval_jit(model)

    def validate(weights):
        vl, va, _ = evaluate(model, weights, data.images, data.labels, data.val_idx,
                             batch_size=fs.batch_size, fn=ev, mesh=mesh)
        return vl, va
    n_train, total = count_trainable(loop.state.params, labels)
    log.info("%s: %d of %d parameters trainable (%s)", desc, n_train, total, fs.trainable)
    if loop.start == 0:
        loop = _score_start(loop, validate, fs, ckpt, desc)
    report = None if on_epoch is None else (
        lambda h: on_epoch(epoch_history(h, lr, steps_per_epoch)))
    epochs = range(loop.start, fs.epochs)
    if progress:
        from tqdm import tqdm
        epochs = tqdm(epochs, desc=desc, unit="epoch", initial=loop.start, total=fs.epochs,
                      leave=False)
    for epoch in epochs:
        if bool(loop.es.stopped):
            break
        loop.state, tl, ta = _train_epoch(step, loop.state, data, fs, epoch, mesh)
        vl, va = validate(_weights(loop.state))
        loop = _end_epoch(loop, epoch, (tl, ta), (vl, va), fs, ckpt, report)
        log.info("%s epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | lr %.2e",
                 desc, epoch, tl, ta, vl, va, loop.history["lr"][-1])
    es = loop.es
    result = FitResult(variables=sharding.to_host(es.best_params), history=loop.history,
                       best_epoch=int(es.best_epoch), stopped_epoch=int(es.stopped_epoch),
                       resumed_from=resumed_from, last=sharding.to_host(_weights(loop.state)))
    if ckpt is not None and not ckpt.is_done():  # a finished run's files stay untouched
        ckpt.mark_done({"best_epoch": result.best_epoch, "stopped_epoch": result.stopped_epoch,
                        "history": loop.history})
    return result
