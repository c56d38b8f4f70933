"""Grad-CAM for any backbone+head `Classifier`, jitted, with PNG overlays.

    fn = make_gradcam_fn(model.module)                 # jitted (variables, x01) -> (cam, prob)
    cam, prob = fn(model.variables, images)            # cam (B, S, S) in [0, 1]
    cam, prob = make_gradcam_fn(module, target="module:backbone/stage6")(variables, images)
    cam, probs = make_gradcam_fn(module, class_index=2)(variables, images)  # C > 2: class 2
    save_overlay(images[0], cam[0], "scan.png", title="P(yes) = 0.93")

The score followed is the positive class's (binary) or, for a C > 2 class head, the
chosen class's logit; class_index None follows each image's predicted class (argmax).

target "features" (default) is the backbone's last convolutional map, out["features"], for
every registry backbone (a feature recipe's maps: one CAM over all of them, `_cam`). Its
path to the logit is known (pre_logits = global average pool of it, then the head), so
the backbone runs once to the map and the gradient of the logit with respect to the map
is one `jax.grad` of pool -> head. Any other layer is reached with
"module:<flax path>" (e.g. "module:backbone/stage6"): its output gets a zero perturbation
added through `nn.intercept_methods` and the gradient with respect to that perturbation is
the gradient with respect to the layer's output. Both run in inference mode (BatchNorm uses
its statistics), so the examples of a batch are independent and one grad of the summed
logits gives each example's own gradient.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bt_jax import io
from bt_jax.models.heads import class_probs
from bt_jax.sharding import batched_apply


def _bb_variables(variables) -> dict:
    v = {"params": variables["params"]["backbone"]}
    stats = variables.get("batch_stats", {}).get("backbone")
    if stats:
        v["batch_stats"] = stats
    return v


def _cam(acts, grads, size: int):
    """Grad-CAM: channel weights = spatial mean of the gradient; ReLU of the weighted sum,
    upsampled to the input size and scaled to [0, 1] per image (0 where nothing is positive).
    Several maps (a feature recipe's): each weighted sum is resized to the finest map's
    grid and they are added before the ReLU, as if their channels were one map's."""
    maps = [jnp.einsum("bhwc,bc->bhw", a, g.mean(axis=(1, 2)))
            for a, g in zip(_maps(acts), _maps(grads), strict=True)]
    grid = max(m.shape[1] for m in maps)
    cam = jax.nn.relu(sum(m if m.shape[1] == grid else
                          jax.image.resize(m, (m.shape[0], grid, grid), "bilinear") for m in maps))
    cam = jax.image.resize(cam, (cam.shape[0], size, size), "bilinear")
    top = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(top > 0, cam / jnp.maximum(top, 1e-12), 0.0)


def _maps(a) -> list:
    return list(a) if isinstance(a, (tuple, list)) else [a]


def score_cotangent(logits, class_index: int | None = None):
    """d(score)/d(logits) for the score Grad-CAM follows. Binary heads: the tumour logit
    (one logit) or the log-odds logit[1] - logit[0] (two logits), negated for class_index
    0 (the evidence for the negative class). C > 2 logits: the logit of class_index, or of
    each example's predicted class (argmax) when it is None (a one-hot cotangent)."""
    n = logits.shape[-1]
    if n <= 2:
        base = jnp.ones_like(logits) if n == 1 else jnp.broadcast_to(
            jnp.array([-1.0, 1.0], logits.dtype), logits.shape)
        return -base if class_index == 0 else base
    target = (jnp.argmax(logits, axis=-1) if class_index is None
              else jnp.full(logits.shape[:-1], class_index))
    return jax.nn.one_hot(target, n, dtype=logits.dtype)


def gradcam_features_fn(module, variables, x, class_index: int | None = None):
    """Grad-CAM on out["features"] of a Classifier: the map -> logit path is global average
    pooling + head (head_input "pre_logits") or the head itself (Flatten heads reading
    "features"). Pure; returns (cam (B, S, S), prob (B,) or (B, C))."""
    if module.head_input not in ("pre_logits", "features"):
        raise ValueError(f"target 'features': this model's head reads {module.head_input!r}; "
                         "use target 'module:<path>'")
    _, out = module.backbone.apply(_bb_variables(variables), x, train=False)
    acts = tuple(m.astype(jnp.float32) for m in _maps(out["features"]))
    head_vars = {"params": variables["params"]["head"]}
    pooled = module.head_input == "pre_logits"
    if not pooled and len(acts) > 1:
        raise ValueError("target 'features': a feature recipe's maps feed pooled heads only")

    def logits_of(maps):   # pre_logits = the pooled maps concatenated (one map: its pool)
        if not pooled:
            return module.head.apply(head_vars, maps[0])
        return module.head.apply(head_vars, jnp.concatenate([m.mean(axis=(1, 2)) for m in maps],
                                                            axis=-1))

    logits, vjp = jax.vjp(logits_of, acts)
    (grads,) = vjp(score_cotangent(logits, class_index))
    return _cam(acts, grads, x.shape[1]), class_probs(logits)


def gradcam_module_fn(module, variables, x, path: tuple[str, ...],
                      class_index: int | None = None):
    """Grad-CAM on the output of the flax submodule at `path` (within the Classifier).
    Pure; returns (cam (B, S, S), prob (B,) or (B, C))."""
    def run(delta):
        seen = {}

        def interceptor(next_fun, args, kwargs, ctx):
            y = next_fun(*args, **kwargs)
            if ctx.method_name == "__call__" and tuple(ctx.module.path) == path:
                if not isinstance(y, jax.Array) or y.ndim != 4:
                    raise ValueError(f"Grad-CAM target {'/'.join(path)}: output is not a "
                                     f"(B, H, W, C) map ({type(y).__name__})")
                y = y + (jnp.zeros(y.shape, y.dtype) if delta is None else delta.astype(y.dtype))
                seen["a"] = y
            return y

        with nn.intercept_methods(interceptor):
            logits, _ = module.apply(variables, x, train=False)
        if "a" not in seen:
            raise ValueError(f"Grad-CAM target {'/'.join(path)}: no module at that path was "
                             "called (paths look like 'backbone/<layer name>')")
        return logits, seen["a"]

    shape = jax.eval_shape(lambda: run(None)[1])
    zero = jnp.zeros(shape.shape, jnp.float32)
    (logits, acts), vjp = jax.vjp(run, zero)
    (grads,) = vjp((score_cotangent(logits, class_index), jnp.zeros_like(acts)))
    return _cam(acts.astype(jnp.float32), grads, x.shape[1]), class_probs(logits)


def _gradcam(module, target, class_index, variables, x):
    if target == "features":
        return gradcam_features_fn(module, variables, x, class_index)
    if target.startswith("module:"):
        return gradcam_module_fn(module, variables, x, tuple(target[len("module:"):].split("/")),
                                 class_index)
    raise ValueError(f"Grad-CAM target: expected 'features' or 'module:<path>', got {target!r}")


def make_gradcam_fn(module, target: str = "features", class_index: int | None = None):
    """Jitted (variables, x01 (B, S, S, 3)) -> (cam (B, S, S) in [0, 1], P(positive) (B,)
    or class probabilities (B, C)). class_index: see score_cotangent (None: predicted)."""
    return jax.jit(functools.partial(_gradcam, module, target, class_index))


def gradcam(module, variables, images, *, target: str = "features", batch_size: int = 16,
            fn=None, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of every image in fixed batches (the last padded): (cams, probs) on the host."""
    fn = fn or make_gradcam_fn(module, target, class_index)
    return batched_apply(fn, variables, np.asarray(images, np.float32), batch_size=batch_size)


def peak(cam: np.ndarray) -> tuple[int, int]:
    """(x, y) of the heat map's maximum."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y)


def save_overlay(image: np.ndarray, cam: np.ndarray, path, *, title: str, alpha: float = 0.4,
                 note: str | None = None) -> Path:
    """The preprocessed scan in grey with the heat map over it, titled (e.g. the probability)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4, 4.3), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.clip(image.mean(axis=-1), 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    if note:
        fig.text(0.5, 0.01, note, ha="center", fontsize=7, color="red")
    fig.tight_layout()
    return io.atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:] or "png"),
                           binary=True)
