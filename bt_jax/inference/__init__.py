"""Using a trained model: load it, predict new scans, explain with Grad-CAM.

    from bt_jax import inference
    m = inference.load_model("runs/quick")                 # loading.py
    rows = inference.predict_files(m, inference.find_inputs("scans/"))   # scoring.py
    inference.write_overlays(m, images, items, "out/")     # overlays.py (gradcam.py inside)
"""

from bt_jax.data.scans import find_inputs  # noqa: F401
from bt_jax.inference.loading import LoadedModel, build_module, load_model, resolve_threshold  # noqa: F401
from bt_jax.inference.overlays import overlay_name, write_overlays, write_test_examples  # noqa: F401
from bt_jax.inference.scoring import (CSV_FIELDS, format_table, predict_array,  # noqa: F401
                                      predict_files, write_csv)
from bt_jax.model_card import ModelCardError  # noqa: F401
