"""Apply a trained model to new scans: load it, read images or DICOM, predict in fixed batches.

    m = load_model("runs/quick")                       # workdir or its model.json
    files = find_inputs("scans/*.dcm")                 # a file, a folder (recursive) or a glob
    rows = predict_files(m, files)                     # one row per file, errors included
    write_csv(rows, "predictions.csv"); print(format_table(rows))

The preprocessing is the one stored in model.json (never re-typed by the user); the
probability is P(card["positive"]). Prediction compiles once per model: every batch has
the same shape (the last is padded), so a folder of 1,000 scans is one compilation.
A file that cannot be read gets status "error" and its reason; the others still run.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from bt_jax.data import decode, preprocess
from bt_jax.data.scans import (COLOUR_FRACTION, IMAGE_SUFFIXES, colour_fraction,  # noqa: F401
                               decode_dicom, find_inputs, read_scan)
from bt_jax.evaluate import metrics
from bt_jax.features import data_mesh
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier, FlattenHead
from bt_jax.train.finetune import positive_prob
from bt_jax.train.head import Head

MODEL_FORMAT = 1                      # model.json "format" this version reads
HEAD_TYPES = ("gap_dense", "flatten")  # model.json head.type this version can rebuild
CSV_FIELDS = ("file", "p_tumour", "decision", "threshold", "model_id", "status", "note",
              "colour_fraction")
TRACE_COUNT = {"predict": 0}          # incremented at trace time only (tests: compile once)


class ModelCardError(ValueError):
    """model.json or its checkpoint cannot be used by this version; the message says why."""


@dataclasses.dataclass
class LoadedModel:
    module: Classifier
    variables: dict                   # {"params": {backbone, head}, "batch_stats": {backbone}}
    card: dict                        # model.json
    preprocess: preprocess.PreprocessParams
    model_id: str                     # "<backbone>-<hash of card + best checkpoint meta>"
    threshold: float
    threshold_info: dict              # where the threshold came from (+ sens./spec. if chosen)
    root: Path                        # folder of model.json

    @property
    def positive(self) -> str:
        return self.card["positive"]

    @property
    def negative(self) -> str:
        return next(c for c in self.card["classes"] if c != self.card["positive"])

    @functools.cached_property
    def predict_fn(self):
        """Jitted (variables, x01 (B,S,S,3)) -> P(positive) (B,), batch sharded over devices."""
        mesh = data_mesh()
        return jax.jit(functools.partial(_predict, self.module),
                       in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
                       out_shardings=NamedSharding(mesh, P("data")))


def _predict(module, variables, x):
    TRACE_COUNT["predict"] += 1
    logits, _ = module.apply(variables, x, train=False)
    return positive_prob(logits)


# ----------------------------------------------------------------------------- loading

def _card_path(path) -> Path:
    p = Path(path)
    p = p / "model.json" if p.is_dir() else p
    if not p.is_file():
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
    if card["backbone"] not in mreg.BACKBONES:
        raise ModelCardError(f"{where}: backbone {card['backbone']!r} unknown to this version "
                             f"(known: {', '.join(sorted(mreg.BACKBONES))})")
    if card["head"].get("type") not in HEAD_TYPES:
        raise ModelCardError(f"{where}: head type {card['head'].get('type')!r}, expected one of "
                             f"{HEAD_TYPES}")


def build_module(card: dict) -> Classifier:
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[card.get("dtype", "float32")]
    spec = mreg.get(card["backbone"])
    h = card["head"]
    if h["type"] == "flatten":  # method B
        return Classifier(backbone=spec.make(dtype=dtype),
                          head=FlattenHead(hidden=tuple(h["hidden"]), dropout=float(h["dropout"]),
                                           num_classes=int(h["num_classes"])),
                          head_input="features")
    return Classifier(backbone=spec.make(dtype=dtype), head=Head(int(h["units"]), float(h["dropout"])),
                      head_input="pre_logits")


def _template(module: Classifier, size: int) -> dict:
    """Zeros shaped like the model's variables, without running an init."""
    shapes = jax.eval_shape(lambda r: module.init(r, jnp.zeros((1, size, size, 3)), train=False),
                            jax.random.PRNGKey(0))
    tree = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
    # Pipelines always save batch_stats (empty for BatchNorm-free backbones such as VGG).
    tree.setdefault("batch_stats", {"backbone": {}})
    return tree


def _shape_diff(expected, got) -> list[str]:
    from flax import traverse_util
    e = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(expected).items()}
    g = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(got).items()}
    out = [f"missing {k}" for k in e if k not in g] + [f"unexpected {k}" for k in g if k not in e]
    out += [f"{k}: expected {e[k]}, got {g[k]}" for k in e if k in g and e[k] != g[k]]
    return out


def load_model(path, *, threshold: float | None = None,
               target_sensitivity: float | None = None) -> LoadedModel:
    """The model of a finished workdir. Threshold: `threshold` if given, else one chosen on
    the stored validation probabilities for `target_sensitivity`, else model.json's."""
    card_p = _card_path(path)
    try:
        card = json.loads(card_p.read_text())
    except json.JSONDecodeError as e:
        raise ModelCardError(f"{card_p}: not valid JSON ({e})") from None
    check_card(card, str(card_p))
    root = card_p.parent
    module = build_module(card)
    params = preprocess.PreprocessParams(**card["preprocess"])
    template = _template(module, params.size)
    ck = root / card["checkpoint"]
    mgr = ocp.CheckpointManager(ck.absolute(), options=ocp.CheckpointManagerOptions(
        create=False, best_fn=lambda m: m["val_loss"], best_mode="min"))
    step = mgr.best_step() if ck.is_dir() else None
    if step is None:
        raise ModelCardError(f"{card_p}: no checkpoint at {ck}")
    try:
        variables = mgr.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a tree mismatch
        raise ModelCardError(f"{ck}: checkpoint does not fit backbone {card['backbone']!r} with "
                             f"head {card['head']} from {card_p}: {type(e).__name__}: "
                             f"{str(e)[:500]}") from None
    diff = _shape_diff(template, variables)
    if diff:
        raise ModelCardError(f"{ck}: checkpoint does not fit backbone {card['backbone']!r} from "
                             f"{card_p}: " + "; ".join(diff[:8]))
    h = hashlib.sha256(card_p.read_bytes())
    best_meta = ck.parent / "best.json"
    if best_meta.is_file():
        h.update(best_meta.read_bytes())
    thr, info = resolve_threshold(card, root, threshold, target_sensitivity)
    return LoadedModel(module=module, variables=jax.device_get(variables), card=card,
                       preprocess=params, model_id=f"{card['backbone']}-{h.hexdigest()[:10]}",
                       threshold=thr, threshold_info=info, root=root)


def resolve_threshold(card: dict, root: Path, threshold=None, target_sensitivity=None):
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
        return float(threshold), {"source": "given by the user"}
    if target_sensitivity:
        val = root / card.get("validation", "validation.json")
        if not val.is_file():
            raise ModelCardError(f"target sensitivity {target_sensitivity} needs the validation "
                                 f"probabilities stored with the model, but {val} is missing")
        v = json.loads(val.read_text())
        op = metrics.threshold_for_sensitivity(np.asarray(v["labels"]), np.asarray(v["prob"]),
                                               float(target_sensitivity))
        return op["threshold"], {"source": f"validation ({v.get('source', 'stored')}, "
                                           f"n={len(v['labels'])})", **op}
    info = card.get("threshold_info") or {"source": "default"}
    return float(card.get("threshold", 0.5)), info


def write_model_card(workdir, *, config, ds, backbone: str, digest: str, head: dict,
                     checkpoint_dir: Path) -> Path:
    """W/model.json: what predict/evaluate need to rebuild the model and its exact
    preprocessing. head: {"type": "gap_dense", units, dropout} or {"type": "flatten",
    hidden, dropout, num_classes}. Paths are relative, so a workdir can be moved."""
    from importlib.metadata import version
    workdir = Path(workdir)
    card = {"format": MODEL_FORMAT, "bt_jax": version("bt_jax"), "backbone": backbone,
            "weights_digest": digest, "dtype": config.model.dtype, "head": head,
            "preprocess": config.preprocess.to_dict(), "classes": list(ds.classes),
            "positive": ds.positive, "threshold": float(config.eval.threshold),
            "checkpoint": str(Path(checkpoint_dir).relative_to(workdir) / "best"),
            "synthetic": bool(ds.synthetic)}
    (workdir / "model.json").write_text(json.dumps(card, indent=1))
    return workdir / "model.json"


def record_validation(workdir, names, labels, prob, *, target_sensitivity: float = 0.0,
                      source: str = "fold 0 validation") -> dict:
    """Stores validation probabilities beside model.json; with a target sensitivity also sets
    model.json's threshold to the one reaching it there. Returns the threshold entry."""
    workdir = Path(workdir)
    (workdir / "validation.json").write_text(json.dumps(
        {"source": source, "names": list(names), "labels": [int(x) for x in labels],
         "prob": [float(p) for p in prob]}))
    card_p = workdir / "model.json"
    card = json.loads(card_p.read_text())
    card["validation"] = "validation.json"
    if target_sensitivity:
        op = metrics.threshold_for_sensitivity(np.asarray(labels), np.asarray(prob),
                                               float(target_sensitivity))
        card["threshold"] = op["threshold"]
        card["threshold_info"] = {"source": f"validation ({source}, n={len(labels)})", **op}
    card_p.write_text(json.dumps(card, indent=1))
    return {"threshold": card["threshold"], **card.get("threshold_info", {"source": "default"})}


# ----------------------------------------------------------------------------- prediction

def predict_array(model: LoadedModel, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """P(positive) of preprocessed images (N, S, S, 3) in [0, 1]; fixed batches, last padded."""
    mesh = data_mesh()
    ndev = mesh.devices.size
    bs = max(ndev, math.ceil(batch_size / ndev) * ndev)
    s = model.preprocess.size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
        raise ValueError(f"images: expected (N, {s}, {s}, 3) (the model's preprocessing size), "
                         f"got {images.shape}")
    variables = jax.device_put(model.variables, NamedSharding(mesh, P()))
    out = []
    for i in range(0, len(images), bs):
        x = np.asarray(images[i:i + bs], np.float32)
        n = len(x)
        if n < bs:
            x = np.concatenate([x, np.zeros((bs - n, s, s, 3), np.float32)])
        out.append(np.asarray(model.predict_fn(variables, x))[:n])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


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
                "format": info["format"]}, (None if status == "skipped" else out)
    except (decode.DecodeError, OSError) as e:
        return {"status": "error", "note": str(e)}, None
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
        return {"status": "error", "note": f"{type(e).__name__}: {e}"}, None


def predict_files(model: LoadedModel, files, *, batch_size: int = 32, min_size: int = 16,
                  dicom_frame: int | None = None, colour_policy: str = "flag",
                  on_batch=None, workers: int = 4) -> list[dict]:
    """One row per file (CSV_FIELDS), in order. Files are read and preprocessed in chunks
    (threads; OpenCV releases the GIL), so memory stays bounded for large folders.

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
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i in range(0, len(files), chunk):
            part = files[i:i + chunk]
            loaded = list(pool.map(load, part))
            ok = [j for j, (_, img) in enumerate(loaded) if img is not None]
            prob = (predict_array(model, np.stack([loaded[j][1] for j in ok]),
                                  batch_size=batch_size) if ok else np.zeros(0))
            new = []
            for j, (f, (meta, _)) in enumerate(zip(part, loaded)):
                row = {"file": str(f), "p_tumour": "", "decision": "", "threshold": model.threshold,
                       "model_id": model.model_id, "colour_fraction": "", **meta}
                new.append(row)
            for j, p in zip(ok, prob):
                new[j]["p_tumour"] = round(float(p), 6)
                new[j]["decision"] = model.positive if p >= model.threshold else model.negative
            if on_batch is not None and ok:
                on_batch([new[j] for j in ok], np.stack([loaded[j][1] for j in ok]))
            rows += new
    return rows


def write_csv(rows: list[dict], path, *, extra_fields: tuple[str, ...] = ()) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS + tuple(extra_fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def format_table(rows: list[dict], *, max_rows: int = 20, root: Path | None = None) -> str:
    """A short plain-text table (first `max_rows`), then counts and every problem file."""
    def name(r):
        p = Path(r["file"])
        try:
            return str(p.relative_to(root)) if root else p.name
        except ValueError:
            return p.name
    lines = [f"{'file':40s} {'p_tumour':>8s}  decision  status"]
    for r in rows[:max_rows]:
        p = f"{r['p_tumour']:.3f}" if r["p_tumour"] != "" else "-"
        lines.append(f"{name(r)[-40:]:40s} {p:>8s}  {str(r['decision'])[:8]:8s}  {r['status']}")
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows in the CSV")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "flagged", "skipped", "error")}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(rows)} files")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"  {r['status']}: {name(r)}: {r['note']}")
    return "\n".join(lines)
