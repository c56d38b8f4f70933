"""Method A's primary estimate: repeated stratified group k-fold CV of the final setting,
with the logistic-regression baseline on the very same folds and a paired comparison.

    est = repeated_cv(run, backbone, hp, repeats=5)      # metrics.json "cv"
    section = cv_section(est)                             # report.md

The held-out test split has ~23 images on the reference set (one image moves its accuracy
by 0.043), so the number to trust is cross-validation over every non-test image: repeat 0
uses the search's folds, repeats 1.. new group-aware stratified folds (`split.refold`).
Each repeat predicts every non-test image once (out of fold); the per-image mean over
repeats gives the headline accuracy / ROC AUC with a bootstrap CI over images, and the
spread across repeats is reported beside it. Repeat 0's folds also chose the setting, so
this estimate is optimistic by the selection; nested CV would remove that.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from bt_jax import stages
from bt_jax.data import split
from bt_jax.method_a import allocation
from bt_jax.reporting import metrics, multiclass
from bt_jax.train import baseline, head
from bt_jax.train.folds import FoldArrays, make_fold_arrays, row_sources

_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def _fold_sets(run, repeats: int) -> list[FoldArrays]:
    """The search's folds, then repeats - 1 new ones; all padded to one width (masked
    entries, which change no number), so every repeat runs the same compiled head."""
    ds, n = run.ds, len(run.ds.labels)
    sets = [run.folds] + [
        make_fold_arrays(split.refold(ds.splits, ds.labels, ds.groups,
                                      seed=run.config.seed + 7919 * r),
                         n, run.copies.union.source)
        for r in range(1, repeats)]
    tw = max(f.train_idx.shape[1] for f in sets)
    vw = max(f.val_idx.shape[1] for f in sets)

    def pad(idx, mask, width):
        extra = ((0, 0), (0, width - idx.shape[1]))
        return np.pad(np.asarray(idx), extra), np.pad(np.asarray(mask), extra)
    return [FoldArrays(*pad(f.train_idx, f.train_mask, tw), *pad(f.val_idx, f.val_mask, vw))
            for f in sets]


def scores(y, p, names, **boot) -> dict:
    """{"accuracy", "roc_auc"} entries: the binary report's, or for C classes the accuracy
    of the argmax and the macro one-vs-rest ROC AUC, plus Cohen's kappa and each class's
    recall ({"recall": {name: entry}})."""
    if np.ndim(p) == 1:
        rep = metrics.classification_report(y, p, **boot)
        return {"accuracy": rep["accuracy"], "roc_auc": rep["roc_auc"]}
    p = p / p.sum(axis=1, keepdims=True)  # means of softmax rows: renormalise float error
    rep = multiclass.multiclass_report(y, p, class_names=names, **boot)
    return {"accuracy": rep["accuracy"], "roc_auc": rep["macro"]["roc_auc"],
            "kappa": rep["kappa"], "recall": {k: v["recall"] for k, v in rep["per_class"].items()}}


def _oof(folds, prob) -> tuple[np.ndarray, np.ndarray]:
    """(image row, probability) of every validation entry of every fold."""
    vm = np.asarray(folds.val_mask)
    return np.asarray(folds.val_idx)[vm], np.asarray(prob)[vm]


def _across(values) -> dict:
    v = np.asarray(values, float)
    if len(v) < 2:
        return {"mean": float(v.mean()), "sd": math.nan, "ci": [math.nan, math.nan]}
    half = _T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)),
            "ci": [float(v.mean() - half), float(v.mean() + half)]}


@stages.stage("repeated CV")
def repeated_cv(run, backbone: str, hp: head.HeadHParams, repeats: int) -> dict:
    c, n, names = run.config, len(run.ds.labels), list(run.ds.label_names)
    feats, labels = run.feats[backbone], run.labels_all
    groups, _ = row_sources(np.arange(len(labels)), n, run.copies.union.source)
    width = (len(names),) if run.ds.multiclass else ()
    sums = {"head": np.zeros((n, *width)), "logistic": np.zeros((n, *width))}
    count = np.zeros(n)
    per_repeat = []
    for r, folds in enumerate(_fold_sets(run, repeats)):
        res = head.fit_folds(feats, labels, folds, hp, jax.random.PRNGKey(c.seed + r),
                             n_classes=len(names), lane_batch=allocation.lane_batch(c))
        lr = baseline.logistic_folds(feats, labels, folds, groups=groups, seed=c.seed + r,
                                     max_rows=c.eval.baseline_max_rows)
        row = {"repeat": r}
        for name, prob in (("head", res.val_prob), ("logistic", lr["val_prob"])):
            idx, p = _oof(folds, prob)
            sums[name][idx] += p
            rep = scores(labels[idx], p, names, n_boot=0)
            row[name] = {m: rep[m]["value"] for m in ("accuracy", "roc_auc")}
        count[idx] += 1
        row["logistic_C"] = lr["C"].tolist()
        row["logistic_rows"] = lr["rows"].tolist()
        per_repeat.append(row)
    seen = count > 0
    y = labels[:n][seen]
    mean_prob = {k: v[seen] / count[seen].reshape(-1, *(1,) * len(width))
                 for k, v in sums.items()}
    boot = dict(n_boot=int(c.eval.bootstrap), ci=float(c.eval.ci), seed=int(c.seed))
    out = {"repeats": repeats, "k": int(run.folds.k), "n_images": int(seen.sum()),
           "per_repeat": per_repeat}
    for name, p in mean_prob.items():
        rep = scores(y, p, names, **boot)
        out[name] = {**rep, "across_repeats": {m: _across([r[name][m] for r in per_repeat])
                                        for m in ("accuracy", "roc_auc")}}
    if boot["n_boot"] >= 2 and not width:  # the paired bootstrap is written for two classes
        out["head_minus_logistic"] = metrics.paired_difference(
            y, mean_prob["logistic"], mean_prob["head"], **boot)["metrics"]
    return out


def cell(entry: dict) -> str:
    lo, hi = entry.get("ci") or (math.nan, math.nan)
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def verdict(est: dict) -> str:
    d = est.get("head_minus_logistic")
    if not d:
        return "No paired comparison (eval.bootstrap < 2, or more than two classes)."
    acc, auc = d["accuracy"], d["roc_auc"]
    lo, hi = acc["ci"]
    if lo > 0:
        word = "beats"
    elif hi < 0:
        word = "is worse than"
    else:
        word = "is not distinguishable from"
    return (f"The searched head {word} logistic regression on accuracy: difference "
            f"{acc['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap over images); ROC AUC "
            f"difference {auc['diff']:+.3f} [{auc['ci'][0]:+.3f}, {auc['ci'][1]:+.3f}].")


def cv_section(est: dict) -> tuple[str, str, list]:
    rows = ["| model | accuracy [95% CI] | ROC AUC [95% CI] | accuracy across repeats "
            "(mean ± sd) |", "|---|---|---|---|"]
    for name, label in (("head", "searched head (final setting)"),
                        ("logistic", "L2 logistic regression (C by inner CV)")):
        e = est[name]
        a = e["across_repeats"]["accuracy"]
        rows.append(f"| {label} | {cell(e['accuracy'])} | {cell(e['roc_auc'])} | "
                    f"{a['mean']:.3f} ± {a['sd']:.3f} |")
    if "kappa" in est["head"]:  # C classes: agreement beyond chance and each class's recall
        names = list(est["head"]["recall"])
        rows += ["", "| model | Cohen's kappa | " + " | ".join(f"recall {n}" for n in names)
                 + " |", "|---|---|" + "---|" * len(names)]
        for name, label in (("head", "searched head"), ("logistic", "logistic regression")):
            e = est[name]
            rows.append(f"| {label} | {cell(e['kappa'])} | "
                        + " | ".join(cell(e["recall"][n]) for n in names) + " |")
    text = (f"**Primary estimate**: {est['repeats']} repeats x {est['k']}-fold stratified, "
            f"group-aware cross-validation over the {est['n_images']} non-test images (each "
            "image predicted once per repeat; intervals: bootstrap over images of the "
            "repeat-averaged out-of-fold probabilities). Repeat 0 uses the folds that chose "
            "the setting, so the head's number is somewhat optimistic.\n\n"
            + "\n".join(rows) + "\n\n" + verdict(est))
    return ("Cross-validated estimate", text, [])
