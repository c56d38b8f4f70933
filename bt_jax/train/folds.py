"""Fold membership as padded index arrays, so all k folds share static shapes (vmap).

    folds = make_fold_arrays(splits, n_originals, copy_source)   # train (k, T), val (k, V)
    rows = train_with_copies(splits.fold_train(0), n_originals, copy_source)

Copies of training images sit after the originals in every feature array (copy j is row
n_originals + j); a fold trains on its own training originals and their copies only, and
validates on originals only. Padding slots hold index 0 with mask False.
"""

from __future__ import annotations

import flax.struct
import numpy as np

from bt_jax.data.split import Splits, TrainIndices


@flax.struct.dataclass
class FoldArrays:
    """Fold membership as padded index arrays: train (k, T), val (k, V), bool masks.

    Padding slots hold index 0 and mask False; every fold gets the same static shapes.
    """
    train_idx: np.ndarray
    train_mask: np.ndarray
    val_idx: np.ndarray
    val_mask: np.ndarray

    @property
    def k(self) -> int:
        return self.train_idx.shape[0]


def pad_index_sets(sets) -> tuple[np.ndarray, np.ndarray]:
    """List of 1-D index arrays -> (idx (k, L) int32 zero-padded, mask (k, L) bool)."""
    sets = [np.asarray(s, np.int64).ravel() for s in sets]
    width = max(1, max(len(s) for s in sets))
    idx = np.zeros((len(sets), width), np.int32)
    mask = np.zeros((len(sets), width), bool)
    for i, s in enumerate(sets):
        idx[i, :len(s)] = s
        mask[i, :len(s)] = True
    return idx, mask


def train_with_copies(train: TrainIndices, n_originals: int, copy_source) -> np.ndarray:
    """A split's training originals plus the augmented copies of exactly those originals.

    Copies sit after the originals in the feature array: copy j is row n_originals + j and
    comes from original copy_source[j].
    """
    if not isinstance(train, TrainIndices):
        raise TypeError("train_with_copies: pass splits.fold_train(f) or splits.train_all() "
                        f"(a TrainIndices), got {type(train).__name__}")
    copy_source = np.asarray(copy_source, np.int64)
    copies = n_originals + np.flatnonzero(np.isin(copy_source, train.indices))
    return np.concatenate([np.asarray(train.indices, np.int64), copies])


class LeakageError(RuntimeError):
    """Training rows would include a held-out image or a copy of one (a bug, never data)."""


def row_sources(rows, n_originals: int, copy_source) -> tuple[np.ndarray, np.ndarray]:
    """(original image of each row, is-copy mask): row r < n_originals is image r, row
    n_originals + j is copy j of image copy_source[j]."""
    rows = np.asarray(rows, np.int64)
    is_copy = rows >= n_originals
    src = rows.copy()
    src[is_copy] = np.asarray(copy_source, np.int64)[rows[is_copy] - n_originals]
    return src, is_copy


def make_fold_arrays(splits: Splits, n_originals: int, copy_source,
                     fold_copies=None) -> FoldArrays:
    """Fold f trains on its training originals + their copies; validates on originals only.

    fold_copies: optional per-fold arrays of copy numbers (rows n_originals + j) that fold f
    planned for itself (augment2a balances each fold on its own); default: every copy whose
    source is one of the fold's training originals. Either way the leakage check runs."""
    copy_source = np.asarray(copy_source, np.int64).ravel()
    if splits.n != n_originals:
        raise ValueError(f"make_fold_arrays: splits cover {splits.n} images but "
                         f"n_originals={n_originals}")
    if len(copy_source) and (copy_source.min() < 0 or copy_source.max() >= n_originals):
        raise ValueError("make_fold_arrays: copy_source must index originals "
                         f"[0, {n_originals}), got range [{copy_source.min()}, "
                         f"{copy_source.max()}]")
    trains, vals = [], []
    for f in range(splits.k):
        if fold_copies is None:
            train = train_with_copies(splits.fold_train(f), n_originals, copy_source)
        else:
            train = np.concatenate([splits.fold_train(f).indices,
                                    n_originals + np.asarray(fold_copies[f], np.int64)])
        val = np.asarray(splits.fold_val(f))
        held = np.concatenate([val, splits.test, splits.val]).astype(np.int64)
        origin, _ = row_sources(train, n_originals, copy_source)
        leaked = np.intersect1d(origin, held)
        if leaked.size:  # cannot happen through TrainIndices; a tripwire that always runs
            raise LeakageError(f"fold {f}: training would see held-out images {leaked[:10]}")
        trains.append(train)
        vals.append(val)
    train_idx, train_mask = pad_index_sets(trains)
    val_idx, val_mask = pad_index_sets(vals)
    return FoldArrays(train_idx, train_mask, val_idx, val_mask)
