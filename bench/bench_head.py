"""Head-search throughput: trials/minute for k folds: lanes in lockstep, one by one, Keras.

    python bench/bench_head.py                            # synthetic: 228 originals + augment2a copies, D=2048
    python bench/bench_head.py --settings 6 --repeats 3 --keras
    python bench/bench_head.py --features feats.npz       # arrays features (N, D), labels, groups

A trial is one hyper-parameter setting trained on all k folds (method A: 10 epochs,
early stopping patience 3). Three ways run on the same data and settings:
  lockstep    `fit_folds(lane_batch=k)`: the k folds vmapped in one compiled call (what
              fills a GPU; a fold that stops early computes masked epochs until the last);
  lanes       `fit_folds(lane_batch=1)`: the k folds one after another inside one
              compiled call (`lax.map`): a fold that stops early stops costing;
  space       `fit_folds` in one allocation for the whole search space (one program for
              every setting: more units and rows computed than the setting uses);
  keras       (--keras) a real `keras.Model.fit` per fold with EarlyStopping
              (bench/keras_head.py), Keras 3 on the JAX backend.
Each setting's first call includes compilation; compile time is estimated as the first
call minus the median of `--repeats` further calls (new lr each, so no retrace).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial

UNITS, BATCHES, OPTIMIZERS = (32, 64, 128, 256, 1024), (16, 32, 64), ("adam", "sgd")


def synthetic(n: int, dim: int, seed: int):
    """Non-negative 'pooled features' with a weak class signal; 2:1 positives like the data."""
    import numpy as np
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 149 / 222).astype(np.int64)
    direction = rng.normal(size=dim)
    x = rng.gamma(1.0, 0.5, size=(n, dim)) + 0.05 * np.outer(2 * labels - 1, direction)
    return np.maximum(x, 0).astype(np.float32), labels, np.arange(n)


def with_copies(features, labels, splits, seed: int):
    """augment2a copies over every non-test image, as features of the source plus noise."""
    import numpy as np
    from bt_jax.data.augment import plan_copies
    plan = plan_copies(splits.train_all(), labels, policy="augment2a", seed=seed)
    noise = np.random.default_rng(seed).normal(0, 0.05, (len(plan), features.shape[1]))
    copies = np.maximum(features[plan.source] + noise, 0).astype(np.float32)
    return (np.concatenate([features, copies]), np.concatenate([labels, labels[plan.source]]),
            plan.source)


def sample_settings(n: int, seed: int, epochs: int, patience: int):
    import numpy as np
    from bt_jax.train.head import HeadHParams
    rng = np.random.default_rng(seed)
    return [HeadHParams(units=int(rng.choice(UNITS)), batch_size=int(rng.choice(BATCHES)),
                        optimizer=str(rng.choice(OPTIMIZERS)),
                        lr=float(10 ** rng.uniform(-5, -2)), dropout=float(rng.uniform(0, 0.8)),
                        momentum=0.9, epochs=epochs, patience=patience) for _ in range(n)]


def time_setting(fn, features, labels, folds, hp, repeats: int):
    import dataclasses
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(fn(features, labels, folds, hp, jax.random.PRNGKey(0)))
    first = time.perf_counter() - t0
    runs = []
    for r in range(repeats):
        hp_r = dataclasses.replace(hp, lr=hp.lr * (1.1 + 0.1 * r))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(features, labels, folds, hp_r, jax.random.PRNGKey(r + 1)))
        runs.append(time.perf_counter() - t0)
    run = statistics.median(runs)
    return {"first_s": first, "run_s": run, "compile_s": max(first - run, 0.0)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default="", help=".npz with features, labels, groups")
    ap.add_argument("--n", type=int, default=228, help="synthetic originals")
    ap.add_argument("--dim", type=int, default=2048, help="synthetic feature width")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--settings", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--keras", action="store_true", help="also time keras.Model.fit per fold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--platform", default="", help="JAX platform (cpu | gpu); default: jax's")
    args = ap.parse_args(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = args.platform

    import jax
    import numpy as np
    from bt_jax.data.split import make_splits
    from bt_jax.train import head

    if args.features:
        z = np.load(args.features)
        missing = {"features", "labels", "groups"} - set(z.files)
        if missing:
            raise SystemExit(f"{args.features}: missing arrays {sorted(missing)}")
        feats, labels, groups = z["features"].astype(np.float32), z["labels"], z["groups"]
    else:
        feats, labels, groups = synthetic(args.n, args.dim, args.seed)
    splits = make_splits(labels, groups, test_fraction=0.1, k=args.k, seed=args.seed)
    all_feats, all_labels, source = with_copies(feats, labels, splits, args.seed)
    folds = head.make_fold_arrays(splits, len(labels), source)
    features = jax.device_put(all_feats)
    settings = sample_settings(args.settings, args.seed, args.epochs, args.patience)
    space = head.head_lanes.capacity_for(UNITS, BATCHES, folds.train_idx.shape[1], args.epochs, 1)
    methods = {"lockstep": partial(head.fit_folds, lane_batch=folds.k),
               "lanes": partial(head.fit_folds, lane_batch=1),
               "space": partial(head.fit_folds, lane_batch=1, capacity=space)}
    if args.keras:
        from keras_head import keras_cv
        methods["keras"] = lambda f, y, folds, hp, rng: keras_cv(
            np.asarray(f), np.asarray(y), folds, hp, seed=int(rng[-1]))

    rows = []
    for i, hp in enumerate(settings):
        row = {"setting": i, "units": hp.units, "batch": hp.batch_size, "opt": hp.optimizer,
               "lr": hp.lr}
        for name, fn in methods.items():
            row[name] = time_setting(fn, features, all_labels, folds, hp, args.repeats)
        rows.append(row)

    def totals(name):
        run = sum(r[name]["run_s"] for r in rows)
        first = sum(r[name]["first_s"] for r in rows)
        comp = sum(r[name]["compile_s"] for r in rows)
        n = len(rows)
        # a 150-trial search over 15 shapes (5 units x 3 batch sizes; one for "space")
        search = 150 * run / n + (1 if name == "space" else 15) * comp / n
        return {"trials_per_min": 60 * n / run, "trials_per_min_incl_compile": 60 * n / first,
                "compile_s_mean": comp / n, "run_s_mean": run / n,
                "search150_min": search / 60}

    summary = {name: totals(name) for name in methods}
    base = summary["lockstep"]
    for name in methods:
        summary[name]["lockstep_speedup"] = summary[name]["run_s_mean"] / base["run_s_mean"]
        summary[name]["lockstep_speedup_incl_compile"] = (
            (summary[name]["run_s_mean"] + summary[name]["compile_s_mean"])
            / (base["run_s_mean"] + base["compile_s_mean"]))

    print(f"N={len(all_labels)} ({len(labels)} originals + {len(source)} copies), "
          f"D={features.shape[1]}, k={folds.k}, T={folds.train_idx.shape[1]}, "
          f"V={folds.val_idx.shape[1]}, device={jax.devices()[0].device_kind}")
    hdr = f"{'#':>2} {'units':>5} {'batch':>5} {'opt':>4} " + " ".join(
        f"{n + ' run/compile s':>24}" for n in methods)
    print(hdr)
    for r in rows:
        cells = " ".join(f"{r[n]['run_s']:>11.3f} / {r[n]['compile_s']:>9.2f}  " for n in methods)
        print(f"{r['setting']:>2} {r['units']:>5} {r['batch']:>5} {r['opt']:>4} {cells}")
    for n, s in summary.items():
        print(f"{n:>10}: {s['trials_per_min']:8.1f} trials/min steady, "
              f"{s['trials_per_min_incl_compile']:7.1f} incl. compile, compile {s['compile_s_mean']:.2f} s, "
              f"150-trial search ~{s['search150_min']:.1f} min, lockstep takes "
              f"{s['lockstep_speedup']:.2f}x its time ({s['lockstep_speedup_incl_compile']:.2f}x "
              "incl. compile)")
    out = {"bench": "head", "platform": jax.default_backend(),
           "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "python": platform.python_version(),
           "jax": jax.__version__, "n": int(len(all_labels)), "dim": int(features.shape[1]),
           "k": folds.k, "settings": len(rows), "repeats": args.repeats, "summary": summary,
           "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
