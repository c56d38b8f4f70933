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
from sklearn.model_selection import StratifiedKFold, train_test_split


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


def _group_table(labels: np.ndarray, groups: np.ndarray):
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    glabels = labels[first]
    for g in range(len(uniq)):
        if len(set(labels[inverse == g].tolist())) > 1:
            raise ValueError(f"duplicate group {uniq[g]!r} holds images of different classes; "
                             "resolve the conflicting labels in the data folder")
    return uniq, glabels, inverse


def _expand(group_ids: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    return np.sort(np.flatnonzero(np.isin(inverse, group_ids)))


def make_splits(labels, groups, *, test_fraction: float = 0.1, val_fraction: float = 0.0,
                k: int = 5, seed: int = 0) -> Splits:
    """Stratified, group-aware, deterministic for a seed.

    labels: (n,) int class per image; groups: (n,) duplicate-group id per image
    (unique images have their own id). Fractions are of unique images.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups must be equal 1-D arrays, got {labels.shape} "
                         f"and {groups.shape}")
    uniq, glabels, inverse = _group_table(labels, groups)
    counts = np.bincount(glabels)
    if (counts[counts > 0] < k + 2).any() or len(counts[counts > 0]) < 2:
        raise ValueError(f"too few unique images per class for a test split and {k} folds: "
                         f"{counts.tolist()} (need at least {k + 2} of each class)")
    gidx = np.arange(len(uniq))
    rest, test = train_test_split(gidx, test_size=test_fraction, stratify=glabels,
                                  random_state=seed)
    val = np.array([], dtype=int)
    if val_fraction > 0:
        rest, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                     stratify=glabels[rest], random_state=seed + 1)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = tuple(_expand(rest[v], inverse) for _, v in skf.split(rest, glabels[rest]))
    return Splits(test=_expand(test, inverse), val=_expand(val, inverse), folds=folds,
                  n=len(labels))
