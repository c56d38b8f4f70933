"""Method A's steps, shared by the `search` and `train` pipelines (each a few lines on top).

    run = prepare(config, W, backbones)          # data, copies, folds, features per backbone
    res = cv_head(run, backbone, hp)             # one head setting on all k folds (vmapped)
    many = cv_heads(run, backbone, [hp1, hp2])   # several settings, one compiled call
    final = finish(run, backbone, hp)            # final head -> fine-tune -> model.json
    sections, metrics, probs = report_sections.evaluate_test(run, final)   # its report

Fold 0 is kept for early stopping and checkpoint choice of the final model; the test split
is used once, after everything is fixed.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np

from bt_jax import compilation, features, model_card, stages, tuning
from bt_jax.data import augment, dataset, preprocess
from bt_jax.models import registry as mreg
from bt_jax.models import winograd
from bt_jax.models.heads import Classifier, Head, n_outputs
from bt_jax.method_a import allocation
from bt_jax.reporting import calibration, evaluation, tensorboard
from bt_jax.train import finetune, head
from bt_jax.train.checkpoint import open_checkpoints
from bt_jax.train.folds import FoldArrays, make_fold_arrays, row_sources
from bt_jax.weights import load
from bt_jax.weights import files as wreg

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CopySet:
    """Augmented copies of training images: rows n.. of every feature array."""
    union: augment.CopyPlan
    fold_rows: list[np.ndarray]   # per fold: rows (into union) of that fold's own plan
    images: augment.CopyRows      # made from the stored originals when read (nothing held)


@dataclasses.dataclass
class View:
    """The data at one input size: the config that says it (preprocess.size), the data
    set and the augmented copies."""
    config: object
    ds: dataset.Dataset
    copies: CopySet


@dataclasses.dataclass
class Run:
    """Everything the steps share: the data, its copies and folds, features per backbone."""
    config: object
    workdir: Path
    ds: dataset.Dataset
    copies: CopySet
    folds: FoldArrays
    labels_all: np.ndarray        # labels of originals then copies
    feats: dict                   # backbone -> (N + copies, D)
    models: dict                  # backbone -> (module, variables, weights digest)
    views: dict = dataclasses.field(default_factory=dict)  # backbone -> View at its input size

    @property
    def note(self) -> str | None:
        return evaluation.note_for(self.ds.synthetic)

    def at(self, backbone: str) -> Run:
        """This run as `backbone` sees it: config, images and copies at its input size
        (`preprocess.native_size`). Folds, labels and features are shared: the rows are
        the same images at every size (checked by `prepare`)."""
        v = self.views.get(backbone)
        return self if v is None else dataclasses.replace(self, config=v.config, ds=v.ds,
                                                          copies=v.copies)


@dataclasses.dataclass
class Final:
    """The final model: head on frozen features, then fine-tuned end to end."""
    backbone: str
    hp: head.HeadHParams
    head: head.FoldResults
    tuned: finetune.FitResult
    fit_spec: finetune.FitSpec
    model: Classifier
    val_rows: np.ndarray
    operating_point: dict
    temperature: float = 1.0          # probability temperature (1: not calibrated)


def resolve_backbones(config, names) -> dict[str, str]:
    """{name: weight file} for every backbone in `names` whose weights resolve."""
    found, errors = load.available(names, config.weights, config.model.name)
    for name, msg in errors.items():
        log.warning("backbone %s left out: %s", name, msg)
    if not found:
        raise wreg.WeightsNotFoundError(
            "no backbone has weights available:\n"
            + "\n".join(f"- {n}: {m}" for n, m in errors.items()))
    return found


def make_copy_set(config, ds: dataset.Dataset) -> CopySet:
    plans = [augment.plan_from_config(ds.splits.fold_train(f), ds.labels, config,
                                       ds.label_of)
             for f in range(ds.splits.k)]
    union = augment.union_plans(plans)
    images = augment.CopyRows(ds.images, union, augment.make_augment_params(config.augment))
    return CopySet(union, [augment.positions(union, p) for p in plans], images)


def backbone_features(config, workdir: Path, ds, copies: CopySet, name: str, weights_file: str):
    """(features of originals then copies, (module, variables, digest)); cached on disk."""
    module, variables, digest = load.load_backbone(
        name, config.weights, size=config.preprocess.size, dtype=config.model.dtype,
        depthwise=config.model.depthwise, conv3x3=config.model.conv3x3,
        path=weights_file if weights_file != load.RANDOM_DIGEST else "")
    parts = {"backbone": name, "weights": digest, "dtype": config.model.dtype,
             "preprocess": preprocess.PreprocessParams.record(config.preprocess), "images": ds.content_key,
             "augment": config.augment.to_dict(), "copy_sources": copies.union.source.tolist(),
             "copy_numbers": copies.union.copy.tolist()}

    def compute():  # originals, then copies, streamed from the store into one array
        first = features.extract_features(module, variables, ds.images, batch_size=32,
                                          progress=True, desc=f"features {name}")
        if not len(copies.images):
            return first
        n = len(first)
        # Grown in place (realloc: no second N x D array); the copies' rows go after it.
        first.resize((n + len(copies.images), first.shape[1]))
        features.extract_features(module, variables, copies.images, batch_size=32,
                                  progress=True, desc=f"features {name} copies", out=first[n:])
        return first
    feats = features.cached(workdir, parts, compute, name=name)
    # The extractor's compiler heap and batch buffers are freed but stay mapped by glibc;
    # hand them back before the search puts the N x D features on the device.
    compilation.release_freed_memory()
    return feats, (module, variables, digest)


def prepare(config, workdir: Path, backbones) -> Run:
    """Steps 1-4: weights that resolve, data set, augmented copies, folds, features.
    With `preprocess.native_size`, the data set and copies are made once per input size
    among the backbones; their rows must be the same images in the same splits."""
    workdir = Path(workdir)
    available = resolve_backbones(config, backbones)
    views, by_size = {}, {}
    for name in available:
        cfg = load.sized_config(config, name)
        if cfg.preprocess.size not in by_size:
            with stages.stage("data"):
                ds = dataset.prepare_dataset(cfg, workdir)
            by_size[cfg.preprocess.size] = View(cfg, ds, make_copy_set(cfg, ds))
        views[name] = by_size[cfg.preprocess.size]
    first, *others = by_size.values()
    for other in others:
        check_same_rows(first, other)
    ds, copies = first.ds, first.copies
    log.info("augmented copies: %d (policy %s); input sizes %s", len(copies.union),
             config.augment.balance, {n: v.config.preprocess.size for n, v in views.items()})
    folds = make_fold_arrays(ds.splits, len(ds.labels), copies.union.source, copies.fold_rows)
    labels_all = np.concatenate([ds.labels, ds.labels[copies.union.source]])
    feats, models = {}, {}
    for name, wfile in available.items():
        v = views[name]
        with stages.stage(f"features {name}"):
            feats[name], models[name] = backbone_features(v.config, workdir, v.ds, v.copies,
                                                          name, wfile)
    return Run(first.config, workdir, ds, copies, folds, labels_all, feats, models, views)


def check_same_rows(a: View, b: View) -> None:
    """Features of backbones at different input sizes are compared row by row (one set of
    folds serves all), so both views must hold the same images, splits and copies."""
    sa, sb = a.config.preprocess.size, b.config.preprocess.size
    same = (a.ds.names == b.ds.names and np.array_equal(a.ds.labels, b.ds.labels)
            and np.array_equal(a.ds.splits.test, b.ds.splits.test)
            and all(np.array_equal(x, y) for x, y in zip(a.ds.splits.folds, b.ds.splits.folds,
                                                         strict=True))
            and np.array_equal(a.copies.union.source, b.copies.union.source)
            and np.array_equal(a.copies.union.rng, b.copies.union.rng))
    if not same:
        raise RuntimeError(
            f"preprocess.native_size: the data set prepared at {sa} px and at {sb} px differ "
            f"(images used, splits or augmented copies); e.g. a file that is too small or "
            f"whose brain crop fails at one size only. Set preprocess.native_size=False.")


def cv_head(run: Run, backbone: str, hp: head.HeadHParams, capacity=None) -> head.FoldResults:
    """One head setting trained on all k folds at once; refuses a diverged run."""
    return cv_heads(run, backbone, [hp], capacity)[0]


def cv_heads(run: Run, backbone: str, hps, capacity=None, *, folds: FoldArrays | None = None,
             key=None, prune=None) -> list[head.FoldResults]:
    """Several head settings, each on all k folds (default: run.folds, key from
    config.seed), in one compiled call (capacity: the allocation that serves them, None:
    the smallest); refuses a diverged run."""
    key = jax.random.PRNGKey(run.config.seed) if key is None else key
    out = head.fit_trials(run.feats[backbone], run.labels_all,
                          run.folds if folds is None else folds, hps, key,
                          n_classes=len(run.ds.classes), capacity=capacity,
                          lane_batch=allocation.lane_batch(run.config), prune=prune)
    for res, hp in zip(out, hps):
        head.check_converged(res, what=f"{backbone} head {hp}")
    return out


def run_study(run: Run, config, workdir: Path, *, folds: FoldArrays | None = None, key=None,
              progress: bool = True):
    """The Optuna study of method A's space on `run`'s features, resumable in `workdir`:
    each trial a k-fold head run (`folds`, default run.folds); `search.parallel_trials`
    trials per compiled call, grouped by backbone."""
    parallel = allocation.parallel_trials(config)
    folds = run.folds if folds is None else folds
    allocations = allocation.search_allocations(run, parallel, folds)

    def objective_batch(ps: list[dict], report=None):
        results = [None] * len(ps)
        for name in dict.fromkeys(p["backbone"] for p in ps):
            idx = [i for i, p in enumerate(ps) if p["backbone"] == name]
            hps = [head.HeadHParams.from_trial(ps[i], config.train) for i in idx]
            capacity = head.capacity_if_serving(allocations, hps, folds.train_idx.shape[1],
                                                len(run.ds.classes))
            prune = None if report is None else _report_part(report, idx, len(ps))
            for i, res in zip(idx, cv_heads(run, name, hps, capacity, folds=folds, key=key,
                                            prune=prune)):
                results[i] = (res.val_acc_mean, cv_summary(res))
        return results

    return tuning.run_search(config, workdir, lambda p, **kw: objective_batch([p], **kw)[0],
                             available_backbones=list(run.feats), progress=progress,
                             parallel=parallel, objective_batch=objective_batch)


def _report_part(report, idx: list[int], n: int):
    """A batch's pruning reporter seen from the trials `idx` of it (one backbone's call)."""
    def prune(epoch, scores, training):
        full, train = np.full(n, np.nan), np.zeros(n, bool)
        full[idx], train[idx] = scores, training
        return report(epoch, full, train)[idx]
    return prune


def cv_summary(res: head.FoldResults) -> dict:
    return {"val_auc": float(np.nanmean(res.val_auc)),
            "fold_val_acc": [float(a) for a in res.val_acc_best],
            "best_epochs": [int(e) for e in res.best_epoch]}


def _fold0_rows(run: Run) -> tuple[np.ndarray, np.ndarray]:
    return run.folds.train_idx[0][run.folds.train_mask[0]], run.ds.splits.fold_val(0)


def fold0_head(run: Run, backbone: str, hp: head.HeadHParams, key) -> head.FoldResults:
    """A head trained on fold 0's training rows and early-stopped on its validation rows
    (the final head, ensemble members). It runs as fold 0 of a k-fold call in the
    search's allocation, i.e. in a program the search already compiled; the other folds'
    lanes are dropped (on a CPU they cost less than the ~5-10 s compile they save)."""
    n_classes = len(run.ds.classes)
    cap = head.capacity_if_serving(allocation.head_allocations(run), [hp],
                                   run.folds.train_idx.shape[1], n_classes)
    res = head.fit_trials(run.feats[backbone], run.labels_all, run.folds, [hp], key,
                          n_classes=n_classes, capacity=cap,
                          lane_batch=allocation.lane_batch(run.config))[0].fold(0)
    head.check_converged(res, what=f"fold-0 {backbone} head {hp}")
    return res


def final_head(run: Run, backbone: str, hp: head.HeadHParams) -> head.FoldResults:
    return fold0_head(run, backbone, hp, jax.random.PRNGKey(run.config.seed + 1))


def _fit_data(run: Run) -> finetune.FitData:
    """Fold-0 training rows as (source image, augmentation key, augment?) for fine-tuning."""
    train_rows, val_rows = _fold0_rows(run)
    n = len(run.ds.labels)
    src, is_copy = row_sources(train_rows, n, run.copies.union.source)
    rng = run.copies.union.rng
    keys = (np.where(is_copy[:, None], rng[np.clip(train_rows - n, 0, None)], 0) if len(rng)
            else np.zeros((len(train_rows), 2), np.uint32))  # augment.balance "none": no copies
    return finetune.FitData(images=run.ds.images, labels=run.ds.labels, train_src=src,
                            train_keys=keys.astype(np.uint32), train_aug=is_copy,
                            val_idx=val_rows,
                            aug_params=augment.make_augment_params(run.config.augment))


def fine_tune(run: Run, backbone: str, hp: head.HeadHParams, frozen: head.FoldResults):
    """The backbone + final head fine-tuned end to end at lr * finetune.lr_factor."""
    c = run.config
    module, variables, digest = run.models[backbone]
    model = Classifier(backbone=winograd.for_training_module(module),   # conv3x3: training rule
                       head=Head(hp.units, hp.dropout, n_outputs(len(run.ds.classes))),
                       head_input="pre_logits")
    full = {"params": {"backbone": variables["params"], "head": jax.device_get(frozen.params)},
            "batch_stats": {"backbone": variables.get("batch_stats", {})}}
    data = _fit_data(run)
    f = c.finetune
    fs = finetune.FitSpec(epochs=f.epochs, batch_size=f.batch_size or hp.batch_size,
                          lr=hp.lr * f.lr_factor, optimizer=hp.optimizer,
                          momentum=hp.momentum, patience=c.train.patience,
                          bn_train=f.bn_train, trainable="all", seed=c.seed,
                          grad_accum_steps=c.train.grad_accum_steps, schedule=f.schedule,
                          warmup_epochs=f.warmup_epochs, backbone_lr_factor=f.backbone_lr_factor,
                          weight_decay=f.weight_decay, augment_all=f.augment)
    fingerprint = {"backbone": backbone, "weights": digest, "dtype": c.model.dtype,
                   "preprocess": preprocess.PreprocessParams.record(c.preprocess), "images": run.ds.content_key,
                   "augment": c.augment.to_dict(), "head": dataclasses.asdict(hp),
                   "head_seed": c.seed + 1, "fit": dataclasses.asdict(fs),
                   "train_src": data.train_src.tolist(), "val": data.val_idx.tolist()}
    ck = open_checkpoints(run.workdir / "checkpoints", "finetune", fingerprint)
    if fs.epochs == 0:  # frozen-only: the head on frozen features is the final model
        return model, _frozen_only(run, backbone, frozen, full, ck), fs, ck
    with stages.stage("fine-tune"), tensorboard.epoch_log(c, run.workdir, "finetune") as tb:
        tuned = finetune.fit(model, full, mreg.get(backbone), data, fs, ckpt=ck, desc="fine-tune",
                             on_epoch=tb)
    return model, tuned, fs, ck


def head_val_metrics(run: Run, backbone: str, frozen: head.FoldResults) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy, probabilities) of the frozen-backbone head on fold 0's validation
    rows, from the cached features (no image is read)."""
    _, val_rows = _fold0_rows(run)
    prob = np.asarray(head.predict_proba(frozen.params, run.feats[backbone][val_rows]))
    y = run.ds.labels[val_rows]
    if prob.ndim == 2:
        p_true, hit = prob[np.arange(len(y)), y], prob.argmax(1) == y
    else:
        p_true, hit = np.where(y == 1, prob, 1 - prob), (prob >= 0.5) == (y == 1)
    return float(-np.log(np.clip(p_true, 1e-7, 1)).mean()), float(hit.mean()), prob


def _frozen_only(run: Run, backbone: str, frozen: head.FoldResults, full: dict,
                 ck) -> finetune.FitResult:
    """`finetune.epochs=0`: the backbone as loaded + the final head, checkpointed
    like a fine-tune's starting point, so model.json, predict and evaluate work as usual."""
    vl, va, _ = head_val_metrics(run, backbone, frozen)
    if not ck.is_done():
        ck.save_best(-1, full, vl)
        ck.mark_done({"best_epoch": -1, "stopped_epoch": -1, "frozen_only": True})
    log.info("fine-tune: skipped (finetune.epochs=0); the final model is the frozen "
             "backbone + head (fold-0 val loss %.4f acc %.3f)", vl, va)
    history = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
    history.update(initial_val_loss=vl, initial_val_acc=va)
    return finetune.FitResult(variables=full, history=history, best_epoch=-1, stopped_epoch=-1)


def finish(run: Run, backbone: str, hp: head.HeadHParams) -> Final:
    """Step 6: final head, fine-tune, model.json with its validation probabilities."""
    frozen = final_head(run, backbone, hp)
    tensorboard.write_history(run.config, run.workdir, "head_final",
                              tensorboard.head_history(frozen, hp.lr))
    model, tuned, fs, ck = fine_tune(run, backbone, hp, frozen)
    _, val_rows = _fold0_rows(run)
    if fs.epochs == 0:  # the same network as the head on frozen features
        val_prob = head_val_metrics(run, backbone, frozen)[2]
    else:
        _, _, val_prob = finetune.evaluate(model, tuned.variables, run.ds.images, run.ds.labels,
                                           val_rows, batch_size=hp.batch_size)
    c, ds = run.config, run.ds
    temperature = 1.0
    if c.eval.temperature_scaling and ds.multiclass:
        log.info("temperature scaling: fitted for two classes only; %d classes left as they are",
                 len(ds.classes))
    elif c.eval.temperature_scaling:  # fitted on validation predictions, never on test
        temperature = calibration.fit_temperature(ds.labels[val_rows], val_prob)
        val_prob = calibration.apply_temperature(val_prob, temperature)
        log.info("temperature scaling: T = %.3f (fold-0 validation)", temperature)
    model_card.write_model_card(
        run.workdir, config=c, ds=ds, backbone=backbone, digest=run.models[backbone][2],
        head={"type": "gap_dense", "units": hp.units, "dropout": hp.dropout,
              **({"outputs": len(ds.classes)} if ds.multiclass else {})},
        checkpoint_dir=ck.root)
    if temperature != 1.0:
        model_card.record_temperature(run.workdir, temperature,
                                      source=f"fold 0 validation, n={len(val_rows)}")
    # Validation probabilities beside the model: predict can pick a threshold for a target
    # sensitivity later; with threshold.target_sensitivity set, model.json's threshold is that one.
    op = model_card.record_validation(run.workdir, [ds.names[i] for i in val_rows],
                                      ds.labels[val_rows], val_prob,
                                      target_sensitivity=c.threshold.target_sensitivity,
                                      classes=ds.classes, negative_classes=ds.negative_classes)
    return Final(backbone, hp, frozen, tuned, fs, model, val_rows, op, temperature)
