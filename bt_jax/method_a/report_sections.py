"""Method A's report: the test-split evaluation, the training sections, the written outputs.

    sections, metrics, probs = report_sections.evaluate_test(run, final)
    data, *training = report_sections.training_sections(run, final)
    report_sections.write_run_outputs(run, final, metrics, [data, *training, *sections],
                                      title="bt_jax method A: resnet50v2")
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bt_jax.inference.run_reports import write_reports
from bt_jax.method_a.steps import Final, Run
from bt_jax.reporting import calibration, evaluation, plots
from bt_jax.train import finetune, head


def evaluate_test(run: Run, final: Final) -> tuple[list, dict, dict]:
    """Step 7: the test split, once: fine-tuned model and frozen-backbone head.
    Returns (report sections, metrics.json entries, test probabilities by model)."""
    ds, c = run.ds, run.config
    test = ds.splits.test
    y = ds.labels[test]
    head_only = np.asarray(head.predict_proba(final.head.params, run.feats[final.backbone][test]))
    frozen_only = final.fit_spec.epochs == 0
    # Frozen-only: the final model is the head on frozen features, whose test features
    # are cached; no image is read again.
    tuned = head_only if frozen_only else finetune.evaluate(
        final.model, final.tuned.variables, ds.images, ds.labels, test,
        batch_size=final.hp.batch_size)[2]
    if final.temperature != 1.0:
        tuned = calibration.apply_temperature(tuned, final.temperature)
    probs = {"finetuned": tuned, "head_only": head_only}
    titles = {"finetuned": ("Test split, final model (frozen backbone + head; no fine-tuning)"
                            if frozen_only else "Test split, fine-tuned (final model)"),
              "head_only": "Test split, frozen backbone + head"}
    sections, out = [], {}
    for key in ("finetuned",) + (() if frozen_only and final.temperature == 1.0 else ("head_only",)):
        s, out[key] = evaluation.evaluate_split(
            y, probs[key], out_dir=run.workdir / "eval" / key, title=titles[key],
            class_names=ds.label_names, config=c, synthetic=ds.synthetic,
            operating_threshold=final.operating_point["threshold"],
            negative_classes=ds.negative_classes)
        sections.append(s)
    return sections, {"final": out["finetuned"],
                      "head_only": out.get("head_only", out["finetuned"])}, probs


def training_sections(run: Run, final: Final) -> list:
    """Report sections for the data, the final head's curves and fine-tuning."""
    ds, c, plot_dir = run.ds, run.config, run.workdir / "plots"
    s = ds.splits
    counts = ", ".join(f"{int((ds.class_index == i).sum())} {cl}"
                       for i, cl in enumerate(ds.classes))
    data = (f"{len(ds.labels)} unique images from `{ds.root}` ({counts}); test split "
            f"{len(s.test)}, {s.k} folds over the rest. See `manifest.json`.")
    balance = plots.plot_class_balance(
        {cl: int((ds.class_index == i).sum()) for i, cl in enumerate(ds.classes)},
        plot_dir / "class_balance.png", "Unique images per class", note=run.note)
    f = final.head
    head_png = plots.plot_curves(
        {"train/loss": _curve(f.train_loss), "val/loss": _curve(f.val_loss),
         "train/accuracy": _curve(f.train_acc), "val/accuracy": _curve(f.val_acc)},
        plot_dir / "head_curves.png", f"Final head on frozen {final.backbone} features",
        best_epoch=int(f.best_epoch), note=run.note)
    if final.fit_spec.epochs == 0:
        return [("Data", data, [balance]), ("Final head", _hp_text(final.hp), [head_png]),
                ("Fine-tuning", "None: `finetune.epochs=0` (frozen-only), so the final "
                 "model is the ImageNet backbone as loaded + the head above.", [])]
    t = final.tuned
    kept = (f"best epoch {t.best_epoch}." if t.best_epoch >= 0 else
            "no epoch beat the starting point on validation loss, so the final model keeps "
            "the frozen-backbone head's weights.")
    ft_png = plots.plot_curves(
        {"train/loss": t.history["train_loss"], "val/loss": t.history["val_loss"],
         "train/accuracy": t.history["train_acc"], "val/accuracy": t.history["val_acc"]},
        plot_dir / "finetune_curves.png", f"Fine-tuning {final.backbone}",
        best_epoch=t.best_epoch if t.best_epoch >= 0 else None, note=run.note)
    fs, cmp = final.fit_spec, frozen_vs_finetuned(final)
    recipe = (f"{fs.schedule.replace('_', ' + ')} schedule"
              + (f" ({fs.warmup_epochs:g} warm-up epochs)" if fs.schedule != "constant" else "")
              + f", backbone lr x {fs.backbone_lr_factor:g}, weight decay {fs.weight_decay:g}, "
              + ("every training image augmented on the fly" if fs.augment_all
                 else "augmented copies only"))
    ft_text = (f"End-to-end at lr {fs.lr:.3g} (head lr x {c.finetune.lr_factor:g}), "
               f"{recipe}, BatchNorm {'training' if fs.bn_train else 'inference'} mode; {kept}"
               f"\n\nFrozen vs fine-tuned on the same fold-0 validation images "
               f"(n={cmp['n']}):\n\n| model | val loss | val accuracy |\n|---|---|---|\n"
               + "".join(f"| {name} | {cmp[k]['val_loss']:.4f} | {cmp[k]['val_acc']:.3f} |\n"
                         for k, name in (("frozen", "frozen backbone + head"),
                                         ("finetuned", "fine-tuned (kept weights)"))))
    return [("Data", data, [balance]), ("Final head", _hp_text(final.hp), [head_png]),
            ("Fine-tuning", ft_text, [ft_png])]


def write_run_outputs(run: Run, final: Final, metrics: dict, sections: list, *,
                      title: str) -> dict:
    """Method A's outputs (metrics.json, report.md, report.html); prints the headline with
    its interval."""
    metrics["frozen_vs_finetuned"] = frozen_vs_finetuned(final)
    write_reports(run.workdir, metrics, sections, title=title, synthetic=run.ds.synthetic)
    acc = metrics["final"]["accuracy"]
    print(f"test accuracy {acc['value']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] on "
          f"{len(run.ds.splits.test)} images; report: {run.workdir / 'report.md'}")
    return metrics


def frozen_vs_finetuned(final: Final) -> dict:
    """Fold-0 validation loss/accuracy of the frozen-backbone head (fine-tuning's starting
    point) and of the weights fine-tuning kept (the same when no epoch beat the start)."""
    h, best = final.tuned.history, final.tuned.best_epoch
    frozen = {"val_loss": h.get("initial_val_loss", float("nan")),
              "val_acc": h.get("initial_val_acc", float("nan"))}
    tuned = ({"val_loss": h["val_loss"][best], "val_acc": h["val_acc"][best]} if best >= 0
             else dict(frozen))
    return {"validation": "fold 0", "n": len(final.val_rows), "frozen": frozen,
            "finetuned": tuned, "best_epoch": int(best),
            "frozen_only": final.fit_spec.epochs == 0}


def _hp_text(hp: head.HeadHParams) -> str:
    return ("Head on frozen features (fold-0 training rows, early stopping on fold-0 "
            "validation): " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(hp).items())
            + ".")


def _curve(a) -> list[float]:
    a = np.asarray(a, float)
    return [float(x) for x in a[~np.isnan(a)]]
