"""serve's web app: one loaded model behind a page and a JSON API (Flask; serve.py runs it).

    svc = Service.start(config)              # load once; compile prediction and Grad-CAM
    app = make_app(svc)                       # GET /, GET /api/model, POST /api/predict
    svc.predict_upload("scan.png", data)      # /api/predict's answer as a dict, or UploadError

An upload is read by predict's own code (inference.predict_files on a temporary copy:
JPEG/PNG/BMP/TIFF, DICOM, NIfTI volumes as their selected slices), flagged when it is a
copy of one of the model's training images by evaluate's rule (flag_training_copies), and
explained by a Grad-CAM overlay of the scan shown: the file itself, or the slice of a
volume with the highest P(tumour) (the first slice without a binary view), with every
slice's answer listed under "slices". Requests run in waitress's threads on the one
model: the compiled programs are shared and never recompiled (every batch has one shape).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import logging
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bt_jax import inference, model_card, sharding
from bt_jax.data import volumes
from bt_jax.errors import UserError
from bt_jax.inference import gradcam
from bt_jax.inference.loading import gradcam_class_of, load_for
from bt_jax.inference.overlays import overlay_title
from bt_jax.inference.training_copies import flag_training_copies, training_hashes

log = logging.getLogger(__name__)


class UploadError(UserError, ValueError):
    """An upload the API refuses (400): empty, too large, not a scan; the message says why."""


def safe_name(name: str) -> str:
    """A file name for the temporary copy: the upload's last path part with only letters,
    digits, '.', '-' and '_' (the suffix tells DICOM and NIfTI apart), at most 120 chars."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".") or "upload"
    return base[-120:]


def _copy_warning(row: dict) -> str:
    exact, near = row.get("training_duplicate_of", ""), row.get("training_near_duplicate_of", "")
    split = row.get("training_split") or "training data"
    if exact:
        return (f"byte-identical to {exact} ({split}), an image of the model's own run: its "
                "answer here says nothing about how the model does on new scans")
    if near:
        return (f"a near-copy of {near} ({split}), an image of the model's own run (the "
                "near-duplicate rule of its training): its answer may be optimistic")
    return ""


@dataclasses.dataclass
class Service:
    config: Any
    model: inference.LoadedModel
    gradcam_fn: Any               # jitted Grad-CAM, compiled for one image
    class_index: int | None       # whose evidence the overlay shows (None: predicted class)
    seen: list[dict]              # the training run's file hashes
    card: dict                    # GET /api/model

    @classmethod
    def start(cls, config) -> "Service":
        model = load_for(config)
        class_index = gradcam_class_of(config, model)
        # placed once: batched_apply's replicate of placed arrays is free for each request
        model.variables = sharding.replicate(model.variables, sharding.data_mesh())
        card = {**model_card.summary(model.card, model.root), "model_id": model.model_id,
                "threshold": model.threshold, "threshold_info": model.threshold_info,
                "has_binary_view": model.has_binary_view,
                "gradcam_class": config.predict.gradcam_class or "predicted"}
        svc = cls(config, model, gradcam.make_gradcam_fn(model.module, config.gradcam.target,
                                                         class_index),
                  class_index, training_hashes(model), card)
        svc.warm_up()
        return svc

    def warm_up(self) -> None:
        """Compiles the two programs requests use, before the first request."""
        s = self.model.preprocess.size
        x = np.zeros((1, s, s, 3), np.float32)
        inference.predict_array(self.model, x, batch_size=self.config.predict.batch_size)
        gradcam.gradcam(self.model.module, self.model.variables, x, batch_size=1,
                        fn=self.gradcam_fn)
        log.info("model %s compiled (prediction batch %d, Grad-CAM batch 1)",
                 self.model.model_id, self.config.predict.batch_size)

    def compiled(self) -> tuple[int, int]:
        """How many programs prediction and Grad-CAM hold (constant after warm_up)."""
        return self.model.predict_fn._cache_size(), self.gradcam_fn._cache_size()

    def answer(self, row: dict) -> dict:
        """One row of predict_files as the API gives it."""
        m = self.model
        out = {"file": row["file"], "status": row["status"], "note": row["note"]}
        if not inference.is_predicted(row):
            return out
        if m.multiclass:
            out["predicted_class"] = row["predicted_class"]
            out["probabilities"] = {c: row[f"p_{c}"] for c in m.classes}
        else:  # a binary model's class is its decision at the threshold
            p = row["p_tumour"]
            out["predicted_class"] = row["decision"]
            out["probabilities"] = {c: p if c == m.positive else round(1.0 - p, 6)
                                    for c in m.classes}
        if m.has_binary_view:
            out.update(p_tumour=row["p_tumour"], decision=row["decision"], threshold=m.threshold)
        out.update({k: row.get(k, "") for k in ("training_duplicate_of",
                                                 "training_near_duplicate_of", "training_split")})
        out["near_duplicate_warning"] = _copy_warning(row)
        return out

    def predict_upload(self, name: str, data: bytes) -> dict:
        """/api/predict's answer for one uploaded file (see the module docstring)."""
        name = Path(name or "upload").name or "upload"
        if not data:
            raise UploadError(f"{name}: empty upload")
        with tempfile.TemporaryDirectory(prefix="bt_jax_serve_") as tmp:
            path = Path(tmp) / safe_name(name)
            path.write_bytes(data)
            rows, shown = self._predict(path, name, hashlib.sha256(data).hexdigest())
            if not shown:
                bad = rows[0]
                raise UploadError(f"{name}: {bad['note'] or bad['status']}")
            out = {**self.answer(shown["row"]), "model_id": self.model.model_id,
                   "gradcam_class": self.card["gradcam_class"],
                   "overlay": self._overlay(shown, Path(tmp))}
        if volumes.is_volume(path):
            out["slices"] = [self.answer(r) for r in rows]
        return out

    def _predict(self, path: Path, name: str, sha: str) -> tuple[list[dict], dict]:
        """predict's rows of one file (a volume: of its slices), named after the upload and
        flagged as training copies; and the row and image shown ({} if none predicted)."""
        c = self.config
        files = volumes.expand_paths([path], c.data.nifti_min_area)
        shown: dict = {}
        rows = inference.predict_files(
            self.model, files, batch_size=c.predict.batch_size,
            dicom_frame=None if c.predict.dicom_frame < 0 else c.predict.dicom_frame,
            colour_policy=c.predict.colour, on_batch=functools.partial(_keep_shown, shown),
            workers=1, progress=False)
        shas = []
        for r, f in zip(rows, files):
            z = volumes.split_slice(f)[1]
            r["file"] = name if z is None else f"{name}#z={z}"
            shas.append(sha if z is None else hashlib.sha256(f"{sha}#z={z}".encode()).hexdigest())
        card = self.model.card
        flag_training_copies(rows, [SimpleNamespace(sha256=s) for s in shas], self.seen,
                             int(card.get("near_duplicate_bits", c.data.near_duplicate_bits)),
                             float(card.get("near_duplicate_min_corr",
                                            c.data.near_duplicate_min_corr)))
        return rows, shown

    def _overlay(self, shown: dict, tmp: Path) -> str:
        """The Grad-CAM overlay PNG of the shown scan, as a data: URL."""
        m, row = self.model, shown["row"]
        cams, _ = gradcam.gradcam(m.module, m.variables, shown["image"][None], batch_size=1,
                                  fn=self.gradcam_fn)
        note = row["note"][:90] if row["status"] == "flagged" else None
        png = gradcam.save_overlay(shown["image"], cams[0], tmp / "overlay.png",
                                   title=overlay_title(m, row, self.class_index),
                                   alpha=self.config.gradcam.alpha, note=note)
        return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _keep_shown(shown: dict, rows: list[dict], images: np.ndarray) -> None:
    """predict_files' on_batch: keeps the row (and image) with the highest P(tumour) so far;
    without a binary view, the first."""
    for r, img in zip(rows, images):
        score = float(r["p_tumour"]) if r["p_tumour"] != "" else -1.0
        if not shown or score > shown["score"]:
            shown.update(row=r, image=np.array(img), score=score)


def make_app(svc: Service):
    """The Flask app: GET / (webpage.PAGE), GET /api/model, POST /api/predict (multipart
    field `file`): 200 with the answer, 400 {"error": ...} for a refused upload."""
    import flask

    from bt_jax.serving import webpage
    app = flask.Flask("bt_jax.serve")
    mb = float(svc.config.serve.max_upload_mb)
    limit = int(mb * 2**20)
    app.config["MAX_CONTENT_LENGTH"] = limit + 2**16   # the file plus its multipart envelope
    app.json.sort_keys = False                         # classes in the model's order

    def refuse(message: str, status: int = 400):
        return flask.jsonify({"error": message}), status

    @app.get("/")
    def page():
        return flask.Response(webpage.PAGE, mimetype="text/html")

    @app.get("/api/model")
    def model():
        return flask.jsonify(svc.card)

    @app.post("/api/predict")
    def predict():
        files = flask.request.files.getlist("file")
        if len(files) != 1:
            return refuse("send one scan as the multipart/form-data field 'file' "
                          f"(got {len(files)} such fields)")
        data = files[0].read(limit + 1)
        if len(data) > limit:
            return refuse(f"{files[0].filename}: larger than serve.max_upload_mb ({mb:g} MB)")
        try:
            return flask.jsonify(svc.predict_upload(files[0].filename, data))
        except UploadError as e:
            return refuse(str(e))

    @app.errorhandler(413)
    def too_large(_):
        return refuse(f"upload larger than serve.max_upload_mb ({mb:g} MB)")

    @app.errorhandler(500)
    def failed(e):
        cause = getattr(e, "original_exception", None) or e
        return refuse(f"internal error: {type(cause).__name__}: {cause}", 500)
    return app
