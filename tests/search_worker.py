"""One search worker for tests/test_search.py's multi-process tests (not a test module).

    python tests/search_worker.py --workdir W --trials 8 --sleep 0.3 [--storage URL]
        [--hang-on-call 4 --marker W/hang] [--ready R --go G]

Runs `bt_jax.tuning.run_search` with `objective` below, a cheap deterministic function of
the params that sleeps to look like training.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import time
from pathlib import Path

import optuna

from bt_jax import config as config_lib
from bt_jax import tuning

BACKBONES = ("resnet50v2", "vgg16", "densenet121")


def score(params: dict, seed: int = 0) -> float:
    """A smooth landscape peaking at lr 1e-3, dropout 0.3, adam, with seeded noise."""
    base = (0.9 - 0.05 * abs(math.log10(params["lr"]) + 3) - 0.1 * abs(params["dropout"] - 0.3)
            + 0.02 * (params["optimizer"] == "adam") + 0.002 * math.log2(params["units"])
            + 0.01 * (params["backbone"] == "resnet50v2"))
    rng = random.Random(f"{seed}|{sorted(params.items())}")
    return base + rng.gauss(0.0, 0.005)


def attrs(params: dict, value: float) -> dict:
    return {"val_auc": min(1.0, value + 0.05), "fold_accuracy": [value - 0.01, value + 0.01],
            "best_epoch": [3, 4]}


def make_config(trials: int, seed: int = 0, storage: str = "", name: str = "test"):
    c = config_lib.base_config()
    c.name = name
    c.seed = seed
    c.search.trials = trials
    c.search.storage = storage
    c.search.backbones = BACKBONES
    return c


def load_study(config, workdir):
    """The study a worker with this config and workdir searches in (tests read it back)."""
    return optuna.load_study(study_name=tuning.study_name(config),
                             storage=tuning.storage_url(config, workdir))


def by_state(study) -> dict:
    """Trials grouped by state."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.state, []).append(t)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--storage", default="")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--hang-on-call", type=int, default=0, help="this call sleeps for an hour")
    p.add_argument("--marker", default="", help="file written when the hanging call starts")
    p.add_argument("--ready", default="", help="file written once imports are done")
    p.add_argument("--go", default="", help="wait for this file before searching")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    calls = 0

    def objective(params):
        nonlocal calls
        calls += 1
        if calls == a.hang_on_call:
            Path(a.marker).write_text(str(os.getpid()))
            time.sleep(3600)
        time.sleep(a.sleep)
        value = score(params, a.seed)
        return value, attrs(params, value)

    if a.ready:
        Path(a.ready).write_text(str(os.getpid()))
    while a.go and not Path(a.go).exists():
        time.sleep(0.02)
    tuning.run_search(make_config(a.trials, a.seed, a.storage), a.workdir, objective,
                      available_backbones=BACKBONES, progress=False, poll_s=0.1)
    print("worker done", os.getpid())


if __name__ == "__main__":
    main()
