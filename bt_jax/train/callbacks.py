"""Early stopping and ReduceLROnPlateau as pytree state + pure update functions.

    es = early_stopping_init(params)                      # before the epoch loop
    es = early_stopping_update(es, val_loss, epoch, params, patience=3)
    params = es.best_params                               # restore-best after the loop
    pl = plateau_init(lr=1e-3); pl = plateau_update(pl, val_loss, factor=0.1, patience=2)
    opt_state = set_learning_rate(opt_state, pl.lr)       # optax.inject_hyperparams states

Both follow Keras' callbacks (EarlyStopping(restore_best_weights=True),
ReduceLROnPlateau) epoch for epoch, but live inside compiled loops: every field is an
array, so the state can be carried through `lax.while_loop`/`lax.scan` and vmapped
over folds; `patience` and `factor` may be traced values.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

MODES = ("min", "max")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"callbacks: mode must be one of {MODES}, got {mode!r}")


def _improved(value, best, min_delta, mode: str):
    # Keras: improvement means strictly better than best by more than min_delta.
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta


@flax.struct.dataclass
class EarlyStoppingState:
    """best: best monitored value so far; best_epoch: its 0-based epoch (-1 before any);
    wait: epochs since the last improvement; stopped: True once patience ran out;
    stopped_epoch: the epoch at which it stopped (-1 while running);
    best_params: the pytree saved at best_epoch (restore-best)."""
    best: jax.Array
    best_epoch: jax.Array
    wait: jax.Array
    stopped: jax.Array
    stopped_epoch: jax.Array
    best_params: Any


def early_stopping_init(params, mode: str = "min") -> EarlyStoppingState:
    _check_mode(mode)
    worst = jnp.inf if mode == "min" else -jnp.inf
    return EarlyStoppingState(best=jnp.asarray(worst, jnp.float32),
                              best_epoch=jnp.asarray(-1, jnp.int32),
                              wait=jnp.asarray(0, jnp.int32),
                              stopped=jnp.asarray(False),
                              stopped_epoch=jnp.asarray(-1, jnp.int32),
                              best_params=params)


def early_stopping_update(state: EarlyStoppingState, value, epoch, params, *, patience,
                          min_delta=0.0, mode: str = "min") -> EarlyStoppingState:
    """One epoch's end. A NaN value never improves (it counts towards patience).

    Once `stopped` is True the state is frozen, so calling it on later (masked) epochs
    is harmless.
    """
    _check_mode(mode)
    value = jnp.asarray(value, jnp.float32)
    better = _improved(value, state.best, min_delta, mode) & ~state.stopped
    wait = jnp.where(state.stopped, state.wait, jnp.where(better, 0, state.wait + 1))
    stop_now = ~state.stopped & (wait >= patience)
    epoch = jnp.asarray(epoch, jnp.int32)
    best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                               params, state.best_params)
    return EarlyStoppingState(
        best=jnp.where(better, value, state.best),
        best_epoch=jnp.where(better, epoch, state.best_epoch),
        wait=wait.astype(jnp.int32),
        stopped=state.stopped | stop_now,
        stopped_epoch=jnp.where(stop_now, epoch, state.stopped_epoch),
        best_params=best_params)


@flax.struct.dataclass
class PlateauState:
    """lr: current learning rate; best: best monitored value; wait: epochs without
    improvement; cooldown: epochs left in which no reduction happens; n_reductions."""
    lr: jax.Array
    best: jax.Array
    wait: jax.Array
    cooldown: jax.Array
    n_reductions: jax.Array


def plateau_init(lr, mode: str = "min") -> PlateauState:
    _check_mode(mode)
    worst = jnp.inf if mode == "min" else -jnp.inf
    return PlateauState(lr=jnp.asarray(lr, jnp.float32), best=jnp.asarray(worst, jnp.float32),
                        wait=jnp.asarray(0, jnp.int32), cooldown=jnp.asarray(0, jnp.int32),
                        n_reductions=jnp.asarray(0, jnp.int32))


def plateau_update(state: PlateauState, value, *, factor=0.1, patience=10, min_lr=0.0,
                   min_delta=1e-4, cooldown=0, mode: str = "min") -> PlateauState:
    """Keras ReduceLROnPlateau.on_epoch_end: after `patience` epochs without improvement
    lr <- max(lr * factor, min_lr) (only if lr > min_lr), then `cooldown` quiet epochs."""
    _check_mode(mode)
    value = jnp.asarray(value, jnp.float32)
    in_cool = state.cooldown > 0
    cool = jnp.where(in_cool, state.cooldown - 1, state.cooldown)
    wait = jnp.where(in_cool, 0, state.wait)
    better = _improved(value, state.best, min_delta, mode)
    wait = jnp.where(better, 0, jnp.where(in_cool, wait, wait + 1))
    fire = ~better & ~in_cool & (wait >= patience)
    can_lower = state.lr > jnp.float32(min_lr)
    lower = fire & can_lower
    new_lr = jnp.maximum(state.lr * factor, jnp.float32(min_lr))
    return PlateauState(
        lr=jnp.where(lower, new_lr, state.lr).astype(jnp.float32),
        best=jnp.where(better, value, state.best),
        wait=jnp.where(lower, 0, wait).astype(jnp.int32),
        cooldown=jnp.where(lower, jnp.asarray(cooldown, jnp.int32), cool).astype(jnp.int32),
        n_reductions=state.n_reductions + lower.astype(jnp.int32))


# optax >= 0.2.3 returns InjectStatefulHyperparamsState; older versions the plain one.
_INJECT_TYPES = tuple(t for t in (getattr(optax, "InjectHyperparamsState", None),
                                  getattr(optax, "InjectStatefulHyperparamsState", None)) if t)


def _is_inject(x) -> bool:
    return isinstance(x, _INJECT_TYPES)


def set_learning_rate(opt_state, lr, *, scale: bool = False):
    """Sets `learning_rate` in every `optax.inject_hyperparams` state in the tree.

    scale=True multiplies each one instead (staged fine-tuning keeps per-group ratios).
    Raises if the tree holds no injectable learning rate, so a plateau callback can't
    silently do nothing.
    """
    found = []

    def fix(node):
        if _is_inject(node) and "learning_rate" in node.hyperparams:
            found.append(True)
            old = node.hyperparams["learning_rate"]
            new = old * lr if scale else jnp.asarray(lr, old.dtype)
            return node._replace(hyperparams={**node.hyperparams, "learning_rate": new})
        return node

    out = jax.tree.map(fix, opt_state, is_leaf=_is_inject)
    if not found:
        raise ValueError("set_learning_rate: no optax.inject_hyperparams state with a "
                         "'learning_rate' in the optimiser state; build the optimiser with "
                         "optax.inject_hyperparams (see bt_jax.train.head.make_optimizer)")
    return out
