"""Portable export: a trained model as one serialized `jax.export` program + its model.json.

    card = write_export(model, E, platforms=("cpu", "cuda"))   # E/model.jaxexport, E/model.json
    exp = export_model(model, ("cpu",))                         # jax.export.Exported, batch "N"
    probs = jax.export.deserialize(blob).call(x01)              # (N, C), rows sum to 1

The program takes preprocessed images (N, S, S, 3) float32 in [0, 1] (the preprocessing
recorded in model.json "preprocess") with a symbolic batch N, and returns class
probabilities (N, C) in the order of model.json "classes": C >= 2 also for a two-class
model (P(negative), P(positive) in class order), with the model's temperature applied.
The weights are constants inside it, so the file alone runs with jax: no bt_jax, flax or
checkpoint (docs/serving.md has a loader). The CPU fast paths that are chosen while
tracing (depthwise shifts, 1x1 convolutions as matmuls, Winograd 3x3) are left out when the export
also targets an accelerator, because one traced program serves every platform.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax import io
from bt_jax.data.preprocess import PREPROCESS_VERSION
from bt_jax.inference.loading import LoadedModel, _predict
from bt_jax.model_card import package_version, summary

log = logging.getLogger(__name__)
EXPORT_FORMAT = "bt_jax-export/1"     # the export's model.json "format"
PROGRAM, CARD = "model.jaxexport", "model.json"


def probabilities_fn(model: LoadedModel, module):
    """x01 (N, S, S, 3) -> class probabilities (N, C) in the order of model.classes: the
    model's own prediction (temperature included), a two-class model's P(positive) with
    1 - P(positive) beside it, computed by `module` (model.module or a clone of it)."""
    temperature = float(model.card.get("temperature", 1.0))
    pos = None if model.multiclass else model.classes.index(model.positive)

    def fn(x):
        p = _predict(module, temperature, model.variables, x)
        if pos is None:
            return p
        return jnp.stack([p if i == pos else 1.0 - p for i in range(2)], axis=-1)
    return fn


def export_model(model: LoadedModel, platforms=("cpu",), *, pointwise: str = "auto",
                 conv3x3: str = "auto"):
    """The jax.export.Exported of probabilities_fn for `platforms`, batch symbolic ("N").
    pointwise, conv3x3: how its 1x1 and 3x3 stride-1 convolutions are computed (the
    backbone's fields, common.Conv; conv3x3 only where the backbone has such layers)."""
    s = model.preprocess.size
    spec = jax.ShapeDtypeStruct((*jax.export.symbolic_shape("N"), s, s, 3), jnp.float32)
    backbone = model.module.backbone
    impls = {"pointwise": pointwise, **({"conv3x3": conv3x3} if hasattr(backbone, "conv3x3") else {})}
    module = model.module.clone(backbone=backbone.clone(**impls))
    return jax.export.export(jax.jit(probabilities_fn(model, module)),
                             platforms=tuple(platforms))(spec)


def _lowered(model: LoadedModel, platforms: tuple[str, ...], pointwise: str, conv3x3: str):
    """export_model for `platforms`; a platform this jaxlib cannot lower for is dropped
    with a warning (CPU always stays)."""
    try:
        return export_model(model, platforms, pointwise=pointwise, conv3x3=conv3x3)
    except Exception as e:  # noqa: BLE001 - lowering errors have no common type
        if platforms == ("cpu",):
            raise
        log.warning("export for %s failed (%s: %s); exporting for CPU only", platforms,
                    type(e).__name__, str(e)[:200])
        return export_model(model, ("cpu",), pointwise=pointwise, conv3x3=conv3x3)


def export_card(model: LoadedModel, exported, blob: bytes) -> dict:
    """The export's model.json: what a loader needs (input, output, classes, threshold,
    preprocessing, temperature, digest) and where the model came from."""
    c = len(model.classes)
    applies = (f"P({model.positive})" if not model.multiclass else
               f"P(tumour) = 1 - P({' + '.join(model.negative_classes)})"
               if model.negative_classes else None)
    return {"format": EXPORT_FORMAT, "bt_jax": package_version(), "jax": jax.__version__,
            "program": PROGRAM, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "platforms": list(exported.platforms),
            "input": {"shape": ["N", model.preprocess.size, model.preprocess.size, 3],
                      "dtype": "float32", "range": [0.0, 1.0], "layout": "NHWC, RGB",
                      "preprocessed": "as model.json 'preprocess' says (crop, equalize, size)"},
            "output": {"shape": ["N", c], "dtype": "float32",
                       "meaning": "class probabilities in the order of 'classes'; rows sum to 1"},
            "classes": list(model.classes), "positive": model.card.get("positive", ""),
            "negative_classes": list(model.negative_classes),
            "threshold": model.threshold, "threshold_applies_to": applies,
            "threshold_info": model.threshold_info,
            "preprocess": dict(model.card["preprocess"]), "preprocess_version": PREPROCESS_VERSION,
            "temperature": float(model.card.get("temperature", 1.0)),
            "temperature_applied": True, "model_id": model.model_id, "source": str(model.root),
            "model_card": summary(model.card, model.root)}


def check_export(model: LoadedModel, blob: bytes, *, n: int = 2, atol: float = 1e-5) -> float:
    """Deserialises the program, runs it here on n random images and compares it with the
    model's own prediction (predict's); the largest difference, or ValueError above atol."""
    from bt_jax.inference.scoring import predict_array
    s = model.preprocess.size
    x = np.random.default_rng(0).random((n, s, s, 3), dtype=np.float32)
    got = np.asarray(jax.export.deserialize(bytearray(blob)).call(x))
    want = predict_array(model, x, batch_size=n)
    want = want if model.multiclass else np.stack(
        [want if c == model.positive else 1 - want for c in model.classes], axis=-1)
    if got.shape != want.shape:
        raise ValueError(f"exported program gives shape {got.shape}, expected {want.shape}")
    diff = float(np.abs(got - want).max())
    if diff > atol:
        raise ValueError(f"exported program differs from the model's prediction by {diff:.2g}")
    return diff


def write_export(model: LoadedModel, out_dir, platforms=("cpu", "cuda"), *,
                 pointwise: str = "auto", conv3x3: str = "auto") -> dict:
    """E/model.jaxexport (Exported.serialize()) and E/model.json; checked by running the
    program here (check_export). Returns the card."""
    out_dir = Path(out_dir)
    exported = _lowered(model, tuple(platforms), pointwise, conv3x3)
    blob = bytes(exported.serialize())
    diff = check_export(model, blob)
    card = export_card(model, exported, blob)
    card["check"] = {"max_abs_diff_vs_predict": diff, "on": jax.default_backend()}
    io.write_bytes(out_dir / PROGRAM, blob)
    io.write_json(out_dir / CARD, card)
    log.info("exported %s for %s: %s (%.1f MB), max difference to predict %.2g", model.model_id,
             exported.platforms, out_dir / PROGRAM, len(blob) / 2**20, diff)
    return card
