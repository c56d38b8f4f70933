"""Method A's head on frozen pooled features: all k folds trained in one jitted, vmapped loop.

    folds = make_fold_arrays(splits, n_originals, copy_source)      # padded (k, T)/(k, V) + masks
    hp = HeadHParams(units=1024, dropout=0.6775, lr=9.558e-5, batch_size=32, optimizer="adam")
    res = fit_folds(features, labels, folds, hp, jax.random.PRNGKey(0))
    res.val_acc.mean()                     # the search objective; res.val_auc, res.val_prob, ...
    final = fit_one(features, labels, train_idx, val_idx, hp, rng); predict_proba(final.params, x)

One hyper-parameter setting trains as ONE compiled function: a `lax.while_loop` over
epochs (it exits once early stopping fires; under vmap a stopped fold's epochs are
masked no-ops) around a `lax.scan` over mini-batches, with early stopping on the
validation loss and restore-best carried as pytree state (`callbacks.py`). Folds are a
leading axis: `jax.jit(jax.vmap(fit_fold_fn))`. Shapes (units, batch size, optimiser,
epochs, padded fold sizes) are static; lr, dropout, momentum and patience are traced, so
a search compiles once per shape, not once per trial.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bt_jax.data.split import TrainIndices
from bt_jax.models.heads import Head, class_probs, correct, n_outputs, per_example_loss
from bt_jax.train.folds import (FoldArrays, make_fold_arrays, pad_index_sets,  # noqa: F401
                                train_with_copies)
from bt_jax.train import callbacks

OPTIMIZERS = ("adam", "sgd")
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


class HeadShape(NamedTuple):
    """The hyper-parameters that change compiled shapes/structure (static, hashable)."""
    units: int
    batch_size: int
    optimizer: str
    epochs: int
    outputs: int = 1          # logits: 1 for two classes (sigmoid), C for C > 2 (softmax)


@dataclasses.dataclass(frozen=True)
class HeadHParams:
    """One setting of the head search; `shape` is static, `traced()` the rest."""
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

    @property
    def shape(self) -> HeadShape:
        return HeadShape(int(self.units), int(self.batch_size), self.optimizer, int(self.epochs))

    def traced(self) -> dict:
        # Explicit dtypes: weak-typed Python scalars would make a second cache entry.
        return {"lr": jnp.asarray(self.lr, jnp.float32),
                "dropout": jnp.asarray(self.dropout, jnp.float32),
                "momentum": jnp.asarray(self.momentum, jnp.float32),
                "patience": jnp.asarray(self.patience, jnp.int32)}


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


def head_step(model: Head, tx, params, opt_state, x, y, mask, dropout):
    """One masked mini-batch update -> (params, opt_state, (loss_sum, correct, count)).

    dropout: a PRNG key, or a precomputed (B, units) bool keep-mask.

    An all-padding batch leaves params and optimiser state untouched (Adam would still
    move on zero gradients and its step count would advance).
    """
    def loss_fn(p):
        if jnp.issubdtype(dropout.dtype, jnp.bool_):
            out = model.apply({"params": p}, x, train=True, keep_mask=dropout)
        else:
            out = model.apply({"params": p}, x, train=True, rngs={"dropout": dropout})
        per = per_example_loss(out, y) * mask
        return per.sum() / jnp.maximum(mask.sum(), 1), (per.sum(), out)

    (_, (loss_sum, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    has = mask.any()
    keep = lambda new, old: jnp.where(has, new, old)  # noqa: E731
    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt, opt_state)
    return params, opt_state, (loss_sum, jnp.sum(correct(logits, y) & mask), mask.sum())


def eval_fn(model: Head, params, x, y, mask):
    """Inference-mode masked sums over one set -> (loss_sum, correct, count, logits)."""
    logits = model.apply({"params": params}, x)
    per = per_example_loss(logits, y) * mask
    return per.sum(), jnp.sum(correct(logits, y) & mask), mask.sum(), logits


def masked_auc(scores, y, mask):
    """ROC AUC by the Mann-Whitney pair count (ties count 1/2); NaN if a class is absent."""
    pos, neg = mask & (y > 0.5), mask & (y <= 0.5)
    diff = scores[:, None] - scores[None, :]
    pairs = pos[:, None] & neg[None, :]
    wins = jnp.sum(jnp.where(pairs, (diff > 0) + 0.5 * (diff == 0), 0.0))
    n = pos.sum().astype(jnp.float32) * neg.sum()
    return jnp.where(n > 0, wins / jnp.maximum(n, 1), jnp.nan)


def _val_scores(logits, y, mask):
    """(ROC AUC, probabilities with NaN in padding) of the validation set. C > 2 classes:
    the macro mean of one-vs-rest AUCs (NaN if a class is absent) and (V, C) rows."""
    prob = class_probs(logits)
    if prob.ndim == 1:
        return masked_auc(logits[:, 0], y, mask), jnp.where(mask, prob, jnp.nan)
    yi = y.astype(jnp.int32)
    aucs = jax.vmap(lambda p, c: masked_auc(p, (yi == c).astype(jnp.float32), mask),
                    in_axes=(1, 0))(prob, jnp.arange(prob.shape[1]))
    return aucs.mean(), jnp.where(mask[:, None], prob, jnp.nan)


def _epoch_randomness(rng, mask, n_batches, bsz, units, keep):
    """One epoch's shuffle (real entries in random order, padding last) and dropout masks.

    Drawn in two calls per epoch rather than per batch: every threefry call site costs
    compile time. With jax_threefry_partitionable (default since jax 0.5) element i of a
    draw depends only on (key, i), so the real entries' order and the masks of the real
    batches do not depend on how much padding follows: a padded fold trains exactly like
    its unpadded run.
    """
    k_order, k_drop = jax.random.split(rng)
    u = jax.random.uniform(k_order, mask.shape)
    order = jnp.argsort(jnp.where(mask, u, 2.0), stable=True)
    return order, jax.random.bernoulli(k_drop, keep, (n_batches, bsz, units))


def _div(a, b):
    return jnp.where(b > 0, a / jnp.maximum(b, 1), jnp.nan).astype(jnp.float32)


def fit_fold_fn(shape: HeadShape, features, labels, train_idx, train_mask, val_idx, val_mask,
                hp: dict, rng) -> dict:
    """Whole training of one split (pure; jit/vmap at the call site). See FoldResults."""
    units, bsz, opt_name, epochs, outputs = shape
    model = Head(units, hp["dropout"], outputs)
    tx = make_optimizer(opt_name, hp["lr"], hp["momentum"])
    init_rng, loop_rng = jax.random.split(rng)
    params = model.init(init_rng, features[:1])["params"]
    n_batches = max(1, math.ceil(train_idx.shape[0] / bsz))
    pad = n_batches * bsz - train_idx.shape[0]
    train_idx = jnp.pad(train_idx, (0, pad))
    train_mask = jnp.pad(train_mask, (0, pad))
    xv, yv = features[val_idx], labels[val_idx]
    nan_curve = jnp.full((epochs,), jnp.nan, jnp.float32)
    carry0 = dict(params=params, opt=tx.init(params), es=callbacks.early_stopping_init(params),
                  curves={k: nan_curve for k in ("train_loss", "train_acc", "val_loss",
                                                 "val_acc")},
                  epoch=jnp.asarray(0, jnp.int32))

    def epoch_body(c):
        order, keep_masks = _epoch_randomness(jax.random.fold_in(loop_rng, c["epoch"]),
                                              train_mask, n_batches, bsz, units,
                                              1.0 - hp["dropout"])

        def batch_body(bc, xs):
            params, opt, sums = bc
            idx, m, keep_mask = xs
            params, opt, s = head_step(model, tx, params, opt, features[idx], labels[idx], m,
                                        keep_mask)
            return (params, opt, jax.tree.map(jnp.add, sums, s)), None

        idx = train_idx[order].reshape(n_batches, bsz)
        m = train_mask[order].reshape(n_batches, bsz)
        zero = (jnp.float32(0), jnp.int32(0), jnp.int32(0))
        (params, opt, (tl, tc, tn)), _ = jax.lax.scan(
            batch_body, (c["params"], c["opt"], zero), (idx, m, keep_masks))
        vl, vc, vn, _ = eval_fn(model, params, xv, yv, val_mask)
        val_loss = _div(vl, vn)
        es = callbacks.early_stopping_update(c["es"], val_loss, c["epoch"], params,
                                             patience=hp["patience"])
        e = c["epoch"]
        new = {"train_loss": _div(tl, tn), "train_acc": _div(tc, tn), "val_loss": val_loss,
               "val_acc": _div(vc, vn)}
        curves = {k: v.at[e].set(new[k]) for k, v in c["curves"].items()}
        return dict(params=params, opt=opt, es=es, curves=curves, epoch=e + 1)

    out = jax.lax.while_loop(lambda c: (c["epoch"] < epochs) & ~c["es"].stopped,
                             epoch_body, carry0)
    es = out["es"]
    vl, vc, vn, logits = eval_fn(model, es.best_params, xv, yv, val_mask)
    val_auc, val_prob = _val_scores(logits, yv, val_mask)
    return dict(**out["curves"], best_epoch=es.best_epoch, stopped_epoch=es.stopped_epoch,
                epochs_run=out["epoch"], val_loss_best=_div(vl, vn), val_acc_best=_div(vc, vn),
                val_auc=val_auc, val_prob=val_prob,
                params=es.best_params)


def _fit_folds(shape, features, labels, ti, tm, vi, vm, hp, rngs):
    fn = jax.vmap(lambda *a: fit_fold_fn(shape, features, labels, *a[:4], hp, a[4]))
    return fn(ti, tm, vi, vm, rngs)


_fit_fold_jit = jax.jit(fit_fold_fn, static_argnums=0)
_fit_folds_jit = jax.jit(_fit_folds, static_argnums=0)


def _host(out: dict) -> FoldResults:
    params = out.pop("params")
    return FoldResults(**jax.device_get(out), params=params)


def _shape(hparams: HeadHParams, n_classes: int) -> HeadShape:
    return hparams.shape._replace(outputs=n_outputs(n_classes))


def _prep(features, labels, n_classes: int):
    bad = np.setdiff1d(np.unique(np.asarray(labels)), np.arange(n_classes))
    if n_classes < 2 or bad.size:
        raise ValueError(f"labels must be class indices in [0, {n_classes}) with n_classes >= 2; "
                         f"got n_classes={n_classes} and labels {bad[:5].tolist()}")
    features = jnp.asarray(features, jnp.float32)
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


def _fold_args(folds: FoldArrays):
    return tuple(jnp.asarray(a) for a in (folds.train_idx, folds.train_mask, folds.val_idx,
                                          folds.val_mask))


def fit_folds(features, labels, folds: FoldArrays, hparams: HeadHParams, rng, *,
              n_classes: int = 2) -> FoldResults:
    """All k folds at once: jit(vmap(fit_fold_fn)); fold f uses jax.random.split(rng, k)[f].
    labels: 0/1 for two classes, class indices for n_classes > 2 (softmax head)."""
    features, labels = _prep(features, labels, n_classes)
    _check_folds(folds, features.shape[0])
    rngs = jax.random.split(rng, folds.k)
    return _host(_fit_folds_jit(_shape(hparams, n_classes), features, labels, *_fold_args(folds),
                                hparams.traced(), rngs))


def fit_folds_sequential(features, labels, folds: FoldArrays, hparams: HeadHParams,
                         rng, *, n_classes: int = 2) -> FoldResults:
    """Reference only (tests, bench): a Python loop over folds of the jitted single fold."""
    features, labels = _prep(features, labels, n_classes)
    _check_folds(folds, features.shape[0])
    rngs = jax.random.split(rng, folds.k)
    args = _fold_args(folds)
    outs = [_fit_fold_jit(_shape(hparams, n_classes), features, labels, *(a[f] for a in args),
                          hparams.traced(), rngs[f]) for f in range(folds.k)]
    return _host(jax.tree.map(lambda *xs: jnp.stack(xs), *outs))


def fit_one(features, labels, train_idx, val_idx, hparams: HeadHParams, rng, *,
            n_classes: int = 2) -> FoldResults:
    """One split (method A's final training: e.g. epochs=10, patience=3); no fold axis.

    train_idx: row indices incl. copies (see train_with_copies) or a TrainIndices;
    val_idx: non-empty validation rows (early stopping needs a validation loss).
    """
    features, labels = _prep(features, labels, n_classes)
    if isinstance(train_idx, TrainIndices):
        train_idx = train_idx.indices
    (ti, tm), (vi, vm) = pad_index_sets([train_idx]), pad_index_sets([val_idx])
    folds = FoldArrays(ti, tm, vi, vm)
    _check_folds(folds, features.shape[0])
    args = _fold_args(folds)
    return _host(_fit_fold_jit(_shape(hparams, n_classes), features, labels, *(a[0] for a in args),
                               hparams.traced(), rng))


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
