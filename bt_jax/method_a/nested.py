"""Nested cross-validation of method A: the whole head search runs inside each outer fold.

    est = nested_cv(run, study)     # metrics.json "nested_cv"
    section = nested_section(est)   # report.md

The search's own number (the best trial's mean k-fold accuracy) and the repeated CV of
the chosen setting are both optimistic: the folds that score them also chose the
setting. Here each of the k folds is held out in turn (outer fold f); a fresh Optuna
study (`W/nested/outer<f>/search.db`, resumable; study "<name>-nested<f>" on a shared
storage) searches with inner CV over the other k-1 folds only, its best setting is trained
like the final head (inner fold 0 for early stopping) and predicts outer fold f, which it
never saw. The out-of-fold predictions of all k outer folds give the nested estimate,
with a bootstrap CI over images; the report sets it beside the search's number.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from bt_jax import tuning
from bt_jax.data.split import Splits
from bt_jax.models.heads import predicted_labels
from bt_jax.method_a import allocation, estimates, steps
from bt_jax.train import head
from bt_jax.train.folds import make_fold_arrays

log = logging.getLogger(__name__)


def inner_splits(splits: Splits, outer: int) -> Splits:
    """The outer fold joins the held-out images; the other folds are the inner folds."""
    return Splits(test=np.concatenate([splits.test, splits.fold_val(outer)]), val=splits.val,
                  folds=tuple(v for i, v in enumerate(splits.folds) if i != outer), n=splits.n)


def _outer_config(config, outer: int):
    c = config.copy_and_resolve_references()
    c.search.study_name = f"{tuning.study_name(config)}-nested{outer}"
    c.search.trials = int(config.search.nested_trials or config.search.trials)
    return c


def _outer_fold(run, outer: int) -> dict:
    """Search on the inner folds, train the best setting, predict the outer fold."""
    ds, n = run.ds, len(run.ds.labels)
    inner = make_fold_arrays(inner_splits(ds.splits, outer), n, run.copies.union.source)
    n_classes = len(ds.classes)
    key = jax.random.PRNGKey(run.config.seed + 1000 * (outer + 1))

    cfg = _outer_config(run.config, outer)
    study = steps.run_study(run, cfg, run.workdir / "nested" / f"outer{outer}", folds=inner,
                            key=key, progress=False)
    best = tuning.best_trial_params(study)
    hp = head.HeadHParams.from_trial(best, run.config.train)
    train_rows = np.asarray(inner.train_idx[0])[np.asarray(inner.train_mask[0])]
    val_rows = np.asarray(inner.val_idx[0])[np.asarray(inner.val_mask[0])]
    res = head.fit_one(run.feats[best["backbone"]], run.labels_all, train_rows, val_rows, hp,
                       key, n_classes=n_classes, lane_batch=allocation.lane_batch(run.config),
                       capacity=allocation.search_allocations(
                           run, allocation.parallel_trials(cfg), inner))
    head.check_converged(res, what=f"nested outer fold {outer}, final head")
    rows = ds.splits.fold_val(outer)
    prob = np.asarray(head.predict_proba(res.params, run.feats[best["backbone"]][rows]),
                      np.float64)
    log.info("nested CV: outer fold %d: best inner accuracy %.3f with %s", outer,
             study.best_value, best)
    return {"rows": rows, "prob": prob, "best_params": best,
            "inner_accuracy": float(study.best_value)}


def nested_cv(run, study) -> dict:
    """The nested estimate over every non-test image; `study` is the main search (its best
    value is the non-nested number it is compared with)."""
    c, ds = run.config, run.ds
    names = list(ds.label_names)
    outs = [_outer_fold(run, f) for f in range(ds.splits.k)]
    rows = np.concatenate([o["rows"] for o in outs])
    prob = np.concatenate([o["prob"] for o in outs])
    y = ds.labels[rows]
    boot = dict(n_boot=int(c.eval.bootstrap), ci=float(c.eval.ci), seed=int(c.seed))
    scores = estimates.scores(y, prob, names, **boot)
    fold_acc = [float(np.mean(predicted_labels(o["prob"]) == ds.labels[o["rows"]])) for o in outs]
    searched = float(tuning.top_trials(study, 1)[0].value)
    return {"k": ds.splits.k, "trials_per_outer_fold": int(_outer_config(c, 0).search.trials),
            "n_images": int(len(rows)), **scores,
            "outer_fold_accuracy": fold_acc,
            "outer_folds": [{"best_params": o["best_params"],
                             "inner_accuracy": o["inner_accuracy"]} for o in outs],
            "search_best_cv_accuracy": searched,
            "search_minus_nested_accuracy": searched - scores["accuracy"]["value"]}


def nested_section(est: dict) -> tuple[str, str, list]:
    acc, auc = est["accuracy"], est["roc_auc"]
    rows = ["| outer fold | accuracy | inner-CV accuracy of its search | chosen setting |",
            "|---|---|---|---|"]
    for f, (a, o) in enumerate(zip(est["outer_fold_accuracy"], est["outer_folds"])):
        setting = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in o["best_params"].items())
        rows.append(f"| {f} | {a:.3f} | {o['inner_accuracy']:.3f} | {setting} |")
    text = (f"**Nested CV** ({est['k']} outer folds; in each, a {est['trials_per_outer_fold']}-"
            f"trial search with inner CV over the other folds, then its best head predicts the "
            f"held-out fold): accuracy {estimates.cell(acc)}, ROC AUC {estimates.cell(auc)} "
            f"over {est['n_images']} images. The main search's best mean CV accuracy was "
            f"{est['search_best_cv_accuracy']:.3f}, {est['search_minus_nested_accuracy']:+.3f} "
            "against the nested estimate: that is how much choosing the setting on the same "
            "folds flattered it here.\n\n" + "\n".join(rows))
    return ("Nested cross-validation", text, [])
