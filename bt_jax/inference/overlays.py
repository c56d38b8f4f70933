"""Grad-CAM overlay PNGs: the one place that turns scans + a model into heat-map images.

    paths = write_overlays(model, images, [{"file": "a/Y1.jpg", "title": "P(yes) = 0.93"}],
                           W / "gradcam", root=Path("a"))          # W/gradcam/Y1_jpg.png
    write_test_examples(W, n=4)        # a finished run's test-split scans -> W/gradcam_examples

File names are flat and unique: the path below `root` with "/" as "__" and the extension
kept as "_ext" (so Y1.jpg and Y1.png never collide, and no name ends in ".png.png").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.data import preprocess, scans
from bt_jax.reporting import calibration
from bt_jax.inference import gradcam
from bt_jax.inference.loading import LoadedModel, load_model


def overlay_name(file, root: Path | None = None) -> str:
    p = Path(file)
    try:
        rel = p.relative_to(root) if root else Path(p.name)
    except ValueError:
        rel = Path(p.name)
    last = rel.stem + (f"_{rel.suffix[1:]}" if rel.suffix else "")
    return "__".join([*rel.parts[:-1], last]) + ".png"


def probability_title(model: LoadedModel, prob, class_index: int | None = None) -> str:
    """An overlay's probability line: "P(yes) = 0.930" (binary), or for a multi-class model
    the class whose Grad-CAM is shown (the predicted one unless class_index is given),
    e.g. "Grad-CAM: glioma, P = 0.810 (predicted)"."""
    if not model.multiclass:
        return f"P({model.positive}) = {float(prob):.3f}"
    prob = np.asarray(prob)
    pred = int(np.argmax(prob))
    k = pred if class_index is None else class_index
    tail = ("predicted" if k == pred else
            f"predicted {model.classes[pred]}, P = {float(prob[pred]):.3f}")
    return f"Grad-CAM: {model.classes[k]}, P = {float(prob[k]):.3f} ({tail})"


def overlay_title(model, row: dict, class_index: int | None) -> str:
    """File name, then the class shown and its probability, then the decision."""
    name = Path(row["file"]).name
    decision = (f"{row['p_tumour']:.3f} -> {row['decision']} (threshold {model.threshold:.3g})"
                if row["p_tumour"] != "" else "")
    if not model.multiclass:
        shown = ("" if class_index is None else
                 f"\nGrad-CAM: {model.positive if class_index else model.negative}")
        return f"{name}\nP({model.positive}) = {decision}{shown}"
    prob = [row[f"p_{c}"] for c in model.classes]
    return (f"{name}\n{probability_title(model, prob, class_index)}"
            + (f"\nP(tumour) = {decision}" if decision else ""))


def write_overlays(model: LoadedModel, images: np.ndarray, items: list[dict], out_dir, *,
                   root: Path | None = None, target: str = "features", alpha: float = 0.4,
                   batch_size: int = 16, fn=None, class_index: int | None = None,
                   cams: np.ndarray | None = None) -> list[Path]:
    """One PNG per image: the preprocessed scan, its Grad-CAM and items[i]["title"]
    (items[i]["note"], if any, in red below). Returns the paths in order. class_index:
    the class whose evidence is shown (model.class_label(name); None: binary models'
    positive class, multi-class models' predicted class per image). cams: already
    computed heat maps (then nothing is run)."""
    if not len(items):
        return []
    if cams is None:
        fn = fn or gradcam.make_gradcam_fn(model.module, target, class_index)
        cams, _ = gradcam.gradcam(model.module, model.variables, images,
                                  batch_size=batch_size, fn=fn)
    return [gradcam.save_overlay(img, cam, Path(out_dir) / overlay_name(it["file"], root),
                                 title=it["title"], alpha=alpha, note=it.get("note") or None)
            for img, cam, it in zip(images, cams, items)]


def write_test_examples(workdir, n: int, *, out_dir: Path | None = None) -> list[Path]:
    """Overlays for up to n test-split scans of a finished run (half of each class where
    possible), from its model.json + manifest.json; [] when either is missing."""
    workdir = Path(workdir)
    if n <= 0 or not io.exists(workdir / "model.json") or not io.exists(workdir / "manifest.json"):
        return []
    man = io.read_json(workdir / "manifest.json")
    model = load_model(workdir)
    test = [f for f in man["files"] if f["status"] == "used" and f["split"] == "test"]
    if model.multiclass:  # round robin over the classes, in the model's order
        by_class = [[f for f in test if f["class"] == c] for c in model.classes]
        pick = [f for group in zip(*by_class) for f in group][:n]
    else:
        pos = [f for f in test if f["class"] == model.positive]
        neg = [f for f in test if f["class"] != model.positive]
        pick = (pos[:(n + 1) // 2] + neg[:n // 2])[:n]
    pick += [f for f in test if f not in pick][:n - len(pick)]
    if not pick:
        return []
    images = np.stack([preprocess.preprocess_image(
        scans.read_scan(Path(man["data_dir"]) / f["file"])[0], model.preprocess)[0] for f in pick])
    # One compiled call gives the heat maps and the probabilities (with model.json's
    # temperature, as predict reports them; only two-class models have one).
    cams, probs = gradcam.gradcam(model.module, model.variables, images,
                                  batch_size=len(images))
    temperature = float(model.card.get("temperature", 1.0))
    if temperature != 1.0:
        probs = calibration.apply_temperature(probs, temperature)
    items = [{"file": f["file"], "title": f"{f['file']} (true: {f['class']})\n"
                                          + probability_title(model, p)}
             for f, p in zip(pick, probs)]
    return write_overlays(model, images, items, out_dir or workdir / "gradcam_examples",
                          root=Path("."), cams=cams)
