"""Leakage-safe splits: stratified hold-out test set and k folds over duplicate groups.

    s = make_splits(labels, groups, test_fraction=0.1, k=5, seed=0)
    s.test                      # indices never seen by search or training
    s.fold_train(2), s.fold_val(2)
    s.train_all()               # every non-test index (final training)

Splitting works on *groups* (exact-duplicate sets), so two copies of one image always
land on the same side. Training indices come wrapped in `TrainIndices`, the only type
the augmentation balancing functions accept: augmenting before splitting (method B's
leak) cannot be written through this API.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrainIndices:
    """Indices of training images of one split; made only by `Splits`."""
    indices: np.ndarray
    _token: object = dataclasses.field(repr=False, compare=False, default=None)

    def __post_init__(self):
        if self._token is not _TOKEN:
            raise TypeError("TrainIndices are made by Splits.fold_train()/train_all(), "
                            "so that augmentation only ever sees training images")

    def __len__(self):
        return len(self.indices)


_TOKEN = object()


@dataclasses.dataclass(frozen=True)
class Splits:
    """Index sets over the used images (positions in the manifest's used list)."""
    test: np.ndarray                 # (n_test,) int
    val: np.ndarray                  # (n_val,) fixed validation split, may be empty
    folds: tuple[np.ndarray, ...]    # k arrays of validation indices over the rest
    n: int

    @property
    def k(self) -> int:
        return len(self.folds)

    def fold_val(self, f: int) -> np.ndarray:
        return self.folds[f]

    def fold_train(self, f: int) -> TrainIndices:
        rest = np.concatenate([v for i, v in enumerate(self.folds) if i != f])
        return TrainIndices(np.sort(rest), _TOKEN)

    def train_all(self) -> TrainIndices:
        """Everything except test and the fixed validation split."""
        return TrainIndices(np.sort(np.concatenate(self.folds)), _TOKEN)

    def assignment(self) -> np.ndarray:
        """Per index: 'test', 'val' or 'fold{i}' (the fold it validates)."""
        out = np.empty(self.n, dtype=object)
        out[self.test] = "test"
        out[self.val] = "val"
        for i, v in enumerate(self.folds):
            out[v] = f"fold{i}"
        return out


def _allocate(glabels: np.ndarray, gsizes: np.ndarray, fractions: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Bin per group so that each bin's image count per class tracks its target fraction.

    Groups go largest first (ties in random order), each to the bin furthest below its
    target for that class *relative to that target* among the bins it fits (ties: at
    random, in proportion to the targets), so a small bin gets its share of the big groups
    too; a group that fits no bin goes where the most images are missing. The singletons at
    the end even out the counts, so bins differ by at most one image per class whenever
    singletons suffice. (Measured by absolute shortfall, a 10% test split received no
    group until the rest was nearly full, i.e. singletons only: on the four-class folder
    none of its 549 scans had a near copy, against half of every fold's.)
    """
    out = np.empty(len(glabels), int)
    live = np.flatnonzero(fractions > 0)
    weights = fractions[live] / fractions[live].sum()
    for c in np.unique(glabels):
        idx = np.flatnonzero(glabels == c)
        idx = idx[rng.permutation(len(idx))]
        idx = idx[np.argsort(-gsizes[idx], kind="stable")]
        target = fractions[live] * gsizes[idx].sum()
        have = np.zeros(len(live))
        for g in idx:
            # among the bins it fits (within half an image), the one relatively emptiest;
            # if it fits none, the one furthest below target in images
            fits = have + gsizes[g] <= target + 0.5
            score = np.where(fits, 1.0 - have / target, -np.inf) if fits.any() else target - have
            best = np.flatnonzero(np.isclose(score, score.max()))
            if len(best) == 1:
                b = best[0]
            elif np.allclose(weights[best], weights[best[0]]):
                b = best[rng.integers(len(best))]
            else:
                b = rng.choice(best, p=weights[best] / weights[best].sum())
            out[g] = live[b]
            have[b] += gsizes[g]
    return out


def _even_out(bins: np.ndarray, glabels: np.ndarray, gsizes: np.ndarray, k: int) -> np.ndarray:
    """Equal-share bins (folds): moves groups from the fullest to the emptiest fold of a
    class until the counts differ by at most one, as far as group sizes allow (a group of
    s images can move when s < the difference: the spread then shrinks)."""
    bins = bins.copy()
    for c in np.unique(glabels):
        mine = np.flatnonzero(glabels == c)
        for _ in range(len(mine) * k):
            have = np.bincount(bins[mine], weights=gsizes[mine], minlength=k)
            hi, lo = int(np.argmax(have)), int(np.argmin(have))
            gap = have[hi] - have[lo]
            movable = [g for g in mine if bins[g] == hi and gsizes[g] < gap]
            if gap <= 1 or not movable:
                break
            g = min(movable, key=lambda g: (gsizes[g], g))
            bins[g] = lo
    return bins


def make_splits(labels, groups, *, test_fraction: float = 0.1, val_fraction: float = 0.0,
                k: int = 5, seed: int = 0) -> Splits:
    """Stratified, group-aware, deterministic for a seed.

    labels: (n,) int class per image; groups: (n,) group id per image (images sharing an
    id, e.g. near-duplicates, stay on one side of every split). Fractions are of images.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups must be equal 1-D arrays, got {labels.shape} "
                         f"and {groups.shape}")
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    glabels = labels[first]
    bad = [uniq[g] for g in range(len(uniq)) if np.unique(labels[inverse == g]).size > 1]
    if bad:
        raise ValueError(f"groups {bad[:5]} hold images of different classes; resolve the "
                         "conflicting labels in the data folder")
    counts = np.bincount(glabels)
    if len(counts[counts > 0]) < 2 or (counts[counts > 0] < k + 2).any():
        raise ValueError(f"too few unique images per class for a test split and {k} folds: "
                         f"{counts.tolist()} (need at least {k + 2} of each class)")
    gsizes = np.bincount(inverse)
    rng = np.random.default_rng(seed)
    head = np.array([test_fraction, val_fraction, 1 - test_fraction - val_fraction])
    side = _allocate(glabels, gsizes, head, rng)
    rest = np.flatnonzero(side == 2)
    fold_of = np.full(len(uniq), -1)
    fold_of[rest] = _even_out(_allocate(glabels[rest], gsizes[rest], np.full(k, 1 / k), rng),
                              glabels[rest], gsizes[rest], k)
    img_side, img_fold = side[inverse], fold_of[inverse]
    for c in np.flatnonzero(counts):  # every class on every side, or the folds cannot score
        holes = [f"fold{f}" for f in range(k) if not ((img_fold == f) & (labels == c)).any()]
        holes += ["test"] * (test_fraction > 0 and not ((img_side == 0) & (labels == c)).any())
        if holes:
            big = gsizes[glabels == c].max()
            raise ValueError(f"class {c} has no image in {holes}: its images sit in groups too "
                             f"large to spread (the largest holds {big} of its {counts[c]} "
                             f"images; {k} folds need each under about 1/{k + 1})")
    return Splits(test=np.flatnonzero(img_side == 0), val=np.flatnonzero(img_side == 1),
                  folds=tuple(np.flatnonzero(img_fold == f) for f in range(k)), n=len(labels))


def refold(splits: Splits, labels, groups, *, seed: int) -> Splits:
    """The same test (and validation) split, new stratified group-aware k folds over the
    rest (repeated cross-validation): fold_train stays a TrainIndices, the test split is
    never touched."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    rest = np.sort(np.concatenate(splits.folds))
    uniq, first, inverse = np.unique(groups[rest], return_index=True, return_inverse=True)
    glabels, gsizes = labels[rest][first], np.bincount(inverse)
    rng = np.random.default_rng(seed)
    k = splits.k
    fold_of = _even_out(_allocate(glabels, gsizes, np.full(k, 1 / k), rng), glabels, gsizes, k)
    img_fold = fold_of[inverse]
    return Splits(test=splits.test, val=splits.val,
                  folds=tuple(rest[img_fold == f] for f in range(k)), n=splits.n)
