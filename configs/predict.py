"""Predict with a trained model on new scans (images or DICOM), optionally with Grad-CAM.

    python launch.py --config=configs/predict.py --config.checkpoint=runs/quick \
        --config.inputs='scans/*.dcm' --workdir=runs/predict1 [--config.explain=True]
    # --config.threshold.target_sensitivity=0.95 picks the threshold on the model's stored
    # validation probabilities; --config.threshold.value=0.3 sets it outright.

Writes workdir/predictions.csv (file, p_tumour, decision, threshold, model_id, status, note)
and, with explain, workdir/gradcam/<file>.png. The preprocessing comes from the model.
"""

import ml_collections

from bt_jax.config import base_config


def add_predict_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Keys of the predict/evaluate pipelines (to move into base_config)."""
    c.checkpoint = ""                     # a finished workdir (holding model.json) or model.json
    c.inputs = ""                         # an image/DICOM file, a folder, or a glob
    c.explain = False                     # write a Grad-CAM overlay PNG per image
    c.predict = ml_collections.ConfigDict()
    c.predict.batch_size = 32             # fixed compiled batch; the last batch is padded
    c.predict.dicom_frame = -1            # multi-frame DICOM: -1 refuses them, else frame index
    c.predict.colour = "flag"             # strongly coloured images: "flag" (predict + note) | "skip"
    c.predict.output = "predictions.csv"  # relative to the workdir
    c.predict.table_rows = 20             # rows printed to the terminal
    c.threshold = ml_collections.ConfigDict()
    c.threshold.value = -1.0              # >= 0: use this threshold; else the model's
    c.threshold.target_sensitivity = 0.0  # > 0: choose on stored validation probs for this
    c.gradcam = ml_collections.ConfigDict()
    c.gradcam.target = "features"         # last conv map, or "module:backbone/<layer>"
    c.gradcam.alpha = 0.4                 # heat-map opacity in the overlay
    c.gradcam.max_images = 0              # 0: every image; else only the first n
    c.gradcam.batch_size = 16
    return c


def get_config(arg: str = ""):
    c = add_predict_keys(base_config())
    c.name = "predict"
    c.pipeline = "predict"
    if arg == "quick":
        c.predict.batch_size = 8
        c.gradcam.batch_size = 8
    return c
