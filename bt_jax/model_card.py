"""model.json: what a trained model needs to be rebuilt and used, written by training pipelines.

    write_model_card(W, config=config, ds=ds, backbone="efficientnet_lite0", digest=d,
                     head={"type": "gap_dense", "units": 256, "dropout": 0.3},
                     checkpoint_dir=W / "checkpoints" / "finetune")
    record_validation(W, names, labels, prob, target_sensitivity=0.95)   # threshold on val
    card = read_card(W)                          # checked: format, fields, backbone, head
    summary(card, W)          # backbone, classes, training size, CV estimate, calibration

The card stores the backbone, weights digest, head, the exact preprocessing, classes and
operating threshold, with paths relative to the workdir so a workdir can be moved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.config import training_threshold
from bt_jax.data import preprocess
from bt_jax.errors import UserError
from bt_jax.models import registry as mreg
from bt_jax.reporting import metrics, multiclass

MODEL_FORMAT = 1                      # model.json "format" this version reads
HEAD_TYPES = ("gap_dense", "flatten")  # model.json head.type this version can rebuild


class ModelCardError(UserError, ValueError):
    """model.json or its checkpoint cannot be used by this version; the message says why."""


def card_path(path) -> Path:
    p = Path(path)
    p = p / "model.json" if p.is_dir() else p
    if not io.exists(p):
        raise ModelCardError(f"no model.json at {p}: pass a finished workdir of the search "
                             "pipeline (it writes model.json) or the model.json itself")
    return p


def check_card(card: dict, where: str) -> None:
    fmt = card.get("format")
    if fmt != MODEL_FORMAT:
        raise ModelCardError(f"{where}: model format {fmt!r}, this bt_jax reads format "
                             f"{MODEL_FORMAT} (made by bt_jax {card.get('bt_jax', '?')}); "
                             "retrain or use the matching bt_jax version")
    for key in ("backbone", "head", "preprocess", "classes", "positive", "checkpoint"):
        if key not in card:
            raise ModelCardError(f"{where}: field {key!r} missing")
    if not mreg.is_known(card["backbone"]):
        raise ModelCardError(f"{where}: backbone {card['backbone']!r} unknown to this version "
                             f"(known: {', '.join(sorted(mreg.BACKBONES))})")
    if card["head"].get("type") not in HEAD_TYPES:
        raise ModelCardError(f"{where}: head type {card['head'].get('type')!r}, expected one of "
                             f"{HEAD_TYPES}")


def read_card(path) -> tuple[dict, Path]:
    """(model.json as a dict, its path); checked, or ModelCardError saying why not."""
    p = card_path(path)
    try:
        card = io.read_json(p)
    except json.JSONDecodeError as e:
        raise ModelCardError(f"{p}: not valid JSON ({e})") from None
    check_card(card, str(p))
    return card, p


def package_version() -> str:
    """bt_jax's installed version, or "source" when run from a plain checkout."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("bt_jax")
    except PackageNotFoundError:
        return "source"


def write_model_card(workdir, *, config, ds, backbone: str, digest: str, head: dict,
                     checkpoint_dir: Path) -> Path:
    """W/model.json: what predict/evaluate need to rebuild the model and its exact
    preprocessing. head: {"type": "gap_dense", units, dropout} or {"type": "flatten",
    hidden, dropout, num_classes}. Paths are relative, so a workdir can be moved."""
    workdir = Path(workdir)
    card = {"format": MODEL_FORMAT, "bt_jax": package_version(), "backbone": backbone,
            "weights_digest": digest, "dtype": config.model.dtype, "head": head,
            "preprocess": preprocess.PreprocessParams.record(config.preprocess), "classes": list(ds.classes),
            "positive": ds.positive, "threshold": training_threshold(config.threshold),
            **({"negative_classes": list(ds.negative_classes)} if ds.multiclass else {}),
            "checkpoint": str(Path(checkpoint_dir).relative_to(workdir) / "best"),
            "synthetic": bool(ds.synthetic), "training_hashes": "training_hashes.json",
            "near_duplicate_bits": int(config.data.near_duplicate_bits),
            "near_duplicate_min_corr": float(config.data.near_duplicate_min_corr)}
    # Content and perceptual hashes of every file the run saw: `evaluate` flags external
    # scans that are (near-)copies of training images, even without the manifest.
    io.write_json(workdir / "training_hashes.json",
                  [{**{k: r[k] for k in ("file", "sha256", "phash", "status", "split")},
                    "thumb": r.get("_thumb", "")} for r in ds.records], indent=None)
    io.write_json(workdir / "model.json", card)
    return workdir / "model.json"


def record_temperature(workdir, temperature: float, *, source: str) -> None:
    """model.json's probability temperature (predict divides logits by it)."""
    card_p = Path(workdir) / "model.json"
    card = io.read_json(card_p)
    card["temperature"] = float(temperature)
    card["temperature_info"] = {"source": source}
    io.write_json(card_p, card)


def record_validation(workdir, names, labels, prob, *, target_sensitivity: float = 0.0,
                      source: str = "fold 0 validation", classes=(), negative_classes=()) -> dict:
    """Stores validation probabilities beside model.json; with a target sensitivity also sets
    model.json's threshold to the one reaching it there. Returns the threshold entry.

    C > 2 classes: `prob` is (N, C) and `labels` class indices; the threshold belongs to the
    binary view (P(tumour) = 1 - P(negative_classes)) and needs negative_classes."""
    workdir = Path(workdir)
    prob = np.asarray(prob, np.float64)
    entry = {"source": source, "names": list(names), "labels": [int(x) for x in labels],
             "prob": np.round(prob, 8).tolist() if prob.ndim == 2 else [float(p) for p in prob]}
    if prob.ndim == 2:
        entry.update(classes=list(classes), negative_classes=list(negative_classes))
    io.write_json(workdir / "validation.json", entry, indent=None)
    card_p = workdir / "model.json"
    card = io.read_json(card_p)
    card["validation"] = "validation.json"
    if target_sensitivity:
        y, p = binary_validation(entry)
        op = metrics.threshold_for_sensitivity(y, p, float(target_sensitivity))
        card["threshold"] = op["threshold"]
        card["threshold_info"] = {"source": f"validation ({source}, n={len(labels)})", **op}
    io.write_json(card_p, card)
    return {"threshold": card["threshold"], **card.get("threshold_info", {"source": "default"})}


def binary_validation(entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tumour labels, P(tumour)) of a validation.json entry; a multi-class model's binary
    view when it names its no-tumour classes, else a clear error."""
    y, p = np.asarray(entry["labels"]), np.asarray(entry["prob"], np.float64)
    if p.ndim == 1:
        return y, p
    classes, neg = entry.get("classes", []), entry.get("negative_classes", [])
    if not neg:
        raise ModelCardError(f"a threshold for a target sensitivity needs a tumour vs no-tumour "
                             f"question, but this {len(classes)}-class model names no "
                             "data.negative_classes (retrain with them to get a binary view)")
    return multiclass.binary_labels(y, classes, neg), multiclass.binary_view(p, classes, neg)


def _estimate(entry: dict | None) -> dict | None:
    """{value, ci} of a metrics.json entry, or None."""
    return {"value": entry["value"], "ci": entry.get("ci")} if entry else None


def summary(card: dict, root) -> dict:
    """What a user of the model sees beside its answers (serve's page, export's model.json):
    backbone, classes, the data it learned from, the cross-validation estimate, the test
    split's calibration, threshold and temperature. Read from model.json and the files
    beside it (training_hashes.json, metrics.json); a part whose file is missing is None."""
    root = Path(root)
    n_train = n_test = None
    hashes = root / card.get("training_hashes", "training_hashes.json")
    if io.exists(hashes):
        rows = io.read_json(hashes)
        used = [r for r in (rows["files"] if isinstance(rows, dict) else rows)
                if r.get("status") == "used"]
        n_test = sum(r.get("split") == "test" for r in used)
        n_train = len(used) - n_test
    cv = test = None
    if io.exists(root / "metrics.json"):
        m = io.read_json(root / "metrics.json")
        est = (m.get("cv") or {}).get("head")
        if est:
            cv = {"repeats": m["cv"].get("repeats"), "k": m["cv"].get("k"),
                  "n_images": m["cv"].get("n_images"), "accuracy": _estimate(est.get("accuracy")),
                  "roc_auc": _estimate(est.get("roc_auc"))}
        final = m.get("final") or {}
        if final:
            cal = final.get("calibration") or {}
            test = {"n": final.get("n"), "accuracy": _estimate(final.get("accuracy")),
                    "ece": _estimate(cal.get("ece")), "brier": _estimate(cal.get("brier"))}
    return {"backbone": card["backbone"], "classes": list(card["classes"]),
            "positive": card.get("positive", ""),
            "negative_classes": list(card.get("negative_classes") or []),
            "synthetic_training_data": bool(card.get("synthetic", False)),
            "weights_digest": card.get("weights_digest", ""),
            "n_training_scans": n_train, "n_test_scans": n_test, "cv": cv, "test": test,
            "threshold": float(card.get("threshold", 0.5)),
            "threshold_info": card.get("threshold_info") or {"source": "default"},
            "temperature": float(card.get("temperature", 1.0)),
            "temperature_info": card.get("temperature_info") or {"source": "none (T = 1)"}}
