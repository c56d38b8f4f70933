"""Pipeline `search` (method A): features once, k-fold head search, final fine-tune, test.

    python launch.py --config=configs/resnet_search.py --workdir=W

1. weights: every backbone in config.search.backbones whose weights resolve (clear error
   before any work if none does); 2. data set, manifest, splits; 3. augmented copies of
   training images (augment2a planned per fold, made once); 4. features of originals and
   copies per backbone, cached; 5. Optuna search, each trial one vmapped k-fold run;
   6. best trial: head on frozen features, then end-to-end fine-tune at lr/10;
   7. one evaluation on the held-out test split, report and plots.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np

from bt_jax import ensemble, features, predict, search
from bt_jax.data import augment, dataset
from bt_jax.evaluate import evaluation, html, plots, report
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier
from bt_jax.train import finetune, head
from bt_jax.train.checkpoint import Checkpoints
from bt_jax.weights import load
from bt_jax.weights import registry as wreg

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CopySet:
    """Augmented copies of training images: rows n.. of every feature array."""
    union: augment.CopyPlan
    fold_rows: list[np.ndarray]   # per fold: rows (into union) of that fold's own plan
    images: np.ndarray


def resolve_backbones(config) -> dict[str, str]:
    """{name: weight file} for every searchable backbone whose weights resolve."""
    found, errors = load.available(config.search.backbones, config.weights, config.model.name)
    for name, msg in errors.items():
        log.warning("backbone %s left out of the search: %s", name, msg)
    if not found:
        raise wreg.WeightsNotFoundError(
            "no backbone in config.search.backbones has weights available:\n"
            + "\n".join(f"- {n}: {m}" for n, m in errors.items()))
    return found


def make_copy_set(config, ds: dataset.Dataset) -> CopySet:
    plans = [augment.plan_from_config(ds.splits.fold_train(f), ds.labels, config)
             for f in range(ds.splits.k)]
    union = augment.union_plans(plans)
    params = augment.make_augment_params(config.augment)
    images, _, _ = augment.make_copies(ds.images, ds.labels, union, params)
    return CopySet(union, [augment.positions(union, p) for p in plans], images)


def fold_arrays(ds: dataset.Dataset, copies: CopySet) -> head.FoldArrays:
    """Fold f: its training originals + exactly its own plan's copies; validation originals."""
    n = len(ds.labels)
    trains = [np.concatenate([ds.splits.fold_train(f).indices, n + copies.fold_rows[f]])
              for f in range(ds.splits.k)]
    for f, t in enumerate(trains):  # tripwire: no copy of a held-out image
        src = np.where(t >= n, copies.union.source[np.clip(t - n, 0, None)], t)
        assert not np.isin(src, ds.splits.fold_val(f)).any() and not np.isin(src, ds.splits.test).any()
    ti, tm = head.pad_index_sets(trains)
    vi, vm = head.pad_index_sets([ds.splits.fold_val(f) for f in range(ds.splits.k)])
    return head.FoldArrays(ti, tm, vi, vm)


def backbone_features(config, workdir: Path, ds, copies: CopySet, name: str, weights_file: str):
    module, variables, digest = load.load_backbone(
        name, config.weights, size=config.preprocess.size, dtype=config.model.dtype,
        path=weights_file if weights_file != load.RANDOM_DIGEST else "")
    parts = {"backbone": name, "weights": digest, "preprocess": config.preprocess.to_dict(),
             "images": ds.content_key, "augment": config.augment.to_dict(),
             "copy_sources": copies.union.source.tolist(), "copy_numbers": copies.union.copy.tolist()}

    def compute():
        allx = np.concatenate([ds.images, copies.images])
        return features.extract_features(module, variables, allx, batch_size=32, progress=True,
                                         desc=f"features {name}")
    return features.cached(workdir, parts, compute, name=name), (module, variables, digest)


def run(config, workdir: Path):
    workdir = Path(workdir)
    available = resolve_backbones(config)
    ds = dataset.prepare_dataset(config, workdir)
    note = evaluation.note_for(ds.synthetic)
    copies = make_copy_set(config, ds)
    log.info("augmented copies: %d (policy %s)", len(copies.union), config.augment.balance)
    folds = fold_arrays(ds, copies)
    labels_all = np.concatenate([ds.labels, ds.labels[copies.union.source]])
    feats, models = {}, {}
    for name, wfile in available.items():
        feats[name], models[name] = backbone_features(config, workdir, ds, copies, name, wfile)

    def objective(p: dict):
        hp = head.HeadHParams(units=p["units"], dropout=p["dropout"], lr=p["lr"],
                              batch_size=p["batch_size"], optimizer=p["optimizer"],
                              momentum=config.train.momentum, epochs=config.train.epochs,
                              patience=config.train.patience)
        res = head.fit_folds(feats[p["backbone"]], labels_all, folds, hp,
                             jax.random.PRNGKey(config.seed))
        return res.val_acc_mean, {"val_auc": float(np.nanmean(res.val_auc)),
                                  "fold_val_acc": [float(a) for a in res.val_acc_best],
                                  "best_epochs": [int(e) for e in res.best_epoch]}

    study = search.run_search(config, workdir, objective, available_backbones=list(available))
    best = search.best_trial_params(study)
    log.info("best trial: %s", best)
    return finish(config, workdir, ds, copies, folds, labels_all, feats, models, best, study, note)


def finish(config, workdir, ds, copies, folds, labels_all, feats, models, best, study, note):
    """Final head (frozen backbone) -> fine-tune at lr/10 -> test evaluation -> report."""
    name = best["backbone"]
    plot_dir = workdir / "plots"
    hp = head.HeadHParams(units=best["units"], dropout=best["dropout"], lr=best["lr"],
                          batch_size=best["batch_size"], optimizer=best["optimizer"],
                          momentum=config.train.momentum, epochs=config.train.epochs,
                          patience=config.train.patience)
    # One fold is kept for early stopping and checkpoint choice; the test split never is.
    train_rows = folds.train_idx[0][folds.train_mask[0]]
    val_rows = ds.splits.fold_val(0)
    final = head.fit_one(feats[name], labels_all, train_rows, val_rows, hp,
                         jax.random.PRNGKey(config.seed + 1))
    test = ds.splits.test
    y_test = ds.labels[test]
    head_prob = np.asarray(head.predict_proba(final.params, feats[name][test]))

    module, variables, digest = models[name]
    model = Classifier(backbone=module, head=head.Head(hp.units, hp.dropout), head_input="pre_logits")
    full = {"params": {"backbone": variables["params"], "head": jax.device_get(final.params)},
            "batch_stats": {"backbone": variables.get("batch_stats", {})}}
    n = len(ds.labels)
    is_copy = train_rows >= n
    src = np.where(is_copy, copies.union.source[np.clip(train_rows - n, 0, None)], train_rows)
    keys = np.where(is_copy[:, None], copies.union.rng[np.clip(train_rows - n, 0, None)], 0)
    data = finetune.FitData(images=ds.images, labels=ds.labels, train_src=src,
                            train_keys=keys.astype(np.uint32), train_aug=is_copy, val_idx=val_rows,
                            aug_params=augment.make_augment_params(config.augment))
    fs = finetune.FitSpec(epochs=config.train.finetune_epochs, batch_size=hp.batch_size,
                          lr=hp.lr * config.train.finetune_lr_factor, optimizer=hp.optimizer,
                          momentum=hp.momentum, patience=config.train.patience,
                          bn_train=config.train.finetune_bn_train, trainable="all", seed=config.seed)
    ck = Checkpoints(workdir / "checkpoints" / "finetune")
    tuned = finetune.fit(model, full, mreg.get(name), data, fs, ckpt=ck, desc="fine-tune")
    _, _, ft_prob = finetune.evaluate(model, tuned.variables, ds.images, ds.labels, test,
                                      batch_size=hp.batch_size)
    save_model_card(workdir, config, ds, name, digest, hp, ck)
    # Validation probabilities beside the model: predict can pick a threshold for a target
    # sensitivity later; with eval.target_sensitivity set, model.json's threshold is that one.
    _, _, val_prob = finetune.evaluate(model, tuned.variables, ds.images, ds.labels, val_rows,
                                       batch_size=hp.batch_size)
    op = predict.record_validation(workdir, [ds.names[i] for i in val_rows], ds.labels[val_rows],
                                   val_prob, target_sensitivity=config.eval.target_sensitivity)

    sections = [("Data", _data_text(ds), [plots.plot_class_balance(
        {c: int((ds.class_index == i).sum()) for i, c in enumerate(ds.classes)},
        plot_dir / "class_balance.png", "Unique images per class", note=note)])]
    sections.append(("Search", _search_text(study, best), [plots.plot_curves(
        {"train/loss": _curves(final.train_loss), "val/loss": _curves(final.val_loss),
         "train/accuracy": _curves(final.train_acc), "val/accuracy": _curves(final.val_acc)},
        plot_dir / "head_curves.png", f"Final head on frozen {name} features",
        best_epoch=int(final.best_epoch), note=note)]))
    kept = (f"best epoch {tuned.best_epoch}." if tuned.best_epoch >= 0 else
            "no epoch beat the starting point on validation loss, so the final model keeps "
            "the frozen-backbone head's weights.")
    sections.append(("Fine-tuning", f"End-to-end at lr {fs.lr:.3g} (best lr / "
                     f"{1 / config.train.finetune_lr_factor:g}), BatchNorm "
                     f"{'training' if fs.bn_train else 'inference'} mode; {kept}",
                     [plots.plot_curves({"train/loss": tuned.history["train_loss"],
                                         "val/loss": tuned.history["val_loss"],
                                         "train/accuracy": tuned.history["train_acc"],
                                         "val/accuracy": tuned.history["val_acc"]},
                                        plot_dir / "finetune_curves.png", f"Fine-tuning {name}",
                                        best_epoch=tuned.best_epoch if tuned.best_epoch >= 0 else None,
                                        note=note)]))
    cls = (ds.classes[0] if ds.positive != ds.classes[0] else ds.classes[1], ds.positive)
    s_head, r_head = evaluation.evaluate_split(y_test, head_prob, out_dir=workdir / "eval" / "head_only",
                                               title="Test split, frozen backbone + head",
                                               class_names=cls, config=config, synthetic=ds.synthetic)
    s_ft, r_ft = evaluation.evaluate_split(y_test, ft_prob, out_dir=workdir / "eval" / "finetuned",
                                           title="Test split, fine-tuned (final model)",
                                           class_names=cls, config=config, synthetic=ds.synthetic)
    sections += [s_ft, s_head]
    metrics = {"final": r_ft, "head_only": r_head, "best_trial": best, "backbone": name,
               "synthetic": ds.synthetic, "n_test": int(len(test)), "operating_point": op}
    if config.eval.ensemble_k:  # member 0 reuses the final head's seed: it is the head-only model
        ens = ensemble.ensemble_topk(study, feats, labels_all, train_rows, val_rows, test,
                                     k=config.eval.ensemble_k, config=config, seed=config.seed + 1)
        s_ens, metrics["ensemble"] = ensemble.evaluate_ensemble(
            ens, y_test, out_dir=workdir / "eval" / "ensemble", class_names=cls, config=config,
            synthetic=ds.synthetic)
        sections.append(s_ens)
    report.write_metrics_json(workdir / "metrics.json", metrics)
    title = f"bt_jax method A: {name}" + (" [SYNTHETIC DATA]" if ds.synthetic else "")
    report.write_markdown_report(workdir / "report.md", title=title, sections=sections)
    html.write_html_report(workdir, gradcam_examples=4)
    print(f"test accuracy {r_ft['accuracy']['value']:.3f} "
          f"[{r_ft['accuracy']['ci'][0]:.3f}, {r_ft['accuracy']['ci'][1]:.3f}] on {len(test)} images; "
          f"report: {workdir / 'report.md'}")
    return metrics


def save_model_card(workdir, config, ds, name, digest, hp, ck):
    predict.write_model_card(workdir, config=config, ds=ds, backbone=name, digest=digest,
                             head={"type": "gap_dense", "units": hp.units, "dropout": hp.dropout},
                             checkpoint_dir=ck.root)


def _curves(a):
    a = np.asarray(a, float)
    return [float(x) for x in a[~np.isnan(a)]]


def _data_text(ds) -> str:
    s = ds.splits
    return (f"{len(ds.labels)} unique images from `{ds.root}` ({int(ds.labels.sum())} {ds.positive}); "
            f"test split {len(s.test)}, {s.k} folds over the rest. See `manifest.json`.")


def _search_text(study, best) -> str:
    import optuna
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    return (f"{len(done)} completed trials ({len(failed)} failed). Best mean "
            f"k-fold validation accuracy {study.best_value:.3f} with "
            + ", ".join(f"{k}={v}" for k, v in best.items()) + ". All trials: `trials.csv`.")
