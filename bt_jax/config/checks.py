"""Config validation: each check raises ConfigError naming the key, expected vs got.

    checks.validate(c)                   # every value the library reads
    checks.normalise(c)                  # "a,b" from the command line -> ("a", "b")

Re-exported by `bt_jax.config`.
"""

from __future__ import annotations

import ml_collections

from bt_jax.config.parse import class_map, class_multipliers, parse_stages
from bt_jax.models import depthwise, winograd
from bt_jax.models.common import DTYPES
from bt_jax.config.schema import (
    ALLOCATIONS,
    PRUNERS,
    BACKBONES,
    BALANCE,
    EQUALIZE,
    EXPORT_PLATFORMS,
    STORE_DTYPES,
    OPTIMIZERS,
    PIPELINES,
    RENAMED,
    SCHEDULES,
    ConfigError,
    base_config,
    recipe_error,
)


def _positive_ints(key: str, values) -> None:
    values = tuple(values)
    if not values or any(not isinstance(v, int) or v < 1 for v in values):
        _fail(key, f"expected a non-empty list of positive integers, got {values}")


def check_search(s) -> None:
    """Method A's search space: every choice list non-empty, every range ordered."""
    if s.trials < 1:
        _fail("search.trials", f"expected >= 1, got {s.trials}")
    if s.nested_trials < 0:
        _fail("search.nested_trials", f"expected >= 0 (0: search.trials), got {s.nested_trials}")
    if not s.backbones:
        _fail("search.backbones", f"empty; known: {BACKBONES}")
    for err in filter(None, map(recipe_error, s.backbones)):
        _fail("search.backbones", err)
    _positive_ints("search.units", s.units)
    if s.parallel_trials < 0:
        _fail("search.parallel_trials", f"expected >= 0 (0: auto), got {s.parallel_trials}")
    if s.allocation not in ALLOCATIONS:
        _fail("search.allocation", f"expected one of {ALLOCATIONS}, got {s.allocation!r}")
    if s.pruner not in PRUNERS:
        _fail("search.pruner", f"expected one of {PRUNERS}, got {s.pruner!r}")
    _positive_ints("search.prune_warmup_epochs", (s.prune_warmup_epochs,))
    _positive_ints("search.batch_sizes", s.batch_sizes)
    bad = [o for o in s.optimizers if o not in OPTIMIZERS]
    if not s.optimizers or bad:
        _fail("search.optimizers", f"expected a non-empty subset of {OPTIMIZERS}, got "
                                   f"{tuple(s.optimizers)}")
    if not 0 < s.lr_min <= s.lr_max:
        _fail("search.lr_min", f"need 0 < lr_min <= lr_max, got {s.lr_min}, {s.lr_max}")
    if not 0 <= s.dropout_min <= s.dropout_max < 1:
        _fail("search.dropout_max", f"need 0 <= dropout_min <= dropout_max < 1, got "
                                    f"{s.dropout_min}, {s.dropout_max}")


def _check_training(c) -> None:
    """config.train (method A's head and fine-tune) and config.staged (method B)."""
    t = c.train
    _positive_ints("train.units", (t.units,))
    if t.lane_batch < 0:
        _fail("train.lane_batch", f"expected >= 0 (0: auto), got {t.lane_batch}")
    _positive_ints("train.batch_size", (t.batch_size,))
    if t.optimizer not in OPTIMIZERS:
        _fail("train.optimizer", f"expected one of {OPTIMIZERS}, got {t.optimizer!r}")
    if not 0 <= t.dropout < 1:
        _fail("train.dropout", f"expected [0, 1), got {t.dropout}")
    if t.lr <= 0:
        _fail("train.lr", f"expected > 0, got {t.lr}")
    if not 0 <= t.momentum < 1:
        _fail("train.momentum", f"expected [0, 1), got {t.momentum}")
    for key in ("epochs", "patience"):
        if getattr(t, key) < 1:
            _fail(f"train.{key}", f"expected >= 1, got {getattr(t, key)}")
    _positive_ints("train.grad_accum_steps", (t.grad_accum_steps,))
    _check_finetune(c.finetune)
    d = c.distributed
    if d.coordinator and not (0 <= d.process_id < d.num_processes):
        _fail("distributed.process_id", f"expected 0..num_processes-1 "
                                        f"({d.num_processes - 1}), got {d.process_id}")
    s = c.staged
    parse_stages(s.stages)
    _positive_ints("staged.head_hidden", s.head_hidden)
    _positive_ints("staged.batch_size", (s.batch_size,))
    if s.optimizer not in OPTIMIZERS:
        _fail("staged.optimizer", f"expected one of {OPTIMIZERS}, got {s.optimizer!r}")
    if not 0 <= s.head_dropout < 1:
        _fail("staged.head_dropout", f"expected [0, 1), got {s.head_dropout}")
    if s.patience < 1 or s.plateau_patience < 1:
        _fail("staged.patience", f"patience and plateau_patience must be >= 1, got "
                                 f"{s.patience}, {s.plateau_patience}")
    if not 0 < s.plateau_factor < 1:
        _fail("staged.plateau_factor", f"expected (0, 1), got {s.plateau_factor}")
    if c.pipeline == "staged" and c.split.val_fraction <= 0:
        _fail("split.val_fraction", "method B (pipeline 'staged') needs a validation split, "
                                    f"e.g. 0.1; got {c.split.val_fraction}")


def _check_finetune(f) -> None:
    """config.finetune: method A's end-to-end fine-tune."""
    if f.epochs < 0:
        _fail("finetune.epochs", f"expected >= 0 (0: frozen-only, no fine-tuning), got {f.epochs}")
    if f.batch_size < 0:
        _fail("finetune.batch_size", f"expected >= 0 (0: the head's), got {f.batch_size}")
    _one_of("finetune.schedule", f.schedule, SCHEDULES)
    for key in ("lr_factor", "backbone_lr_factor"):
        if getattr(f, key) <= 0:
            _fail(f"finetune.{key}", f"expected > 0, got {getattr(f, key)}")
    _at_least("finetune.weight_decay", f.weight_decay, 0)
    _at_least("finetune.warmup_epochs", f.warmup_epochs, 0)


def _check_threshold(t) -> None:
    if t.value > 1:
        _fail("threshold.value", f"expected [0, 1] (or < 0: 0.5 when training, the model's when "
                                 f"applying it), got {t.value}")
    if not 0 <= t.target_sensitivity <= 1:
        _fail("threshold.target_sensitivity", f"expected [0, 1], got {t.target_sensitivity}")
    if t.target_sensitivity and t.value >= 0:
        _fail("threshold.target_sensitivity", f"{t.target_sensitivity} and threshold.value "
                                              f"{t.value} both choose the threshold: give one")


def _check_apply(c) -> None:
    """Settings of the predict / evaluate / serve / export pipelines."""
    if c.pipeline in ("predict", "evaluate", "serve", "export") and not c.checkpoint:
        _fail("checkpoint", "give the workdir of a trained model (it holds model.json)")
    if c.pipeline in ("predict", "evaluate") and not c.inputs:
        _fail("inputs", "give an image, a folder or a glob of scans"
                        + (" (evaluate: a folder of class sub-folders)" if c.pipeline == "evaluate" else ""))
    _at_least("predict.batch_size", c.predict.batch_size, 1)
    _at_least("gradcam.batch_size", c.gradcam.batch_size, 1)
    if c.predict.colour not in ("flag", "skip"):
        _fail("predict.colour", f"expected 'flag' or 'skip', got {c.predict.colour!r}")
    if not 0 <= c.gradcam.alpha <= 1:
        _fail("gradcam.alpha", f"expected [0, 1], got {c.gradcam.alpha}")
    e = c.external
    both = set(e.positive_classes) & set(e.negative_classes)
    if both:
        _fail("external.positive_classes", f"{sorted(both)} also in external.negative_classes")
    class_map(e.class_map, (*e.positive_classes, *e.negative_classes))
    _check_serve_export(c)


def _check_serve_export(c) -> None:
    if not 0 <= c.port <= 65535:
        _fail("port", f"expected 0..65535 (0: any free port), got {c.port}")
    if not str(c.serve.host).strip():
        _fail("serve.host", "empty: give an address to listen on, e.g. 127.0.0.1")
    if c.serve.max_upload_mb <= 0:
        _fail("serve.max_upload_mb", f"expected > 0, got {c.serve.max_upload_mb}")
    _at_least("serve.threads", c.serve.threads, 1)
    bad = [p for p in c.export.platforms if p not in EXPORT_PLATFORMS]
    if not c.export.platforms or bad or len(set(c.export.platforms)) != len(c.export.platforms):
        _fail("export.platforms", f"expected distinct names among {EXPORT_PLATFORMS}, got "
                                  f"{tuple(c.export.platforms)}")


def _check_data(d) -> None:
    _one_of("data.store_dtype", d.store_dtype, STORE_DTYPES)
    if not 0 <= d.near_duplicate_min_corr <= 1:
        _fail("data.near_duplicate_min_corr", f"expected [0, 1] (0: the hash alone), got "
                                              f"{d.near_duplicate_min_corr}")
    if not 0 < d.nifti_min_area <= 1:
        _fail("data.nifti_min_area", f"expected (0, 1], got {d.nifti_min_area}")


def _at_least(key: str, value, low) -> None:
    if value < low:
        _fail(key, f"expected >= {low}, got {value}")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        _fail(key, f"expected one of {allowed}, got {value!r}")


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"config.{key}: {msg}")


def _tuple_keys(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in c.items():
        if isinstance(v, ml_collections.ConfigDict):
            out += _tuple_keys(v, f"{prefix}{k}.")
        elif isinstance(v, tuple):
            out.append(f"{prefix}{k}")
    return out


def _split_items(value) -> tuple:
    """'a,b' or ('a,b',) or ('(a, b)',) -> ('a', 'b'); numbers stay numbers."""
    if isinstance(value, str):
        value = (value,)
    out = []
    for v in value:
        if isinstance(v, str):
            out += [p.strip().strip("'\"") for p in v.strip().strip("()[]").split(",")
                    if p.strip().strip("'\"")]
        else:
            out.append(v)
    return tuple(out)


def normalise(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """List-valued settings given as one comma-separated string on the command line
    (`--config.external.positive_classes=glioma,meningioma`) become tuples of items, and
    numeric lists typed as strings become numbers. Changes `c` in place and returns it."""
    base = base_config()
    for key in _tuple_keys(base):
        group, _, leaf = key.rpartition(".")
        holder = c
        for g in filter(None, group.split(".")):
            holder = holder[g]
        items = _split_items(holder[leaf])
        kinds = {type(x) for x in base[group][leaf]} if group else set()
        if kinds and kinds <= {int, float}:
            try:
                items = tuple(type(base[group][leaf][0])(x) for x in items)
            except (TypeError, ValueError):
                _fail(key, f"expected numbers, got {holder[leaf]!r}")
        holder[leaf] = items
    return c


def check_classes(c: ml_collections.ConfigDict, classes: tuple[str, ...]) -> None:
    """The class settings against the classes (the config's, or the data folder's)."""
    if len(classes) < 2:
        _fail("data.classes", f"need at least two classes, got {classes}")
    if len(set(classes)) != len(classes):
        _fail("data.classes", f"class names repeat: {classes}")
    if len(classes) == 2 and c.data.positive not in classes:
        _fail("data.positive", f"{c.data.positive!r} is not one of data.classes {classes}")
    if len(classes) > 2 and c.data.positive:
        _fail("data.positive", f"{c.data.positive!r}: a tumour class applies to two classes; "
                               f"with {len(classes)} classes {classes} set it to '' and name the "
                               "no-tumour classes in data.negative_classes for a binary view")
    neg = tuple(c.data.negative_classes)
    unknown = [n for n in neg if n not in classes]
    if unknown:
        _fail("data.negative_classes", f"{unknown} not among the classes {classes}")
    if neg and set(neg) == set(classes):
        _fail("data.negative_classes", f"every class {classes} is 'no tumour': nothing is left "
                                       "for tumour")
    if len(classes) > 2 and c.threshold.target_sensitivity and not neg:
        _fail("threshold.target_sensitivity", f"sensitivity to tumour needs "
                                              f"data.negative_classes (the no-tumour classes "
                                              f"among {classes})")
    if len(classes) == 2 and neg and c.data.positive in neg:
        _fail("data.negative_classes", f"{c.data.positive!r} is data.positive, the tumour class")


def _check_renamed(c) -> None:
    """A key that moved, set by a config file written before (an unlocked ConfigDict takes
    it silently): one line naming its new home."""
    for old, new in RENAMED.items():
        group, _, leaf = old.rpartition(".")
        if group in c and leaf in c[group]:
            _fail(old, f"renamed to config.{new}")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every value the library reads; returns the config unchanged."""
    _check_renamed(c)
    if c.pipeline not in PIPELINES:
        _fail("pipeline", f"expected one of {PIPELINES}, got {c.pipeline!r}")
    classes = tuple(c.data.classes)
    if classes:  # () = the data folder's sub-folders, checked once they are known
        check_classes(c, classes)
    elif c.augment.balance == "multipliers":
        _fail("data.classes", "augment.multipliers are keyed by class: name the classes")
    _check_data(c.data)
    _one_of("preprocess.equalize", c.preprocess.equalize, EQUALIZE)
    if not 32 <= c.preprocess.size <= 1024:
        _fail("preprocess.size", f"expected 32..1024, got {c.preprocess.size}")
    if not 0 <= c.preprocess.crop_margin < 0.5:
        _fail("preprocess.crop_margin", f"expected [0, 0.5), got {c.preprocess.crop_margin}")
    if not 0 < c.split.test_fraction < 0.5:
        _fail("split.test_fraction", f"expected (0, 0.5), got {c.split.test_fraction}")
    if not 0 <= c.split.val_fraction < 0.5:
        _fail("split.val_fraction", f"expected [0, 0.5), got {c.split.val_fraction}")
    if c.split.k < 2:
        _fail("split.k", f"need at least 2 folds, got {c.split.k}")
    if c.augment.balance not in BALANCE:
        _fail("augment.balance", f"expected one of {BALANCE}, got {c.augment.balance!r}")
    for key in ("rotation", "shift", "zoom", "shear", "brightness"):
        if getattr(c.augment, key) < 0:
            _fail(f"augment.{key}", f"ranges are non-negative, got {getattr(c.augment, key)}")
    if err := recipe_error(c.model.name):
        _fail("model.name", err)
    if c.pipeline == "staged" and "+" in c.model.name:
        _fail("model.name", f"method B's Flatten head reads one backbone's last map; "
                            f"{c.model.name!r} is a feature recipe (method A only)")
    check_search(c.search)
    _check_training(c)
    if c.model.dtype not in DTYPES:
        _fail("model.dtype", f"expected one of {tuple(DTYPES)}, got {c.model.dtype!r}")
    if c.model.depthwise not in depthwise.IMPLS:
        _fail("model.depthwise", f"expected one of {depthwise.IMPLS}, got {c.model.depthwise!r}")
    _one_of("model.conv3x3", c.model.conv3x3, winograd.CHOICES)
    if not 0 < c.eval.ci < 1:
        _fail("eval.ci", f"expected (0, 1), got {c.eval.ci}")
    _check_threshold(c.threshold)
    for key, low in (("cv_repeats", 0), ("calibration_bins", 2), ("bootstrap", 0),
                     ("ensemble_k", 0), ("baseline_max_rows", 100)):
        _at_least(f"eval.{key}", getattr(c.eval, key), low)
    _check_apply(c)
    if c.augment.balance == "multipliers" and classes:
        class_multipliers(c.augment.multipliers, classes)
    return c
