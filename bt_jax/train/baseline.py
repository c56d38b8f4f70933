"""The classical baseline every method A result is compared with: L2-regularised logistic
regression on the same frozen features and the same folds.

    res = logistic_folds(features, labels, folds, groups=row_source, seed=0)
    res["val_acc"], res["val_prob"], res["C"]        # per fold; val_prob (k, V) NaN-padded

Per outer fold: standardise on the fold's training rows, choose C from a log grid by an
inner stratified group k-fold on those rows (groups: the original image of each row, so a
copy and its original never straddle an inner split), refit with that C, predict the
fold's validation rows. Cost stays bounded on big folders: C is chosen on at most
INNER_ROWS training rows (whole groups) along a warm-started path (one per inner fold:
each C's fit starts from the previous one's coefficients), and the refit uses at most
`max_rows` training rows (whole groups; `eval.baseline_max_rows`), a cost cap whose rows
are returned so reports can say what the baseline saw. Folds are the padded `FoldArrays`
the vmapped head uses, so the two are compared case by case.
"""

from __future__ import annotations

import numpy as np

from bt_jax.models.heads import predicted_labels
from bt_jax.train.folds import FoldArrays

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))
INNER_ROWS = 5000
N_JOBS = 2   # processes for the inner folds (1: in this process)


def _inner_subset(groups, seed: int, limit: int | None = None) -> np.ndarray:
    """Row indices of whole groups, in a seeded random order, until `limit` rows
    (default INNER_ROWS)."""
    limit = INNER_ROWS if limit is None else limit
    if len(groups) <= limit:
        return np.arange(len(groups))
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    keep = order[:int(np.searchsorted(np.cumsum(sizes[order]), limit)) + 1]
    return np.flatnonzero(np.isin(inverse, keep))


def _path_scores(x, y, train, val, grid) -> np.ndarray:
    """Mean log-likelihood on `val` of fits on `train` for each C of `grid` (ascending),
    each fit starting from the previous one's coefficients (a warm-started path)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    model = LogisticRegression(max_iter=2000, warm_start=True)
    out = []
    for c in grid:
        model.set_params(C=c).fit(x[train], y[train])
        out.append(-log_loss(y[val], model.predict_proba(x[val]), labels=model.classes_))
    return np.array(out)


def _fit_one(x, y, groups, *, inner_k: int, seed: int, max_rows: int, grid=C_GRID):
    """(fitted scaler + logistic pipeline, chosen C, training rows used)."""
    from joblib import Parallel, delayed
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rows = _inner_subset(groups, seed, max_rows)
    x, y, groups = x[rows], y[rows], groups[rows]
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x).astype(np.float32)
    sub = _inner_subset(groups, seed)
    k = max(2, min(inner_k, int(np.bincount(y[sub]).min()), len(np.unique(groups[sub]))))
    inner = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    # Two processes, one inner fold's path each (the same results as one process).
    scores = Parallel(n_jobs=N_JOBS)(delayed(_path_scores)(xs[sub], y[sub], tr, va, grid)
                                for tr, va in inner.split(xs[sub], y[sub], groups[sub]))
    best = float(grid[int(np.argmax(np.mean(scores, axis=0)))])
    model = LogisticRegression(C=best, max_iter=2000).fit(xs, y)
    return make_pipeline(scaler, model), best, len(rows)


def logistic_folds(features, labels, folds: FoldArrays, *, groups, inner_k: int = 3,
                   seed: int = 0, max_rows: int = 10000) -> dict:
    """{"val_acc": (k,), "val_prob": (k, V) NaN in padding, "C": (k,), "rows": (k,)} on
    `folds`.
    More than two classes (labels = class indices): val_prob is (k, V, C), multinomial."""
    features = np.asarray(features, np.float32)  # float64 would double 100k x D in memory
    labels = np.asarray(labels).astype(int)
    groups = np.asarray(groups)
    k, width = folds.val_idx.shape
    n_classes = int(labels.max()) + 1
    prob = np.full((k, width) + ((n_classes,) if n_classes > 2 else ()), np.nan)
    acc, chosen, used = np.zeros(k), np.zeros(k), np.zeros(k, int)
    for f in range(k):
        tr = np.asarray(folds.train_idx[f])[np.asarray(folds.train_mask[f])]
        va = np.asarray(folds.val_idx[f])[np.asarray(folds.val_mask[f])]
        model, chosen[f], used[f] = _fit_one(features[tr], labels[tr], groups[tr],
                                             inner_k=inner_k, seed=seed + f, max_rows=max_rows)
        p = _class_columns(model, features[va], n_classes)
        prob[f, :len(va)] = p
        acc[f] = np.mean(predicted_labels(p) == labels[va])
    return {"val_acc": acc, "val_prob": prob, "C": chosen, "rows": used}


def _class_columns(model, x, n_classes: int) -> np.ndarray:
    """P(label 1) for two classes; (N, C) probabilities in label order otherwise (a class
    absent from a fold's training rows gets probability 0)."""
    p = model.predict_proba(x)
    if n_classes == 2:
        return p[:, 1]
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = p
    return out
