"""Multi-class (C >= 2) test-set metrics with stratified percentile-bootstrap CIs.

    names = ("glioma", "meningioma", "pituitary", "no_tumour")
    r = multiclass_report(y_true, probs, class_names=names)   # probs: (N, C) softmax
    r["per_class"]["glioma"]["recall"]   # {"value": 0.91, "ci": [0.84, 0.97], "n_valid": 1000}
    print(table_markdown(r))              # one row per class + macro + weighted
    p_tumour = binary_view(probs, names, negative_classes=("no_tumour",))

Host-side numpy, with metrics.py's helpers (read its docstring first): the binary and this
report compute every metric by one function of case weights (`metrics.metric_arrays`), so
the point estimate (weight 1 per case) and all bootstrap resamples (multiplicities,
stratified within each true class) share one vectorised code path. The predicted class is
the argmax of `probs` (the first class on ties, like np.argmax). ROC AUC and AUPRC are
one-vs-rest per class on that class's column.

NaN appears only for a truly undefined value: a class with no cases (its recall, AUC,
AUPRC, and every macro average or balanced accuracy that includes it), a class never
predicted (its precision), specificity when every case is of one class, kappa when chance
agreement is 1. The reason is in `report["undefined"][key]`. Averages follow the
binary report: macro is the plain mean over all C classes, weighted uses the supports
(a class with no cases has no weight).
"""

from __future__ import annotations

import numpy as np

from bt_jax.reporting import metrics as bt_metrics

CLASS_METRICS = ("precision", "recall", "specificity", "f1", "roc_auc", "auprc")
AVERAGED = bt_metrics.AVERAGED  # macro and weighted blocks
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "kappa")


def stratified_weights(y: np.ndarray, n_classes: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicities, cases resampled within each of the n_classes true classes:
    metrics.bootstrap_weights, so a 2-class report gets the very resamples (and CIs) of
    metrics.classification_report."""
    y = np.asarray(y)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y: labels must lie in [0, {n_classes})")
    return bt_metrics.bootstrap_weights(y, n_boot, seed)


def _row_normalised(cm: np.ndarray, names, undefined: dict) -> list[list[float]]:
    """Share of each true class predicted as each class; a class with no cases gets a NaN row."""
    rows = cm.sum(axis=1, keepdims=True)
    for name, r in zip(names, rows[:, 0]):
        if r == 0:
            undefined[f"confusion_matrix_normalised/{name}"] = f"y_true holds no cases of class {name!r}"
    return np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows != 0).tolist()


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
    names = bt_metrics.check_class_names(class_names)
    y, p = bt_metrics.check_inputs(y_true, probs, "probs", n_classes=len(names))
    bt_metrics.check_options(n_boot, ci)
    n_boot, C = int(n_boot), len(names)
    pred = p.argmax(axis=1)
    scores = {c: p[:, c] for c in range(C)}
    arrays = bt_metrics.metric_arrays
    point = bt_metrics.point_values(arrays, len(y), y, pred, C, scores)
    boot = (bt_metrics.boot_arrays(arrays, stratified_weights(y, C, n_boot, seed), y, pred, C,
                                   scores) if n_boot else None)
    cm = np.rint(point["_cm"]).astype(np.int64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    counts = bt_metrics.proportions(cm)

    def entry(key):
        return bt_metrics.metric_entry(point[key], None if boot is None else boot[key], ci,
                                 counts.get(key))

    undefined = bt_metrics.undefined_reasons(point, support, predicted, names)
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
    names = bt_metrics.check_class_names(class_names)
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
