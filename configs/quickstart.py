"""Quickstart: EfficientNet-Lite0 (weights shipped in a pip package), synthetic phantoms
unless --config.data.dir is given, a small trial budget.

    python launch.py --config=configs/quickstart.py --workdir=runs/quick
    python launch.py --config=configs/quickstart.py:quick ...   # tiny, for tests
"""

from bt_jax.config import base_config, parse_arg


def get_config(arg: str = ""):
    arg = parse_arg(arg, quick=False)
    c = base_config()
    c.name = "quickstart"
    c.pipeline = "search"
    c.model.name = "efficientnet_lite0"
    c.search.backbones = ("efficientnet_lite0",)
    c.search.trials = 20
    c.search.units = (32, 64, 128)
    c.search.batch_sizes = (16, 32)
    c.search.lr_max = 1e-3  # fine-tuning runs at lr/10; above ~1e-4 Adam wrecks Lite0's weights
    c.data.phantoms.n_per_class = 40
    c.finetune.epochs = 3
    # Whole-backbone steps of 16 images whatever head batch the search picks: Lite0's
    # fine-tune step at 224 px needs ~2.6 GiB of XLA temporaries at 32, ~1.3 GiB at 16.
    c.finetune.batch_size = 16
    if arg.quick:
        c.data.phantoms.n_per_class = 16
        c.data.phantoms.size = 128
        c.preprocess.size = 64
        c.split.k = 3
        c.search.trials = 3
        c.train.epochs = 3
        c.finetune.epochs = 1
        c.eval.bootstrap = 200
        c.eval.cv_repeats = 2
    return c
