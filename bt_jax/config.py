"""The one config schema: every key, its default, and validation.

    from bt_jax import config as cfg
    c = cfg.base_config()          # every key with its default
    c.data.dir = "../shared/data/brain_mri"
    cfg.validate(c)                # raises ConfigError naming the bad key

Files in `configs/` start from `base_config()`, change what they need and lock the
result. Library code reads `config.group.key` directly; there are no hidden defaults.
"""

from __future__ import annotations

from bt_jax.errors import UserError
import ml_collections

PIPELINES = ("prepare", "search", "train", "staged", "predict", "evaluate")
EQUALIZE = ("none", "hist", "clahe")
BALANCE = ("none", "augment2a", "multipliers")
ALLOCATIONS = ("auto", "exact", "space", "bucket")
OPTIMIZERS = ("adam", "sgd")
BACKBONES = (
    "resnet50v2", "resnet50", "vgg16", "vgg19", "mobilenet", "densenet121",
    "efficientnetb0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "xception", "inceptionv3",
)
# Feature recipes: backbone names and options joined by '+', e.g.
# "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2" (features concatenated) or
# "efficientnet_lite1+flip+early" (models/composite.py). Anywhere a backbone is named.
RECIPE_OPTIONS = ("flip", "early")


class ConfigError(UserError, ValueError):
    """A config value is unknown, out of range or inconsistent; the message names the key."""


def split_recipe(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(backbones, options) of a backbone name or feature recipe ('+'-joined): ValueError
    naming the part that is neither a backbone nor an option, a repeat, or no backbone."""
    parts = name.split("+")
    bad = [p for p in parts if p not in BACKBONES and p not in RECIPE_OPTIONS]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"backbone {name!r}: {'unknown part(s) ' + str(bad) if bad else 'a part repeats'}"
                         f"; expected backbones {BACKBONES} and options {RECIPE_OPTIONS} joined by '+'")
    backbones = tuple(p for p in parts if p in BACKBONES)
    if not backbones:
        raise ValueError(f"backbone {name!r}: no backbone among its parts")
    return backbones, tuple(o for o in RECIPE_OPTIONS if o in parts)


def _recipe_error(name: str) -> str | None:
    try:
        split_recipe(name)
    except ValueError as e:
        return str(e)
    return None


def base_config() -> ml_collections.ConfigDict:
    # long: the schema is one readable list of every key with its default and meaning.
    c = ml_collections.ConfigDict()
    c.pipeline = "prepare"
    c.seed = 0
    c.compilation_cache = True            # launch.py: XLA cache in W/cache/jax, relaunches skip compiling
    c.name = "bt_jax"

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""                       # empty: use synthetic phantoms
    c.data.classes = ("no", "yes")        # sub-folder names, in label order; () = every sub-folder, sorted
    c.data.positive = "yes"               # the tumour class of two (label 1); "" with more classes
    c.data.negative_classes = ()          # C > 2: the "no tumour" classes -> a binary tumour view
    c.data.extensions = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
    c.data.min_size = 16                  # images smaller than this (either side) are skipped
    c.data.near_duplicate_bits = 6        # pHash Hamming distance that flags near-duplicates
    c.data.group_near_duplicates = True   # keep near-duplicates on one side of every split
    c.data.phantoms = ml_collections.ConfigDict()
    c.data.phantoms.n_per_class = 40
    c.data.phantoms.size = 256

    c.preprocess = ml_collections.ConfigDict()
    c.preprocess.crop = True              # crop to the brain's extreme points (method A)
    c.preprocess.crop_threshold = 45      # on the blurred 8-bit grayscale image
    c.preprocess.crop_margin = 0.02       # fraction of the crop size added on each side
    c.preprocess.equalize = "hist"        # "none" | "hist" | "clahe" on luminance
    c.preprocess.clahe_clip = 2.0
    c.preprocess.clahe_tiles = 8
    c.preprocess.size = 224               # square output side (method B: 240)
    c.preprocess.native_size = False      # True: each backbone at its native resolution instead
                                          # (Lite0 224, Lite1 240, Lite2 260, Xception 299, ...)

    c.split = ml_collections.ConfigDict()
    c.split.test_fraction = 0.1           # held out once, never seen by search or training
    c.split.val_fraction = 0.0            # method B: a fixed validation split (0 -> k folds only)
    c.split.k = 5

    c.augment = ml_collections.ConfigDict()
    c.augment.rotation = 10.0             # degrees, uniform in [-r, r]
    c.augment.shift = 0.1                 # fraction of the side, width and height
    c.augment.zoom = 0.1                  # scale in [1 - z, 1 + z]
    c.augment.shear = 0.1                 # shear factor in [-s, s]
    c.augment.hflip = True
    c.augment.vflip = True
    c.augment.brightness = 0.1            # additive delta in [-b, b]
    c.augment.balance = "augment2a"       # "none" | "augment2a" | "multipliers"
    c.augment.multipliers = ml_collections.ConfigDict({"yes": 6, "no": 13})  # copies per image
    c.augment.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "efficientnet_lite0"   # one of BACKBONES
    c.model.dtype = "float32"             # compute dtype: "float32" | "bfloat16"
    c.model.depthwise = "auto"            # depthwise convs: "shift" (fast on CPU) | "conv" | "auto"

    c.weights = ml_collections.ConfigDict()
    c.weights.path = ""                   # explicit weight file; empty: cache -> package -> download
    c.weights.cache_dir = ""              # empty: $XDG_CACHE_HOME/bt_jax or ~/.cache/bt_jax
    c.weights.allow_download = False
    c.weights.random_init = False         # no pretrained weights (tests/benchmarks; reports say so)

    c.train = ml_collections.ConfigDict()
    c.train.units = 1024                  # head Dense width
    c.train.dropout = 0.5
    c.train.lr = 1e-4
    c.train.batch_size = 32
    c.train.optimizer = "adam"            # "adam" | "sgd" (momentum below)
    c.train.momentum = 0.9
    c.train.epochs = 10
    c.train.patience = 3                  # early stopping on validation loss
    c.train.lane_batch = 0                # head runs (folds x trials) computed in lockstep (vmap);
                                          # 0: auto (all on GPU/TPU, one at a time on CPU)
    c.train.finetune_epochs = 5
    c.train.finetune_lr_factor = 0.1     # method A: fine-tune at lr / 10
    c.train.finetune_batch_size = 0       # method A's fine-tune batch; 0: the head's batch size
    c.train.finetune_bn_train = False     # BatchNorm stays in inference mode while fine-tuning
    # The fine-tuning recipe (method A as published: "constant", 1.0, 0.0, False):
    c.train.finetune_schedule = "warmup_cosine"  # or "constant"; warm-up, then cosine to 0
    c.train.finetune_warmup_epochs = 1.0
    c.train.finetune_backbone_lr_factor = 0.1  # backbone lr = fine-tune lr x this (head: x 1)
    c.train.finetune_weight_decay = 0.01  # decoupled weight decay on kernels (AdamW)
    c.train.finetune_augment = True       # augment every training image on the fly, each epoch
    c.train.grad_accum_steps = 1          # fine-tune/staged: K micro-batches per update (less memory)

    c.search = ml_collections.ConfigDict()
    c.search.trials = 150
    c.search.nested = False               # nested CV: the whole search again inside each outer fold
    c.search.nested_trials = 0            # trials per outer fold's search (0: search.trials)
    c.search.storage = ""                 # empty: sqlite in the workdir; else any SQLAlchemy URL
    c.search.study_name = ""              # empty: derived from config name
    c.search.backbones = ("resnet50v2",)
    c.search.units = (32, 64, 128, 256, 1024)
    c.search.lr_min = 1e-5
    c.search.lr_max = 1e-2
    c.search.batch_sizes = (16, 32, 64)
    c.search.optimizers = ("adam", "sgd")
    c.search.dropout_min = 0.0
    c.search.dropout_max = 0.8
    c.search.parallel_trials = 0          # trials trained per call (Optuna ask/tell); 0: auto
                                          # (1 on CPU, 8 on GPU/TPU)
    c.search.seed_backbones = True        # with several backbones, slot i first tries backbone i
                                          # at train.*'s head (clipped into the space), then TPE
    c.search.allocation = "auto"          # head programs: "exact" (one per units x batch size;
                                          # no padding), "space" (one for the whole space),
                                          # "bucket" (widths <= 256 share one per batch size),
                                          # "auto" (space; bucket where a CPU pads a large one)

    c.staged = ml_collections.ConfigDict()  # method B
    # "name:groups:epochs:lr"; groups '+'-joined layer-group selectors, "none" = head only,
    # "all" = everything. Each stage starts from the previous stage's best weights.
    c.staged.stages = (
        "baseline:none:10:3e-4",
        "stage1:block5_conv3+block5_conv4:15:1e-4",
        "stage2:block5:15:5e-5",
        "stage3:block4+block5:15:2e-5",
        "final:all:20:1e-5",
    )
    c.staged.head_hidden = (1024, 256)
    c.staged.head_dropout = 0.3
    c.staged.batch_size = 32
    c.staged.optimizer = "adam"
    c.staged.patience = 4                 # early stopping on val loss, restore best
    c.staged.plateau_factor = 0.5         # ReduceLROnPlateau on val accuracy
    c.staged.plateau_patience = 3
    c.staged.plateau_min_lr = 1e-7

    # Several processes (hosts) as one JAX runtime; see README "Scaling out".
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""        # "" one process | "auto" (SLURM/MPI/TPU env) | "host:port"
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.cpu_collectives = "gloo"  # across processes with CPU devices

    c.eval = ml_collections.ConfigDict()
    c.eval.threshold = 0.5
    c.eval.bootstrap = 1000               # resamples for 95% confidence intervals
    c.eval.ci = 0.95
    c.eval.target_sensitivity = 0.0       # > 0: store the threshold reaching it on validation data
    c.eval.ensemble_k = 5                 # method A: top-k trials ensembled (0: none)
    c.eval.cv_repeats = 5                 # method A: repeats of k-fold CV of the final setting
    c.eval.temperature_scaling = False    # fit T on validation probabilities; predict uses it
    c.eval.calibration_bins = 10          # reliability diagram / ECE bins

    # Applying a trained model (pipelines predict / evaluate)
    c.checkpoint = ""                     # a finished workdir (holding model.json) or model.json
    c.inputs = ""                         # an image/DICOM file, a folder, or a glob
    c.explain = False                     # write a Grad-CAM overlay PNG per image
    c.predict = ml_collections.ConfigDict()
    c.predict.batch_size = 16             # fixed compiled batch (last one padded); on a CPU as
                                          # fast as 32 with half the memory (README benchmarks)
    c.predict.dicom_frame = -1            # multi-frame DICOM: -1 refuses them, else frame index
    c.predict.colour = "flag"             # strongly coloured images: "flag" (predict + note) | "skip"
    c.predict.output = "predictions.csv"  # relative to the workdir
    c.predict.table_rows = 20             # rows printed to the terminal
    c.predict.gradcam_class = ""          # Grad-CAM of this class ("": the predicted one)
    c.threshold = ml_collections.ConfigDict()
    c.threshold.value = -1.0              # >= 0: use this threshold; else the model's
    c.threshold.target_sensitivity = 0.0  # > 0: choose on stored validation probs for this
    c.gradcam = ml_collections.ConfigDict()
    c.gradcam.target = "features"         # last conv map, or "module:backbone/<layer>"
    c.gradcam.alpha = 0.4                 # heat-map opacity in the overlay
    c.gradcam.max_images = 0              # 0: every image; else only the first n
    c.gradcam.batch_size = 16
    c.external = ml_collections.ConfigDict()
    c.external.positive_classes = ()      # sub-folders that count as tumour
    c.external.negative_classes = ()      # sub-folders that count as no tumour
    c.external.ignore_classes = ()        # sub-folders left out on purpose
    c.external.class_map = ()             # "sub-folder:model class" items (multi-class models)
    c.external.explain_examples = 8       # Grad-CAM overlays in the report (0: none)
    return c


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
    for err in filter(None, map(_recipe_error, s.backbones)):
        _fail("search.backbones", err)
    _positive_ints("search.units", s.units)
    if s.parallel_trials < 0:
        _fail("search.parallel_trials", f"expected >= 0 (0: auto), got {s.parallel_trials}")
    if s.allocation not in ALLOCATIONS:
        _fail("search.allocation", f"expected one of {ALLOCATIONS}, got {s.allocation!r}")
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
    if t.finetune_batch_size < 0:
        _fail("train.finetune_batch_size", f"expected >= 0 (0: the head's), got "
                                           f"{t.finetune_batch_size}")
    for key in ("epochs", "patience", "finetune_epochs"):
        if getattr(t, key) < 1:
            _fail(f"train.{key}", f"expected >= 1, got {getattr(t, key)}")
    if t.finetune_schedule not in ("constant", "warmup_cosine"):
        _fail("train.finetune_schedule", f"expected 'constant' or 'warmup_cosine', got "
                                         f"{t.finetune_schedule!r}")
    if t.finetune_backbone_lr_factor <= 0 or t.finetune_weight_decay < 0 \
            or t.finetune_warmup_epochs < 0:
        _fail("train.finetune_backbone_lr_factor", "expected backbone lr factor > 0, weight "
              f"decay >= 0, warm-up epochs >= 0; got {t.finetune_backbone_lr_factor}, "
              f"{t.finetune_weight_decay}, {t.finetune_warmup_epochs}")
    if t.finetune_lr_factor <= 0:
        _fail("train.finetune_lr_factor", f"expected > 0, got {t.finetune_lr_factor}")
    _positive_ints("train.grad_accum_steps", (t.grad_accum_steps,))
    d = c.distributed
    if d.coordinator and not (0 <= d.process_id < d.num_processes):
        _fail("distributed.process_id", f"expected 0..num_processes-1 "
                                        f"({d.num_processes - 1}), got {d.process_id}")
    s = c.staged
    if not s.stages:
        _fail("staged.stages", "empty: method B needs at least one stage")
    names = [parse_stage(x)["name"] for x in s.stages]
    if len(set(names)) != len(names):
        _fail("staged.stages", f"stage names repeat: {names}")
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


def _check_apply(c) -> None:
    """Settings of the predict / evaluate pipelines."""
    if c.pipeline in ("predict", "evaluate") and not c.checkpoint:
        _fail("checkpoint", "give the workdir of a trained model (it holds model.json)")
    if c.pipeline in ("predict", "evaluate") and not c.inputs:
        _fail("inputs", "give an image, a folder or a glob of scans"
                        + (" (evaluate: a folder of class sub-folders)" if c.pipeline == "evaluate" else ""))
    if c.predict.batch_size < 1 or c.gradcam.batch_size < 1:
        _fail("predict.batch_size", "predict.batch_size and gradcam.batch_size must be >= 1")
    if c.predict.colour not in ("flag", "skip"):
        _fail("predict.colour", f"expected 'flag' or 'skip', got {c.predict.colour!r}")
    if c.threshold.value > 1:
        _fail("threshold.value", f"expected [0, 1] (or < 0: the model's), got {c.threshold.value}")
    if not 0 <= c.threshold.target_sensitivity <= 1:
        _fail("threshold.target_sensitivity", f"expected [0, 1], got {c.threshold.target_sensitivity}")
    if not 0 <= c.gradcam.alpha <= 1:
        _fail("gradcam.alpha", f"expected [0, 1], got {c.gradcam.alpha}")
    e = c.external
    both = set(e.positive_classes) & set(e.negative_classes)
    if both:
        _fail("external.positive_classes", f"{sorted(both)} also in external.negative_classes")


def parse_stage(text: str) -> dict:
    """'stage1:block5_conv3+block5_conv4:15:1e-4' -> {name, trainable, epochs, lr}."""
    parts = str(text).split(":")
    if len(parts) != 4:
        raise ConfigError(f"config.staged.stages: {text!r} is not 'name:groups:epochs:lr'")
    name, groups, epochs, lr = parts
    try:
        epochs, lr = int(epochs), float(lr)
    except ValueError:
        raise ConfigError(f"config.staged.stages: {text!r}: epochs must be an int and lr a "
                          "float") from None
    if epochs < 1 or lr <= 0:
        raise ConfigError(f"config.staged.stages: {text!r}: need epochs >= 1 and lr > 0")
    trainable = groups if groups in ("none", "all") else tuple(g for g in groups.split("+") if g)
    return {"name": name, "trainable": trainable, "epochs": epochs, "lr": lr}


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
    if len(classes) > 2 and c.eval.target_sensitivity and not neg:
        _fail("eval.target_sensitivity", f"sensitivity to tumour needs data.negative_classes "
                                         f"(the no-tumour classes among {classes})")
    if len(classes) == 2 and neg and c.data.positive in neg:
        _fail("data.negative_classes", f"{c.data.positive!r} is data.positive, the tumour class")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every value the library reads; returns the config unchanged."""
    if c.pipeline not in PIPELINES:
        _fail("pipeline", f"expected one of {PIPELINES}, got {c.pipeline!r}")
    classes = tuple(c.data.classes)
    if classes:  # () = the data folder's sub-folders, checked once they are known
        check_classes(c, classes)
    elif c.augment.balance == "multipliers":
        _fail("data.classes", "augment.multipliers are keyed by class: name the classes")
    if c.preprocess.equalize not in EQUALIZE:
        _fail("preprocess.equalize", f"expected one of {EQUALIZE}, got {c.preprocess.equalize!r}")
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
    if err := _recipe_error(c.model.name):
        _fail("model.name", err)
    if c.pipeline == "staged" and "+" in c.model.name:
        _fail("model.name", f"method B's Flatten head reads one backbone's last map; "
                            f"{c.model.name!r} is a feature recipe (method A only)")
    check_search(c.search)
    _check_training(c)
    if c.model.dtype not in ("float32", "bfloat16"):
        _fail("model.dtype", f"expected 'float32' or 'bfloat16', got {c.model.dtype!r}")
    if c.model.depthwise not in ("auto", "shift", "conv"):
        _fail("model.depthwise", f"expected 'auto', 'shift' or 'conv', got {c.model.depthwise!r}")
    if not 0 < c.eval.ci < 1:
        _fail("eval.ci", f"expected (0, 1), got {c.eval.ci}")
    if not 0 <= c.eval.threshold <= 1:
        _fail("eval.threshold", f"expected [0, 1], got {c.eval.threshold}")
    if not 0 <= c.eval.target_sensitivity <= 1:
        _fail("eval.target_sensitivity", f"expected [0, 1], got {c.eval.target_sensitivity}")
    if c.eval.cv_repeats < 0 or c.eval.calibration_bins < 2:
        _fail("eval.cv_repeats", f"cv_repeats must be >= 0 and calibration_bins >= 2, got "
                                 f"{c.eval.cv_repeats}, {c.eval.calibration_bins}")
    if c.eval.bootstrap < 0 or c.eval.ensemble_k < 0:
        _fail("eval.bootstrap", f"bootstrap and ensemble_k must be >= 0, got "
                                f"{c.eval.bootstrap}, {c.eval.ensemble_k}")
    _check_apply(c)
    if c.augment.balance == "multipliers" and classes:
        missing = [k for k in classes if k not in c.augment.multipliers]
        if missing:
            _fail("augment.multipliers", f"no multiplier for classes {missing}")
        for k, v in c.augment.multipliers.items():
            if k not in classes:
                _fail("augment.multipliers", f"{k!r} is not one of data.classes {classes}")
            if int(v) < 1:
                _fail(f"augment.multipliers.{k}", f"expected >= 1 copies, got {v}")
    return c
