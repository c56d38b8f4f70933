"""Pipeline `staged` (method B): split first, then augment; unfreeze stage by stage.

    python launch.py --config=configs/vgg19_staged.py --workdir=W

Split 80/10/10 over unique images; augment only the training split with per-class
multipliers; VGG19 (or any registry backbone) + Flatten head; stages from
config.staged.stages, each starting from the previous stage's best weights, each with
its own checkpoint directory W/checkpoints/<k>_<name> (a killed run resumes inside the
stage it was in; finished stages are reloaded, not retrained). After each stage:
validation and test metrics, confusion matrix, curves; then a stage comparison.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax import io
from bt_jax.config import ConfigError, parse_stages
from bt_jax.data import augment, dataset, preprocess
from bt_jax import model_card
from bt_jax.reporting import evaluation, plots, tensorboard
from bt_jax.models import registry as mreg
from bt_jax.models import winograd
from bt_jax.models.heads import Classifier, FlattenHead
from bt_jax.train import finetune
from bt_jax.inference.run_reports import write_reports
from bt_jax.train.checkpoint import open_checkpoints
from bt_jax.weights import load

log = logging.getLogger(__name__)


def training_rows(config, ds) -> finetune.FitData:
    """Training originals + their multiplier copies (augmented in the step); val = ds.splits.val."""
    train = ds.splits.train_all()
    plan = augment.plan_from_config(train, ds.labels, config, ds.label_of)
    n_orig = len(train.indices)
    src = np.concatenate([train.indices, plan.source])
    keys = np.concatenate([np.zeros((n_orig, 2), np.uint32), plan.rng.astype(np.uint32)])
    is_aug = np.arange(len(src)) >= n_orig
    return finetune.FitData(images=ds.images, labels=ds.labels, train_src=src, train_keys=keys,
                            train_aug=is_aug, val_idx=ds.splits.val,
                            aug_params=augment.make_augment_params(config.augment))


def build_model(config, ds, spec):
    module, bb, digest = load.load_backbone(spec, config.weights, size=config.preprocess.size,
                                            dtype=config.model.dtype,
                                            depthwise=config.model.depthwise,
                                            conv3x3=config.model.conv3x3)
    head = FlattenHead(hidden=tuple(config.staged.head_hidden), dropout=config.staged.head_dropout,
                       num_classes=len(ds.classes))
    # Gradients flow through the backbone from stage 1 on: conv3x3 "auto" by the training rule.
    model = Classifier(backbone=winograd.for_training_module(module), head=head,
                       head_input="features")
    x = jnp.zeros((1, config.preprocess.size, config.preprocess.size, 3))
    init = jax.jit(lambda r: model.init(r, x))(jax.random.PRNGKey(config.seed))
    variables = {"params": {"backbone": bb["params"], "head": jax.device_get(init["params"]["head"])},
                 "batch_stats": {"backbone": bb.get("batch_stats", {})}}
    return model, variables, digest


def check_stage_groups(spec, stages, size: int) -> None:
    """A typo in a stage's group names fails here, before any work (shapes only, no compute)."""
    shapes = jax.eval_shape(lambda: spec.make().init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, size, size, 3))))
    for st in stages:
        if st.trainable not in ("none", "all"):
            try:
                mreg.select_groups(shapes["params"], spec, st.trainable)
            except ValueError as e:
                raise ConfigError(f"config.staged.stages: stage {st.name!r}: {e}") from None


def run(config, workdir: Path):
    config = load.sized_config(config, config.model.name)
    workdir = Path(workdir)
    stages = parse_stages(config.staged.stages)
    spec = mreg.get(config.model.name)
    check_stage_groups(spec, stages, config.preprocess.size)
    model, variables, digest = build_model(config, ds := dataset.prepare_dataset(config, workdir),
                                           spec)
    if len(ds.splits.val) == 0:
        raise ConfigError("config.split.val_fraction: the validation split is empty for this "
                          "data set; method B needs one (e.g. 0.1)")
    data = training_rows(config, ds)
    note = evaluation.note_for(ds.synthetic) or (
        "RANDOM-INIT BACKBONE (no pretrained weights)" if digest == load.RANDOM_DIGEST else None)
    cls = ds.label_names
    log.info("training rows: %d (%d originals + %d augmented copies); val %d, test %d",
             len(data.train_src), int((~data.train_aug).sum()), int(data.train_aug.sum()),
             len(ds.splits.val), len(ds.splits.test))
    rows, sections, stage_reports = [], [], {}
    ck = None
    fingerprint = {"backbone": config.model.name, "weights": digest, "dtype": config.model.dtype,
                   "preprocess": preprocess.PreprocessParams.record(config.preprocess), "images": ds.content_key,
                   "augment": config.augment.to_dict(), "head": config.staged.head_hidden,
                   "head_dropout": config.staged.head_dropout, "seed": config.seed,
                   "train_src": data.train_src.tolist(), "val": data.val_idx.tolist()}
    for k, st in enumerate(stages):
        fs = finetune.FitSpec(epochs=st.epochs, batch_size=config.staged.batch_size, lr=st.lr,
                              optimizer=config.staged.optimizer, patience=config.staged.patience,
                              plateau_factor=config.staged.plateau_factor,
                              plateau_patience=config.staged.plateau_patience,
                              plateau_min_lr=config.staged.plateau_min_lr, plateau_monitor="val_acc",
                              bn_train=config.finetune.bn_train, trainable=st.trainable,
                              seed=config.seed + k,
                              grad_accum_steps=config.train.grad_accum_steps)
        # Stage k's fingerprint holds every earlier stage's: a change upstream retrains here.
        fingerprint = {**fingerprint, f"stage_{k}": dataclasses.asdict(fs)}
        run_name = f"stage_{k}_{st.name}"
        ck = open_checkpoints(workdir / "checkpoints", run_name, fingerprint)
        with tensorboard.epoch_log(config, workdir, run_name) as tb:
            res = finetune.fit(model, variables, spec, data, fs, ckpt=ck, desc=st.name,
                               on_epoch=tb)
        variables = res.variables
        row, section, rep = evaluate_stage(config, workdir, ds, model, variables, st, k, res, cls, note)
        rows.append(row)
        sections.append(section)
        stage_reports[st.name] = rep
    # The last stage's best state is the model that predict/evaluate load.
    model_card.write_model_card(workdir, config=config, ds=ds, backbone=config.model.name, digest=digest,
                             head={"type": "flatten", "hidden": list(config.staged.head_hidden),
                                   "dropout": config.staged.head_dropout,
                                   "num_classes": len(ds.classes)},
                             checkpoint_dir=ck.root)
    _, _, val_prob = finetune.evaluate(model, variables, ds.images, ds.labels, ds.splits.val,
                                       batch_size=config.staged.batch_size)
    model_card.record_validation(workdir, [ds.names[i] for i in ds.splits.val], ds.labels[ds.splits.val],
                              val_prob, target_sensitivity=config.threshold.target_sensitivity,
                              source="validation split", classes=ds.classes,
                              negative_classes=ds.negative_classes)
    return write_outputs(config, workdir, ds, rows, sections, stage_reports, note, digest)


def evaluate_stage(config, workdir, ds, model, variables, st, k, res, cls, note):
    out = workdir / "stages" / f"{k}_{st.name}"
    bs = config.staged.batch_size
    vl, va, _ = finetune.evaluate(model, variables, ds.images, ds.labels, ds.splits.val, batch_size=bs)
    tl, ta, tprob = finetune.evaluate(model, variables, ds.images, ds.labels, ds.splits.test, batch_size=bs)
    y = ds.labels[ds.splits.test]
    section, rep = evaluation.evaluate_split(y, tprob, out_dir=out, title=f"{st.name}: test split",
                                             class_names=cls, config=config, synthetic=ds.synthetic,
                                             negative_classes=ds.negative_classes)
    curves = plots.plot_curves({"train/loss": res.history["train_loss"], "val/loss": res.history["val_loss"],
                                "train/accuracy": res.history["train_acc"],
                                "val/accuracy": res.history["val_acc"]},
                               out / "curves.png", f"{st.name}: training vs validation",
                               best_epoch=res.best_epoch if res.best_epoch >= 0 else None, note=note)
    per_class = {c: rep["per_class"][c]["recall"]["value"] for c in cls}
    row = {"stage": st.name, "trainable": st.groups, "epochs_run": len(res.history["val_loss"]),
           "best_epoch": res.best_epoch, "val_loss": vl, "val_acc": va, "test_loss": tl,
           "test_acc": ta, "test_acc_ci": rep["accuracy"]["ci"],
           "test_auc": (rep["macro"] if ds.multiclass else rep)["roc_auc"]["value"],
           "per_class_test_acc": per_class}
    heading, body, imgs = section
    return row, (heading, body, [curves, *imgs]), rep


def write_outputs(config, workdir, ds, rows, sections, stage_reports, note, digest):
    names = [r["stage"] for r in rows]
    cmp_png = plots.plot_stage_comparison(
        names, {"val/loss": [r["val_loss"] for r in rows], "test/loss": [r["test_loss"] for r in rows],
                "val/accuracy": [r["val_acc"] for r in rows], "test/accuracy": [r["test_acc"] for r in rows]},
        workdir / "plots" / "stages.png", "Validation vs test across stages", note=note)
    auc = "test AUC (macro, one vs rest)" if ds.multiclass else "test AUC"
    header = f"| stage | trainable | epochs | val loss | val acc | test loss | test acc [95% CI] | {auc} |\n"
    header += "|---|---|---|---|---|---|---|---|\n"
    for r in rows:
        lo, hi = r["test_acc_ci"] or (float("nan"), float("nan"))
        header += (f"| {r['stage']} | {r['trainable']} | {r['epochs_run']} | {r['val_loss']:.3f} | "
                   f"{r['val_acc']:.3f} | {r['test_loss']:.3f} | {r['test_acc']:.3f} [{lo:.2f}, {hi:.2f}] | "
                   f"{r['test_auc']:.3f} |\n")
    intro = (f"{len(ds.labels)} unique images; split first (train {len(ds.splits.train_all())}, "
             f"val {len(ds.splits.val)}, test {len(ds.splits.test)}), then only the training split "
             f"augmented ({dict(config.augment.multipliers)}). Backbone {config.model.name}, weights "
             f"{digest}.")
    io.write_json(workdir / "stages.json", rows, default=float)
    random = " [RANDOM-INIT BACKBONE]" if digest == load.RANDOM_DIGEST else ""
    write_reports(workdir, {"stages": rows, "reports": stage_reports,
                            "synthetic": ds.synthetic, "weights": digest},
                  [("Stages", intro + "\n\n" + header, [cmp_png]), *sections],
                  title=f"bt_jax method B: staged fine-tuning of {config.model.name}{random}",
                  synthetic=ds.synthetic)
    print(header)
    print(f"report: {workdir / 'report.md'}")
    return rows
