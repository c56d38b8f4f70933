"""Load a trained model from its workdir: model.json + the best orbax checkpoint.

    m = load_model("runs/quick")                       # workdir or its model.json
    m.predict_fn(m.variables, x01)                     # jitted P(positive), batch sharded
    m.threshold, m.threshold_info                      # model's, user's, or for a sensitivity

The module is rebuilt from the card (backbone, head, dtype), the checkpoint restored into
its exact shapes (a mismatch is a ModelCardError naming the tensors).
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
from bt_jax.data import preprocess
from bt_jax.model_card import ModelCardError, read_card
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier, FlattenHead, Head, positive_prob
from bt_jax.reporting import metrics
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
    def positive(self) -> str:
        return self.card["positive"]

    @property
    def negative(self) -> str:
        return next(c for c in self.card["classes"] if c != self.card["positive"])

    @functools.cached_property
    def predict_fn(self):
        """Jitted (variables, x01 (B,S,S,3)) -> P(positive) (B,), batch sharded over devices."""
        mesh = data_mesh()
        return jax.jit(functools.partial(_predict, self.module,
                                         float(self.card.get("temperature", 1.0))),
                       in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
                       out_shardings=NamedSharding(mesh, P("data")))


def _predict(module, temperature, variables, x):
    logits, _ = module.apply(variables, x, train=False)
    return positive_prob(logits / temperature)  # temperature 1 unless calibrated


def build_module(card: dict, depthwise: str = "auto") -> Classifier:
    """The card's model; `depthwise` (config.model.depthwise) is a runtime choice, not the card's."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[card.get("dtype", "float32")]
    spec = mreg.get(card["backbone"])
    backbone = mreg.make_module(spec, dtype=dtype, depthwise=depthwise)
    h = card["head"]
    if h["type"] == "flatten":  # method B
        return Classifier(backbone=backbone,
                          head=FlattenHead(hidden=tuple(h["hidden"]), dropout=float(h["dropout"]),
                                           num_classes=int(h["num_classes"])),
                          head_input="features")
    return Classifier(backbone=backbone, head=Head(int(h["units"]), float(h["dropout"])),
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
               depthwise: str = "auto") -> LoadedModel:
    """The model of a finished workdir. Threshold: `threshold` if given, else one chosen on
    the stored validation probabilities for `target_sensitivity`, else model.json's."""
    card, card_p = read_card(path)
    root = card_p.parent
    module = build_module(card, depthwise)
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
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
        return float(threshold), {"source": "given by the user"}
    if target_sensitivity:
        val = root / card.get("validation", "validation.json")
        if not io.exists(val):
            raise ModelCardError(f"target sensitivity {target_sensitivity} needs the validation "
                                 f"probabilities stored with the model, but {val} is missing")
        v = io.read_json(val)
        op = metrics.threshold_for_sensitivity(np.asarray(v["labels"]), np.asarray(v["prob"]),
                                               float(target_sensitivity))
        return op["threshold"], {"source": f"validation ({v.get('source', 'stored')}, "
                                           f"n={len(v['labels'])})", **op}
    info = card.get("threshold_info") or {"source": "default"}
    return float(card.get("threshold", 0.5)), info
