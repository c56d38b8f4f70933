"""Evaluate a saved model on another labelled folder (e.g. another hospital's scans).

    python launch.py --config=configs/evaluate.py --config.checkpoint=runs/quick \
        --config.inputs=/data/other_site --workdir=runs/external1 \
        --config.external.positive_classes=glioma,meningioma,pituitary \
        --config.external.negative_classes=notumor

`inputs` has one sub-folder per class; each is mapped to tumour (the model's positive class)
or no tumour. With both lists empty the folders must be named like the model's classes.
A model with more than two classes is evaluated on its classes: sub-folders named like
them, or renamed with --config.external.class_map="'notumor:no_tumour','normal:no_tumour'"
(quotes around each item, as for any item holding ':'); with the two
lists it is evaluated as tumour / no tumour on its binary view (model.json must name its
negative_classes). A sub-folder that cannot be mapped stops the run before any prediction.
Writes the method A table with bootstrap CIs, ROC/PR/confusion plots, predictions.csv
(with exact duplicates of the training images flagged), report.md and report.html.
"""

from bt_jax.config import base_config, parse_arg


def get_config(arg: str = ""):
    arg = parse_arg(arg, quick=False)
    c = base_config()
    c.name = "evaluate"
    c.pipeline = "evaluate"
    if arg.quick:
        c.eval.bootstrap = 200
        c.predict.batch_size = 8
        c.external.explain_examples = 2
    return c
