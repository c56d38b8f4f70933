"""Pipeline `evaluate`: a saved model on another labelled folder (generalisation check).

    python launch.py --config=configs/evaluate.py --config.checkpoint=runs/quick \
        --config.inputs=/data/other_site --workdir=runs/external1 \
        --config.external.positive_classes=glioma,meningioma,pituitary \
        --config.external.negative_classes=notumor

1. load the model (its preprocessing and threshold); 2. map the folder's class sub-folders
to tumour / no tumour; 3. predict every file (unreadable ones listed, not fatal);
4. flag exact duplicates of the model's training data (sha256 against its manifest): they
inflate the result, so the metrics are also given without them; 5. the method A table with
bootstrap CIs and plots, predictions.csv, metrics.json, report.md, report.html.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax import inference
from bt_jax.data import discover, manifest, preprocess, scans
from bt_jax.reporting import evaluation, html, report
from bt_jax.pipelines.predict import load_for

log = logging.getLogger(__name__)
EXTRA_FIELDS = ("class", "label", "training_duplicate_of", "training_near_duplicate_of",
                "training_split")


def class_mapping(root: Path, model: inference.LoadedModel, positive, negative, ignore) -> dict:
    """{sub-folder: 1 (tumour) | 0}; every sub-folder must be mapped or ignored."""
    root = Path(root)
    if not root.is_dir():
        raise discover.DataLayoutError(f"config.inputs: {root} is not a folder of class "
                                       "sub-folders")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    positive, negative, ignore = tuple(positive), tuple(negative), tuple(ignore)
    if not positive and not negative:
        positive, negative = (model.positive,), (model.negative,)
    both = set(positive) & set(negative)
    if both:
        raise ValueError(f"config.external: {sorted(both)} listed as both tumour and no tumour")
    mapping = {**{c: 1 for c in positive}, **{c: 0 for c in negative}}
    missing = [c for c in mapping if c not in present]
    unmapped = [c for c in present if c not in mapping and c not in ignore]
    if missing or unmapped:
        raise discover.DataLayoutError(
            f"{root}: sub-folders {present}; " + (f"mapped but absent: {missing}; " if missing else "")
            + (f"not mapped: {unmapped} (add them to config.external.positive_classes, "
               "negative_classes or ignore_classes)" if unmapped else ""))
    if set(mapping.values()) != {0, 1}:
        log.warning("%s: only one class mapped (%s): AUC and half the table are undefined",
                    root, mapping)
    return mapping


def training_hashes(model: inference.LoadedModel) -> list[dict]:
    """{file, sha256, phash, status, split} of every file the model's run saw: stored with
    the model (training_hashes.json), else its run's manifest."""
    for p in (model.root / model.card.get("training_hashes", "training_hashes.json"),
              model.root / "manifest.json"):
        if io.exists(p):
            doc = io.read_json(p)
            return doc["files"] if isinstance(doc, dict) else doc
    log.warning("no training hashes beside %s: copies of training images not checked", model.root)
    return []


def flag_training_copies(rows: list[dict], files, seen: list[dict], near_bits: int) -> None:
    """Marks rows whose file is byte-identical to a training file (sha256), or a near-copy
    (perceptual hash within near_bits, e.g. re-encoded or resized): both inflate results."""
    by_sha = {t["sha256"]: t for t in seen}
    ref = [t for t in seen if t.get("phash")]
    with_hash = [i for i, r in enumerate(rows) if r.get("phash")]
    idx, dist = manifest.nearest_hash([rows[i]["phash"] for i in with_hash],
                                      [t["phash"] for t in ref])
    near = {i: ref[j] for i, j, d in zip(with_hash, idx, dist) if d <= near_bits}
    for i, (r, f) in enumerate(zip(rows, files)):
        exact, close = by_sha.get(f.sha256), near.get(i)
        t = exact or close
        r.update({"training_duplicate_of": exact["file"] if exact else "",
                  "training_near_duplicate_of": close["file"] if close and not exact else "",
                  "training_split": (t.get("split") or t.get("status", "")) if t else ""})


def run(config, workdir: Path):
    workdir = Path(workdir)
    model = load_for(config)
    root = Path(config.inputs).expanduser().resolve()
    mapping = class_mapping(root, model, config.external.positive_classes,
                            config.external.negative_classes, config.external.ignore_classes)
    files = discover.discover(root, tuple(mapping), tuple(config.data.extensions) + (".dcm",))
    log.info("model %s on %d files of %s (%s)", model.model_id, len(files), root, mapping)
    rows = inference.predict_files(
        model, [f.path for f in files], batch_size=config.predict.batch_size,
        dicom_frame=None if config.predict.dicom_frame < 0 else config.predict.dicom_frame,
        colour_policy=config.predict.colour)
    flag_training_copies(rows, files, training_hashes(model),
                         int(model.card.get("near_duplicate_bits", config.data.near_duplicate_bits)))
    for r, f in zip(rows, files):
        r.update({"file": f.rel, "class": f.cls, "label": mapping[f.cls]})
    inference.write_csv(rows, workdir / "predictions.csv", extra_fields=EXTRA_FIELDS)
    ok = [r for r in rows if r["p_tumour"] != ""]
    if not ok:
        raise ValueError(f"no file of {root} could be predicted; see {workdir / 'predictions.csv'}")
    cfg = config.copy_and_resolve_references()
    cfg.eval.threshold = model.threshold
    synthetic = bool(model.card.get("synthetic", False))
    names = (model.negative, model.positive)
    y = np.array([r["label"] for r in ok])
    p = np.array([r["p_tumour"] for r in ok], float)
    section, rep = evaluation.evaluate_split(
        y, p, out_dir=workdir / "eval" / "external", title=f"External data {root.name}",
        class_names=names, config=cfg, synthetic=synthetic)
    sections = [("Data", _data_text(root, mapping, rows, model), []), section]
    results = {"all": rep}
    dups = [r for r in ok if _is_copy(r)]
    if dups:
        keep = np.array([not _is_copy(r) for r in ok])
        if keep.any():
            s2, r2 = evaluation.evaluate_split(
                y[keep], p[keep], out_dir=workdir / "eval" / "external_no_duplicates",
                title=f"External data {root.name} without training duplicates",
                class_names=names, config=cfg, synthetic=synthetic)
            sections.append(s2)
            results["without_training_duplicates"] = r2
    metrics = {"model_id": model.model_id, "backbone": model.card["backbone"], "data": str(root),
               "class_mapping": mapping, "threshold": model.threshold,
               "threshold_info": model.threshold_info, "n_files": len(rows), "n_predicted": len(ok),
               "n_training_duplicates": sum(bool(r["training_duplicate_of"]) for r in ok),
               "n_training_near_duplicates": sum(bool(r["training_near_duplicate_of"]) for r in ok),
               "results": results}
    report.write_metrics_json(workdir / "metrics.json", metrics)
    report.write_markdown_report(workdir / "report.md", title=f"bt_jax external evaluation: "
                                 f"{model.model_id} on {root.name}", sections=sections)
    if config.external.explain_examples:
        _examples(config, workdir, model, ok)
    html.write_html_report(workdir)
    acc = rep["accuracy"]
    print(f"external accuracy {acc['value']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] on "
          f"{len(ok)} images ({len(dups)} exact or near copies of training images flagged); "
          f"report: {workdir / 'report.html'}")
    return metrics


def _examples(config, workdir, model, ok):
    """Grad-CAM of a few external scans: the most confident errors first, then the rest."""
    wrong = [r for r in ok if (r["p_tumour"] >= model.threshold) != bool(r["label"])]
    right = [r for r in ok if r not in wrong]
    pick = (sorted(wrong, key=lambda r: -abs(r["p_tumour"] - model.threshold)) + right)
    pick = pick[:config.external.explain_examples]
    root = Path(config.inputs).expanduser().resolve()
    imgs = [preprocess.preprocess_image(scans.read_scan(root / r["file"])[0],
                                        model.preprocess)[0] for r in pick]
    items = [{"file": r["file"], "title": f"{r['file']} (true: {r['class']})\n"
                                          f"P({model.positive}) = {r['p_tumour']:.3f} -> {r['decision']}"}
             for r in pick]
    inference.write_overlays(model, np.stack(imgs), items, workdir / "gradcam", root=Path("."),
                             target=config.gradcam.target, alpha=config.gradcam.alpha,
                             batch_size=len(imgs))


def _is_copy(row) -> bool:
    return bool(row["training_duplicate_of"] or row["training_near_duplicate_of"])


def _data_text(root, mapping, rows, model) -> str:
    counts = {c: sum(r["class"] == c for r in rows) for c in mapping}
    bad = [r for r in rows if r["status"] in ("error", "skipped")]
    flagged = [r for r in rows if r["status"] == "flagged"]
    dups = [r for r in rows if r["training_duplicate_of"]]
    near = [r for r in rows if r["training_near_duplicate_of"]]
    lines = [f"{len(rows)} files in `{root}`; folders mapped to {model.positive} (1) / "
             f"{model.negative} (0): " + ", ".join(f"{c} -> {mapping[c]} ({counts[c]} files)"
                                                   for c in mapping) + ".",
             f"Model `{model.model_id}` ({model.card['backbone']}), threshold "
             f"{model.threshold:.4g} ({model.threshold_info['source']}); preprocessing as "
             "stored with the model."]
    if dups:
        lines.append(f"\n> **{len(dups)} file(s) are exact duplicates of images the model's run "
                     "used** (same sha256 as a training-manifest file); they inflate the result, "
                     "so the metrics are also given without them. See `training_duplicate_of` "
                     "in predictions.csv.")
    if near:
        lines.append(f"\n> **{len(near)} file(s) are near-copies of training images** (perceptual "
                     "hash within the training run's near-duplicate distance: re-encoded, resized "
                     "or re-windowed copies); they are left out of the metrics without training "
                     "copies too. See `training_near_duplicate_of` in predictions.csv.")
    if bad:
        lines.append(f"\n{len(bad)} file(s) not predicted: " + "; ".join(
            f"`{r['file']}`: {r['note']}" for r in bad[:20]) + ".")
    if flagged:
        lines.append(f"\n{len(flagged)} file(s) predicted but flagged: " + "; ".join(
            f"`{r['file']}`: {r['note']}" for r in flagged[:20]) + ".")
    return "\n".join(lines)
