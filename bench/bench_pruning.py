"""Method A's search with and without a pruner: trials per minute and the best CV accuracy
at equal wall time.

    python bench/bench_pruning.py --workdir /tmp/prune_ref                 # the reference set
    python bench/bench_pruning.py --workdir /tmp/prune_types --four-class \
        --data ../shared/data/brain_mri_types --trials 30

The quickstart's data path (EfficientNet-Lite0 at 224 px, features computed once and
cached in --workdir) with the default search space (units 32-1024, lr 1e-5-1e-2, batch
16-64, Adam/SGD, dropout 0-0.8), 10 epochs, patience 3. First an unpruned study of
--trials trials (wall time W); then, per pruner, a study of --factor x --trials trials.
Each row: trials per minute over its whole study, and the best CV accuracy among the
trials it finished within W (equal wall time), with the unpruned best's 95% Wilson
interval over the pooled CV validation rows. One JSON line per study, appended to --out.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
from optuna.trial import TrialState

from bench_backbones import machine_info
from bt_jax.config import base_config
from bt_jax.method_a import steps
from bt_jax.reporting.metrics import wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def config_for(a):
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("")
    c.preprocess.size = 224
    c.finetune.epochs = 0
    c.data.dir = str(Path(a.data).resolve())
    if a.four_class:   # the documented command for brain_mri_types (docs/data_at_scale.md)
        c.data.classes, c.data.positive, c.data.negative_classes = (), "", ("notumor",)
    space = base_config().search
    for key in ("units", "lr_min", "lr_max", "batch_sizes", "optimizers", "dropout_min",
                "dropout_max"):
        c.search[key] = space[key]
    return c


def study_row(study, start: float, wall_budget: float | None, n_val: int) -> dict:
    """Counts, rate and bests of one finished study (trial times from the storage)."""
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    wall = max(t.datetime_complete.timestamp() for t in trials) - start
    best = max(done, key=lambda t: t.value)
    row = {"trials": len(trials), "pruned": len(trials) - len(done), "wall_s": round(wall, 1),
           "trials_per_min": round(len(trials) / wall * 60, 1), "best_cv_acc": round(best.value, 4),
           "best_ci95": [round(v, 4) for v in wilson_interval(round(best.value * n_val), n_val)]}
    if wall_budget is not None:
        within = [t for t in done if t.datetime_complete.timestamp() - start <= wall_budget]
        row["best_cv_acc_at_equal_time"] = round(max((t.value for t in within), default=np.nan), 4)
        row["trials_at_equal_time"] = sum(t.datetime_complete.timestamp() - start <= wall_budget
                                          for t in trials)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri"))
    ap.add_argument("--four-class", action="store_true", help="class folders, 'notumor' negative")
    ap.add_argument("--workdir", required=True, help="kept: the features are cached there")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--pruners", nargs="+", default=["median", "successive_halving", "hyperband"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pruning.jsonl"))
    a = ap.parse_args()
    c = config_for(a)
    w = Path(a.workdir)
    t0 = time.perf_counter()
    run = steps.prepare(c, w, c.search.backbones)
    prepare_s = time.perf_counter() - t0
    n_val = int(run.folds.val_mask.sum())
    base = {"bench": "pruning", "data": Path(a.data).name, "images": len(run.ds.labels),
            "cv_val_rows": n_val, "date": datetime.date.today().isoformat(),
            "machine": machine_info(), "prepare_s": round(prepare_s, 1)}
    budget = None
    for pruner in ["none", *a.pruners]:
        c.search.pruner = pruner
        c.search.trials = a.trials if pruner == "none" else round(a.trials * a.factor)
        c.search.study_name = f"prune-{pruner}-{c.search.trials}"
        start = time.time()
        study = steps.run_study(run, c, w / c.search.study_name, progress=False)
        row = {**base, "pruner": pruner, **study_row(study, start, budget, n_val)}
        budget = row["wall_s"] if pruner == "none" else budget
        print(json.dumps({k: v for k, v in row.items() if k != "machine"}), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
