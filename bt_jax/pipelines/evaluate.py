"""Pipeline `evaluate`: a saved model on another labelled folder (generalisation check).

    python launch.py --config=configs/evaluate.py --config.checkpoint=runs/quick \
        --config.inputs=/data/other_site --workdir=runs/external1 \
        --config.external.positive_classes=glioma,meningioma,pituitary \
        --config.external.negative_classes=notumor

1. load the model (its preprocessing and threshold); 2. map the folder's class sub-folders
(`folder_labels`, every one checked before any prediction): to tumour / no tumour
(external.positive_classes / negative_classes; for a multi-class model this evaluates its
binary view P(tumour) = 1 - P(negative classes)), or, for a multi-class model, onto its
classes (sub-folders named like them, or renamed by external.class_map items
"folder:class"); 3. predict every file (unreadable ones listed, not fatal);
4. flag exact duplicates of the model's training data (sha256 against its manifest): they
inflate the result, so the metrics are also given without them; 5. the method A table (or
the per-class table) with bootstrap CIs and plots, predictions.csv, metrics.json,
report.md, report.html.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bt_jax import inference
from bt_jax.config import ConfigError, class_map
from bt_jax.data import discover, preprocess, scans, volumes
from bt_jax.reporting import evaluation, html, report
from bt_jax.inference.loading import gradcam_class_of, load_for
from bt_jax.inference.training_copies import flag_training_copies, training_hashes

log = logging.getLogger(__name__)
EXTRA_FIELDS = ("class", "label", "training_duplicate_of", "training_near_duplicate_of",
                "training_split")


BINARY, CLASSES = "binary", "classes"  # what an evaluation scores


def _sub_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise discover.DataLayoutError(f"config.inputs: {root} is not a folder of class "
                                       "sub-folders")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_labels(root: Path, model: inference.LoadedModel, external) -> tuple[str, dict]:
    """(kind, {sub-folder: label}) for an evaluation of `model` on `root`, checked before any
    prediction. kind BINARY: labels 1 (tumour) / 0, scored on P(positive) or a multi-class
    model's binary view; kind CLASSES: indices into model.classes (multi-class models).
    Tumour / no tumour lists choose BINARY; otherwise a multi-class model gets CLASSES
    (folders named like its classes, or renamed by external.class_map) and a binary model
    BINARY (folders named like its classes, or mapped onto them by external.class_map)."""
    root = Path(root)
    pos, neg = tuple(external.positive_classes), tuple(external.negative_classes)
    cmap = class_map(external.class_map, pos + neg)  # {folder: class}; not with pos / neg
    if pos or neg:
        if model.multiclass and not model.negative_classes:
            raise ConfigError(
                f"config.external.positive_classes / negative_classes ask for a tumour / no "
                f"tumour evaluation, but model {model.root / 'model.json'} ({len(model.classes)} "
                f"classes {list(model.classes)}) names no negative_classes, so it has no P(tumour); "
                "evaluate its classes with config.external.class_map instead")
        return BINARY, class_mapping(root, model, pos, neg, external.ignore_classes)
    if not model.multiclass and not cmap:
        return BINARY, class_mapping(root, model, pos, neg, external.ignore_classes)
    present, ignore = _sub_folders(root), tuple(external.ignore_classes)
    target = {f: cmap.get(f, f) for f in present if f not in ignore}
    absent = [f for f in cmap if f not in present]
    bad_cls = sorted({c for c in cmap.values() if c not in model.classes})
    unmapped = [f for f, c in target.items() if c not in model.classes and f not in cmap]
    if absent or bad_cls or unmapped or not target:
        binary_hint = ("or, for a tumour / no tumour evaluation of its binary view, "
                       "config.external.positive_classes and negative_classes"
                       if model.multiclass and model.negative_classes else
                       "(a tumour / no tumour evaluation needs a model with negative_classes)"
                       if model.multiclass else "or config.external.positive_classes and "
                       "negative_classes")
        raise discover.DataLayoutError(
            f"{root}: sub-folders {present} cannot be mapped onto the classes "
            f"{list(model.classes)} of model {model.root / 'model.json'}: "
            + "; ".join(x for x in (
                f"not a model class: {unmapped}" if unmapped else "",
                f"config.external.class_map names absent folders {absent}" if absent else "",
                f"config.external.class_map names unknown classes {bad_cls}" if bad_cls else "",
                "nothing left to evaluate" if not target else "") if x)
            + f". Map them with config.external.class_map='folder:class,...', {binary_hint}, "
            "or leave folders out with config.external.ignore_classes")
    if not model.multiclass:
        mapping = {f: model.class_label(c) for f, c in target.items()}
        if set(mapping.values()) != {0, 1}:
            log.warning("%s: only one class mapped (%s): AUC and half the table are undefined",
                        root, mapping)
        return BINARY, mapping
    missing = [c for c in model.classes if c not in target.values()]
    if missing:
        log.warning("%s: no folder for class(es) %s of the model: their recall and AUC are "
                    "undefined", root, missing)
    return CLASSES, {f: model.class_label(c) for f, c in target.items()}


def class_mapping(root: Path, model: inference.LoadedModel, positive, negative, ignore) -> dict:
    """{sub-folder: 1 (tumour) | 0}; every sub-folder must be mapped or ignored."""
    root = Path(root)
    present = _sub_folders(root)
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
            f"{root}: sub-folders {present} (model classes {list(model.classes)}); "
            + (f"mapped but absent: {missing}; " if missing else "")
            + (f"not mapped: {unmapped} (add them to config.external.positive_classes, "
               "negative_classes or ignore_classes)" if unmapped else ""))
    if set(mapping.values()) != {0, 1}:
        log.warning("%s: only one class mapped (%s): AUC and half the table are undefined",
                    root, mapping)
    return mapping


def run(config, workdir: Path):
    workdir = Path(workdir)
    model = load_for(config)
    root = Path(config.inputs).expanduser().resolve()
    kind, mapping = folder_labels(root, model, config.external)
    class_index = gradcam_class_of(config, model)  # a misspelt class fails before any work
    files = discover.discover(root, tuple(mapping), tuple(config.data.extensions) + (".dcm",))
    files = volumes.expand(files, workdir / "cache", config.data.nifti_min_area)  # NIfTI slices
    log.info("model %s on %d files of %s (%s: %s)", model.model_id, len(files), root, kind,
             mapping)
    rows = inference.predict_files(
        model, [f.path for f in files], batch_size=config.predict.batch_size,
        dicom_frame=None if config.predict.dicom_frame < 0 else config.predict.dicom_frame,
        colour_policy=config.predict.colour)
    flag_training_copies(rows, files, training_hashes(model),
                         int(model.card.get("near_duplicate_bits", config.data.near_duplicate_bits)),
                         float(model.card.get("near_duplicate_min_corr",
                                              config.data.near_duplicate_min_corr)))
    for r, f in zip(rows, files):
        r.update({"file": f.rel, "class": f.cls, "label": mapping[f.cls]})
        if kind == CLASSES:
            r["true_class"] = model.classes[mapping[f.cls]]
    inference.write_csv(rows, workdir / "predictions.csv", fields=inference.csv_fields(model),
                        extra_fields=EXTRA_FIELDS + (("true_class",) if kind == CLASSES else ()))
    ok = [r for r in rows if inference.is_predicted(r)]
    if not ok:
        raise ValueError(f"no file of {root} could be predicted; see {workdir / 'predictions.csv'}")
    sections, results = _evaluate_rows(config, workdir, model, ok, kind, root.name)
    sections.insert(0, ("Data", _data_text(root, mapping, rows, model, kind), []))
    rep, dups = results["all"], [r for r in ok if _is_copy(r)]
    if kind == CLASSES:
        mapping = {f: model.classes[k] for f, k in mapping.items()}
    metrics = {"model_id": model.model_id, "backbone": model.card["backbone"], "data": str(root),
               "class_mapping": mapping, "threshold": model.threshold,
               "threshold_info": model.threshold_info, "n_files": len(rows), "n_predicted": len(ok),
               "n_training_duplicates": sum(bool(r["training_duplicate_of"]) for r in ok),
               "n_training_near_duplicates": sum(bool(r["training_near_duplicate_of"]) for r in ok),
               "results": results}
    if model.multiclass:  # binary models' metrics.json stays as it was
        metrics.update({"evaluation": "classes" if kind == CLASSES else "binary view",
                        "classes": list(model.classes),
                        "negative_classes": list(model.negative_classes)})
    report.write_metrics_json(workdir / "metrics.json", metrics)
    report.write_markdown_report(workdir / "report.md", title=f"bt_jax external evaluation: "
                                 f"{model.model_id} on {root.name}", sections=sections)
    if config.external.explain_examples:
        _examples(config, workdir, model, ok, kind, class_index)
    html.write_html_report(workdir)
    acc = rep["accuracy"]
    print(f"external accuracy {acc['value']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] on "
          f"{len(ok)} images ({len(dups)} exact or near copies of training images flagged); "
          f"report: {workdir / 'report.html'}")
    return metrics


def _evaluate_rows(config, workdir, model, ok, kind, name: str) -> tuple[list, dict]:
    """Metrics of the predicted rows at the model's threshold, then again without the
    rows that are (near-)copies of training images, if there are any."""
    cfg = config.copy_and_resolve_references()
    cfg.threshold.value = model.threshold  # the tables at the threshold applied
    synthetic = bool(model.card.get("synthetic", False))
    y = np.array([r["label"] for r in ok])
    if kind == CLASSES:
        p = np.array([[r[f"p_{c}"] for c in model.classes] for r in ok], float)
        kw = {"class_names": model.classes, "negative_classes": model.negative_classes}
    else:
        p = np.array([r["p_tumour"] for r in ok], float)
        kw = {"class_names": ((model.negative, model.positive) if not model.multiclass
                              else (inference.NO_TUMOUR, inference.TUMOUR))}
    section, rep = evaluation.evaluate_split(
        y, p, out_dir=workdir / "eval" / "external", title=f"External data {name}",
        config=cfg, synthetic=synthetic, **kw)
    sections, results = [section], {"all": rep}
    keep = np.array([not _is_copy(r) for r in ok])
    if not keep.all() and keep.any():
        s2, r2 = evaluation.evaluate_split(
            y[keep], p[keep], out_dir=workdir / "eval" / "external_no_duplicates",
            title=f"External data {name} without training duplicates",
            config=cfg, synthetic=synthetic, **kw)
        sections.append(s2)
        results["without_training_duplicates"] = r2
    return sections, results


def _examples(config, workdir, model, ok, kind, class_index):
    """Grad-CAM of a few external scans: the most confident errors first, then the rest."""
    if kind == CLASSES:
        wrong = [r for r in ok if r["predicted_class"] != r["true_class"]]
        confidence = {id(r): r[f"p_{r['predicted_class']}"] for r in wrong}
    else:
        wrong = [r for r in ok if (r["p_tumour"] >= model.threshold) != bool(r["label"])]
        confidence = {id(r): abs(r["p_tumour"] - model.threshold) for r in wrong}
    right = [r for r in ok if r not in wrong]
    pick = (sorted(wrong, key=lambda r: -confidence[id(r)]) + right)
    pick = pick[:config.external.explain_examples]
    root = Path(config.inputs).expanduser().resolve()
    imgs = [preprocess.preprocess_image(scans.read_scan(root / r["file"])[0],
                                        model.preprocess)[0] for r in pick]
    items = [{"file": r["file"], "title": _example_title(model, r, class_index)} for r in pick]
    inference.write_overlays(model, np.stack(imgs), items, workdir / "gradcam", root=Path("."),
                             target=config.gradcam.target, alpha=config.gradcam.alpha,
                             batch_size=len(imgs), class_index=class_index)


def _example_title(model, r, class_index) -> str:
    if not model.multiclass:
        return (f"{r['file']} (true: {r['class']})\n"
                f"P({model.positive}) = {r['p_tumour']:.3f} -> {r['decision']}")
    prob = [r[f"p_{c}"] for c in model.classes]
    return (f"{r['file']} (true: {r.get('true_class') or r['class']})\n"
            + inference.probability_title(model, prob, class_index)
            + (f"\nP(tumour) = {r['p_tumour']:.3f} -> {r['decision']}"
               if r["p_tumour"] != "" else ""))


def _is_copy(row) -> bool:
    return bool(row["training_duplicate_of"] or row["training_near_duplicate_of"])


def _data_text(root, mapping, rows, model, kind=BINARY) -> str:
    counts = {c: sum(r["class"] == c for r in rows) for c in mapping}
    bad = [r for r in rows if r["status"] in ("error", "skipped")]
    flagged = [r for r in rows if r["status"] == "flagged"]
    dups = [r for r in rows if r["training_duplicate_of"]]
    near = [r for r in rows if r["training_near_duplicate_of"]]
    if kind == CLASSES:
        what = "folders mapped to the model's classes: "
        shown = {c: model.classes[mapping[c]] for c in mapping}
    elif model.multiclass:
        what = (f"folders mapped to tumour (1) / no tumour (0) of the model's binary view "
                f"P(tumour) = 1 - P({' + '.join(model.negative_classes)}): ")
        shown = mapping
    else:
        what = f"folders mapped to {model.positive} (1) / {model.negative} (0): "
        shown = mapping
    lines = [f"{len(rows)} files in `{root}`; " + what
             + ", ".join(f"{c} -> {shown[c]} ({counts[c]} files)" for c in mapping) + ".",
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
