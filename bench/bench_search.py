"""A full method A search on real features: wall time, trials/minute, peak resident memory.

    python bench/bench_search.py [--data ../shared/data/brain_mri] [--trials 150]

Runs the `search` pipeline's steps (data set, augment2a copies, EfficientNet-Lite0
features from the shipped ImageNet weights, a `--trials` Optuna study of vmapped 5-fold
head runs) in a temporary workdir, then prints wall time per phase, trials per minute
and the process's peak RSS (ru_maxrss), plus one JSON line.
"""

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bt_jax import search
from bt_jax.config import base_config
from bt_jax.data import dataset
from bt_jax.pipelines import search as method_a

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri"))
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    a = ap.parse_args()
    c = base_config()
    c.pipeline = "search"
    c.data.dir = a.data
    c.search.backbones = (a.backbone,)
    c.model.name = a.backbone
    c.search.trials = a.trials
    t = {}
    with tempfile.TemporaryDirectory() as w:
        w = Path(w)
        t0 = time.perf_counter()
        ds = dataset.prepare_dataset(c, w, progress=False)
        copies = method_a.make_copy_set(c, ds)
        folds = method_a.fold_arrays(ds, copies)
        labels = np.concatenate([ds.labels, ds.labels[copies.union.source]])
        avail = method_a.resolve_backbones(c)
        feats, _ = method_a.backbone_features(c, w, ds, copies, a.backbone, avail[a.backbone])
        t["prepare_and_features_s"] = time.perf_counter() - t0

        from bt_jax.train import head

        def objective(p):
            hp = head.HeadHParams(units=p["units"], dropout=p["dropout"], lr=p["lr"],
                                  batch_size=p["batch_size"], optimizer=p["optimizer"])
            res = head.fit_folds(feats, labels, folds, hp, jax.random.PRNGKey(0))
            return res.val_acc_mean, {"val_auc": float(np.nanmean(res.val_auc))}

        t0 = time.perf_counter()
        study = search.run_search(c, w, objective, available_backbones=[a.backbone], progress=False)
        t["search_s"] = time.perf_counter() - t0
    res = {"bench": "search", "backbone": a.backbone, "images": len(ds.labels),
           "copies": len(copies.union), "feature_dim": int(feats.shape[1]), "trials": a.trials,
           "best_cv_acc": round(study.best_value, 4),
           **{k: round(v, 1) for k, v in t.items()},
           "trials_per_min": round(a.trials / t["search_s"] * 60, 1),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "cpus": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}
    for k, v in res.items():
        print(f"{k:24s} {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
