"""Method A as published (shared/reference/000_5c341c7db0d040ab.txt), without its leaks.

Brain crop + histogram equalisation + 224x224; frozen ImageNet backbones as feature
extractors; augment2a minority balancing of training images only; 150-trial Optuna TPE
search scored by mean stratified 5-fold validation accuracy; final head (10 epochs,
patience 3) then end-to-end fine-tune at lr/10; one evaluation on the 10% test split.

    python launch.py --config=configs/resnet_search.py \
        --config.data.dir=../shared/data/brain_mri --workdir=runs/method_a
    python launch.py --config=configs/resnet_search.py:resnet ...   # ResNet50V2 only

Backbones whose weight files are not found (see README "Weights") are left out of the
search with a warning; none found is an error before any work.
"""

from bt_jax.config import base_config, parse_arg

METHOD_A_BACKBONES = ("vgg16", "vgg19", "mobilenet", "densenet121", "efficientnetb0",
                      "xception", "inceptionv3", "resnet50v2")


def get_config(arg: str = ""):
    arg = parse_arg(arg, resnet=False)
    c = base_config()
    c.name = "method_a"
    c.pipeline = "search"
    c.data.dir = "../shared/data/brain_mri"
    c.preprocess.size = 224
    c.preprocess.equalize = "hist"
    c.split.test_fraction = 0.1
    c.split.k = 5
    c.augment.balance = "augment2a"
    c.model.name = "resnet50v2"
    c.search.backbones = ("resnet50v2",) if arg.resnet else METHOD_A_BACKBONES
    c.search.trials = 150
    c.train.epochs = 10
    c.train.patience = 3
    c.finetune.epochs = 10
    c.finetune.lr_factor = 0.1
    # the published rule: every layer at lr/10, constant, no decay, augmented copies only
    c.finetune.schedule = "constant"
    c.finetune.backbone_lr_factor = 1.0
    c.finetune.weight_decay = 0.0
    c.finetune.augment = False
    return c
