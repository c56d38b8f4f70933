"""Random affine / flip / brightness augmentation in pure JAX, and class-balancing plans.

    params = make_augment_params(config.augment)
    out = augment_batch(images, jax.random.split(rng, len(images)), params)   # jitted, params static
    plan = plan_copies(splits.train_all(), labels, policy="augment2a", seed=0)
    copies, copy_labels, source = make_copies(images, labels, plan, params)
    lazy = CopyRows(ds.images, plan, params)          # the same copies, made when read
    in_fold = copies_for(plan, splits.fold_train(2))                          # bool mask over copies
    every = union_plans([plan_copies(splits.fold_train(f), ...) for f in range(k)])  # exact per fold

Every copy's key is `fold_in(fold_in(PRNGKey(seed), source), copy_number)`, so an image's
copies are identical whichever fold asks for them: their features are extracted once and
reused. Balancing accepts only `split.TrainIndices`, so augmenting before splitting (the
leak in method B's original code) cannot be written through this API.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.config import class_multipliers
from bt_jax.data.split import TrainIndices

POLICIES = ("none", "augment2a", "multipliers")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random transform; hashable, so it is a static jit argument.

    rotation: degrees, uniform in [-r, r]; shift: fraction of the side, per axis, in [-s, s];
    zoom: per-axis scale in [1 - z, 1 + z] (independent x/y, as Keras' zoom_range);
    shear: factor in [-s, s] (x_in += s * y); brightness: additive delta in [-b, b];
    hflip/vflip: each applied with probability flip_prob.
    """
    rotation: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0
    shear: float = 0.0
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.0
    flip_prob: float = 0.5


def make_augment_params(aug) -> AugmentParams:
    """From `config.augment` (see bt_jax/config/schema.py)."""
    return AugmentParams(rotation=float(aug.rotation), shift=float(aug.shift),
                         zoom=float(aug.zoom), shear=float(aug.shear), hflip=bool(aug.hflip),
                         vflip=bool(aug.vflip), brightness=float(aug.brightness))


def _sample_matrix(rng, params: AugmentParams, height: int, width: int):
    """3x3 matrix taking centred output (x, y, 1) to centred input coordinates.

    Built as the inverse map (output -> input) because resampling gathers from the
    input; the order flip -> zoom -> shear -> rotate -> shift follows Keras' apply_transform.
    """
    k_rot, k_shift, k_zoom, k_shear, k_hf, k_vf = jax.random.split(rng, 6)
    u = lambda k, shape=(): jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0)
    theta = params.rotation * (math.pi / 180.0) * u(k_rot)
    tx, ty = params.shift * u(k_shift, (2,)) * jnp.array([width, height], jnp.float32)
    zx, zy = 1.0 + params.zoom * u(k_zoom, (2,))
    sh = params.shear * u(k_shear)

    def flip(key, enabled):
        if not enabled:  # static: no random draw leaks into the result when disabled
            return jnp.float32(1.0)
        return jnp.where(jax.random.bernoulli(key, params.flip_prob), -1.0, 1.0)

    fx, fy = flip(k_hf, params.hflip), flip(k_vf, params.vflip)
    one, zero = jnp.float32(1.0), jnp.float32(0.0)
    c, s = jnp.cos(theta), jnp.sin(theta)
    rot = jnp.array([[c, -s, zero], [s, c, zero], [zero, zero, one]])
    shift = jnp.array([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
    shear = jnp.array([[one, sh, zero], [zero, one, zero], [zero, zero, one]])
    zoom = jnp.diag(jnp.stack([zx, zy, one]))
    flips = jnp.diag(jnp.stack([fx, fy, one]))
    return shift @ rot @ shear @ zoom @ flips


def _bilinear(image, xs, ys):
    """Samples image (H, W, C) at float coordinates; neighbours outside count as 0 (black)."""
    h, w, ch = image.shape
    flat = image.reshape(h * w, ch)
    x0, y0 = jnp.floor(xs), jnp.floor(ys)
    out = jnp.zeros(xs.shape + (ch,), image.dtype)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        wgt = (1.0 - jnp.abs(xs - xi)) * (1.0 - jnp.abs(ys - yi))
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        out = out + jnp.take(flat, idx, axis=0) * jnp.where(inside, wgt, 0.0)[..., None]
    return out


def augment_fn(image, rng, params: AugmentParams):
    """One image (H, W, C) float in [0, 1] -> a random transform of it, float32 in [0, 1]."""
    image = jnp.asarray(image, jnp.float32)
    h, w, _ = image.shape
    k_affine, k_bright = jax.random.split(rng)
    m = _sample_matrix(k_affine, params, h, w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                          jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    src_x = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] + cx
    src_y = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] + cy
    out = _bilinear(image, src_x, src_y)
    out = out + params.brightness * jax.random.uniform(k_bright, (), jnp.float32, -1.0, 1.0)
    return jnp.clip(out, 0.0, 1.0)


def augment_batch_fn(images, rngs, params: AugmentParams):
    """(B, H, W, C) images and (B, 2) keys -> (B, H, W, C); vmap of `augment_fn`."""
    return jax.vmap(lambda im, k: augment_fn(im, k, params))(images, rngs)


augment_batch = jax.jit(augment_batch_fn, static_argnums=2)


# ----------------------------------------------------------------------------- balancing

@dataclasses.dataclass(frozen=True)
class CopyPlan:
    """Which augmented copies to make: one row per copy.

    source: (n,) index (into the full image array) of the original each copy comes from;
    copy: (n,) copy number of that source (0, 1, ...); label: (n,) its class;
    rng: (n, 2) uint32 key, a function of (seed, source, copy) only.
    """
    source: np.ndarray
    copy: np.ndarray
    label: np.ndarray
    rng: np.ndarray
    seed: int

    def __len__(self):
        return len(self.source)

    def take(self, mask) -> "CopyPlan":
        mask = np.asarray(mask)
        return CopyPlan(self.source[mask], self.copy[mask], self.label[mask], self.rng[mask],
                        self.seed)


def _require_train(train, fn: str) -> np.ndarray:
    if not isinstance(train, TrainIndices):
        raise TypeError(f"{fn}: expected bt_jax.data.split.TrainIndices (from "
                        f"Splits.fold_train()/train_all()), got {type(train).__name__}; "
                        "augmentation only ever sees training images, so split first")
    return np.asarray(train.indices, dtype=np.int64)


def copy_keys(seed: int, source, copy) -> np.ndarray:
    """(n, 2) uint32 keys: fold_in(fold_in(PRNGKey(seed), source), copy)."""
    base = jax.random.PRNGKey(seed)
    fold = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.fold_in(base, s), c))
    if len(source) == 0:
        return np.zeros((0, 2), np.uint32)
    return np.asarray(fold(jnp.asarray(source, jnp.uint32), jnp.asarray(copy, jnp.uint32)))


def plan_copies(train: TrainIndices, labels, *, policy: str,
                multipliers: Mapping[int, int] | None = None, seed: int = 0) -> CopyPlan:
    """Plans augmented copies of training images only.

    policy "none": no copies.
    "augment2a" (method A): every class smaller than the largest gets copies, its images
      taken in a seeded order and cycled through, until it holds one image more than the
      largest class (n_copies = n_max - n_c + 1). The order is a seeded ranking of all
      images, so plans of different folds share most of their (source, copy) pairs.
    "multipliers" (method B): every image of class c gets multipliers[c] - 1 copies, so the
      class ends with multipliers[c] x its originals (multiplier 1 = no copies).
    """
    idx = _require_train(train, "plan_copies")
    labels = np.asarray(labels)
    if labels.ndim != 1 or (len(idx) and idx.max() >= len(labels)):
        raise ValueError(f"plan_copies: labels must be 1-D over all images and cover the "
                         f"training indices; got shape {labels.shape}, max index "
                         f"{idx.max() if len(idx) else None}")
    train_labels = labels[idx]
    if policy == "none":
        src = np.zeros(0, np.int64)
        cp = np.zeros(0, np.int64)
    elif policy == "augment2a":
        src, cp = _plan_augment2a(idx, train_labels, len(labels), seed)
    elif policy == "multipliers":
        src, cp = _plan_multipliers(idx, train_labels, multipliers)
    else:
        raise ValueError(f"plan_copies: policy expected one of {POLICIES}, got {policy!r}")
    return CopyPlan(source=src, copy=cp, label=labels[src], rng=copy_keys(seed, src, cp),
                    seed=int(seed))


def _plan_augment2a(idx, train_labels, n_images, seed):
    classes, counts = np.unique(train_labels, return_counts=True)
    n_max = counts.max()
    majority = classes[np.argmax(counts)]  # ties: the lowest label stays un-augmented
    # one seeded ranking of *all* images, so a fold's plan picks its sources in the same
    # order as the plan over train_all(): their (source, copy) pairs mostly coincide
    rank = np.random.default_rng(seed).permutation(n_images)
    srcs, cps = [], []
    for c, n in zip(classes, counts):
        if c == majority:
            continue
        members = idx[train_labels == c]
        members = members[np.argsort(rank[members], kind="stable")]
        need = n_max - n + 1
        j = np.arange(need)
        srcs.append(members[j % n])
        cps.append(j // n)
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(srcs).astype(np.int64), np.concatenate(cps).astype(np.int64)


def _plan_multipliers(idx, train_labels, multipliers):
    if multipliers is None:
        raise ValueError("plan_copies: policy 'multipliers' needs multipliers={label: factor}")
    missing = sorted(set(np.unique(train_labels).tolist()) - set(int(k) for k in multipliers))
    if missing:
        raise ValueError(f"plan_copies: no multiplier for class labels {missing}; "
                         f"got {dict(multipliers)}")
    mult = {int(k): int(v) for k, v in multipliers.items()}
    bad = {k: v for k, v in mult.items() if v < 1}
    if bad:
        raise ValueError(f"plan_copies: multipliers must be >= 1, got {bad}")
    extra = np.array([mult[int(c)] - 1 for c in train_labels], np.int64)
    src = np.repeat(idx, extra)
    cp = np.concatenate([np.arange(e) for e in extra]) if len(extra) else np.zeros(0, np.int64)
    return src, cp.astype(np.int64)


def plan_from_config(train: TrainIndices, labels, config, label_of: Mapping[str, int]) -> CopyPlan:
    """`plan_copies` with config.augment.balance/multipliers/seed; multipliers are keyed by
    class name in the config and mapped to labels through `label_of` (`Dataset.label_of`)."""
    mult = None
    if config.augment.balance == "multipliers":
        named = class_multipliers(config.augment.multipliers, tuple(label_of))
        mult = {label_of[name]: n for name, n in named.items()}
    return plan_copies(train, labels, policy=config.augment.balance, multipliers=mult,
                       seed=int(config.augment.seed))


def copies_for(plan: CopyPlan, train: TrainIndices) -> np.ndarray:
    """Bool mask over the plan's copies whose source is one of these training indices.

    With a plan made over `splits.train_all()`, each fold keeps only copies of its own
    training images (the same pixels, as keys depend on (seed, source, copy) only). For
    "multipliers" this equals planning on the fold directly; for "augment2a" the fold gets
    about its share of the copies, so the minority lands near, not exactly at, majority + 1.
    """
    return np.isin(plan.source, _require_train(train, "copies_for"))


def union_plans(plans) -> CopyPlan:
    """All distinct (source, copy) pairs of several plans of one seed, sorted; make (and
    extract features of) these once, then find each plan's rows with `positions`."""
    plans = list(plans)
    seeds = {p.seed for p in plans}
    if len(seeds) != 1:
        raise ValueError(f"union_plans: plans must share one seed, got seeds {sorted(seeds)}")
    src = np.concatenate([p.source for p in plans])
    cp = np.concatenate([p.copy for p in plans])
    lab = np.concatenate([p.label for p in plans])
    keys = np.concatenate([p.rng for p in plans])
    _, first = np.unique(np.stack([src, cp], 1), axis=0, return_index=True)
    return CopyPlan(src[first], cp[first], lab[first], keys[first], seeds.pop())


def positions(union: CopyPlan, plan: CopyPlan) -> np.ndarray:
    """Row of each of `plan`'s copies inside `union` (raises if one is missing)."""
    table = {(s, c): i for i, (s, c) in enumerate(zip(union.source.tolist(), union.copy.tolist()))}
    missing = [(s, c) for s, c in zip(plan.source.tolist(), plan.copy.tolist())
               if (s, c) not in table]
    if missing or union.seed != plan.seed:
        raise ValueError(f"positions: plan (seed {plan.seed}) has copies not in the union "
                         f"(seed {union.seed}): {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return np.array([table[(s, c)] for s, c in zip(plan.source.tolist(), plan.copy.tolist())],
                    np.int64)


# ----------------------------------------------------------------------------- making copies

def iter_copies(images, plan: CopyPlan, params: AugmentParams, *,
                chunk: int = 32) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (start, copies[start:start + chunk]) for the plan, computed `chunk` at a time.

    Every chunk has the same shape (the last is padded, then trimmed) so `augment_batch`
    compiles once. uint8 images are read as /255 and returned as uint8; float images are
    expected in [0, 1] and returned as float32.
    """
    images = np.asarray(images)
    as_uint8 = images.dtype == np.uint8
    for start in range(0, len(plan), chunk):
        rows = np.arange(start, min(start + chunk, len(plan)))
        out = _augment_rows(images, plan, rows, params, chunk, 255.0 if as_uint8 else 1.0)
        if as_uint8:
            out = np.round(out * 255.0).astype(np.uint8)
        yield start, out


def _augment_rows(images, plan: CopyPlan, rows: np.ndarray, params: AugmentParams,
                  chunk: int, scale: float = 1.0) -> np.ndarray:
    """float32 copies for plan rows `rows` (at most `chunk`), the batch padded to `chunk`
    rows by repeating the last so `augment_batch` compiles once; sources divided by scale."""
    padded = np.concatenate([rows, np.repeat(rows[-1:], chunk - len(rows))])
    batch = np.asarray(images[plan.source[padded]]).astype(np.float32)
    if scale != 1.0:
        batch /= scale
    out = augment_batch(jnp.asarray(batch), jnp.asarray(plan.rng[padded]), params)
    return np.asarray(out)[:len(rows)]


class CopyRows:
    """The plan's copies as a lazy array (like `store.ImageRows`): `rows[i:j]` reads the
    sources (from disk when `images` is a store) and augments them `chunk` at a time, so
    copies of 100,000 scans never sit in memory. Equal to `make_copies` row for row."""

    dtype = np.dtype(np.float32)

    def __init__(self, images, plan: CopyPlan, params: AugmentParams, *, chunk: int = 32):
        self.images, self.plan, self.params, self.chunk = images, plan, params, chunk

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.plan),) + tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, idx) -> np.ndarray:
        rows = np.arange(len(self.plan))[idx]
        if np.ndim(rows) == 0:
            return self[np.atleast_1d(rows)][0]
        flat = rows.ravel()
        out = np.empty((len(flat),) + self.shape[1:], np.float32)
        for s in range(0, len(flat), self.chunk):
            sel = flat[s:s + self.chunk]
            out[s:s + len(sel)] = _augment_rows(self.images, self.plan, sel, self.params,
                                                self.chunk)
        return out.reshape(rows.shape + self.shape[1:])

    def subset(self, idx) -> "CopyRows":
        return CopyRows(self.images, self.plan.take(np.asarray(idx)), self.params,
                        chunk=self.chunk)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def make_copies(images, labels, plan: CopyPlan, params: AugmentParams, *, chunk: int = 32):
    """All copies of a plan: (copies (n, H, W, C), labels_of_copies (n,), source (n,))."""
    images = np.asarray(images)
    dtype = np.uint8 if images.dtype == np.uint8 else np.float32
    out = np.empty((len(plan),) + images.shape[1:], dtype)
    for start, part in iter_copies(images, plan, params, chunk=chunk):
        out[start:start + len(part)] = part
    return out, np.asarray(labels)[plan.source], plan.source.copy()
