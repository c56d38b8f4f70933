"""Load a trained model from its workdir: model.json + the best orbax checkpoint.

    m = load_model("runs/quick")                       # workdir or its model.json
    m.predict_fn(m.variables, x01)                     # jitted probabilities, batch sharded
    m.threshold, m.threshold_info                      # model's, user's, or for a sensitivity
    m.classes, m.multiclass, m.negative_classes        # C > 2: probabilities are (B, C) rows
    m = load_for(config)                               # config.checkpoint with config.threshold

The module is rebuilt from the card (backbone, head, dtype), the checkpoint restored into
its exact shapes (a mismatch is a ModelCardError naming the tensors). Two classes: the
probability is P(card["positive"]), shape (B,). More: softmax rows (B, C) over
card["classes"]; when card["negative_classes"] names the "no tumour" classes, the binary
view P(tumour) = 1 - P(those) is what the threshold applies to.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from bt_jax import io
from bt_jax.compilation import forward_compiler_options
from bt_jax.config import ConfigError
from bt_jax.data import preprocess
from bt_jax.model_card import ModelCardError, binary_validation, read_card
from bt_jax.models import registry as mreg
from bt_jax.models.common import DTYPES
from bt_jax.models.heads import Classifier, FlattenHead, Head, class_probs
from bt_jax.reporting import metrics, multiclass
from bt_jax.sharding import data_mesh


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
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card["classes"])

    @property
    def multiclass(self) -> bool:
        """More than two classes: (B, C) softmax probabilities and a predicted class."""
        return len(self.classes) > 2

    @property
    def negative_classes(self) -> tuple[str, ...]:
        """Multi-class: the classes that mean "no tumour" (may be empty: no binary view)."""
        return tuple(self.card.get("negative_classes") or ()) if self.multiclass else ()

    @property
    def has_binary_view(self) -> bool:
        """Whether a tumour probability and a thresholded decision exist."""
        return not self.multiclass or bool(self.negative_classes)

    @property
    def positive(self) -> str:
        return self.card["positive"]

    @property
    def negative(self) -> str:
        return next(c for c in self.card["classes"] if c != self.card["positive"])

    def class_label(self, name: str) -> int:
        """The label of a class named in a setting: its index in classes for a multi-class
        model; 1 (positive) or 0 for a binary one. ValueError naming the classes if unknown."""
        if name not in self.classes:
            raise ValueError(f"{name!r} is not a class of model {self.root / 'model.json'}; "
                             f"its classes are {list(self.classes)}")
        return self.classes.index(name) if self.multiclass else int(name == self.positive)

    def binary_view(self, probs: np.ndarray) -> np.ndarray:
        """P(tumour) (N,): P(positive) itself for a binary model, 1 - P(negative classes)
        for a multi-class one; a ModelCardError when the card names no negative classes."""
        probs = np.asarray(probs)
        if not self.multiclass:
            return probs
        if not self.negative_classes:
            raise ModelCardError(
                f"{self.root / 'model.json'}: field 'negative_classes' is empty, so this "
                f"{len(self.classes)}-class model {list(self.classes)} has no tumour / no tumour "
                "view (no P(tumour), threshold or binary evaluation); retrain with "
                "data.negative_classes set")
        return multiclass.binary_view(probs, self.classes, self.negative_classes)

    @functools.cached_property
    def predict_fn(self):
        """Jitted (variables, x01 (B,S,S,3)) -> P(positive) (B,), or softmax rows (B, C) for
        a multi-class model; batch sharded over devices."""
        mesh = data_mesh()
        return jax.jit(functools.partial(_predict, self.module,
                                         float(self.card.get("temperature", 1.0))),
                       in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
                       out_shardings=NamedSharding(mesh, P("data")),
                       compiler_options=forward_compiler_options())


def _predict(module, temperature, variables, x):
    logits, _ = module.apply(variables, x, train=False)
    return class_probs(logits / temperature)  # temperature 1 unless calibrated


def check_classes(card: dict, where: str) -> None:
    """The card's classes, negative_classes and head size agree; ModelCardError if not."""
    classes, h = card["classes"], card["head"]
    if (not isinstance(classes, list) or len(classes) < 2
            or len(set(map(str, classes))) != len(classes)):
        raise ModelCardError(f"{where}: field 'classes': expected a list of at least two "
                             f"distinct names, got {classes!r}")
    n = len(classes)
    if n == 2 and card["positive"] not in classes:
        raise ModelCardError(f"{where}: field 'positive': {card['positive']!r} is not one of "
                             f"the classes {classes}")
    if h["type"] == "flatten":
        key, got, want = "num_classes", h.get("num_classes"), n
    else:
        key, got, want = "outputs", h.get("outputs", 1), 1 if n == 2 else n
    if got != want:
        raise ModelCardError(f"{where}: field 'head.{key}': expected {want} for {n} classes "
                             f"{classes}, got {got!r}")
    neg = card.get("negative_classes") or []
    unknown = [c for c in neg if c not in classes]
    if n > 2 and (unknown or len(set(neg)) == n):
        raise ModelCardError(f"{where}: field 'negative_classes': expected names among the "
                             f"classes {classes}, not all of them, got {neg!r}")
    if n > 2 and "p_tumour" in {f"p_{c}" for c in classes}:
        raise ModelCardError(f"{where}: field 'classes': a class named 'tumour' would give "
                             "the column p_tumour, which holds the binary view; rename it")


def build_module(card: dict, depthwise: str = "auto", pointwise: str = "auto",
                 conv3x3: str = "auto") -> Classifier:
    """The card's model; `depthwise` (config.model.depthwise), `pointwise` (how 1x1
    convolutions are computed) and `conv3x3` (config.model.conv3x3) are runtime choices,
    not the card's."""
    backbone = mreg.get(card["backbone"]).make(dtype=DTYPES[card.get("dtype", "float32")],
                                               depthwise=depthwise, pointwise=pointwise,
                                               conv3x3=conv3x3)
    h = card["head"]
    if h["type"] == "flatten":  # method B
        return Classifier(backbone=backbone,
                          head=FlattenHead(hidden=tuple(h["hidden"]), dropout=float(h["dropout"]),
                                           num_classes=int(h["num_classes"])),
                          head_input="features")
    return Classifier(backbone=backbone,
                      head=Head(int(h["units"]), float(h["dropout"]),
                                outputs=int(h.get("outputs", 1))),
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


def load_model(path, *, threshold: float | None = None, target_sensitivity: float | None = None,
               depthwise: str = "auto", pointwise: str = "auto",
               conv3x3: str = "auto") -> LoadedModel:
    """The model of a finished workdir. Threshold: `threshold` if given, else one chosen on
    the stored validation probabilities for `target_sensitivity`, else model.json's."""
    card, card_p = read_card(path)
    root = card_p.parent
    check_classes(card, str(card_p))
    module = build_module(card, depthwise, pointwise, conv3x3)
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
    h = hashlib.sha256(io.read_bytes(card_p))
    best_meta = ck.parent / "best.json"
    if io.exists(best_meta):
        h.update(io.read_bytes(best_meta))
    thr, info = resolve_threshold(card, root, threshold, target_sensitivity)
    return LoadedModel(module=module, variables=jax.device_get(variables), card=card,
                       preprocess=params, model_id=f"{card['backbone']}-{h.hexdigest()[:10]}",
                       threshold=thr, threshold_info=info, root=root)


def resolve_threshold(card: dict, root: Path, threshold=None, target_sensitivity=None):
    """(threshold, where it came from). It applies to P(positive), or for a multi-class
    model to its binary view P(tumour); a target sensitivity is reached on the stored
    validation probabilities (multi-class: on their binary view)."""
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
        return float(threshold), {"source": "given by the user"}
    if target_sensitivity:
        val = root / card.get("validation", "validation.json")
        if len(card["classes"]) > 2 and not card.get("negative_classes"):
            raise ModelCardError(
                f"{root / 'model.json'}: field 'negative_classes' is empty, so a threshold for "
                f"target sensitivity {target_sensitivity} (of P(tumour)) is undefined for the "
                f"classes {card['classes']}; retrain with data.negative_classes set")
        if not io.exists(val):
            raise ModelCardError(f"target sensitivity {target_sensitivity} needs the validation "
                                 f"probabilities stored with the model, but {val} is missing")
        v = io.read_json(val)
        labels, prob = _binary_validation(card, val, v)
        op = metrics.threshold_for_sensitivity(labels, prob, float(target_sensitivity))
        return op["threshold"], {"source": f"validation ({v.get('source', 'stored')}, "
                                           f"n={len(v['labels'])})", **op}
    info = card.get("threshold_info") or {"source": "default"}
    return float(card.get("threshold", 0.5)), info


def _binary_validation(card: dict, path: Path, v: dict) -> tuple[np.ndarray, np.ndarray]:
    """validation.json as (tumour labels, P(tumour)): as stored for a binary model; for a
    multi-class one (labels = class indices, prob = (N, C) rows) its binary view."""
    labels, prob = np.asarray(v["labels"]), np.asarray(v["prob"], np.float64)
    classes = list(card["classes"])
    if len(classes) == 2:
        if prob.ndim != 1:
            raise ModelCardError(f"{path}: field 'prob': expected one P(positive) per case for "
                                 f"a binary model, got shape {prob.shape}")
        return labels, prob
    if prob.ndim != 2 or prob.shape[1] != len(classes):
        raise ModelCardError(f"{path}: field 'prob': expected one row of {len(classes)} class "
                             f"probabilities per case ({classes}), got shape {prob.shape}")
    if v.get("classes", classes) != classes:
        raise ModelCardError(f"{path}: field 'classes': {v['classes']} differs from model.json's "
                             f"{classes}")
    bad = ~np.isin(labels, np.arange(len(classes)))
    if labels.ndim != 1 or len(labels) != len(prob) or bad.any():
        raise ModelCardError(f"{path}: field 'labels': expected {len(prob)} class indices in "
                             f"[0, {len(classes)}), got shape {labels.shape}"
                             + (f" with values {np.unique(labels[bad])[:5].tolist()}"
                                if labels.ndim == 1 and bad.any() else ""))
    # the model's own negative classes: its threshold belongs to its binary view
    return binary_validation({**v, "classes": classes,
                              "negative_classes": list(card["negative_classes"])})


def load_for(config, *, depthwise: str | None = None) -> LoadedModel:
    """config.checkpoint's model with config.threshold applied; depthwise: a caller's own
    choice instead of config.model.depthwise (export's, for several platforms)."""
    if not config.checkpoint:
        raise ConfigError("config.checkpoint: give the workdir of a trained model (with model.json)")
    return load_model(
        config.checkpoint,
        threshold=config.threshold.value if config.threshold.value >= 0 else None,
        target_sensitivity=config.threshold.target_sensitivity or None,
        depthwise=depthwise or config.model.depthwise, conv3x3=config.model.conv3x3)


def gradcam_class_of(config, model) -> int | None:
    """config.predict.gradcam_class as the model's label (None: "" = the predicted class, or
    a binary model's positive class); an unknown name is a ConfigError before any work."""
    name = config.predict.gradcam_class
    if not name:
        return None
    try:
        return model.class_label(name)
    except ValueError as e:
        raise ConfigError(f"config.predict.gradcam_class: {e}") from None
