"""Method A over the three backbones with real ImageNet weights offline (EfficientNet-Lite0,
Lite1, Lite2, from their pip packages), each at its native resolution (224, 240, 260 px).

    python launch.py --config=configs/real_search.py \
        --config.data.dir=../shared/data/brain_mri --workdir=runs/real
    python launch.py --config=configs/real_search.py:quick ...   # tiny, for tests

The search chooses the backbone with the head, among the three and two feature recipes
(models/composite.py): the three concatenated, and the three concatenated with an earlier
stage pooled too (each branch gets the 260 px input rescaled to its own native size).
The data set is prepared once per size (the same images, splits and augmented copies at
each), and the final model, its fine-tuning and model.json use the chosen backbone's size.
"""

from bt_jax.config import base_config, parse_arg

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
CONCAT = "+".join(LITE)


def get_config(arg: str = ""):
    arg = parse_arg(arg, quick=False)
    c = base_config()
    c.name = "real_search"
    c.pipeline = "search"
    c.model.name = LITE[0]
    c.search.backbones = LITE + (CONCAT, CONCAT + "+early")
    c.preprocess.native_size = True
    c.search.trials = 60
    # The head each backbone is tried at first (search.seed_backbones); the ablation's
    # (README "What the feature options buy").
    c.train.units, c.train.dropout, c.train.lr, c.train.batch_size = 128, 0.3, 3e-4, 32
    c.search.lr_max = 1e-3  # fine-tuning runs at lr/10; above ~1e-4 Adam wrecks Lite weights
    # Two epochs: fine-tuning the three-backbone concatenation takes ~7.5 min an epoch on
    # 2 CPU cores, and the whole run must fit in 30 minutes there.
    c.finetune.epochs = 2
    # The fine-tune step of the three-backbone concatenation at 260 px held 16 GiB at batch
    # 32: four micro-batches of 8 make the same update (BatchNorm stays in inference mode)
    # with a quarter of the activations: peak 5.6 GiB (docs/results.md).
    c.finetune.batch_size, c.train.grad_accum_steps = 32, 4
    if arg.quick:
        c.search.backbones = LITE[:2]
        c.data.phantoms.n_per_class = 12
        c.data.phantoms.size = 128
        c.split.k = 3
        c.search.trials = 3
        c.search.units = (16, 32)
        c.search.batch_sizes = (16,)
        c.train.epochs = 3
        c.finetune.epochs = 1
        c.eval.bootstrap = 200
        c.eval.cv_repeats = 2
        c.eval.ensemble_k = 2
    return c
