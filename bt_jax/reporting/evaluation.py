"""One call from test-set probabilities to metrics.json, plots and a report section.

    section, rep = evaluate_split(y, prob, out_dir=W / "eval" / "test", title="Test split",
                                  class_names=("no", "yes"), config=config, synthetic=False)

Used by method A's final evaluation, method B's stages, external data and ensembles, so
every result in bt_jax carries the same table, intervals and figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bt_jax.reporting import calibration, metrics, plots, report

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
                   operating_threshold: float | None = None):
    """Metrics with bootstrap CIs + confusion/ROC/PR plots; returns (report section, dict).

    The table uses `config.eval.threshold`; when the model's stored operating threshold
    differs (e.g. chosen for a target sensitivity), a second table at that threshold is
    added (dict key "at_operating_threshold"), and each table names its threshold."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, np.float64)
    rep = metrics.classification_report(y_true, prob, threshold=float(config.eval.threshold),
                                        class_names=tuple(class_names),
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
