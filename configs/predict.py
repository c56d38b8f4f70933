"""Predict with a trained model on new scans (images or DICOM), optionally with Grad-CAM.

    python launch.py --config=configs/predict.py --config.checkpoint=runs/quick \
        --config.inputs='scans/*.dcm' --workdir=runs/predict1 [--config.explain=True]
    # --config.threshold.target_sensitivity=0.95 picks the threshold on the model's stored
    # validation probabilities; --config.threshold.value=0.3 sets it outright.

Writes workdir/predictions.csv (file, p_tumour, decision, threshold, model_id, status, note)
and, with explain, workdir/gradcam/<file>.png. The preprocessing comes from the model.
A model with more than two classes adds p_<class> for each class and predicted_class;
p_tumour and decision ("tumour" / "no_tumour") are its binary view when its model.json
names negative_classes, empty otherwise. --config.predict.gradcam_class=glioma shows the
evidence for that class (default: each scan's predicted class).
"""

from bt_jax.config import base_config, parse_arg


def get_config(arg: str = ""):
    arg = parse_arg(arg, quick=False)
    c = base_config()
    c.name = "predict"
    c.pipeline = "predict"
    if arg.quick:
        c.predict.batch_size = 8
        c.gradcam.batch_size = 8
    return c
