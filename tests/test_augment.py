"""Tests for bt_jax.data.augment: transform properties, compile-once, balancing plans."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import config as cfg
from bt_jax.data import augment as aug
from bt_jax.data.split import make_splits

FULL = aug.make_augment_params(cfg.base_config().augment)
IDENT = aug.AugmentParams()
N_NO, N_YES = 87, 141  # unique images per class in the brain_mri folder


def _image(size=33, seed=0):
    return np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)


def _key(i=0):
    return jax.random.PRNGKey(i)


@pytest.fixture(scope="module")
def splits_and_labels():
    labels = np.array([0] * N_NO + [1] * N_YES)
    groups = np.arange(len(labels))
    groups[5] = groups[4]  # one duplicate pair: must move together
    return make_splits(labels, groups, test_fraction=0.1, k=5, seed=0), labels


# ----------------------------------------------------------------------------- transform

def test_params_from_config_are_hashable_and_read_every_key():
    c = cfg.base_config().augment
    p = aug.make_augment_params(c)
    assert hash(p) == hash(aug.make_augment_params(c))
    assert (p.rotation, p.shift, p.zoom, p.shear, p.hflip, p.vflip, p.brightness) == (
        10.0, 0.1, 0.1, 0.1, True, True, 0.1)


def test_identity_params_return_input():
    img = _image()
    out = np.asarray(aug.augment_fn(img, _key(3), IDENT))
    np.testing.assert_allclose(out, img, atol=1e-5)


def test_same_key_same_output_different_key_different_output():
    img = _image()
    a = np.asarray(aug.augment_fn(img, _key(1), FULL))
    b = np.asarray(aug.augment_fn(img, _key(1), FULL))
    c = np.asarray(aug.augment_fn(img, _key(2), FULL))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-2


def test_values_stay_in_unit_range():
    imgs = np.stack([_image(32, s) for s in range(8)])
    strong = aug.AugmentParams(rotation=40, shift=0.3, zoom=0.4, shear=0.4, hflip=True,
                               vflip=True, brightness=0.5)
    out = np.asarray(aug.augment_batch(imgs, jax.random.split(_key(0), 8), strong))
    assert out.dtype == np.float32 and out.shape == imgs.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.min() == 0.0 and out.max() == 1.0  # black fill and clipping both happen


def test_hflip_and_vflip_with_probability_one():
    img = _image(32)
    h = aug.augment_fn(img, _key(0), aug.AugmentParams(hflip=True, flip_prob=1.0))
    v = aug.augment_fn(img, _key(0), aug.AugmentParams(vflip=True, flip_prob=1.0))
    np.testing.assert_allclose(np.asarray(h), img[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(v), img[::-1], atol=1e-5)


def test_flips_happen_about_half_the_time():
    img = _image(16)
    p = aug.AugmentParams(hflip=True)
    keys = jax.random.split(_key(0), 200)
    out = np.asarray(aug.augment_batch(np.broadcast_to(img, (200,) + img.shape), keys, p))
    flipped = np.abs(out - img[:, ::-1]).max(axis=(1, 2, 3)) < 1e-5
    same = np.abs(out - img).max(axis=(1, 2, 3)) < 1e-5
    assert (flipped ^ same).all()
    assert 70 < flipped.sum() < 130


def test_rotation_keeps_centre_pixel_and_moves_the_rest():
    img = _image(33)
    p = aug.AugmentParams(rotation=10.0)
    keys = jax.random.split(_key(0), 4)
    out = np.asarray(aug.augment_batch(np.broadcast_to(img, (4,) + img.shape), keys, p))
    np.testing.assert_allclose(out[:, 16, 16], np.broadcast_to(img[16, 16], (4, 3)), atol=1e-5)
    assert (np.abs(out - img).mean(axis=(1, 2, 3)) > 1e-2).all()


def test_shift_translates_content_within_range_and_keeps_mass():
    # one bright pixel in the middle: a pure shift moves its centroid by at most
    # shift * side in each axis and (bilinear weights summing to 1) keeps its mass
    img = np.zeros((21, 21, 3), np.float32)
    img[10, 10] = 1.0
    p = aug.AugmentParams(shift=0.1)  # at most 2.1 pixels
    keys = jax.random.split(_key(0), 64)
    out = np.asarray(aug.augment_batch(np.broadcast_to(img, (64,) + img.shape), keys, p))[..., 0]
    mass = out.sum(axis=(1, 2))
    np.testing.assert_allclose(mass, 1.0, atol=1e-4)
    yy, xx = np.mgrid[:21, :21]
    dy = (out * yy).sum(axis=(1, 2)) / mass - 10
    dx = (out * xx).sum(axis=(1, 2)) / mass - 10
    assert np.abs(dx).max() <= 2.1 + 1e-4 and np.abs(dy).max() <= 2.1 + 1e-4
    assert dx.min() < -1 and dx.max() > 1 and dy.min() < -1 and dy.max() > 1
    assert np.corrcoef(dx, dy)[0, 1] ** 2 < 0.2  # the two axes are drawn independently


def test_bilinear_matches_jax_map_coordinates_with_zero_fill():
    img = _image(24)
    rng = np.random.default_rng(1)
    ys = jnp.asarray(rng.uniform(-2, 26, (24, 24)), jnp.float32)
    xs = jnp.asarray(rng.uniform(-2, 26, (24, 24)), jnp.float32)
    ours = np.asarray(aug._bilinear(jnp.asarray(img), xs, ys))
    ref = np.stack([np.asarray(jax.scipy.ndimage.map_coordinates(
        img[..., ch], [ys, xs], order=1, mode="constant", cval=0.0)) for ch in range(3)], -1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_jit_compiles_once_for_a_fixed_batch_shape():
    traces = []

    def counted(images, rngs, params):
        traces.append(1)
        return aug.augment_batch_fn(images, rngs, params)

    fn = jax.jit(counted, static_argnums=2)
    imgs = np.stack([_image(32, s) for s in range(4)])
    for i in range(3):
        fn(imgs + 0.0 * i, jax.random.split(_key(i), 4), FULL).block_until_ready()
    assert len(traces) == 1
    fn(imgs, jax.random.split(_key(9), 4), aug.make_augment_params(cfg.base_config().augment))
    assert len(traces) == 1  # an equal params object hits the same cache entry


def test_vmap_matches_per_image_calls():
    imgs = np.stack([_image(32, s) for s in range(3)])
    keys = jax.random.split(_key(5), 3)
    batch = np.asarray(aug.augment_batch(imgs, keys, FULL))
    for i in range(3):
        np.testing.assert_allclose(batch[i], np.asarray(aug.augment_fn(imgs[i], keys[i], FULL)),
                                   atol=1e-5)


# ----------------------------------------------------------------------------- balancing

def test_balancing_rejects_anything_but_train_indices(splits_and_labels):
    s, labels = splits_and_labels
    plain = np.asarray(s.train_all().indices)
    with pytest.raises(TypeError, match="TrainIndices"):
        aug.plan_copies(plain, labels, policy="augment2a")
    with pytest.raises(TypeError, match="TrainIndices"):
        aug.plan_copies(np.arange(len(labels)), labels, policy="none")
    plan = aug.plan_copies(s.train_all(), labels, policy="augment2a")
    with pytest.raises(TypeError, match="split first"):
        aug.copies_for(plan, list(plain))


def test_none_policy_makes_no_copies(splits_and_labels):
    s, labels = splits_and_labels
    plan = aug.plan_copies(s.train_all(), labels, policy="none")
    assert len(plan) == 0 and plan.rng.shape == (0, 2)


def test_augment2a_minority_ends_one_above_majority(splits_and_labels):
    s, labels = splits_and_labels
    train = s.train_all()
    counts = np.bincount(labels[train.indices])
    plan = aug.plan_copies(train, labels, policy="augment2a", seed=0)
    assert counts[1] > counts[0]
    assert len(plan) == counts[1] - counts[0] + 1
    assert (plan.label == 0).all() and set(plan.source) <= set(train.indices)
    assert counts[0] + len(plan) == counts[1] + 1
    # sources cycle: each minority image used once before any is used twice
    uses = np.bincount(plan.source, minlength=len(labels))[train.indices[labels[train.indices] == 0]]
    assert uses.max() - uses.min() <= 1
    assert len(set(zip(plan.source.tolist(), plan.copy.tolist()))) == len(plan)


def test_multipliers_give_class_totals_of_multiplier_times_originals(splits_and_labels):
    s, labels = splits_and_labels
    train = s.fold_train(1)
    counts = np.bincount(labels[train.indices])
    plan = aug.plan_copies(train, labels, policy="multipliers", multipliers={1: 6, 0: 13})
    got = np.bincount(plan.label, minlength=2)
    assert got.tolist() == [12 * counts[0], 5 * counts[1]]
    assert (got + counts).tolist() == [13 * counts[0], 6 * counts[1]]
    per_src = np.bincount(plan.source, minlength=len(labels))
    assert set(per_src[train.indices].tolist()) == {12, 5}
    with pytest.raises(ValueError, match=r"no multiplier for class labels \[0\]"):
        aug.plan_copies(train, labels, policy="multipliers", multipliers={1: 6})
    with pytest.raises(ValueError, match="policy"):
        aug.plan_copies(train, labels, policy="smote")


def test_plans_are_deterministic_and_keys_depend_only_on_source_and_copy(splits_and_labels):
    s, labels = splits_and_labels
    a = aug.plan_copies(s.train_all(), labels, policy="augment2a", seed=3)
    b = aug.plan_copies(s.train_all(), labels, policy="augment2a", seed=3)
    c = aug.plan_copies(s.train_all(), labels, policy="augment2a", seed=4)
    for f in ("source", "copy", "label", "rng"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.rng, c.rng)
    mult = {0: 3, 1: 2}
    whole = aug.plan_copies(s.train_all(), labels, policy="multipliers", multipliers=mult, seed=3)
    fold = aug.plan_copies(s.fold_train(0), labels, policy="multipliers", multipliers=mult, seed=3)
    sub = whole.take(aug.copies_for(whole, s.fold_train(0)))
    for f in ("source", "copy", "label", "rng"):
        np.testing.assert_array_equal(getattr(fold, f), getattr(sub, f))


def test_fold_copies_come_only_from_that_folds_train_indices(splits_and_labels):
    s, labels = splits_and_labels
    plan = aug.plan_copies(s.train_all(), labels, policy="augment2a", seed=0)
    held_out = set(s.test.tolist())
    assert not held_out & set(plan.source.tolist())
    for f in range(s.k):
        mask = aug.copies_for(plan, s.fold_train(f))
        src = set(plan.source[mask].tolist())
        assert src <= set(s.fold_train(f).indices.tolist())
        assert not src & set(s.fold_val(f).tolist())
        assert not src & held_out
        assert mask.sum() < len(plan)  # the fold's validation images' copies are left out


def test_exact_fold_plans_share_copies_through_a_union(splits_and_labels):
    s, labels = splits_and_labels
    whole = aug.plan_copies(s.train_all(), labels, policy="augment2a", seed=1)
    folds = [aug.plan_copies(s.fold_train(f), labels, policy="augment2a", seed=1)
             for f in range(s.k)]
    union = aug.union_plans(folds + [whole])
    assert len(union) < len(whole) + 10  # a seeded global order: fold plans nearly nest
    for f, plan in enumerate(folds):
        counts = np.bincount(labels[s.fold_train(f).indices])
        assert counts[0] + len(plan) == counts[1] + 1  # exact balance within the fold
        rows = aug.positions(union, plan)
        np.testing.assert_array_equal(union.rng[rows], plan.rng)
        np.testing.assert_array_equal(union.source[rows], plan.source)
    other = aug.plan_copies(s.train_all(), labels, policy="augment2a", seed=2)
    with pytest.raises(ValueError, match="seed"):
        aug.union_plans([whole, other])
    with pytest.raises(ValueError, match="not in the union"):
        aug.positions(aug.union_plans(folds[:1]), whole)


def test_plan_from_config_maps_class_names(splits_and_labels):
    s, labels = splits_and_labels
    c = cfg.base_config()
    c.augment.balance = "multipliers"
    plan = aug.plan_from_config(s.fold_train(0), labels, c, {"no": 0, "yes": 1})
    counts = np.bincount(labels[s.fold_train(0).indices])
    assert np.bincount(plan.label).tolist() == [12 * counts[0], 5 * counts[1]]  # no: 13, yes: 6
    # the positive class is label 1 whatever its folder order: multipliers follow the name
    flipped = aug.plan_from_config(s.fold_train(0), labels, c, {"yes": 0, "no": 1})
    assert np.bincount(flipped.label).tolist() == [5 * counts[0], 12 * counts[1]]


def test_augment2a_brings_every_class_of_several_up_to_the_largest():
    labels = np.repeat([0, 1, 2, 3], [30, 9, 16, 6])
    s = make_splits(labels, np.arange(len(labels)), test_fraction=0.1, k=3, seed=0)
    train = s.fold_train(0)
    plan = aug.plan_copies(train, labels, policy="augment2a", seed=0)
    before = np.bincount(labels[train.indices], minlength=4)
    after = before + np.bincount(plan.label, minlength=4)
    top = before.max()
    # method A's augment2a: every smaller class ends one above the largest (its +1 quirk)
    assert after[np.argmax(before)] == top
    assert all(after[c] == top + 1 for c in range(4) if c != np.argmax(before))


def test_make_copies_in_chunks_compiles_once_and_matches_direct_call(splits_and_labels):
    s, labels = splits_and_labels
    rng = np.random.default_rng(0)
    images = (rng.random((len(labels), 24, 24, 3)) * 255).astype(np.uint8)
    plan = aug.plan_copies(s.fold_train(0), labels, policy="multipliers",
                           multipliers={0: 2, 1: 1}, seed=0)
    before = aug.augment_batch._cache_size()
    copies, clabels, source = aug.make_copies(images, labels, plan, FULL, chunk=16)
    assert aug.augment_batch._cache_size() - before <= 1
    assert len(plan) > 32 and len(plan) % 16 != 0  # several chunks, a padded last one
    assert copies.shape == (len(plan), 24, 24, 3) and copies.dtype == np.uint8
    np.testing.assert_array_equal(clabels, labels[plan.source])
    np.testing.assert_array_equal(source, plan.source)
    i = len(plan) - 1
    direct = aug.augment_fn(images[source[i]] / 255.0, jnp.asarray(plan.rng[i]), FULL)
    np.testing.assert_allclose(copies[i] / 255.0, np.asarray(direct), atol=1 / 255 + 1e-6)
    fcopies, _, _ = aug.make_copies(images.astype(np.float32) / 255.0, labels, plan, FULL,
                                    chunk=16)
    assert fcopies.dtype == np.float32
    np.testing.assert_allclose(fcopies, copies / 255.0, atol=1 / 255 + 1e-6)
