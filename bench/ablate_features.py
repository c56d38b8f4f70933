"""What frozen-feature options buy on the reference set: an ablation table for issue #10.

    python bench/ablate_features.py [--data ../shared/data/brain_mri] [--repeats 3]

Every variant is a backbone name or feature recipe the pipelines take as they are
(`search.backbones`, `model.name`; models/composite.py), and its features come from
`method_a.prepare` as a search computes them. Each is scored by the estimator of the
README's results table (`pipelines.estimates.repeated_cv`: repeated group-aware
stratified 5-fold CV over the non-test images, out-of-fold probabilities averaged over
repeats, bootstrap 95% CIs) for a fixed head setting and for L2 logistic regression with
C chosen by inner CV. Variants: each offline backbone at its native resolution
(EfficientNet-Lite0 224, Lite1 240, Lite2 260); flip averaging (original + horizontal
flip); an earlier stage's pooled features beside the last ("early"); the three backbones
concatenated (one 260 px input, rescaled to each one's native size). With
`preprocess.native_size` the data set, splits, duplicate groups and augment2a copy plan
are the same rows at every size (`method_a.check_same_rows`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bt_jax.config import base_config
from bt_jax.method_a import estimates
from bt_jax.method_a import steps as method_a
from bt_jax.train import head

ROOT = Path(__file__).resolve().parents[1]
L0, L1, L2 = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
CONCAT = f"{L0}+{L1}+{L2}"
VARIANTS = {
    "Lite0 224": L0,
    "Lite0 224, flip-averaged": f"{L0}+flip",
    "Lite0 224, stage6 + last": f"{L0}+early",
    "Lite1 240": L1,
    "Lite2 260": L2,
    "Lite0+1+2 concatenated": CONCAT,
    "Lite0+1+2 concatenated, flip-averaged": f"{CONCAT}+flip",
    "Lite0+1+2 concatenated, stage6 + last": f"{CONCAT}+early",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    hp = head.HeadHParams(units=128, dropout=0.3, lr=3e-4, batch_size=32, optimizer="adam")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as w:
        c = base_config()
        c.data.dir, c.preprocess.native_size, c.eval.bootstrap = a.data, True, 1000
        c.search.backbones, c.model.name = tuple(VARIANTS.values()), L0
        base = method_a.prepare(c, Path(w), tuple(VARIANTS.values()))
        t_feats = time.perf_counter() - t0
        rows = []
        for label, name in VARIANTS.items():
            t1 = time.perf_counter()
            est = estimates.repeated_cv(base, name, hp, a.repeats)
            row = {"variant": label, "dim": int(base.feats[name].shape[1]),
                   "seconds": round(time.perf_counter() - t1)}
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
        cell = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
        print(f"| {r['variant']} | {r['dim']} | {cell(r['head_accuracy'])} | "
              f"{cell(r['head_roc_auc'])} | {cell(r['logistic_accuracy'])} | "
              f"{cell(r['logistic_roc_auc'])} |")


if __name__ == "__main__":
    main()
