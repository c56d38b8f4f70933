"""Every config key with its default (`base_config`) and the names it accepts.

    c = schema.base_config()
    schema.BACKBONES        # the backbones' names, from their family modules (models/registry.py)

Re-exported by `bt_jax.config`; validation lives in `config/checks.py`.
"""

from __future__ import annotations

import ml_collections

from bt_jax.errors import UserError
from bt_jax.models import registry

PIPELINES = ("prepare", "search", "train", "staged", "predict", "evaluate", "serve", "export")
EQUALIZE = ("none", "hist", "clahe")
STORE_DTYPES = ("uint16", "uint8")
EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export lowering targets
BALANCE = ("none", "augment2a", "multipliers")
ALLOCATIONS = ("auto", "exact", "space", "bucket")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "warmup_cosine")  # finetune.schedule
# Anywhere a backbone is named, a feature recipe of them may be ('+'-joined with options,
# models/registry.py's RECIPE_OPTIONS: "efficientnet_lite1+flip+early").
BACKBONES = tuple(registry.BACKBONES)


# Keys that moved: the old name in a config file or on the command line is one line naming
# the new one (checks.validate, overrides.unknown_keys).
RENAMED = {**{f"train.finetune_{k}": f"finetune.{k}" for k in (
    "epochs", "lr_factor", "batch_size", "bn_train", "schedule", "warmup_epochs",
    "backbone_lr_factor", "weight_decay", "augment")},
    "eval.threshold": "threshold.value", "eval.target_sensitivity": "threshold.target_sensitivity"}


class ConfigError(UserError, ValueError):
    """A config value is unknown, out of range or inconsistent; the message names the key."""


def recipe_error(name: str) -> str | None:
    """Why `name` is neither a backbone nor a feature recipe of them, or None."""
    try:
        registry.split_recipe(name)
    except ValueError as e:
        return str(e)
    return None


def training_threshold(t) -> float:
    """The threshold a training run reports at and writes to model.json (a target
    sensitivity then replaces it there): config.threshold.value, or 0.5 when it is < 0."""
    return float(t.value) if t.value >= 0 else 0.5


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
    c.data.extensions = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz")
    c.data.nifti_min_area = 0.5           # NIfTI: axial slices whose brain area >= this x the largest slice's
    c.data.store_dtype = "uint16"         # on-disk image store: "uint16" (keeps 16-bit depth) | "uint8" (half the disk)
    c.data.min_size = 16                  # images smaller than this (either side) are skipped
    c.data.near_duplicate_bits = 6        # pHash Hamming distance that flags near-duplicates
    c.data.near_duplicate_min_corr = 0.85  # ...confirmed by this aligned thumbnail correlation (0: hash only)
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
    c.model.dtype = "float32"             # compute dtype (models/common.py DTYPES; parameters stay float32)
    c.model.depthwise = "auto"            # depthwise convs: "shift" is fast on CPU, "auto" picks it there
    c.model.conv3x3 = "auto"              # 3x3 stride-1 convs: "auto" = Winograd F(2x2)/F(4x4) per layer where it wins on CPU, XLA's elsewhere; or force "xla"/"winograd2"/"winograd4"

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
    c.train.grad_accum_steps = 1          # fine-tune/staged: K micro-batches per update (less memory)

    c.finetune = ml_collections.ConfigDict()  # method A: backbone + final head end to end
    c.finetune.epochs = 5                 # 0: frozen-only (the head on frozen features is the final model)
    c.finetune.lr_factor = 0.1            # fine-tune at the head's lr x this
    c.finetune.batch_size = 0             # 0: the head's batch size
    c.finetune.bn_train = False           # BatchNorm stays in inference mode (method B's stages too)
    # The fine-tuning recipe (method A as published: "constant", 1.0, 0.0, False):
    c.finetune.schedule = "warmup_cosine"  # warm-up, then cosine to 0; "constant": lr throughout
    c.finetune.warmup_epochs = 1.0
    c.finetune.backbone_lr_factor = 0.1   # backbone lr = fine-tune lr x this (head: x 1)
    c.finetune.weight_decay = 0.01        # decoupled weight decay on kernels (AdamW)
    c.finetune.augment = True             # augment every training image on the fly, each epoch

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
    c.search.pruner = "none"              # stop trials early on their per-epoch k-fold accuracy:
                                          # "none", "median", "successive_halving", "hyperband"
                                          # (Optuna's; pruned trials count toward search.trials)
    c.search.prune_warmup_epochs = 2      # epochs before the first check (median) or rung

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

    # Several processes (hosts) as one JAX runtime; see docs/scaling_out.md.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""        # "" one process | "auto" (SLURM/MPI/TPU env) | "host:port"
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.cpu_collectives = "gloo"  # across processes with CPU devices

    c.eval = ml_collections.ConfigDict()
    c.eval.bootstrap = 1000               # resamples for 95% confidence intervals
    c.eval.ci = 0.95
    c.eval.ensemble_k = 5                 # method A: top-k trials ensembled (0: none)
    c.eval.cv_repeats = 5                 # method A: repeats of k-fold CV of the final setting
    c.eval.baseline_max_rows = 10000      # logistic baseline: training rows per fold at most (whole groups)
    c.eval.temperature_scaling = False    # fit T on validation probabilities; predict uses it
    c.eval.calibration_bins = 10          # reliability diagram / ECE bins

    # The decision threshold on P(tumour), one for training and applying a model: training
    # reports at it and writes it to model.json; predict/evaluate/serve/export apply it.
    c.threshold = ml_collections.ConfigDict()
    c.threshold.value = -1.0              # >= 0: this one; < 0: 0.5 when training, the model's
                                          # (model.json) when applying
    c.threshold.target_sensitivity = 0.0  # > 0: the highest threshold reaching this sensitivity
                                          # on validation probabilities (training: into model.json;
                                          # applying: on the model's stored ones); not with value

    c.report = ml_collections.ConfigDict()
    c.report.tensorboard = True           # event files in W/tensorboard/, a folder per thing trained

    # Applying a trained model (pipelines predict / evaluate)
    c.checkpoint = ""                     # a finished workdir (holding model.json) or model.json
    c.inputs = ""                         # an image/DICOM file, a folder, or a glob
    c.explain = False                     # write a Grad-CAM overlay PNG per image
    c.predict = ml_collections.ConfigDict()
    c.predict.batch_size = 16             # fixed compiled batch (last one padded); on a CPU as
                                          # fast as 32 with half the memory (docs/benchmarks.md)
    c.predict.dicom_frame = -1            # multi-frame DICOM: -1 refuses them, else frame index
    c.predict.colour = "flag"             # strongly coloured images: "flag" (predict + note) | "skip"
    c.predict.output = "predictions.csv"  # relative to the workdir
    c.predict.table_rows = 20             # rows printed to the terminal
    c.predict.gradcam_class = ""          # Grad-CAM of this class ("": the predicted one)
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

    # Serving a trained model on a local web page (pipeline serve) and exporting it (export)
    c.port = 8000                         # serve: port on serve.host (0: any free port, printed)
    c.serve = ml_collections.ConfigDict()
    c.serve.host = "127.0.0.1"            # the page has no authentication: another address warns
    c.serve.max_upload_mb = 64.0          # a larger upload is refused (400)
    c.serve.threads = 4                   # requests served at once (waitress's thread pool)
    c.export = ml_collections.ConfigDict()
    c.export.platforms = ("cpu", "cuda")  # lowering targets of model.jaxexport; one that this
                                          # jaxlib cannot lower for is dropped with a warning
    return c
