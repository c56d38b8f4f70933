"""Evaluation and training figures; each function writes one PNG and returns its path.

    plot_confusion(r["confusion_matrix"], r["class_names"], wd / "cm.png", "Test set")
    plot_curves({"train/loss": [...], "val/loss": [...], "train/accuracy": [...],
                 "val/accuracy": [...]}, wd / "curves.png", "Head training", best_epoch=7)
    plot_roc(y, prob, wd / "roc.png", "Test ROC", n_boot=1000, note="SYNTHETIC DATA")

Figures are `matplotlib.figure.Figure` objects on an Agg canvas, never pyplot: no global
figure registry, no backend switch, nothing left open after a call (safe in threads and
in tests). Files are written atomically (temp file + os.replace) so a crashed run never
leaves a half-written PNG that a later report would link. `note` (e.g. "SYNTHETIC DATA")
is written in red under the axes and, when short, as a faint diagonal watermark, so a
cropped figure still carries it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from bt_jax.io import atomic_write
from bt_jax.reporting import metrics as bt_metrics
from bt_jax.reporting import multiclass as bt_multiclass

SPLIT_STYLE = {"train": ("tab:blue", "Training"), "val": ("tab:orange", "Validation"),
               "test": ("tab:green", "Test")}
# Keras History names, so histories from the reference notebooks plot unchanged.
_KERAS_KEYS = {"loss": "train/loss", "val_loss": "val/loss", "accuracy": "train/accuracy",
               "val_accuracy": "val/accuracy", "acc": "train/accuracy", "val_acc": "val/accuracy"}
PANELS = ("loss", "accuracy")


def _figure(ncols: int = 1, size=(5.5, 4.2)):
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path, title: str, note: str | None) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file name, got {str(path)!r}")
    if title:
        fig.suptitle(title)
    if note:
        fig.supxlabel(note, color="red", fontweight="bold", fontsize=9)
        if len(note) <= 30:
            fig.text(0.5, 0.5, note, rotation=25, fontsize=40, color="red", alpha=0.12,
                     ha="center", va="center", in_layout=False)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)


def plot_class_balance(counts: dict[str, int], path, title: str = "Class balance", *,
                       note: str | None = None) -> Path:
    """Bar per class, annotated with count and share."""
    if not counts:
        raise ValueError("counts: empty, expected {class name: number of images}")
    names, vals = list(counts), np.array([counts[k] for k in counts])
    if vals.dtype.kind not in "iu" or (vals < 0).any():
        raise ValueError(f"counts: expected non-negative integers, got {dict(counts)}")
    total = max(int(vals.sum()), 1)
    fig, (ax,) = _figure()
    bars = ax.bar(names, vals, color=[f"C{i}" for i in range(len(vals))])
    ax.bar_label(bars, labels=[f"{v} ({100 * v / total:.0f}%)" for v in vals])
    ax.set_ylabel("images")
    ax.set_ylim(0, max(1, vals.max()) * 1.15)
    return _save(fig, path, title, note)


def _series(values) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(mean, sd or None, n_folds) of one history series: (epochs,) or (k, epochs)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        return a, None, 1
    if a.ndim != 2:
        raise ValueError(f"history: each series must be (epochs,) or (folds, epochs), got {a.shape}")
    with warnings.catch_warnings():  # all-NaN epochs (every fold stopped) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0), np.nanstd(a, axis=0), a.shape[0]


def plot_curves(history: dict[str, list[float]], path, title: str, *, best_epoch=None,
                note: str | None = None) -> Path:
    """Training vs validation loss and accuracy per epoch, one panel each.

    Keys are `{train,val,test}/{loss,accuracy}` (Keras names `loss`, `val_loss`, `accuracy`,
    `val_accuracy` are accepted too); other keys are ignored. A series is (epochs,) or
    (folds, epochs): the latter draws the fold mean with a +/- 1 s.d. band. NaN entries
    (epochs after early stopping) leave gaps. `best_epoch` is a 0-based index into the
    series, or one per fold, drawn as a dashed vertical line at epoch best_epoch + 1.
    """
    series = {}
    for key, v in history.items():
        key = _KERAS_KEYS.get(key, key)
        split, _, name = key.partition("/")
        if split in SPLIT_STYLE and name in PANELS:
            series[(split, name)] = _series(v)
    panels = [m for m in PANELS if any(name == m for _, name in series)]
    if not panels:
        raise ValueError("history: no plottable series; expected keys like 'train/loss', "
                         f"'val/accuracy' (or Keras 'loss', 'val_accuracy'), got {sorted(history)}")
    fig, axes = _figure(len(panels))
    best = [] if best_epoch is None else np.atleast_1d(best_epoch).astype(int).tolist()
    for ax, panel in zip(axes, panels):
        for split, (colour, label) in SPLIT_STYLE.items():
            if (split, panel) not in series:
                continue
            mean, sd, k = series[(split, panel)]
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, mean, color=colour, marker="o", ms=3,
                    label=label if k == 1 else f"{label} (mean of {k} folds, ±1 s.d.)")
            if sd is not None:
                ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)
        best_label = "best epoch" if len(best) == 1 else "best epoch per fold"
        for i, b in enumerate(best):
            ax.axvline(b + 1, color="grey", ls="--", lw=1, alpha=1.0 if len(best) == 1 else 0.5,
                       label=best_label if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title, note)


def plot_confusion(cm, class_names, path, title: str, *, note: str | None = None) -> Path:
    """Counts with row percentages (share of each true class), rows true, columns predicted."""
    cm = np.asarray(cm)
    names = list(class_names)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(f"cm: expected a square ({len(names)}, {len(names)}) matrix for "
                         f"class_names {names}, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("cm: counts must be non-negative")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, (ax,) = _figure(size=(4.6, 4.2))
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(names)):
        for j in range(len(names)):
            pct = f"{100 * frac[i, j]:.1f}%" if rows[i, 0] else "n/a"
            ax.text(j, i, f"{int(cm[i, j])}\n({pct})", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=11)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path, title, note)


def _both_classes(y_true, prob, what):
    y, p = bt_metrics.check_inputs(y_true, prob)
    if y.min() == y.max():
        raise ValueError(f"y_true: a {what} curve needs both classes, got only class {y[0]}")
    return y, p


def plot_roc(y_true, prob, path, title: str, *, n_boot: int = 0, ci: float = 0.95,
             seed: int = 0, note: str | None = None) -> Path:
    """ROC curve with AUC in the legend; n_boot > 0 adds a pointwise bootstrap band and CI."""
    y, p = _both_classes(y_true, prob, "ROC")
    r = bt_metrics.classification_report(y, p, n_boot=n_boot, ci=ci, seed=seed)
    fpr, tpr, _ = roc_curve(y, p)
    fig, (ax,) = _figure(size=(4.8, 4.4))
    ax.plot(fpr, tpr, color="tab:blue", lw=2,
            label=f"AUC = {bt_metrics.format_cell(r['roc_auc'])} (n={len(y)})")
    if n_boot:
        grid, lo, hi = bt_metrics.curve_band(y, p, kind="roc", n_boot=n_boot, ci=ci, seed=seed)
        ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.2, lw=0,
                        label=f"{100 * ci:.0f}% bootstrap band")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, title, note)


def plot_pr(y_true, prob, path, title: str, *, n_boot: int = 0, ci: float = 0.95,
            seed: int = 0, note: str | None = None) -> Path:
    """Precision-recall curve with average precision (AUPRC) in the legend and the
    prevalence baseline; n_boot > 0 adds a bootstrap band of interpolated precision."""
    y, p = _both_classes(y_true, prob, "precision-recall")
    r = bt_metrics.classification_report(y, p, n_boot=n_boot, ci=ci, seed=seed)
    prec, rec, _ = precision_recall_curve(y, p)
    fig, (ax,) = _figure(size=(4.8, 4.4))
    ax.step(rec, prec, where="post", color="tab:purple", lw=2,
            label=f"AP = {bt_metrics.format_cell(r['auprc'])} (n={len(y)})")
    if n_boot:
        grid, lo, hi = bt_metrics.curve_band(y, p, kind="pr", n_boot=n_boot, ci=ci, seed=seed)
        ax.fill_between(grid, lo, hi, color="tab:purple", alpha=0.2, lw=0,
                        label=f"{100 * ci:.0f}% bootstrap band (interpolated precision)")
    ax.axhline(y.mean(), color="grey", ls=":", label=f"prevalence {y.mean():.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path, title, note)


def _one_vs_rest(y_true, probs, class_names):
    """Validated (y, probs) and a report without bootstrap, for the legends' AUC/AP."""
    r = bt_multiclass.multiclass_report(y_true, probs, class_names=class_names, n_boot=0)
    y, p = bt_metrics.check_inputs(y_true, probs, "probs", n_classes=len(r["class_names"]))
    return y, p, r


def plot_roc_multiclass(y_true, probs, class_names, path, title: str, *,
                        note: str | None = None) -> Path:
    """One-vs-rest ROC curve per class (that class's column of `probs` against all other
    cases), AUC in the legend; a class with no cases, or with every case, has no curve."""
    y, p, r = _one_vs_rest(y_true, probs, class_names)
    fig, (ax,) = _figure(size=(5.2, 4.6))
    for c, name in enumerate(r["class_names"]):
        auc = r["per_class"][name]["roc_auc"]
        if math.isnan(auc["value"]):
            ax.plot([], [], color=f"C{c}", label=f"{name}: AUC n/a ({r['undefined'][f'{name}/roc_auc']})")
            continue
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        ax.plot(fpr, tpr, color=f"C{c}", lw=2,
                label=f"{name}: AUC = {bt_metrics.format_cell(auc)} (n={int((y == c).sum())})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8,
              title=f"one-vs-rest, macro AUC {bt_metrics.format_cell(r['macro']['roc_auc'])}",
              title_fontsize=8)
    return _save(fig, path, title, note)


def plot_pr_multiclass(y_true, probs, class_names, path, title: str, *,
                       note: str | None = None) -> Path:
    """One-vs-rest precision-recall curve per class, average precision (AUPRC) and the
    class's prevalence (the curve of a random ranking) in the legend."""
    y, p, r = _one_vs_rest(y_true, probs, class_names)
    fig, (ax,) = _figure(size=(5.2, 4.6))
    for c, name in enumerate(r["class_names"]):
        ap = r["per_class"][name]["auprc"]
        prevalence = float(np.mean(y == c))
        if math.isnan(ap["value"]):
            ax.plot([], [], color=f"C{c}", label=f"{name}: AP n/a ({r['undefined'][f'{name}/auprc']})")
            continue
        prec, rec, _ = precision_recall_curve(y == c, p[:, c])
        ax.step(rec, prec, where="post", color=f"C{c}", lw=2,
                label=f"{name}: AP = {bt_metrics.format_cell(ap)} (prevalence {prevalence:.2f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8,
              title=f"one-vs-rest, macro AP {bt_metrics.format_cell(r['macro']['auprc'])}",
              title_fontsize=8)
    return _save(fig, path, title, note)


def plot_stage_comparison(stages: list[str], metrics: dict[str, list[float]], path,
                          title: str, *, intervals: dict[str, list] | None = None,
                          note: str | None = None) -> Path:
    """Validation vs test loss and accuracy across fine-tuning stages (method B, Fig. 3).

    `metrics` maps `{train,val,test}/{loss,accuracy}` to one value per stage (NaN
    for a stage not evaluated); `intervals` optionally maps the same keys to one
    [lo, hi] per stage, drawn as error bars (e.g. the test accuracy bootstrap CI).
    """
    stages = [str(s) for s in stages]
    if not stages:
        raise ValueError("stages: empty, expected one name per fine-tuning stage")
    intervals = intervals or {}
    series = {}
    for key, vals in metrics.items():
        split, _, name = key.partition("/")
        if split not in SPLIT_STYLE or name not in PANELS:
            continue
        v = np.asarray(vals, dtype=np.float64)
        if v.shape != (len(stages),):
            raise ValueError(f"metrics[{key!r}]: expected {len(stages)} values (one per stage "
                             f"{stages}), got shape {v.shape}")
        series[(split, name)] = v
    for key, iv in intervals.items():
        if np.asarray(iv, dtype=np.float64).shape != (len(stages), 2):
            raise ValueError(f"intervals[{key!r}]: expected ({len(stages)}, 2) [lo, hi] pairs, "
                             f"got shape {np.asarray(iv).shape}")
    panels = [m for m in PANELS if any(name == m for _, name in series)]
    if not panels:
        raise ValueError("metrics: expected keys like 'val/loss', 'test/accuracy', "
                         f"got {sorted(metrics)}")
    fig, axes = _figure(len(panels), size=(max(5.0, 1.1 * len(stages) + 1.5), 4.2))
    x = np.arange(len(stages))
    for ax, panel in zip(axes, panels):
        for split, (colour, label) in SPLIT_STYLE.items():
            v = series.get((split, panel))
            if v is None:
                continue
            ax.plot(x, v, color=colour, marker="o", label=label)
            iv = intervals.get(f"{split}/{panel}")
            if iv is not None:
                iv = np.asarray(iv, dtype=np.float64)
                ax.errorbar(x, v, yerr=np.abs(np.stack([v - iv[:, 0], iv[:, 1] - v])),
                            fmt="none", ecolor=colour, capsize=4, alpha=0.8)
        ax.set_xticks(x, stages, rotation=20, ha="right")
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title, note)


def plot_reliability(curve: dict, path, title: str, *, ece: float | None = None,
                     note: str | None = None) -> Path:
    """Reliability diagram: observed fraction of positives per bin of P(positive) against
    the bin's mean predicted probability (the diagonal is perfect calibration), with the
    number of cases per bin below."""
    count = np.asarray(curve["count"])
    ok = count > 0
    if not ok.any():
        raise ValueError("curve: no case in any bin")
    fig, (ax,) = _figure(size=(5.0, 4.6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    mp, ob = np.asarray(curve["mean_predicted"])[ok], np.asarray(curve["observed"])[ok]
    ax.plot(mp, ob, "o-", color="tab:blue",
            label="model" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    for x, yv, n in zip(mp, ob, count[ok]):
        ax.annotate(str(int(n)), (x, yv), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7, color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("mean predicted P(positive) in bin")
    ax.set_ylabel("observed fraction positive")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path, title, note)
