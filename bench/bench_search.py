"""A full method A search on real features: wall time, trials/minute, peak resident memory.

    python bench/bench_search.py [--data ../shared/data/brain_mri] [--trials 150]
        [--parallel N] [--allocation auto|exact|space] [--keras-trials 10]

Runs the `search` pipeline's steps (data set, augment2a copies, EfficientNet-Lite0
features from the shipped ImageNet weights, a `--trials` Optuna study of vmapped 5-fold
head runs) in a temporary workdir, then prints wall time per phase (the search split
into the head programs, compiles included, and the rest: Optuna, its storage,
trials.csv), trials per minute and the process's peak RSS (ru_maxrss), plus one JSON
line. XLA compilations during the search (count and seconds) come from JAX's monitoring
events, so the same script measures any version of the code side by side. No persistent compilation cache is used here.

--keras-trials K: after the search, K of its trials' settings, spread evenly over the
whole study (TPE's later trials favour wider, slower heads than its random start, so
the first K would flatter Keras), are run again as Keras fit loops (bench/keras_head.py:
`keras.Model.fit` per fold with EarlyStopping) in the same process, twice: a new model
per fold as the notebooks do, and one model per trial reset before each fold, as a
careful user would. The ratio of trials/minute (ours including every compile) is to the
faster loop. `--keras-backend tensorflow` (from .venv-peers) runs Keras on TensorFlow,
the framework of the method reports.
"""

import argparse
import datetime
import json
import os
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import jax

from bench_backbones import machine_info
from bt_jax.config import base_config
from bt_jax.method_a import allocation
from bt_jax.method_a import steps as method_a
from bt_jax.train import head

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri"))
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--parallel", type=int, default=0, help="search.parallel_trials (0: auto)")
    ap.add_argument("--allocation", default="auto", help="search.allocation")
    ap.add_argument("--keras-trials", type=int, default=0)
    ap.add_argument("--keras-backend", default="jax", choices=("jax", "tensorflow"),
                    help="tensorflow: run from .venv-peers (bench only)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "search.jsonl"),
                    help="the JSON line is appended here (docs table: bench/tables.py)")
    a = ap.parse_args()
    os.environ["KERAS_BACKEND"] = a.keras_backend   # read when keras is first imported
    c = base_config()
    c.pipeline = "search"
    c.data.dir = a.data
    c.search.backbones = (a.backbone,)
    c.model.name = a.backbone
    c.search.trials = a.trials
    c.search.parallel_trials = a.parallel
    c.search.allocation = a.allocation
    t = {}
    with tempfile.TemporaryDirectory() as w:
        w = Path(w)
        t0 = time.perf_counter()
        run = method_a.prepare(c, w, (a.backbone,))
        ds, copies, feats = run.ds, run.copies, run.feats[a.backbone]
        t["prepare_and_features_s"] = time.perf_counter() - t0

        compiles = []
        jax.monitoring.register_event_duration_secs_listener(
            lambda e, d, **_: compiles.append(d) if e == "/jax/core/compile/backend_compile_duration"
            else None)
        in_heads = [0.0]   # seconds inside the head programs (compiles included)
        cv_heads = method_a.cv_heads

        def timed_cv_heads(*args, **kw):
            t1 = time.perf_counter()
            try:
                return cv_heads(*args, **kw)
            finally:
                in_heads[0] += time.perf_counter() - t1
        method_a.cv_heads = timed_cv_heads
        t0 = time.perf_counter()
        try:
            study = method_a.run_study(run, c, w, progress=False)
        finally:
            method_a.cv_heads = cv_heads
        t["search_s"] = time.perf_counter() - t0
        t["search_heads_s"] = in_heads[0]
        t["search_optuna_storage_s"] = t["search_s"] - in_heads[0]
        t["search_compile_s"] = sum(compiles)
        n_compiles = len(compiles)
        keras_rates = {loop: keras_trials(run, c, study, a.keras_trials, a.backbone,
                                          reuse=loop == "reuse") for loop in ("rebuild", "reuse")}
    res = {"bench": "search", "backbone": a.backbone, "images": len(ds.labels),
           "copies": len(copies.union), "feature_dim": int(feats.shape[1]), "trials": a.trials,
           "best_cv_acc": round(study.best_value, 4),
           "trials_by_units": dict(sorted(Counter(t.params["units"] for t in study.trials
                                                  if t.value is not None).items())),
           **{k: round(v, 1) for k, v in t.items()},
           "trials_per_min": round(a.trials / t["search_s"] * 60, 1),
           "search_compiles": n_compiles, "parallel_trials": allocation.parallel_trials(c),
           "allocation": a.allocation,
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "cpus": os.cpu_count(), "date": datetime.date.today().isoformat(),
           "machine": machine_info(), "jax": jax.__version__}
    if a.keras_trials > 0:   # the ratio is to the faster Keras loop
        best = max(keras_rates.values())
        res.update(keras_trials=a.keras_trials, keras_backend=a.keras_backend,
                   keras_trials_per_min={k: round(v, 2) for k, v in keras_rates.items()},
                   keras_ratio=round(res["trials_per_min"] / best, 1))
        import keras
        res["keras_version"] = keras.__version__
    for k, v in res.items():
        print(f"{k:24s} {v}")
    print(json.dumps(res))
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")


def keras_trials(run, c, study, n: int, backbone: str, *, reuse: bool) -> float:
    """Trials/minute of n of the study's trial settings, evenly spaced over the study,
    run as Keras fit loops (0: skipped); reuse: one model per trial, reset per fold."""
    if n <= 0:
        return 0.0
    import numpy as np
    from keras_head import keras_cv
    done = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.number)
    trials = [done[i] for i in np.unique(np.linspace(0, len(done) - 1, n).round().astype(int))]
    feats, labels = np.asarray(run.feats[backbone]), np.asarray(run.labels_all)
    seconds = 0.0
    for t in trials:
        hp = head.HeadHParams.from_trial(t.params, c.train)
        acc, s = keras_cv(feats, labels, run.folds, hp, seed=c.seed, reuse=reuse)
        seconds += s
        print(f"keras ({'reuse' if reuse else 'rebuild'}) trial {t.number}: {s:.1f} s, mean "
              f"val acc {acc:.3f} (ours {t.value:.3f})", flush=True)
    return len(trials) / seconds * 60


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
