"""Method A on a real four-class folder of thousands of scans (glioma, meningioma, notumor,
pituitary: `../shared/data/brain_mri_types`), sized for a 2-core CPU.

    python launch.py --config=configs/types_search.py --workdir=runs/types \
        --config.data.dir=../shared/data/brain_mri_types        # or your own class folders
    python launch.py --config=configs/types_search.py:finetune ...   # + 8 epochs of Lite0
    python launch.py --config=configs/types_search.py:quick ...      # tiny, for tests (a folder)

Default: frozen-only (finetune.epochs=0). The backbone is the Lite0+Lite1+Lite2
concatenation with each branch's stage-6 map pooled beside its last (`+early`; one 260 px
input, rescaled inside each branch): repeated CV on this folder favours it over Lite0 and
the plain concatenation (figures and caveats: docs/results.md). The final
model is the frozen backbone with the searched head, scored by 5 x 5-fold repeated CV.
`:finetune` keeps Lite0 alone, whose epoch over thousands of scans a CPU can afford (the
concatenation's it cannot), and fine-tunes all of it for 8 epochs at a fifth of the head's
lr. The folder's classes are near balanced, so no augmented copies are made.
"""

from bt_jax.config import parse_arg
from configs import real_search

LITE = real_search.LITE
EARLY = real_search.CONCAT + "+early"   # the three, each with stage 6 pooled too


def get_config(arg: str = ""):
    c = real_search.get_config("")  # native sizes, recipes, the seeded head, grad accumulation
    arg = parse_arg(arg, quick=False, finetune=False)
    c.name = "types_search"
    c.data.dir = "../shared/data/brain_mri_types"   # as the repository sits beside shared/
    c.data.classes = ()            # the folder's sub-folders
    c.data.positive = ""
    c.data.negative_classes = ("notumor",)
    c.augment.balance = "none"
    c.search.backbones = (EARLY,)
    c.model.name = EARLY
    c.search.trials = 30
    c.finetune.epochs = 0
    if arg.finetune:
        c.search.backbones, c.model.name = (LITE[0],), LITE[0]
        c.preprocess.native_size = False
        # Thousands of scans move the backbone: at the default lr (head lr / 10, backbone a
        # further / 10) four epochs left fold-0 accuracy where the frozen head had it.
        c.finetune.epochs = 8
        c.finetune.lr_factor, c.finetune.backbone_lr_factor = 0.2, 1.0
        c.finetune.batch_size, c.train.grad_accum_steps = 16, 1
    if arg.quick:
        if not arg.finetune:
            c.model.name = "+".join(LITE[:2]) + "+early"
            c.search.backbones = (c.model.name,)
        c.split.k = 3
        c.search.trials = 3
        c.search.units = (16, 32)
        c.search.batch_sizes = (16,)
        c.train.epochs = 3
        c.finetune.epochs = min(c.finetune.epochs, 1)
        c.eval.bootstrap = 200
        c.eval.cv_repeats = 2
    return c
