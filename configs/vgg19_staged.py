"""Method B (shared/reference/002_fb26eab827b1e7de.txt), split before augmenting.

VGG19 at 240x240 with a Flatten-1024-Dropout(0.3)-256-2 softmax head; 80/10/10 split of
unique images; only the training split is augmented (rotation 10, flips, brightness,
10% shifts, 10% shear) with 6x tumour / 13x no-tumour multipliers; stages head ->
block5 conv3+4 -> block5 -> blocks 4+5 -> all, early stopping (patience 4),
ReduceLROnPlateau on val accuracy (0.5, patience 3), a checkpoint per stage.

    python launch.py --config=configs/vgg19_staged.py --workdir=runs/method_b \
        --config.weights.path=/path/to/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
    python launch.py --config=configs/vgg19_staged.py:resnet50v2 ...   # same stages idea
    python launch.py --config=configs/vgg19_staged.py:quick ...        # tiny, for tests
"""

from bt_jax.config import base_config, parse_arg

RESNET50V2_STAGES = (
    "baseline:none:10:3e-4",
    "stage1:conv5_block3:15:1e-4",
    "stage2:conv5+post:15:5e-5",
    "stage3:conv4+conv5+post:15:2e-5",
    "final:all:20:1e-5",
)


def get_config(arg: str = ""):
    arg = parse_arg(arg, quick=False, resnet50v2=False)
    c = base_config()
    c.name = "method_b"
    c.pipeline = "staged"
    c.data.dir = "../shared/data/brain_mri"
    c.model.name = "vgg19"
    c.preprocess.size = 240
    c.split.test_fraction = 0.1
    c.split.val_fraction = 0.1
    c.augment.balance = "multipliers"
    c.augment.multipliers = {"yes": 6, "no": 13}
    c.augment.rotation = 10.0
    c.augment.shift = 0.1
    c.augment.shear = 0.1
    c.augment.zoom = 0.0
    c.augment.hflip = True
    c.augment.vflip = True
    c.augment.brightness = 0.1
    if arg.resnet50v2:
        c.model.name = "resnet50v2"
        c.preprocess.size = 224
        c.staged.stages = RESNET50V2_STAGES
    if arg.quick:
        c.data.dir = ""
        c.data.phantoms.n_per_class = 16
        c.data.phantoms.size = 96
        c.preprocess.size = 32
        c.split.k = 3
        c.augment.multipliers = {"yes": 2, "no": 2}
        c.weights.random_init = True
        c.staged.head_hidden = (32, 16)
        c.staged.batch_size = 16
        c.staged.stages = ("baseline:none:1:3e-4", "stage1:block5_conv3+block5_conv4:1:1e-4",
                           "final:all:1:1e-5")
        c.eval.bootstrap = 100
    return c
