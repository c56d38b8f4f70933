"""Evaluate a saved model on another labelled folder (e.g. another hospital's scans).

    python launch.py --config=configs/evaluate.py --config.checkpoint=runs/quick \
        --config.inputs=/data/other_site --workdir=runs/external1 \
        --config.external.positive_classes=glioma,meningioma,pituitary \
        --config.external.negative_classes=notumor

`inputs` has one sub-folder per class; each is mapped to tumour (the model's positive class)
or no tumour. With both lists empty the folders must be named like the model's classes.
Writes the method A table with bootstrap CIs, ROC/PR/confusion plots, predictions.csv
(with exact duplicates of the training images flagged), report.md and report.html.
"""

import ml_collections

from configs.predict import add_predict_keys
from bt_jax.config import base_config


def add_evaluate_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.external = ml_collections.ConfigDict()
    c.external.positive_classes = ()      # sub-folders that count as tumour
    c.external.negative_classes = ()      # sub-folders that count as no tumour
    c.external.ignore_classes = ()        # sub-folders left out on purpose
    c.external.explain_examples = 8       # Grad-CAM overlays in the report (0: none)
    return c


def get_config(arg: str = ""):
    c = add_evaluate_keys(add_predict_keys(base_config()))
    c.name = "evaluate"
    c.pipeline = "evaluate"
    if arg == "quick":
        c.eval.bootstrap = 200
        c.predict.batch_size = 8
        c.external.explain_examples = 2
    return c
