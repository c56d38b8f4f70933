"""Multi-class (C >= 2) test-set metrics with stratified percentile-bootstrap CIs.

    names = ("glioma", "meningioma", "pituitary", "no_tumour")
    r = multiclass_report(y_true, probs, class_names=names)   # probs: (N, C) softmax
    r["per_class"]["glioma"]["recall"]   # {"value": 0.91, "ci": [0.84, 0.97], "n_valid": 1000}
    print(table_markdown(r))              # one row per class + macro + weighted
    p_tumour = binary_view(probs, names, negative_classes=("no_tumour",))

Host-side numpy, the same design as metrics.py (read its docstring first): every metric is
a function of case weights, so the point estimate (weight 1 per case) and all bootstrap
resamples (multiplicities, stratified within each true class) share one vectorised code
path. The predicted class is the argmax of `probs` (the first class on ties, like
np.argmax). ROC AUC and AUPRC are one-vs-rest per class on that class's column.

NaN appears only for a truly undefined value: a class with no cases (its recall, AUC,
AUPRC, and every macro average or balanced accuracy that includes it), a class never
predicted (its precision), specificity when every case is of one class, kappa when chance
agreement is 1. The reason is in `report["undefined"][key]`. Averages follow the
binary report: macro is the plain mean over all C classes, weighted uses the supports
(a class with no cases has no weight).
"""

from __future__ import annotations

import math

import numpy as np

from bt_jax.reporting import metrics as bt_metrics

CLASS_METRICS = ("precision", "recall", "specificity", "f1", "roc_auc", "auprc")
AVERAGED = ("precision", "recall", "f1", "roc_auc", "auprc")  # macro and weighted blocks
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "kappa")
_ROW_SUM_TOL = 1e-4  # float32 softmax rows sum to 1 within ~1e-6; logits miss by far more


def check_inputs(y_true, probs, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts to (int64 labels in [0, C), float64 (N, C) probabilities whose
    rows sum to 1); errors say what was expected and what came."""
    y, p = np.asarray(y_true), np.asarray(probs)
    if y.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D array of labels, got shape {y.shape}")
    if p.ndim != 2 or p.shape[1] != n_classes:
        hint = (" (for a binary P(label 1) use metrics.classification_report)"
                if p.ndim == 1 else "")
        raise ValueError(f"probs: expected shape (N, {n_classes}), one column per class, "
                         f"got {p.shape}{hint}")
    if len(y) != len(p):
        raise ValueError(f"y_true and probs: lengths differ ({len(y)} vs {len(p)})")
    if len(y) == 0:
        raise ValueError("y_true: empty, nothing to evaluate")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"y_true: expected integer labels in [0, {n_classes}), got dtype {y.dtype}")
    bad = ~np.isin(y, np.arange(n_classes))
    if bad.any():
        raise ValueError(f"y_true: labels must be integers in [0, {n_classes}), "
                         f"got {np.unique(y[bad])[:5].tolist()}")
    if p.dtype.kind not in "biuf":
        raise ValueError(f"probs: expected floats in [0, 1], got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError(f"probs: {int((~np.isfinite(p)).sum())} value(s) are NaN or infinite")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"probs: values must lie in [0, 1], got range [{p.min():g}, {p.max():g}] "
                         "(pass softmax probabilities, not logits)")
    err = np.abs(p.sum(axis=1) - 1.0)
    if err.max() > _ROW_SUM_TOL:
        i = int(err.argmax())
        raise ValueError(f"probs: each row must sum to 1, row {i} sums to {p[i].sum():g} "
                         "(pass softmax probabilities, not sigmoid outputs or logits)")
    return y.astype(np.int64), p


def _check_names(class_names) -> tuple[str, ...]:
    names = tuple(str(c) for c in class_names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"class_names: expected at least two distinct names, got {tuple(class_names)}")
    return names


def stratified_weights(y: np.ndarray, n_classes: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicities, cases resampled within each true class. Classes 0 and 1
    are drawn by metrics.bootstrap_weights itself, so a 2-class report gets the very
    resamples (and CIs) of metrics.classification_report; each further class draws from
    its own seed stream."""
    w = bt_metrics.bootstrap_weights(y, n_boot, seed)
    for c in range(2, n_classes):
        idx = np.flatnonzero(y == c)
        if len(idx):
            sub = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
            w[:, idx] = bt_metrics.bootstrap_weights(np.ones(len(idx), np.int64), n_boot, sub,
                                                     n_total=len(y))
    return w


def _confusion(w, y, pred, n_classes) -> np.ndarray:
    """(B, C, C) weighted confusion matrices, rows true, columns predicted: one matmul."""
    cell = np.zeros((len(y), n_classes * n_classes))
    cell[np.arange(len(y)), y * n_classes + pred] = 1.0
    return (w @ cell).reshape(len(w), n_classes, n_classes)


def _metric_arrays(w, y, probs, pred) -> dict[str, np.ndarray]:
    """All metrics for each row of case weights w (B, n); NaN where undefined."""
    C = probs.shape[1]
    cm = _confusion(w, y, pred, C)
    tp = np.diagonal(cm, axis1=1, axis2=2)               # (B, C)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    n = support.sum(axis=1)
    others = n[:, None] - support
    per = {"precision": bt_metrics._div(tp, predicted), "recall": bt_metrics._div(tp, support),
           "specificity": bt_metrics._div(others - predicted + tp, others),
           "f1": bt_metrics._div(2 * tp, support + predicted)}
    ranks = [bt_metrics._ranking_metrics(w, (y == c).astype(np.float64), probs[:, c])
             for c in range(C)]
    per["roc_auc"] = np.stack([r[0] for r in ranks], axis=1)
    per["auprc"] = np.stack([r[1] for r in ranks], axis=1)
    out = {f"class{c}/{m}": v[:, c] for m, v in per.items() for c in range(C)}
    for m in AVERAGED:
        out[f"macro/{m}"] = per[m].mean(axis=1)
        # A class with no cases carries zero weight and must not turn the average into NaN.
        out[f"weighted/{m}"] = bt_metrics._div(
            np.where(support > 0, support * per[m], 0.0).sum(axis=1), n)
    out["accuracy"] = bt_metrics._div(tp.sum(axis=1), n)
    out["balanced_accuracy"] = per["recall"].mean(axis=1)
    chance = np.einsum("bc,bc->b", support, predicted) / n ** 2
    out["kappa"] = bt_metrics._div(out["accuracy"] - chance, 1.0 - chance)
    out["_cm"] = cm
    return out


def _boot_arrays(w, y, probs, pred) -> dict[str, np.ndarray]:
    """`_metric_arrays` in row chunks, as metrics._boot_arrays, to bound the temporaries."""
    step = max(1, bt_metrics._CHUNK_ELEMENTS // len(y))
    parts = [_metric_arrays(w[i:i + step], y, probs, pred) for i in range(0, len(w), step)]
    return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}


def _undefined_reasons(point: dict, support, predicted, names) -> dict[str, str]:
    """Why each NaN point estimate is 0/0, keyed 'name/metric', 'macro/metric' or 'metric'."""
    absent = {n: f"y_true holds no cases of class {n!r}" for n, s in zip(names, support) if s == 0}
    never = {n: f"no case was predicted as class {n!r}" for n, k in zip(names, predicted) if k == 0}
    only = {n: f"every case is of class {n!r}" for n, s in zip(names, support) if s == sum(support)}
    causes = {"precision": (never,), "recall": (absent,), "auprc": (absent,),
              "specificity": (only,), "f1": (absent, never), "roc_auc": (absent, only)}
    reasons = {}
    for key, v in point.items():
        if key.startswith("_") or not math.isnan(v):
            continue
        scope, _, metric = key.rpartition("/")
        if scope.startswith("class"):
            name = names[int(scope[5:])]
            key = f"{name}/{metric}"
            why = [d[name] for d in causes[metric] if name in d]
        elif metric == "kappa":
            why = ["chance agreement is 1: every case is of one class and predicted as it"]
        else:  # an average over classes: undefined where one of its classes is
            why = [*(never if metric == "precision" else absent).values(),
                   *(only.values() if metric == "roc_auc" else ())]
        reasons[key] = "; ".join(why) or "0/0"
    return reasons


def _row_normalised(cm: np.ndarray, names, undefined: dict) -> list[list[float]]:
    """Share of each true class predicted as each class; a class with no cases gets a NaN row."""
    rows = cm.sum(axis=1, keepdims=True)
    for name, r in zip(names, rows[:, 0]):
        if r == 0:
            undefined[f"confusion_matrix_normalised/{name}"] = f"y_true holds no cases of class {name!r}"
    return bt_metrics._div(cm, rows).tolist()


def multiclass_report(y_true, probs, *, class_names, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> dict:
    """Per-class, macro/weighted and overall metrics of argmax predictions, with CIs.

    Returns a JSON-serialisable dict:
      per_class[name]: {precision, recall, specificity, f1, roc_auc, auprc: entry, support}
      macro / weighted: {precision, recall, f1, roc_auc, auprc: entry, support: n}
      accuracy, balanced_accuracy, kappa: entry
      confusion_matrix (counts), confusion_matrix_normalised (rows sum to 1), rows true
    where entry is metrics.py's {"value", "ci": [lo, hi] or None if n_boot == 0, "n_valid"},
    plus {"k", "of", "wilson"} for the plain proportions (per-class precision, recall,
    specificity and accuracy).
    """
    names = _check_names(class_names)
    y, p = check_inputs(y_true, probs, len(names))
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot: expected a non-negative integer, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci: expected a level in (0, 1), e.g. 0.95, got {ci}")
    n_boot, C = int(n_boot), len(names)
    pred = p.argmax(axis=1)
    point = {k: (v[0] if k == "_cm" else float(v[0]))
             for k, v in _metric_arrays(np.ones((1, len(y))), y, p, pred).items()}
    boot = (_boot_arrays(stratified_weights(y, C, n_boot, seed), y, p, pred)
            if n_boot else None)
    cm = np.rint(point["_cm"]).astype(np.int64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    counts = {"accuracy": (tp.sum(), len(y))}
    for c in range(C):
        counts.update({f"class{c}/precision": (tp[c], predicted[c]),
                       f"class{c}/recall": (tp[c], support[c]),
                       f"class{c}/specificity": (len(y) - support[c] - predicted[c] + tp[c],
                                                 len(y) - support[c])})

    def entry(key):
        return bt_metrics._entry(point[key], None if boot is None else boot[key], ci,
                                 counts.get(key))

    undefined = _undefined_reasons(point, support, predicted, names)
    return {
        "n": len(y),
        "class_names": list(names),
        "prediction": "argmax of probs",
        "n_boot": n_boot,
        "ci_level": float(ci),
        "ci_method": bt_metrics.CI_METHOD,
        "seed": int(seed),
        "per_class": {names[c]: {**{m: entry(f"class{c}/{m}") for m in CLASS_METRICS},
                                 "support": int(support[c])} for c in range(C)},
        **{avg: {**{m: entry(f"{avg}/{m}") for m in AVERAGED}, "support": len(y)}
           for avg in ("macro", "weighted")},
        **{m: entry(m) for m in SCALAR_METRICS},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalised": _row_normalised(cm, names, undefined),
        "undefined": undefined,
    }


def table_markdown(report: dict) -> str:
    """One row per class, then macro and weighted; every metric cell 'value [lo, hi]'."""
    cols = (("Precision", "precision"), ("Recall", "recall"), ("Specificity", "specificity"),
            ("F1-score", "f1"), ("ROC AUC (OvR)", "roc_auc"), ("AUPRC (OvR)", "auprc"))
    rows = [(name, report["per_class"][name]) for name in report["class_names"]]
    rows += [("Macro average", report["macro"]), ("Weighted average", report["weighted"])]
    lines = ["| Class | " + " | ".join(label for label, _ in cols) + " | Support |",
             "|---" * (len(cols) + 2) + "|"]
    for label, block in rows:
        cells = [bt_metrics.format_cell(block[k]) if k in block else "" for _, k in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {block['support']} |")
    lines += ["", f"- Accuracy: {bt_metrics.format_cell(report['accuracy'])}",
              f"- Balanced accuracy: {bt_metrics.format_cell(report['balanced_accuracy'])}",
              f"- Cohen's kappa: {bt_metrics.format_cell(report['kappa'])}"]
    return "\n".join(lines)


BINARY_VIEW_NAMES = ("no_tumour", "tumour")  # the binary view's two classes, label order


def binary_labels(y_true, class_names, negative_classes) -> np.ndarray:
    """1 where the true class is not one of the no-tumour classes."""
    neg = [list(class_names).index(c) for c in negative_classes]
    return (~np.isin(np.asarray(y_true), neg)).astype(int)


def binary_view(probs, class_names, negative_classes) -> np.ndarray:
    """P(tumour) = 1 - sum of P(negative classes), so a multi-class model can be scored and
    thresholded by the binary path (metrics.classification_report, threshold_for_sensitivity).
    """
    names = _check_names(class_names)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"probs: expected shape (N, {len(names)}), one column per class "
                         f"{list(names)}, got {p.shape}")
    neg = [str(c) for c in ([negative_classes] if isinstance(negative_classes, str)
                            else negative_classes)]
    for c in neg:
        if c not in names:
            raise ValueError(f"negative_classes: unknown class {c!r}; valid names are {list(names)}")
    if not neg or set(neg) == set(names):
        raise ValueError(f"negative_classes: expected at least one and not every class of "
                         f"{list(names)}, got {neg}")
    idx = sorted({names.index(c) for c in neg})
    # Clip: 1 - (0.7 + 0.30000001) must not become a negative probability.
    return np.clip(1.0 - p[:, idx].sum(axis=1), 0.0, 1.0)
