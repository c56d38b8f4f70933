"""Method A's head on frozen pooled features: k folds (and several trials) per compiled call.

    folds = make_fold_arrays(splits, n_originals, copy_source)      # padded (k, T)/(k, V) + masks
    hp = HeadHParams(units=1024, dropout=0.6775, lr=9.558e-5, batch_size=32, optimizer="adam")
    res = fit_folds(features, labels, folds, hp, jax.random.PRNGKey(0))
    res.val_acc.mean()                     # the search objective; res.val_auc, res.val_prob, ...
    many = fit_trials(features, labels, folds, [hp, hp2, hp3], rng)  # trials x folds, one call
    final = fit_one(features, labels, train_idx, val_idx, hp, rng); predict_proba(final.params, x)

A setting trains on a split as one "lane" of `head_lanes.run_lanes`: a `lax.while_loop`
over epochs (it exits once early stopping fires) around a `lax.fori_loop` over mini-batches,
early stopping on the validation loss and restore-best carried as pytree state
(`callbacks.py`). Folds, and trials, are a leading lane axis: vmapped in lockstep on
GPU/TPU, one after another inside the program on a CPU (`default_lane_batch`). Every
hyper-parameter is a traced value inside an allocation (`head_lanes.Capacity`: hidden
width, rows per step, steps, epochs), so one compiled program serves every setting that
fits it: a search compiles once per allocation, not once per trial.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bt_jax.config import OPTIMIZERS
from bt_jax.data.split import TrainIndices
from bt_jax.models.heads import Head, class_probs, n_outputs
from bt_jax.train.folds import (FoldArrays, make_fold_arrays, pad_index_sets,  # noqa: F401
                                train_with_copies)
from bt_jax.train import head_lanes
from bt_jax.train.head_lanes import masked_auc  # noqa: F401  (public API)
TRIAL_KEYS = ("units", "dropout", "lr", "batch_size", "optimizer")  # searched per trial


def make_optimizer(name: str, lr, momentum=0.0) -> optax.GradientTransformation:
    """"adam" (Keras defaults, eps=1e-7) or "sgd" with (heavy-ball) momentum.

    Wrapped in `optax.inject_hyperparams`, so lr/momentum may be traced and a plateau
    callback can change lr in the state (`callbacks.set_learning_rate`).
    """
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=0.9, b2=0.999,
                                                    eps=1e-7)
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
    raise ValueError(f"make_optimizer: optimizer must be one of {OPTIMIZERS}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class HeadHParams:
    """One setting of the head search; `traced()` gives it as traced lane values."""
    units: int = 1024
    dropout: float = 0.5
    lr: float = 1e-4
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9
    epochs: int = 10
    patience: int = 3

    def __post_init__(self):
        checks = [("units", self.units >= 1), ("dropout", 0.0 <= self.dropout < 1.0),
                  ("lr", self.lr > 0), ("batch_size", self.batch_size >= 1),
                  ("optimizer", self.optimizer in OPTIMIZERS),
                  ("momentum", 0.0 <= self.momentum < 1.0), ("epochs", self.epochs >= 1),
                  ("patience", self.patience >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"HeadHParams.{name}: invalid value {getattr(self, name)!r} "
                                 "(units/batch_size/epochs/patience >= 1, 0 <= dropout < 1, "
                                 f"lr > 0, 0 <= momentum < 1, optimizer in {OPTIMIZERS})")

    @classmethod
    def from_config(cls, train) -> "HeadHParams":
        """The head setting given in `config.train` (the `train` pipeline)."""
        return cls.from_trial({k: getattr(train, k) for k in TRIAL_KEYS}, train)

    @classmethod
    def from_trial(cls, params: dict, train) -> "HeadHParams":
        """A search trial's head settings; epochs, patience and momentum from `config.train`."""
        missing = [k for k in TRIAL_KEYS if k not in params]
        if missing:
            raise ValueError(f"trial params {params}: missing {missing} (method A's space)")
        return cls(units=int(params["units"]), dropout=float(params["dropout"]),
                   lr=float(params["lr"]), batch_size=int(params["batch_size"]),
                   optimizer=str(params["optimizer"]), momentum=float(train.momentum),
                   epochs=int(train.epochs), patience=int(train.patience))

    def traced(self) -> dict:
        """The setting as traced lane values (head_lanes.HP_KEYS). Explicit dtypes: weak-typed
        Python scalars would make a second cache entry."""
        return {"units": jnp.asarray(self.units, jnp.int32),
                "batch": jnp.asarray(self.batch_size, jnp.int32),
                "lr": jnp.asarray(self.lr, jnp.float32),
                "dropout": jnp.asarray(self.dropout, jnp.float32),
                "momentum": jnp.asarray(self.momentum, jnp.float32),
                "patience": jnp.asarray(self.patience, jnp.int32),
                "adam": jnp.asarray(self.optimizer == "adam")}


# ----------------------------------------------------------------------------- core

@flax.struct.dataclass
class FoldResults:
    """Output of fit_folds (leading fold axis k) or fit_one (no fold axis).

    Curves (.., epochs): train_loss/train_acc (running means over the epoch's batches,
    dropout on, as Keras reports them), val_loss/val_acc; NaN for epochs not run.
    best_epoch / stopped_epoch (-1: never stopped) are 0-based; epochs_run counts epochs.
    val_loss_best/val_acc_best/val_auc/val_prob (.., V; NaN in padding) are at the
    restored best params; params is the best params pytree (jax arrays).
    """
    train_loss: np.ndarray
    train_acc: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    best_epoch: np.ndarray
    stopped_epoch: np.ndarray
    epochs_run: np.ndarray
    val_loss_best: np.ndarray
    val_acc_best: np.ndarray
    val_auc: np.ndarray
    val_prob: np.ndarray
    params: Any

    def fold(self, f: int) -> "FoldResults":
        return jax.tree.map(lambda a: a[f], self)

    @property
    def val_acc_mean(self) -> float:
        """Method A's search objective: validation accuracy averaged over folds."""
        return float(np.mean(self.val_acc_best))


def _lane_hp(hps: Sequence[HeadHParams]) -> dict:
    """Per-lane traced hyper-parameters of trials, stacked: {key: (n_trials,)}."""
    rows = [hp.traced() for hp in hps]
    return {k: jnp.stack([r[k] for r in rows]) for k in head_lanes.HP_KEYS}


def _host(out: dict, units: int) -> FoldResults:
    """Device outputs of one trial -> FoldResults, params cut to the trial's width."""
    params = out.pop("params")
    params = {"hidden": {"kernel": params["hidden"]["kernel"][..., :units],
                         "bias": params["hidden"]["bias"][..., :units]},
              "out": {"kernel": params["out"]["kernel"][..., :units, :],
                      "bias": params["out"]["bias"]}}
    return FoldResults(**jax.device_get(out), params=params)


def _prep(features, labels, n_classes: int):
    bad = np.setdiff1d(np.unique(np.asarray(labels)), np.arange(n_classes))
    if n_classes < 2 or bad.size:
        raise ValueError(f"labels must be class indices in [0, {n_classes}) with n_classes >= 2; "
                         f"got n_classes={n_classes} and labels {bad[:5].tolist()}")
    # device_put: one copy (jnp.asarray of a host array made two, 1 GB at 100k x 1280)
    features = (features.astype(jnp.float32) if isinstance(features, jax.Array)
                else jax.device_put(np.asarray(features, np.float32)))
    labels = jnp.asarray(labels, jnp.float32)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, D) and labels (N,), got {features.shape} "
                         f"and {labels.shape}")
    return features, labels


def _check_folds(folds: FoldArrays, n: int):
    for name in ("train", "val"):
        idx, mask = getattr(folds, f"{name}_idx"), getattr(folds, f"{name}_mask")
        if idx.shape != mask.shape or idx.ndim != 2:
            raise ValueError(f"FoldArrays.{name}_idx/{name}_mask: need equal (k, L) shapes, "
                             f"got {idx.shape} and {mask.shape}")
        if np.asarray(idx).max(initial=0) >= n:
            raise ValueError(f"FoldArrays.{name}_idx indexes row {np.asarray(idx).max()} "
                             f"but features has {n} rows")
        if not np.asarray(mask).any(axis=1).all():
            raise ValueError(f"FoldArrays.{name}_mask: some fold has no {name} entries")


def default_lane_batch(n_lanes: int) -> int:
    """Lanes run in lockstep: all of them on GPU/TPU (vmap fills the device); one at a
    time on a CPU, where lockstep buys nothing and a lane that stops early would keep
    computing masked epochs until the slowest one stops (bench/bench_head.py)."""
    return n_lanes if jax.default_backend() != "cpu" else 1


def fit_trials(features, labels, folds: FoldArrays, hps: Sequence[HeadHParams], rng, *,
               n_classes: int = 2, capacity: head_lanes.Capacity | None = None,
               lane_batch: int | None = None, fold_rngs=None,
               prune: Callable | None = None) -> list[FoldResults]:
    """Several head settings, each on all k folds, in ONE compiled call (trials x folds
    lanes). Each trial's results equal those of `fit_folds` for it alone: fold f uses
    jax.random.split(rng, k)[f] whatever else shares the call. capacity: the allocation
    (default: the smallest that fits these trials; pass one to reuse a program).

    prune: train in one-epoch chunks; after epoch e (< epochs), `prune(e, scores,
    training) -> stop` gets each trial's score so far (`chunk_scores`) and which trials
    still train, and returns the trials to stop now (bool (n,)): a stopped trial's lanes
    run no further epochs and its results are those of its best epoch so far. With
    `prune` never stopping anything the results equal the unchunked call's."""
    features, labels = _prep(features, labels, n_classes)
    _check_folds(folds, features.shape[0])
    hps = list(hps)
    if not hps or len({hp.epochs for hp in hps}) != 1:
        raise ValueError(f"fit_trials: need >= 1 setting, all with the same epochs; got "
                         f"{[hp.epochs for hp in hps]}")
    need = head_lanes.capacity_for([hp.units for hp in hps], [hp.batch_size for hp in hps],
                                   folds.train_idx.shape[1], hps[0].epochs, n_outputs(n_classes))
    cap = capacity or need
    if not cap.serves(need):
        raise ValueError(f"capacity {cap} cannot serve these settings: need at least {need}")
    k, n = folds.k, len(hps)
    lanes = {name: jnp.tile(jnp.asarray(getattr(folds, attr)), (n, 1))
             for name, attr in (("ti", "train_idx"), ("tm", "train_mask"), ("vi", "val_idx"),
                                ("vm", "val_mask"))}
    shared = {}
    if n == 1:   # one trial: every hyper-parameter is shared by its folds
        shared = hps[0].traced()
    else:
        lanes.update({key: jnp.repeat(v, k) for key, v in _lane_hp(hps).items()})
    fold_rngs = jax.random.split(rng, k) if fold_rngs is None else fold_rngs
    rngs = jnp.tile(fold_rngs, (n, 1))
    lb = default_lane_batch(n * k) if lane_batch is None else int(lane_batch)
    args = (features, labels, lanes, shared, rngs)
    out = (head_lanes.run_lanes_jit(cap, lb, *args) if prune is None
           else _fit_in_chunks(cap, lb, args, n, k, prune))
    return [_host(jax.tree.map(lambda a, t=t: a[t * k:(t + 1) * k], out), hp.units)
            for t, hp in enumerate(hps)]


def chunk_scores(states: dict, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, finished) per trial from lane states after a chunk: the score is the mean
    over folds of the validation accuracy at each fold's best epoch so far (what the
    search's objective becomes if the trial ends now); finished: every fold has run all
    its epochs or stopped early."""
    curves, es, epoch = jax.device_get((states["curves"]["val_acc"], states["es"],
                                        states["epoch"]))
    best = np.asarray(es.best_epoch)
    acc = np.where(best >= 0, np.take_along_axis(curves, np.maximum(best, 0)[:, None], 1)[:, 0],
                   np.nan).reshape(n, k)
    with np.errstate(all="ignore"):
        score = np.nanmean(acc, axis=1) if np.isfinite(acc).any() else np.full(n, np.nan)
    done = (np.asarray(es.stopped) | (epoch >= curves.shape[1])).reshape(n, k).all(axis=1)
    return score, done


def _fit_in_chunks(cap: head_lanes.Capacity, lb: int, args: tuple, n: int, k: int,
                   prune: Callable) -> dict:
    """`run_lanes` one epoch at a time, asking `prune` after each which trials to stop."""
    features, labels, lanes, shared, rngs = args
    states = head_lanes.jitted(head_lanes.start_lanes)(cap, lb, features, lanes, shared, rngs)
    stopped = np.zeros(n, bool)
    for epoch in range(1, cap.epochs + 1):
        until = np.where(np.repeat(stopped, k), -1, epoch).astype(np.int32)
        states = head_lanes.jitted(head_lanes.advance_lanes)(cap, lb, *args, states, until)
        score, done = chunk_scores(states, n, k)
        if epoch == cap.epochs or (stopped | done).all():
            break
        stop = np.asarray(prune(epoch, np.where(stopped, np.nan, score), ~(stopped | done)), bool)
        stopped |= stop & ~done
    return head_lanes.jitted(head_lanes.finish_lanes)(cap, lb, features, labels, lanes, shared,
                                                      states)


def fit_folds(features, labels, folds: FoldArrays, hparams: HeadHParams, rng, *,
              n_classes: int = 2, capacity: head_lanes.Capacity | None = None,
              lane_batch: int | None = None) -> FoldResults:
    """All k folds of one setting in one compiled call; fold f uses
    jax.random.split(rng, k)[f]. labels: 0/1 for two classes, class indices for
    n_classes > 2 (softmax head)."""
    return fit_trials(features, labels, folds, [hparams], rng, n_classes=n_classes,
                      capacity=capacity, lane_batch=lane_batch)[0]


def fit_folds_sequential(features, labels, folds: FoldArrays, hparams: HeadHParams,
                         rng, *, n_classes: int = 2) -> FoldResults:
    """Reference only (tests, bench): a Python loop of one-fold calls."""
    rngs = jax.random.split(rng, folds.k)
    outs = []
    for f in range(folds.k):
        one = FoldArrays(*(np.asarray(a)[f:f + 1] for a in (folds.train_idx, folds.train_mask,
                                                            folds.val_idx, folds.val_mask)))
        res = fit_trials(features, labels, one, [hparams], None, n_classes=n_classes,
                         fold_rngs=rngs[f:f + 1])[0]
        outs.append(res.fold(0))
    return jax.tree.map(lambda *xs: np.stack(xs), *outs)


def capacity_if_serving(capacity: head_lanes.Capacity | Sequence[head_lanes.Capacity] | None,
                        hps, n_train: int, n_classes: int = 2) -> head_lanes.Capacity | None:
    """The allocation to train these settings in, on training index arrays of length
    n_train: `capacity` (a `Capacity`, or a sequence of them: the first that serves) when
    it can, else None (an exact allocation): for callers that offer shared programs
    without knowing every setting, e.g. a given head outside the searched space."""
    if capacity is None:
        return None
    need = head_lanes.capacity_for([hp.units for hp in hps], [hp.batch_size for hp in hps],
                                   n_train, hps[0].epochs, n_outputs(n_classes))
    offered = [capacity] if isinstance(capacity, head_lanes.Capacity) else capacity
    return next((c for c in offered if c.serves(need)), None)


def fit_one(features, labels, train_idx, val_idx, hparams: HeadHParams, rng, *,
            n_classes: int = 2, capacity=None, lane_batch: int | None = None) -> FoldResults:
    """One split (method A's final training: e.g. epochs=10, patience=3); no fold axis.

    train_idx: row indices incl. copies (see train_with_copies) or a TrainIndices;
    val_idx: non-empty validation rows (early stopping needs a validation loss).
    capacity: an allocation (or several: the first that serves) to train in (the result
    does not depend on it) so that heads of different settings on the same rows share one
    compiled program; ignored when it cannot serve this setting (e.g. a resumed study's
    trial from a larger space).
    """
    if isinstance(train_idx, TrainIndices):
        train_idx = train_idx.indices
    (ti, tm), (vi, vm) = pad_index_sets([train_idx]), pad_index_sets([val_idx])
    capacity = capacity_if_serving(capacity, [hparams], ti.shape[1], n_classes)
    return fit_trials(features, labels, FoldArrays(ti, tm, vi, vm), [hparams], None,
                      n_classes=n_classes, fold_rngs=jnp.asarray(rng)[None], capacity=capacity,
                      lane_batch=lane_batch)[0].fold(0)


class TrainingDivergedError(RuntimeError):
    """A head's validation loss was never finite: its "best" weights are its initial ones."""


def check_converged(res: FoldResults, *, what: str) -> None:
    """Raises TrainingDivergedError when any fold's validation loss is NaN/inf in every
    epoch (early stopping then silently keeps the random initial weights)."""
    vl = np.asarray(res.val_loss, float).reshape(-1, np.shape(res.val_loss)[-1])
    bad = [f for f, row in enumerate(vl) if not np.isfinite(row).any()]
    if bad:
        raise TrainingDivergedError(
            f"{what}: validation loss was NaN/inf in every epoch of fold(s) {bad} (the "
            "learning rate is probably too high); its weights would be the initial ones")


@jax.jit
def predict_proba(params, features):
    """P(label 1) per row, or (N, C) class probabilities; inference mode. The head's
    width and number of logits are read from params."""
    model = Head(params["hidden"]["kernel"].shape[-1], outputs=params["out"]["kernel"].shape[-1])
    return class_probs(model.apply({"params": params}, features))
