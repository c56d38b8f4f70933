"""Predict new scans with a loaded model: read images or DICOM, preprocess, fixed batches.

    files = find_inputs("scans/*.dcm")                 # a file, a folder (recursive) or a glob
    rows = predict_files(model, files)                 # one row per file, errors included
    write_csv(rows, "predictions.csv", fields=csv_fields(model)); print(format_table(rows))

The preprocessing is the one stored in model.json (never re-typed by the user). A binary
model's probability is P(card["positive"]) and decision its class name. A multi-class
model's row has p_<class> for every class, predicted_class (the argmax) and, when the
card names negative classes, p_tumour = 1 - P(those) and decision "tumour" / "no_tumour"
at the threshold (both empty otherwise). Prediction compiles once per model: every batch
has the same shape (the last is padded), so a folder of 1,000 scans is one compilation.
A file that cannot be read gets status "error" and its reason; the others still run.
"""

from __future__ import annotations

import csv
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.data import decode, preprocess
from bt_jax.data.scans import COLOUR_FRACTION, colour_fraction, read_scan
from bt_jax.inference.loading import LoadedModel
from bt_jax.reporting import multiclass
from bt_jax.sharding import batched_apply

CSV_FIELDS = ("file", "p_tumour", "decision", "threshold", "model_id", "status", "note",
              "colour_fraction")
NO_TUMOUR, TUMOUR = multiclass.BINARY_VIEW_NAMES  # a multi-class model's binary decision


def csv_fields(model: LoadedModel) -> tuple[str, ...]:
    """The CSV columns for this model: CSV_FIELDS for a binary model; for a multi-class one
    p_<class> per class and predicted_class after the file name."""
    if not model.multiclass:
        return CSV_FIELDS
    return (CSV_FIELDS[0], *(f"p_{c}" for c in model.classes), "predicted_class",
            *CSV_FIELDS[1:])


def is_predicted(row: dict) -> bool:
    """Whether the row's file got probabilities (not skipped, not an error)."""
    return row["p_tumour"] != "" or row.get("predicted_class", "") != ""


def predict_array(model: LoadedModel, images: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
    """P(positive) (N,) of preprocessed images (N, S, S, 3) in [0, 1], or class
    probabilities (N, C) for a multi-class model; fixed batches, last padded."""
    s = model.preprocess.size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
        raise ValueError(f"images: expected (N, {s}, {s}, 3) (the model's preprocessing size), "
                         f"got {images.shape}")
    out = batched_apply(model.predict_fn, model.variables, np.asarray(images, np.float32),
                        batch_size=batch_size)
    if out is None:
        return np.zeros((0, len(model.classes)) if model.multiclass else 0, np.float32)
    return out


def fill_prediction(model: LoadedModel, row: dict, prob) -> None:
    """Writes one file's probabilities and decision into its row (see the module docstring)."""
    if not model.multiclass:
        row["p_tumour"] = round(float(prob), 6)
        row["decision"] = model.positive if prob >= model.threshold else model.negative
        return
    prob = np.asarray(prob, np.float64)
    for c, p in zip(model.classes, prob):
        row[f"p_{c}"] = round(float(p), 6)
    row["predicted_class"] = model.classes[int(np.argmax(prob))]
    if model.has_binary_view:
        t = float(model.binary_view(prob[None])[0])
        row["p_tumour"] = round(t, 6)
        row["decision"] = TUMOUR if t >= model.threshold else NO_TUMOUR


def _load_one(path: Path, params, min_size, frame, colour_policy):
    """(row fields, preprocessed image or None) for one file; never raises for a bad file."""
    try:
        img, info = read_scan(path, min_size=min_size, frame=frame)
        cf = colour_fraction(img)
        note, status = "", "ok"
        if cf > COLOUR_FRACTION:
            note = (f"colour image ({100 * cf:.0f}% of pixels strongly coloured): MRI slices are "
                    "grey, so this is probably not a scan of the kind the model was trained on")
            status = "skipped" if colour_policy == "skip" else "flagged"
        out, pinfo = preprocess.preprocess_image(img, params)
        if pinfo["crop"] not in ("ok", "off"):
            note = "; ".join(x for x in (note, f"brain crop failed ({pinfo['crop']}), whole "
                                               "image used") if x)
        return {"status": status, "note": note, "colour_fraction": round(cf, 4),
                "format": info["format"], "phash": str(decode.perceptual_hash(img)),
                "thumb": decode.thumb_to_text(decode.thumbnail(img))}, \
            (None if status == "skipped" else out)
    except (decode.DecodeError, OSError) as e:
        return {"status": "error", "note": str(e)}, None
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
        return {"status": "error", "note": f"{type(e).__name__}: {e}"}, None


def predict_files(model: LoadedModel, files, *, batch_size: int = 16, min_size: int = 16,
                  dicom_frame: int | None = None, colour_policy: str = "flag",
                  on_batch=None, workers: int = 4, progress: bool = True) -> list[dict]:
    """One row per file (CSV_FIELDS), in order. Files are read and preprocessed in chunks
    (threads; OpenCV releases the GIL), the next chunk while the model runs on this one,
    so memory stays bounded for large folders. With `progress`, a tqdm bar on stderr
    counts the scans done.

    colour_policy: "flag" predicts strongly coloured images and notes it; "skip" does not.
    on_batch(rows, images): called with each chunk's predicted rows and their preprocessed
    images (e.g. Grad-CAM overlays) before the images are dropped.
    """
    if colour_policy not in ("flag", "skip"):
        raise ValueError(f"colour_policy: expected 'flag' or 'skip', got {colour_policy!r}")
    files = [Path(f) for f in files]
    rows, chunk = [], max(1, batch_size) * 4
    load = functools.partial(_load_one, params=model.preprocess, min_size=min_size,
                             frame=dicom_frame, colour_policy=colour_policy)
    from tqdm import tqdm
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(files), desc="predict", unit="scan", disable=not progress,
                 leave=False) as bar:
        starts = range(0, len(files), chunk)
        pending = [pool.submit(load, f) for f in files[:chunk]]
        for i in starts:
            part = files[i:i + chunk]
            loaded = [p.result() for p in pending]
            pending = [pool.submit(load, f) for f in files[i + chunk:i + 2 * chunk]]
            ok = [j for j, (_, img) in enumerate(loaded) if img is not None]
            prob = (predict_array(model, np.stack([loaded[j][1] for j in ok]),
                                  batch_size=batch_size) if ok else np.zeros(0))
            blank = ({f"p_{c}": "" for c in model.classes} | {"predicted_class": ""}
                     if model.multiclass else {})
            new = []
            for f, (meta, _) in zip(part, loaded):
                row = {"file": str(f), **blank, "p_tumour": "", "decision": "",
                       "threshold": model.threshold, "model_id": model.model_id,
                       "colour_fraction": "", **meta}
                new.append(row)
            for j, p in zip(ok, prob):
                fill_prediction(model, new[j], p)
            if on_batch is not None and ok:
                on_batch([new[j] for j in ok], np.stack([loaded[j][1] for j in ok]))
            rows += new
            bar.update(len(part))
    return rows


def write_csv(rows: list[dict], path, *, extra_fields: tuple[str, ...] = (),
              fields: tuple[str, ...] = CSV_FIELDS) -> Path:
    """fields: csv_fields(model) for a multi-class model; extra_fields follow them."""
    def write(f):
        w = csv.DictWriter(f, fieldnames=tuple(fields) + tuple(extra_fields),
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return io.atomic_write(path, write)


def format_table(rows: list[dict], *, max_rows: int = 20, root: Path | None = None) -> str:
    """A short plain-text table (first `max_rows`), then counts and every problem file."""
    def name(r):
        p = Path(r["file"])
        try:
            return str(p.relative_to(root)) if root else p.name
        except ValueError:
            return p.name
    typed = any("predicted_class" in r for r in rows)  # a multi-class model's rows
    lines = [f"{'file':40s} " + (f"{'predicted':16s} {'p':>5s}  " if typed else "")
             + f"{'p_tumour':>8s}  decision  status"]
    for r in rows[:max_rows]:
        p = f"{r['p_tumour']:.3f}" if r["p_tumour"] != "" else "-"
        line = f"{name(r)[-40:]:40s} "
        if typed:
            c = r.get("predicted_class", "")
            line += f"{(c or '-')[:16]:16s} " + (f"{r[f'p_{c}']:5.3f}  " if c else f"{'-':>5s}  ")
        lines.append(line + f"{p:>8s}  {str(r['decision'])[:9]:9s} {r['status']}"
                     if typed else line + f"{p:>8s}  {str(r['decision'])[:8]:8s}  {r['status']}")
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows in the CSV")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "flagged", "skipped", "error")}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(rows)} files")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"  {r['status']}: {name(r)}: {r['note']}")
    return "\n".join(lines)
