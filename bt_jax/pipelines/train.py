"""Pipeline `train` (method A without a search): one given head setting, reproduced.

    python launch.py --config=configs/quickstart.py --config.pipeline=train \
        --config.model.name=efficientnet_lite0 --config.train.units=1024 \
        --config.train.lr=9.558e-5 --config.train.dropout=0.6775 --workdir=W

The head setting is `config.train` (units, dropout, lr, batch_size, optimizer, momentum,
epochs, patience) on `config.model.name`'s features: its k-fold validation accuracy
(all folds in one vmapped run), then the final model and the test evaluation exactly as
the search pipeline does for its best trial. For reproducing a published setting.
"""

from __future__ import annotations

from pathlib import Path

from bt_jax.method_a import estimates, report_sections, steps
from bt_jax.reporting import tensorboard
from bt_jax.train import head


def run(config, workdir: Path):
    name = config.model.name
    run = steps.prepare(config, workdir, (name,))
    hp = head.HeadHParams.from_config(config.train)
    cv = steps.cv_head(run, name, hp)
    tensorboard.write_fold_histories(config, run.workdir, "head_cv", [
        tensorboard.head_history(cv.fold(f), hp.lr) for f in range(run.folds.k)])
    final = steps.finish(run, name, hp)
    sections, metrics, _ = report_sections.evaluate_test(run, final)
    summary = steps.cv_summary(cv)
    cv_text = (f"{run.ds.splits.k}-fold validation accuracy {cv.val_acc_mean:.3f} (folds: "
               + ", ".join(f"{a:.3f}" for a in summary["fold_val_acc"])
               + f"), mean validation AUC {summary['val_auc']:.3f}.")
    data, *training = report_sections.training_sections(run, final)
    sections = [data, ("Cross-validation", cv_text, []), *training, *sections]
    if config.eval.cv_repeats:
        metrics["cv_repeated"] = estimates.repeated_cv(run, name, hp, config.eval.cv_repeats)
        tensorboard.write_cv_repeats(config, run.workdir, "cv_repeats", metrics["cv_repeated"])
        sections.insert(1, estimates.cv_section(metrics["cv_repeated"]))
    metrics.update(cv={"val_acc_mean": cv.val_acc_mean, **summary}, backbone=name,
                   head=hp.__dict__, synthetic=run.ds.synthetic,
                   n_test=int(len(run.ds.splits.test)), operating_point=final.operating_point)
    return report_sections.write_run_outputs(run, final, metrics, sections,
                                             title=f"bt_jax method A (given head): {name}")
