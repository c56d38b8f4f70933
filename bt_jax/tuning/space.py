"""Method A's search space from `config.search`, as Optuna distributions, and the way
between a trial's params and a config.

    space = search_space(config, ["resnet50v2"])     # {"units": CategoricalDistribution, ...}
    params = suggest(trial, config, ["resnet50v2"])  # one point, through an Optuna trial
    c = params_to_config(config, params)             # model.name and train.* set
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from bt_jax.config import check_search
from bt_jax.tuning.storage import SearchError


def search_space(config, available_backbones: Sequence[str]) -> dict[str, Any]:
    """Method A's space from `config.search`, as Optuna distributions keyed by param name."""
    s = config.search
    check_search(s)
    available = set(available_backbones)
    backbones = tuple(b for b in s.backbones if b in available)
    if not backbones:
        raise SearchError(f"config.search.backbones {tuple(s.backbones)}: none of them has weights "
                          f"that resolve (available: {sorted(available)})")
    return {
        "backbone": CategoricalDistribution(backbones),
        "units": CategoricalDistribution(tuple(int(u) for u in s.units)),
        "lr": FloatDistribution(float(s.lr_min), float(s.lr_max), log=True),
        "batch_size": CategoricalDistribution(tuple(int(b) for b in s.batch_sizes)),
        "optimizer": CategoricalDistribution(tuple(s.optimizers)),
        "dropout": FloatDistribution(float(s.dropout_min), float(s.dropout_max)),
    }


def suggest(trial: optuna.Trial, config, available_backbones: Sequence[str]) -> dict:
    """Samples one point of the space through `trial`; returns {name: value}."""
    params = {}
    for name, dist in search_space(config, available_backbones).items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return params


def seed_params(config, available_backbones: Sequence[str], slot: int) -> dict | None:
    """The fixed params of slot `slot`, or None (TPE samples it). With
    `search.seed_backbones` and several backbones, slots 0..B-1 try backbone i at the head
    of `config.train` (each value clipped or snapped into the space): TPE's random start
    can draw a backbone only at poor settings (e.g. SGD at lr 1e-5) and then leave it
    unexplored, so every backbone is first scored at one sound setting."""
    space = search_space(config, available_backbones)
    backbones = space["backbone"].choices
    if not config.search.seed_backbones or len(backbones) < 2 or slot >= len(backbones):
        return None
    t = config.train

    def nearest(name, value):
        return min(space[name].choices, key=lambda c: (abs(float(c) - float(value)), c))

    def clip(name, value):
        return float(min(max(value, space[name].low), space[name].high))
    return {"backbone": backbones[slot], "units": nearest("units", t.units),
            "lr": clip("lr", t.lr), "batch_size": nearest("batch_size", t.batch_size),
            "optimizer": t.optimizer if t.optimizer in space["optimizer"].choices
            else space["optimizer"].choices[0],
            "dropout": clip("dropout", t.dropout)}


def params_to_config(config, params: dict):
    """A copy of `config` with the trial's backbone (model.name) and head settings (train.*)."""
    c = config.copy_and_resolve_references()
    c.model.name = params["backbone"]
    c.train.units = int(params["units"])
    c.train.lr = float(params["lr"])
    c.train.batch_size = int(params["batch_size"])
    c.train.optimizer = params["optimizer"]
    c.train.dropout = float(params["dropout"])
    return c
