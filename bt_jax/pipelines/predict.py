"""Pipeline `predict`: a saved model on new scans -> predictions.csv (+ Grad-CAM PNGs).

    python launch.py --config=configs/predict.py --config.checkpoint=runs/quick \
        --config.inputs=scans/ --workdir=runs/predict1 --config.explain=True

1. load model.json + checkpoint (format and backbone checked; threshold from the model,
   the user, or the stored validation probabilities for a target sensitivity);
2. find the inputs; 3. read, preprocess as in training, predict in fixed batches;
4. Grad-CAM overlays (multi-class: of config.predict.gradcam_class, default each scan's
   predicted class); 5. CSV, terminal table, summary.json, report.html.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax import inference
from bt_jax.config import ConfigError
from bt_jax.inference import gradcam as explain
from bt_jax.inference.loading import gradcam_class_of, load_for
from bt_jax.inference.overlays import overlay_title
from bt_jax.data import scans, volumes
from bt_jax.reporting import html

log = logging.getLogger(__name__)


def make_overlay_writer(config, model, out_dir: Path, root: Path | None):
    """on_batch(rows, images) for predict_files: Grad-CAM PNGs of up to gradcam.max_images."""
    class_index = gradcam_class_of(config, model)
    fn = explain.make_gradcam_fn(model.module, config.gradcam.target, class_index)
    written = []

    def on_batch(rows, images):
        limit = config.gradcam.max_images
        n = len(rows) if not limit else max(0, min(len(rows), limit - len(written)))
        items = [{"file": r["file"], "note": r["note"][:90] if r["status"] == "flagged" else "",
                  "title": overlay_title(model, r, class_index)}
                 for r in rows[:n]]
        pngs = inference.write_overlays(model, images[:n], items, out_dir, root=root,
                                        alpha=config.gradcam.alpha,
                                        batch_size=config.gradcam.batch_size, fn=fn)
        for r, png in zip(rows, pngs):
            r["gradcam"] = str(png)
        written.extend(pngs)
    return on_batch, written


def run(config, workdir: Path):
    workdir = Path(workdir)
    model = load_for(config)
    if not config.inputs:
        raise ConfigError("config.inputs: give an image, a folder or a glob of scans")
    gradcam_class_of(config, model)  # a misspelt class name fails before any work
    files = volumes.expand_paths(scans.find_inputs(config.inputs), config.data.nifti_min_area)
    root = Path(config.inputs).expanduser().resolve()
    root = root if root.is_dir() else None
    log.info("model %s (%s), threshold %.4g (%s); %d input files", model.model_id,
             model.card["backbone"], model.threshold, model.threshold_info["source"], len(files))
    on_batch, written = (make_overlay_writer(config, model, workdir / "gradcam", root)
                         if config.explain else (None, []))
    rows = inference.predict_files(
        model, files, batch_size=config.predict.batch_size,
        dicom_frame=None if config.predict.dicom_frame < 0 else config.predict.dicom_frame,
        colour_policy=config.predict.colour, on_batch=on_batch)
    csv_path = inference.write_csv(rows, workdir / config.predict.output,
                                   fields=inference.csv_fields(model))
    print(inference.format_table(rows, max_rows=config.predict.table_rows, root=root))
    probs = np.array([r["p_tumour"] for r in rows if r["p_tumour"] != ""], float)
    summary = {"model_id": model.model_id, "model": str(model.root), "backbone": model.card["backbone"],
               "synthetic_training_data": bool(model.card.get("synthetic", False)),
               "threshold": model.threshold, "threshold_info": model.threshold_info,
               "n_files": len(rows), "n_predicted": int(len(probs)),
               "n_positive": int((probs >= model.threshold).sum()),
               "status_counts": {s: sum(r["status"] == s for r in rows)
                                 for s in ("ok", "flagged", "skipped", "error")},
               "problems": [{"file": r["file"], "status": r["status"], "note": r["note"]}
                            for r in rows if r["status"] != "ok"],
               "csv": str(csv_path), "gradcam": [str(p) for p in written]}
    if model.multiclass:  # the binary keys above count the binary view (0 without one)
        typed = [r["predicted_class"] for r in rows if inference.is_predicted(r)]
        summary.update({"n_predicted": len(typed), "classes": list(model.classes),
                        "negative_classes": list(model.negative_classes),
                        "predicted_class_counts": {c: typed.count(c) for c in model.classes},
                        "gradcam_class": config.predict.gradcam_class or "predicted"})
    io.write_json(workdir / "summary.json", summary)
    html.write_html_report(workdir, title=f"bt_jax predictions: {model.model_id}",
                           predictions=rows, summary=summary)
    print(f"predictions: {csv_path}" + (f"; Grad-CAM: {workdir / 'gradcam'}" if written else ""))
    return summary
