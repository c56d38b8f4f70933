"""A full method A search on real features: wall time, trials/minute, peak resident memory.

    python bench/bench_search.py [--data ../shared/data/brain_mri] [--trials 150]

Runs the `search` pipeline's steps (data set, augment2a copies, EfficientNet-Lite0
features from the shipped ImageNet weights, a `--trials` Optuna study of vmapped 5-fold
head runs) in a temporary workdir, then prints wall time per phase, trials per minute
and the process's peak RSS (ru_maxrss), plus one JSON line. XLA compilations during the
search (count and seconds) come from JAX's monitoring events, so the same script measures
any version of the code side by side. No persistent compilation cache is used here.
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

from bt_jax import tuning
from bt_jax.config import base_config
from bt_jax.pipelines import method_a
from bt_jax.train import head

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
        run = method_a.prepare(c, w, (a.backbone,))
        ds, copies, feats = run.ds, run.copies, run.feats[a.backbone]
        t["prepare_and_features_s"] = time.perf_counter() - t0

        def objective(p):
            res = method_a.cv_head(run, a.backbone, head.HeadHParams.from_trial(p, c.train))
            return res.val_acc_mean, method_a.cv_summary(res)

        compiles = []
        jax.monitoring.register_event_duration_secs_listener(
            lambda e, d, **_: compiles.append(d) if e == "/jax/core/compile/backend_compile_duration"
            else None)
        t0 = time.perf_counter()
        study = tuning.run_search(c, w, objective, available_backbones=[a.backbone], progress=False)
        t["search_s"] = time.perf_counter() - t0
        t["search_compile_s"] = sum(compiles)
    res = {"bench": "search", "backbone": a.backbone, "images": len(ds.labels),
           "copies": len(copies.union), "feature_dim": int(feats.shape[1]), "trials": a.trials,
           "best_cv_acc": round(study.best_value, 4),
           **{k: round(v, 1) for k, v in t.items()},
           "trials_per_min": round(a.trials / t["search_s"] * 60, 1),
           "search_compiles": len(compiles),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "cpus": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}
    for k, v in res.items():
        print(f"{k:24s} {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
