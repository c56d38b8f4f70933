import numpy as np
import pytest

from bt_jax.data import split


def _data(n_pos=141, n_neg=87, dup_every=10):
    labels = np.array([1] * n_pos + [0] * n_neg)
    groups = np.arange(len(labels))
    groups[::dup_every][1::2] = groups[::dup_every][::2][: len(groups[::dup_every][1::2])]
    for g in np.unique(groups):  # keep groups label-pure
        labels[groups == g] = labels[groups == g][0]
    return labels, groups


def test_disjoint_cover_and_deterministic():
    labels, groups = _data()
    s = split.make_splits(labels, groups, test_fraction=0.1, k=5, seed=3)
    allv = np.concatenate([s.test, *s.folds])
    assert sorted(allv.tolist()) == list(range(len(labels)))
    s2 = split.make_splits(labels, groups, test_fraction=0.1, k=5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(s.folds, s2.folds))
    assert np.array_equal(s.test, s2.test)
    s3 = split.make_splits(labels, groups, test_fraction=0.1, k=5, seed=4)
    assert not np.array_equal(s.test, s3.test)


def test_groups_never_straddle():
    labels, groups = _data(dup_every=3)
    s = split.make_splits(labels, groups, k=5, seed=0)
    side = s.assignment()
    for g in np.unique(groups):
        assert len(set(side[groups == g])) == 1


def test_stratified_and_fold_train_excludes_val_and_test():
    labels, groups = _data(dup_every=10**6)
    s = split.make_splits(labels, groups, test_fraction=0.1, k=5, seed=0)
    pos = [labels[f].sum() for f in s.folds]
    assert max(pos) - min(pos) <= 1
    assert abs(labels[s.test].mean() - labels.mean()) < 0.05
    for f in range(5):
        tr = s.fold_train(f).indices
        assert not set(tr) & set(s.fold_val(f)) and not set(tr) & set(s.test)
    assert len(s.train_all()) == len(labels) - len(s.test)


def test_the_test_split_gets_its_share_of_groups():
    """Half the images sit in groups of 4 (a patient's neighbouring slices): the test split
    holds about half grouped images too, not singletons only (the old allocation gave it
    none), and its class counts stay on target."""
    labels = np.repeat([0, 1, 2, 3], 400)
    groups = np.arange(len(labels))
    for c in range(4):
        start = c * 400
        groups[start:start + 200] = start + np.arange(200) // 4
    shares = []
    for seed in range(3):
        s = split.make_splits(labels, groups, test_fraction=0.1, k=5, seed=seed)
        sizes = np.bincount(groups)[groups]
        shares.append((sizes[s.test] > 1).mean())
        assert np.all(np.abs(np.bincount(labels[s.test]) - 40) <= 4)
        fold_sizes = [len(f) for f in s.folds]
        assert max(fold_sizes) - min(fold_sizes) <= 8
        side = s.assignment()
        assert all(len(set(side[groups == g])) == 1 for g in np.unique(groups))
    assert 0.3 < np.mean(shares) < 0.7, shares


@pytest.mark.parametrize("per_class,k,want", [(12, 3, 1), (16, 3, 2), (141, 5, 14)])
def test_singletons_give_exact_class_counts(per_class, k, want):
    """No group to share: the test split takes round(10%) of each class, whatever the seed
    (a tie-break by relative shortfall alone gave 2 of 12)."""
    labels = np.repeat([0, 1, 2], per_class)
    for seed in range(10):
        s = split.make_splits(labels, np.arange(len(labels)), test_fraction=0.1, k=k, seed=seed)
        assert np.bincount(labels[s.test]).tolist() == [want] * 3


def test_fixed_val_split():
    labels, groups = _data(dup_every=10**6)
    s = split.make_splits(labels, groups, test_fraction=0.1, val_fraction=0.1, k=3, seed=0)
    assert 20 <= len(s.val) <= 26 and not set(s.val) & set(s.train_all().indices)


def test_train_indices_cannot_be_forged():
    with pytest.raises(TypeError, match="made by Splits"):
        split.TrainIndices(np.arange(3))


def test_errors():
    with pytest.raises(ValueError, match="too few"):
        split.make_splits([0, 1, 0, 1], [0, 1, 2, 3], k=5)
    with pytest.raises(ValueError, match="different classes"):
        split.make_splits([0] * 10 + [1] * 10, [0] * 11 + list(range(1, 10)), k=2)
