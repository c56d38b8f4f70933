"""Using a trained model: load it, predict new scans, explain with Grad-CAM.

    from bt_jax import inference
    m = inference.load_model("runs/quick")                 # loading.py
    rows = inference.predict_files(m, inference.find_inputs("scans/"))   # scoring.py
    inference.write_csv(rows, "p.csv", fields=inference.csv_fields(m))   # + p_<class> if C > 2
    inference.write_overlays(m, images, items, "out/")     # overlays.py (gradcam.py inside)
"""

from bt_jax.data.scans import find_inputs  # noqa: F401
from bt_jax.inference.loading import LoadedModel, build_module, load_model, resolve_threshold  # noqa: F401
from bt_jax.inference.overlays import (overlay_name, probability_title,  # noqa: F401
                                       write_overlays, write_test_examples)
from bt_jax.inference.scoring import (CSV_FIELDS, NO_TUMOUR, TUMOUR, csv_fields,  # noqa: F401
                                      format_table, is_predicted, predict_array, predict_files,
                                      write_csv)
from bt_jax.model_card import ModelCardError  # noqa: F401
