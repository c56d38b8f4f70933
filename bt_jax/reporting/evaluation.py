"""One call from test-set probabilities to metrics.json, plots and a report section.

    section, rep = evaluate_split(y, prob, out_dir=W / "eval" / "test", title="Test split",
                                  class_names=("no", "yes"), config=config, synthetic=False)

Used by method A's final evaluation, method B's stages, external data and ensembles, so
every result in bt_jax carries the same table, intervals and figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bt_jax.config import training_threshold
from bt_jax.reporting import calibration, metrics, multiclass, plots, report

SYNTHETIC_NOTE = "SYNTHETIC DATA (phantoms) - not a clinical result"


def note_for(synthetic: bool) -> str | None:
    return SYNTHETIC_NOTE if synthetic else None


def calibration_text(cal: dict) -> str:
    def cell(e):
        lo, hi = e["ci"]
        return f"{e['value']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if np.isfinite([lo, hi]).all() else "")
    return (f"Calibration: expected calibration error {cell(cal['ece'])} "
            f"({cal['n_bins']} equal-width bins), Brier score {cell(cal['brier'])}; "
            "reliability diagram below (0 = perfectly calibrated).")


def evaluate_split(y_true, prob, *, out_dir: Path, title: str, class_names, config,
                   synthetic: bool, heading: str | None = None, seed_offset: int = 0,
                   operating_threshold: float | None = None, negative_classes=()):
    """Metrics with bootstrap CIs + confusion/ROC/PR plots; returns (report section, dict).

    Binary (prob (N,) = P(label 1), class_names (negative, positive)): the table uses
    config.threshold.value (0.5 when it is < 0); when the model's stored operating
    threshold differs (e.g. chosen for a target sensitivity), a second table at that
    threshold is added (dict key "at_operating_threshold"), and each table names its
    threshold.
    C classes (prob (N, C), y class indices, class_names in label order): see
    `evaluate_multiclass`; `negative_classes` adds the binary tumour view."""
    if np.ndim(prob) == 2:
        return evaluate_multiclass(y_true, prob, out_dir=out_dir, title=title,
                                   class_names=class_names, config=config, synthetic=synthetic,
                                   heading=heading, seed_offset=seed_offset,
                                   operating_threshold=operating_threshold,
                                   negative_classes=negative_classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, np.float64)
    rep = metrics.classification_report(y_true, prob, class_names=tuple(class_names),
                                        threshold=training_threshold(config.threshold),
                                        n_boot=int(config.eval.bootstrap),
                                        ci=float(config.eval.ci), seed=int(config.seed) + seed_offset)
    rep["synthetic"] = bool(synthetic)
    note = note_for(synthetic)
    imgs = [plots.plot_confusion(np.asarray(rep["confusion_matrix"]), list(class_names),
                                 out_dir / "confusion.png", f"{title}: confusion matrix", note=note)]
    if len(set(y_true.tolist())) == 2:
        imgs.append(plots.plot_roc(y_true, prob, out_dir / "roc.png", f"{title}: ROC",
                                   n_boot=min(200, int(config.eval.bootstrap)), note=note))
        imgs.append(plots.plot_pr(y_true, prob, out_dir / "pr.png", f"{title}: precision-recall",
                                  n_boot=min(200, int(config.eval.bootstrap)), note=note))
    cal = calibration.calibration_report(y_true, prob, n_bins=int(config.eval.calibration_bins),
                                         n_boot=int(config.eval.bootstrap),
                                         ci=float(config.eval.ci), seed=int(config.seed))
    rep["calibration"] = cal
    imgs.append(plots.plot_reliability(cal["reliability"], out_dir / "reliability.png",
                                       f"{title}: reliability", ece=cal["ece"]["value"],
                                       note=note))
    heading, body, imgs = report.evaluation_section(rep, imgs, heading=heading or title)
    body += "\n\n" + calibration_text(cal)
    if operating_threshold is not None and operating_threshold != rep["threshold"]:
        op = metrics.classification_report(
            y_true, prob, threshold=float(operating_threshold), class_names=tuple(class_names),
            n_boot=int(config.eval.bootstrap), ci=float(config.eval.ci),
            seed=int(config.seed) + seed_offset)
        rep["at_operating_threshold"] = op
        _, op_body, _ = report.evaluation_section(op, heading="")
        body += (f"\n\n**At the model's operating threshold {operating_threshold:.4g}** "
                 f"(stored in model.json; used by `predict`):\n\n{op_body}")
    report.write_metrics_json(out_dir / "metrics.json", rep)
    return (heading, body, imgs), rep


def evaluate_multiclass(y_true, probs, *, out_dir: Path, title: str, class_names, config,
                        synthetic: bool, heading: str | None = None, seed_offset: int = 0,
                        operating_threshold: float | None = None, negative_classes=()):
    """Per-class sensitivity (recall), specificity, precision, F1, one-vs-rest ROC AUC and
    AUPRC, macro/weighted averages, accuracy, balanced accuracy and Cohen's kappa with
    bootstrap CIs; the C x C confusion matrix; one-vs-rest ROC/PR curves. With
    `negative_classes`, the binary view P(tumour) = 1 - P(no-tumour classes) gets the
    whole binary evaluation too (dict key "binary_view", figures in out_dir/binary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names, y = list(class_names), np.asarray(y_true).astype(int)
    rep = multiclass.multiclass_report(y, probs, class_names=names,
                                       n_boot=int(config.eval.bootstrap), ci=float(config.eval.ci),
                                       seed=int(config.seed) + seed_offset)
    rep["synthetic"] = bool(synthetic)
    note = note_for(synthetic)
    imgs = [plots.plot_confusion(np.asarray(rep["confusion_matrix"]), names,
                                 out_dir / "confusion.png", f"{title}: confusion matrix", note=note),
            plots.plot_roc_multiclass(y, probs, names, out_dir / "roc.png",
                                      f"{title}: ROC, one class vs the rest", note=note),
            plots.plot_pr_multiclass(y, probs, names, out_dir / "pr.png",
                                     f"{title}: precision-recall, one class vs the rest",
                                     note=note)]
    level = f"{100 * rep['ci_level']:.0f}%"
    ci_line = (f"Cells: value [{level} CI], {rep['ci_method']}, {rep['n_boot']} resamples, "
               f"seed {rep['seed']}." if rep["n_boot"] else "No bootstrap (n_boot=0): no CIs.")
    body = [f"n={rep['n']} cases, {len(names)} classes; the predicted class is the most "
            f"probable one. Recall is each class's sensitivity. {ci_line}", "",
            multiclass.table_markdown(rep), "",
            "Confusion matrix (rows true, columns predicted; counts and row shares):", "",
            _confusion_markdown(rep)]
    if rep["undefined"]:
        body += ["", "> Undefined: " + "; ".join(f"{k}: {v}" for k, v in rep["undefined"].items())]
    if rep["n"] < report.SMALL_TEST_SET:
        body += ["", f"> Only {rep['n']} cases: per-class intervals are wide; read them, not "
                     "the point values."]
    if negative_classes:
        yb = multiclass.binary_labels(y, names, negative_classes)
        pb = multiclass.binary_view(probs, names, negative_classes)
        (_, bbody, bimgs), brep = evaluate_split(
            yb, pb, out_dir=out_dir / "binary", title=f"{title}, tumour vs no tumour",
            class_names=multiclass.BINARY_VIEW_NAMES, config=config, synthetic=synthetic,
            seed_offset=seed_offset, operating_threshold=operating_threshold)
        rep["binary_view"] = {"negative_classes": list(negative_classes), **brep}
        body += ["", f"**Binary view** (tumour = any class but {list(negative_classes)}; "
                     f"P(tumour) = 1 - P({' + '.join(negative_classes)})):", "", bbody]
        imgs += bimgs
    report.write_metrics_json(out_dir / "metrics.json", rep)
    return (heading or title, "\n".join(body), imgs), rep


def _confusion_markdown(rep: dict) -> str:
    names, cm = rep["class_names"], rep["confusion_matrix"]
    share = rep["confusion_matrix_normalised"]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, n in enumerate(names):
        cells = [f"{cm[i][j]} ({100 * share[i][j]:.0f}%)" if np.isfinite(share[i][j])
                 else str(cm[i][j]) for j in range(len(names))]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
