"""Which compiled head programs a search trains its trials in, and how many at once.

A head program is compiled per allocation (`train.head_lanes.Capacity`); a trial trains
in any allocation that serves it, with the same result (tests/test_head.py). These
policies trade padding against compiles per platform (docs/benchmarks.md, "Head search"):

    allocs = allocation.search_allocations(run, allocation.parallel_trials(config), folds)
    head.capacity_if_serving(allocs, hps, n_train, n_classes)   # the first that serves
"""

from __future__ import annotations

import jax

from bt_jax.models.heads import n_outputs
from bt_jax.train import head
from bt_jax.train.folds import FoldArrays

SMALL_SPACE = 128 * 64   # hidden units x rows per step that a CPU pads cheaply
BUCKET_UNITS = 256       # hidden widths whose steps cost about the same on a CPU


def search_allocations(run, parallel: int, folds: FoldArrays) -> tuple:
    """The head allocations of a search (`search.allocation`) as `head_lanes.Capacity`s; a
    trial trains in the first that serves it, else in its exact allocation (a program of
    its own per units x batch size, nothing padded):
    - "exact": none;
    - "space": one for the whole space (one program per backbone);
    - "bucket": one per batch size for the hidden widths <= BUCKET_UNITS (padded to the
      widest of them), exact for wider heads: on a CPU a narrow head's step costs little
      more at 256 units than at 32, far less than a ~4 s compile, while padding a 1024-unit
      head's batch costs it 1.3-2x (docs/benchmarks.md, "Head search");
    - "auto": the space on GPU/TPU, with parallel trials, or when it is small (units x
      rows per step <= SMALL_SPACE, e.g. the quickstart's); "bucket" otherwise."""
    c = run.config
    s = c.search

    def cap(units, batch_sizes):
        return head.head_lanes.capacity_for(units, batch_sizes, folds.train_idx.shape[1],
                                           c.train.epochs, n_outputs(len(run.ds.classes)))
    space = cap(s.units, s.batch_sizes)
    policy = s.allocation
    if policy == "auto":
        small = space.units * space.batch <= SMALL_SPACE
        policy = ("bucket" if jax.default_backend() == "cpu" and parallel <= 1 and not small
                  else "space")
    if policy == "space":
        return (space,)
    narrow = [u for u in s.units if u <= BUCKET_UNITS]
    if policy == "exact" or len(narrow) < 2:
        return ()
    return tuple(cap(narrow, [b]) for b in sorted(set(s.batch_sizes)))


def head_allocations(run) -> tuple:
    """The allocations of the heads trained after the search on run.folds (final head,
    ensemble members, via `fold0_head`): the search's, so that they run in a program
    the search already compiled (same results either way). Nested CV passes its inner
    folds' allocations to `head.fit_one` instead."""
    return search_allocations(run, parallel_trials(run.config), run.folds)


def lane_batch(config) -> int | None:
    """`train.lane_batch`: head runs computed in lockstep; None (auto) for 0."""
    return int(config.train.lane_batch) or None


def parallel_trials(config) -> int:
    """`search.parallel_trials`, 0 = auto: 1 on a CPU (lanes in lockstep and padded
    allocations are slower there), 8 on GPU/TPU."""
    n = int(config.search.parallel_trials)
    return n if n else (1 if jax.default_backend() == "cpu" else 8)
