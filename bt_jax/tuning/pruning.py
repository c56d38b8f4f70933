"""Stopping poor trials early (`search.pruner`): Optuna's pruners and the reporter that
feeds them from a batch of trials trained together.

    study = optuna.create_study(..., pruner=pruning.make_pruner(config))
    report = pruning.Reporter(trials)            # objective_batch(params, report=report)
    stop = report(epoch, scores, training)       # True where a trial is stopped now
    report.pruned                                # {index in batch: epoch it stopped after}

The head lanes (train/head_lanes.py) run one epoch at a time when a pruner is set; after
each epoch every trial reports its mean k-fold validation accuracy at each fold's best
epoch so far, and a stopped trial's lanes run no further. Measured in docs/benchmarks.md.
"""

from __future__ import annotations

import math

import numpy as np
import optuna


def make_pruner(config) -> optuna.pruners.BasePruner:
    """`search.pruner`: a trial reports its mean k-fold validation accuracy (at each fold's
    best epoch so far) after every epoch; the pruner may stop it there. Warm-up
    `search.prune_warmup_epochs`: the epochs before the first check (median) or the
    first rung (successive halving, Hyperband)."""
    name, warm = config.search.pruner, max(1, int(config.search.prune_warmup_epochs))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warm)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warm, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warm,
                                              max_resource=int(config.train.epochs),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


class Reporter:
    """What a pruned objective calls after each epoch chunk of a batch of trials:
    `reporter(epoch, scores, training) -> stop` reports each trial's score to Optuna and
    asks its pruner about those still training; `pruned` holds the stopped ones."""

    def __init__(self, trials: list):
        self.trials, self.pruned = trials, {}

    def __call__(self, epoch: int, scores, training) -> np.ndarray:
        stop = np.zeros(len(self.trials), bool)
        for i, (trial, score) in enumerate(zip(self.trials, scores)):
            if i in self.pruned or not math.isfinite(score):
                continue
            trial.report(float(score), int(epoch))
            if training[i] and trial.should_prune():
                stop[i], self.pruned[i] = True, int(epoch)
        return stop
