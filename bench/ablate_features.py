"""What frozen-feature options buy on the reference set: an ablation table for issue #10.

    python bench/ablate_features.py [--data ../shared/data/brain_mri] [--repeats 3]

Every variant is scored by the estimator of the README's results table
(`pipelines.estimates.repeated_cv`: repeated group-aware stratified 5-fold CV over the
non-test images, out-of-fold probabilities averaged over repeats, bootstrap 95% CIs) for
a fixed head setting and for L2 logistic regression with C chosen by inner CV. Variants:
each offline backbone at its native resolution (EfficientNet-Lite0 224, Lite1 240, Lite2
260); test-time flip averaging of the pooled features (original + horizontal flip);
an earlier stage's pooled features concatenated with the last; the three backbones'
features concatenated. The data set, splits, duplicate groups and augment2a copy plan
are the same for every variant (pHash groups are computed on the decoded scans, not on
the resized ones; asserted below), so rows line up across resolutions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.config import base_config
from bt_jax.pipelines import estimates, method_a
from bt_jax.train import head

ROOT = Path(__file__).resolve().parents[1]
NATIVE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
EARLY = "stage6"   # the 192-channel (Lite0) stage before the last block group


def pooled(module, variables, images, batch=32) -> dict:
    """{"last", "early", "last_flip", "early_flip"}: GAP features of every image."""
    @jax.jit
    def fn(x):
        res = {}
        for tag, xi in (("", x), ("_flip", x[:, :, ::-1])):
            _, out = module.apply(variables, xi, train=False)
            res["last" + tag] = out["pre_logits"].astype(jnp.float32)
            res["early" + tag] = out[EARLY].astype(jnp.float32).mean(axis=(1, 2))
        return res
    parts = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        pad = batch - len(x)
        out = jax.device_get(fn(np.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0)))))
        parts.append({k: v[:len(x)] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    hp = head.HeadHParams(units=128, dropout=0.3, lr=3e-4, batch_size=32, optimizer="adam")
    runs, feats, t0 = {}, {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as w:
        for name, size in NATIVE.items():
            c = base_config()
            c.data.dir, c.preprocess.size, c.eval.bootstrap = a.data, size, 1000
            c.search.backbones, c.model.name = (name,), name
            run = method_a.prepare(c, Path(w) / name, (name,))
            module, variables, _ = run.models[name]
            allx = np.concatenate([run.ds.images, run.copies.images])
            feats[name] = pooled(module, variables, allx)
            runs[name] = run
        base = runs["efficientnet_lite0"]
        for run in runs.values():   # the same rows, folds and copies at every resolution
            assert (run.copies.union.source == base.copies.union.source).all()
            assert all((x == y).all() for x, y in zip(run.ds.splits.folds, base.ds.splits.folds))
        f0 = feats["efficientnet_lite0"]
        flip = {n: (f["last"] + f["last_flip"]) / 2 for n, f in feats.items()}
        variants = {
            "Lite0 224": f0["last"],
            "Lite0 224, flip-averaged": flip["efficientnet_lite0"],
            f"Lite0 224, {EARLY} + last": np.concatenate([f0["early"], f0["last"]], 1),
            "Lite1 240": feats["efficientnet_lite1"]["last"],
            "Lite2 260": feats["efficientnet_lite2"]["last"],
            "Lite0+1+2 concatenated": np.concatenate([f["last"] for f in feats.values()], 1),
            "Lite0+1+2 concatenated, flip-averaged": np.concatenate(list(flip.values()), 1),
        }
        t_feats = time.perf_counter() - t0
        rows = []
        for label, x in variants.items():
            base.feats[label] = x
            t1 = time.perf_counter()
            est = estimates.repeated_cv(base, label, hp, a.repeats)
            row = {"variant": label, "dim": int(x.shape[1]), "seconds": round(time.perf_counter() - t1)}
            for model in ("head", "logistic"):
                for m in ("accuracy", "roc_auc"):
                    e = est[model][m]
                    row[f"{model}_{m}"] = [round(e["value"], 3)] + [round(v, 3) for v in e["ci"]]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nfeatures {t_feats:.0f} s; {a.repeats} repeats x {base.folds.k} folds; head {hp}")
    print("| variant | D | head accuracy | head ROC AUC | logistic accuracy | logistic ROC AUC |")
    print("|---|---:|---|---|---|---|")
    for r in rows:
        cell = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
        print(f"| {r['variant']} | {r['dim']} | {cell(r['head_accuracy'])} | "
              f"{cell(r['head_roc_auc'])} | {cell(r['logistic_accuracy'])} | "
              f"{cell(r['logistic_roc_auc'])} |")


if __name__ == "__main__":
    main()
