import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from bt_jax.data.split import make_splits
from bt_jax.train import head

HP = head.HeadHParams(units=16, dropout=0.2, lr=3e-3, batch_size=16, optimizer="adam",
                      epochs=6, patience=3)


def _blobs(n=160, d=64, sep=0.6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centre = rng.normal(size=d)
    centre *= sep * np.sqrt(d) / np.linalg.norm(centre) / 2   # blob distance = sep*sqrt(d)
    x = rng.normal(size=(n, d)) + np.where(y[:, None] == 1, centre, -centre)
    return x.astype(np.float32), y


def _folds(n, k=3, seed=0):
    parts = np.array_split(np.random.default_rng(seed).permutation(n), k)
    trains = [np.sort(np.concatenate([p for j, p in enumerate(parts) if j != f]))
              for f in range(k)]
    ti, tm = head.pad_index_sets(trains)
    vi, vm = head.pad_index_sets([np.sort(p) for p in parts])
    return head.FoldArrays(ti, tm, vi, vm)


def test_learnable_blobs_reach_high_val_accuracy_and_auc_matches_sklearn():
    x, y = _blobs()
    folds = _folds(len(y))
    res = head.fit_folds(x, y, folds, HP, jax.random.PRNGKey(0))
    assert res.val_acc_best.shape == (3,) and res.train_loss.shape == (3, HP.epochs)
    assert res.val_acc_mean > 0.9
    for f in range(3):
        m = folds.val_mask[f]
        prob = res.val_prob[f][m]
        assert np.isnan(res.val_prob[f][~m]).all()
        assert res.val_auc[f] == pytest.approx(roc_auc_score(y[folds.val_idx[f][m]], prob),
                                               abs=1e-6)
        # the returned params reproduce the returned validation probabilities
        p = head.predict_proba(res.fold(f).params, x[folds.val_idx[f][m]])
        np.testing.assert_allclose(p, prob, atol=1e-6)


def test_vmapped_equals_sequential():
    x, y = _blobs(n=120, seed=1)
    folds = _folds(len(y), k=3, seed=1)   # 120/3 -> equal sizes; make them unequal:
    folds = head.FoldArrays(folds.train_idx, folds.train_mask.copy(), folds.val_idx,
                            folds.val_mask.copy())
    folds.train_mask[0, -7:] = False
    folds.val_mask[2, -3:] = False
    hp = head.HeadHParams(units=8, dropout=0.3, lr=1e-2, batch_size=16, optimizer="sgd",
                          momentum=0.9, epochs=5, patience=2)
    a = head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(3))
    b = head.fit_folds_sequential(x, y, folds, hp, jax.random.PRNGKey(3))
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "val_prob", "val_auc",
                 "val_loss_best", "val_acc_best"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5,
                                   err_msg=name)
    for name in ("best_epoch", "stopped_epoch", "epochs_run"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-5), a.params, b.params)


def test_early_stopping_fires_and_restores_best():
    # validation labels are the opposite of training labels: the better the head fits the
    # training set, the worse the validation loss, so it rises after the first epoch
    x, y = _blobs(n=200, seed=2, sep=1.0)
    y_obs = y.copy()
    y_obs[150:] = 1 - y[150:]
    hp = head.HeadHParams(units=16, dropout=0.0, lr=1e-2, batch_size=16, epochs=10, patience=3)
    res = head.fit_one(x, y_obs, np.arange(150), np.arange(150, 200), hp, jax.random.PRNGKey(0))
    assert int(res.best_epoch) == 0
    assert int(res.stopped_epoch) == 3 and int(res.epochs_run) == 4
    assert np.isfinite(res.val_loss[:4]).all() and np.isnan(res.val_loss[4:]).all()
    assert np.isnan(res.train_acc[4:]).all()
    assert (np.diff(res.val_loss[:4]) > 0).all()
    # restored params are those of epoch 0, not of the last epoch run
    assert res.val_loss_best == pytest.approx(res.val_loss[0], abs=1e-6)
    assert res.val_loss_best < res.val_loss[3] - 0.1
    assert res.val_acc_best == pytest.approx(res.val_acc[0])


def test_padding_does_not_change_the_result():
    x, y = _blobs(n=150, seed=4)
    tr, va = np.arange(0, 90), np.arange(90, 120)
    rng = jax.random.PRNGKey(7)
    single = head.fit_one(x, y, tr, va, HP, jax.random.split(rng, 2)[0])
    # fold 0 = the same split padded (garbage indices under a False mask); fold 1 larger
    ti, tm = head.pad_index_sets([tr, np.arange(0, 130)])
    vi, vm = head.pad_index_sets([va, np.arange(130, 150)])
    ti[0, ~tm[0]] = np.arange((~tm[0]).sum()) % 150
    vi[1, ~vm[1]] = 100
    res = head.fit_folds(x, y, head.FoldArrays(ti, tm, vi, vm), HP, rng).fold(0)
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc"):
        np.testing.assert_allclose(getattr(res, name), getattr(single, name), atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(res.val_prob[:len(va)], single.val_prob, atol=1e-5)
    assert np.isnan(res.val_prob[len(va):]).all()
    assert int(res.best_epoch) == int(single.best_epoch)


def _same(a, b, atol=1e-5):
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "val_prob", "val_auc",
                 "val_loss_best", "val_acc_best"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, err_msg=name)
    for name in ("best_epoch", "stopped_epoch", "epochs_run"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol), a.params, b.params)


def test_capacity_does_not_change_the_result():
    """A setting trained inside a larger allocation (more hidden units, more rows per
    step, more steps), or beside other trials in one call, or with lanes run one by one
    instead of in lockstep, gives the numbers it gives alone in an exact allocation."""
    x, y = _blobs(n=110, seed=8)
    folds = _folds(len(y), k=3, seed=8)
    hps = [head.HeadHParams(units=8, dropout=0.3, lr=1e-2, batch_size=16, optimizer="sgd",
                            momentum=0.9, epochs=4, patience=2),
           head.HeadHParams(units=20, dropout=0.1, lr=3e-3, batch_size=32, optimizer="adam",
                            epochs=4, patience=1)]
    rng = jax.random.PRNGKey(5)
    alone = [head.fit_folds(x, y, folds, hp, rng, lane_batch=3) for hp in hps]
    big = head.head_lanes.Capacity(units=48, batch=40, steps=9, epochs=4)
    for hp, ref in zip(hps, alone):
        _same(head.fit_folds(x, y, folds, hp, rng, capacity=big, lane_batch=1), ref)
        assert ref.params["hidden"]["kernel"].shape == (3, 64, hp.units)
    together = head.fit_trials(x, y, folds, hps, rng, lane_batch=4)
    for res, ref in zip(together, alone):
        _same(res, ref)
    with pytest.raises(ValueError, match="capacity"):
        head.fit_folds(x, y, folds, hps[1], rng, capacity=big._replace(units=10))


def test_one_program_serves_every_setting_of_a_capacity():
    x, y = _blobs(n=96, d=32, seed=5)
    folds = _folds(96, k=2)
    cap = head.head_lanes.Capacity(units=32, batch=32, steps=4, epochs=2)
    jitted = head.head_lanes.jitted()
    hp = head.HeadHParams(units=24, dropout=0.1, lr=1e-3, batch_size=16, epochs=2, patience=2)
    head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(0), capacity=cap, lane_batch=2)
    before = jitted._cache_size()
    x2, y2 = _blobs(n=96, d=32, seed=6)
    for new in (dict(lr=5e-2), dict(dropout=0.7, momentum=0.5, patience=1, optimizer="sgd"),
                dict(units=7, batch_size=32), dict(units=32, batch_size=20)):
        hp2 = head.HeadHParams(**{**hp.__dict__, **new})
        res = head.fit_folds(x2, y2.astype(np.int64), folds, hp2, jax.random.PRNGKey(1),
                             capacity=cap, lane_batch=2)
        assert res.params["hidden"]["kernel"].shape == (2, 32, hp2.units)
        assert np.isfinite(res.val_loss_best).all()
    assert jitted._cache_size() == before
    head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(0), lane_batch=2)  # exact allocation
    assert jitted._cache_size() == before + 1


@pytest.mark.parametrize("adam", [True, False])
def test_fused_optimizer_step_equals_optax(adam):
    """The head's one-pass update (traced Adam/SGD choice, bias corrections folded into
    scalars) takes the steps optax.adam(eps=1e-7) / optax.sgd(momentum) take."""
    rng = np.random.default_rng(0)
    shapes = {"hidden": {"kernel": (7, 5), "bias": (5,)}, "out": {"kernel": (5, 1), "bias": (1,)}}
    leaf = lambda s: jnp.asarray(rng.normal(size=s), jnp.float32)
    is_shape = lambda s: isinstance(s, tuple)
    params = jax.tree.map(leaf, shapes, is_leaf=is_shape)
    grads = [jax.tree.map(leaf, shapes, is_leaf=is_shape) for _ in range(6)]
    lr, momentum = 3e-3, 0.8
    ref_opt = (optax.adam(lr, b1=0.9, b2=0.999, eps=1e-7) if adam
               else optax.sgd(lr, momentum=momentum))
    hp = {"adam": jnp.asarray(adam), "lr": jnp.float32(lr), "momentum": jnp.float32(momentum)}
    ref, ref_state = params, ref_opt.init(params)
    ours, state = params, head.head_lanes.opt_init(params)
    step = jax.jit(head.head_lanes.opt_apply)
    for g in grads:
        upd, ref_state = ref_opt.update(g, ref_state, ref)
        ref = optax.apply_updates(ref, upd)
        ours, state = step(ours, g, state, hp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, ref)
    assert not np.allclose(ours["hidden"]["kernel"], params["hidden"]["kernel"])
    assert int(state["count"]) == len(grads)


def test_make_fold_arrays_never_trains_on_copies_of_held_out_images():
    rng = np.random.default_rng(0)
    n = 60
    labels = (rng.random(n) < 0.65).astype(int)
    groups = np.arange(n)
    groups[[5, 6, 7]] = 5                       # a duplicate group
    labels[[5, 6, 7]] = labels[5]
    splits = make_splits(labels, groups, test_fraction=0.15, k=4, seed=0)
    # copies of every image, test included (a plan that over-reaches must still not leak)
    copy_source = np.concatenate([np.arange(n), rng.choice(n, 40)])
    folds = head.make_fold_arrays(splits, n, copy_source)
    assert folds.k == 4
    for f in range(4):
        rows = folds.train_idx[f][folds.train_mask[f]]
        origin = np.where(rows >= n, copy_source[np.clip(rows - n, 0, None)], rows)
        held = np.concatenate([splits.fold_val(f), splits.test])
        assert not np.isin(origin, held).any()
        # every copy of a training original is there, and the originals themselves
        want = n + np.flatnonzero(np.isin(copy_source, splits.fold_train(f).indices))
        assert set(rows[rows >= n]) == set(want)
        assert set(rows[rows < n]) == set(splits.fold_train(f).indices)
        val = folds.val_idx[f][folds.val_mask[f]]
        assert (val < n).all() and set(val) == set(splits.fold_val(f))
    with pytest.raises(ValueError, match="copy_source"):
        head.make_fold_arrays(splits, n, [n + 3])
    with pytest.raises(TypeError, match="TrainIndices"):
        head.train_with_copies(np.arange(5), n, copy_source)


def test_hparams_and_optimizer_validation():
    with pytest.raises(ValueError, match="HeadHParams.dropout"):
        head.HeadHParams(dropout=1.0)
    with pytest.raises(ValueError, match="HeadHParams.optimizer"):
        head.HeadHParams(optimizer="rmsprop")
    with pytest.raises(ValueError, match="optimizer"):
        head.make_optimizer("lamb", 1e-3)
    with pytest.raises(ValueError, match="same epochs"):
        head.fit_trials(np.zeros((4, 3)), np.zeros(4), _folds(4, k=2),
                        [HP, head.HeadHParams(epochs=2)], jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="features"):
        head.fit_one(np.zeros((4, 3)), np.zeros(5), [0], [1], HP, jax.random.PRNGKey(0))


def test_masked_auc_handles_ties_and_missing_class():
    s = jnp.array([0.1, 0.4, 0.4, 0.8, 0.3, 9.0])
    y = jnp.array([0, 0, 1, 1, 1, 0])
    m = jnp.array([True, True, True, True, True, False])
    assert float(head.masked_auc(s, y, m)) == pytest.approx(
        roc_auc_score(np.array(y)[:5], np.array(s)[:5]))
    assert np.isnan(float(head.masked_auc(s, jnp.ones(6), m)))
    # many ties and padding, against sklearn (the search's AUC must not need V x V memory)
    rng = np.random.default_rng(3)
    s, y, m = rng.integers(0, 7, 3000) / 7.0, rng.integers(0, 2, 3000), rng.random(3000) < 0.8
    assert float(head.masked_auc(jnp.asarray(s), jnp.asarray(y), jnp.asarray(m))) == \
        pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-6)


def test_fit_one_in_a_shared_allocation():
    """Single heads (final head, ensemble members) of different settings on the same rows
    share one program when given the search's allocation, with the numbers they get alone;
    a setting the allocation cannot serve trains in its own."""
    x, y = _blobs(n=100, d=16, seed=9)
    tr, va = np.arange(70), np.arange(70, 100)
    cap = head.head_lanes.capacity_for([32], [16, 32], len(tr), 3, 1)
    hps = [head.HeadHParams(units=u, dropout=0.1, lr=3e-3, batch_size=b, epochs=3, patience=2)
           for u, b in ((8, 16), (32, 32))]
    rng = jax.random.PRNGKey(3)
    head.fit_one(x, y, tr, va, hps[0], rng, capacity=cap)
    before = head.head_lanes.jitted()._cache_size()
    shared = head.fit_one(x, y, tr, va, hps[1], rng, capacity=cap)
    assert head.head_lanes.jitted()._cache_size() == before
    _same(shared, head.fit_one(x, y, tr, va, hps[1], rng))
    wide = head.HeadHParams(**{**hps[1].__dict__, "units": 64})
    assert head.fit_one(x, y, tr, va, wide, rng, capacity=cap).params["hidden"]["kernel"].shape == (16, 64)


def test_capacity_if_serving_falls_back_to_an_exact_allocation():
    cap = head.head_lanes.capacity_for([32, 128], [16, 32], 100, 5, 1)
    inside = head.HeadHParams(units=64, batch_size=32, epochs=5)
    assert head.capacity_if_serving(cap, [inside], 100) == cap
    for outside in (head.HeadHParams(units=1024, batch_size=32, epochs=5),  # wider
                    head.HeadHParams(units=64, batch_size=8, epochs=5),     # more steps
                    head.HeadHParams(units=64, batch_size=32, epochs=6)):   # more epochs
        assert head.capacity_if_serving(cap, [outside], 100) is None
    assert head.capacity_if_serving(None, [inside], 100) is None
    assert head.capacity_if_serving(cap, [inside], 100, n_classes=4) is None  # 4 outputs


# ----------------------------------------------------------------------------- oracle

def _reference_init(rng, d, units, outputs):
    """Keras' Glorot-uniform kernels, zero biases; drawn as (units, d) so that unit j's
    weights do not depend on the width of the allocation (head_lanes.init_params)."""
    k1, k2 = jax.random.split(rng)
    w1 = jax.random.uniform(k1, (units, d), jnp.float32, -1.0, 1.0).T * np.sqrt(6 / (d + units))
    w2 = jax.random.uniform(k2, (units, outputs), jnp.float32, -1.0, 1.0)
    return {"hidden": {"kernel": w1, "bias": jnp.zeros(units)},
            "out": {"kernel": w2 * np.sqrt(6 / (units + outputs)), "bias": jnp.zeros(outputs)}}


def _reference_loss(params, x, y, keep=None, rate=0.0):
    """Dense(relu) -> inverted dropout (kept units scaled by 1/(1-rate)) -> Dense; mean loss."""
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    if keep is not None:
        h = h * keep / (1.0 - rate)
    logits = h @ params["out"]["kernel"] + params["out"]["bias"]
    if logits.shape[-1] == 1:
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], y).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32)).mean()


@functools.lru_cache(maxsize=None)
def _reference_step(hp):
    """The optimiser (optax's Adam with Keras' eps, or heavy-ball SGD) and its jitted step."""
    tx = (optax.adam(hp.lr, b1=0.9, b2=0.999, eps=1e-7) if hp.optimizer == "adam"
          else optax.sgd(hp.lr, momentum=hp.momentum))

    @jax.jit
    def step(params, state, x, y, keep):
        grads = jax.grad(_reference_loss)(params, x, y, keep, hp.dropout)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return tx, step


_reference_val_loss = jax.jit(_reference_loss)


def _reference_fit(x, y, train_rows, val_rows, hp, rng, outputs=1):
    """The head's training written plainly: optax, Python loops, Keras' EarlyStopping
    (restore_best_weights). Each epoch e draws from fold_in(loop key, e): the rows in the
    order of one uniform number each, and unit j's dropout keep-mask from fold_in(dropout
    key, j), one Bernoulli per position in that order."""
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.float32)
    init_rng, loop_rng = jax.random.split(rng)
    params = _reference_init(init_rng, x.shape[1], hp.units, outputs)
    tx, step = _reference_step(hp)
    state = tx.init(params)
    best, best_params, best_epoch, wait, stopped, val_losses = np.inf, params, -1, 0, -1, []
    for epoch in range(hp.epochs):
        k_order, k_drop = jax.random.split(jax.random.fold_in(loop_rng, epoch))
        rows = np.asarray(train_rows)[np.argsort(
            np.asarray(jax.random.uniform(k_order, (len(train_rows),))), kind="stable")]
        keep = np.stack([np.asarray(jax.random.bernoulli(jax.random.fold_in(k_drop, j),
                                                         1 - hp.dropout, (len(rows),)))
                         for j in range(hp.units)], axis=1).astype(np.float32)
        for s in range(0, len(rows), hp.batch_size):
            b = rows[s:s + hp.batch_size]
            params, state = step(params, state, x[b], y[b], keep[s:s + hp.batch_size])
        val_losses.append(float(_reference_val_loss(params, x[val_rows], y[val_rows])))
        if val_losses[-1] < best:
            best, best_params, best_epoch, wait = val_losses[-1], params, epoch, 0
        else:
            wait += 1
        if wait >= hp.patience:
            stopped = epoch
            break
    return dict(params=best_params, best_epoch=best_epoch, stopped_epoch=stopped,
                val_loss=np.array(val_losses))


def _agrees_with_reference(res, ref):
    assert int(res.best_epoch) == ref["best_epoch"]
    assert int(res.stopped_epoch) == ref["stopped_epoch"]
    n = len(ref["val_loss"])
    assert int(res.epochs_run) == n and np.isnan(res.val_loss[n:]).all()
    np.testing.assert_allclose(res.val_loss[:n], ref["val_loss"], rtol=1e-4, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
                 res.params, ref["params"])


def test_head_training_equals_a_plain_optax_reference():
    """An independent oracle for the head loop (initial weights, shuffling, mini-batches,
    dropout and its scaling, Adam/SGD, early stopping, restore-best): every lane of one
    call (two settings x three folds of unequal size) and a three-class head give the
    parameters and epochs of a plain optax loop. It fails for each defect planted while
    writing it: dropout without 1/(1-rate), stopping one epoch late, no shuffling, one key
    for every epoch, no restore-best."""
    x, y = _blobs(n=200, seed=2, sep=1.0)
    y[150:] = 1 - y[150:]     # rows 150..199: labels opposite to what training teaches
    # fold 0 validates on ordinary rows (no early stop); folds 1, 2 on the opposite
    # labels: the validation loss rises from the first epoch and early stopping fires
    # (training sizes 100, 52, 148 leave a last batch of 4 rows at 16 and 24 rows a step)
    ti, tm = head.pad_index_sets([np.arange(100), np.arange(0, 104, 2), np.arange(2, 150)])
    vi, vm = head.pad_index_sets([np.arange(100, 150), np.arange(150, 200), np.arange(150, 200)])
    folds = head.FoldArrays(ti, tm, vi, vm)
    hps = [head.HeadHParams(units=8, dropout=0.3, lr=3e-3, batch_size=16, optimizer="adam",
                            epochs=5, patience=3),
           head.HeadHParams(units=12, dropout=0.5, lr=2e-2, batch_size=24, optimizer="sgd",
                            momentum=0.9, epochs=5, patience=2)]
    rng = jax.random.PRNGKey(3)
    stopped = []
    for hp, res in zip(hps, head.fit_trials(x, y, folds, hps, rng)):
        for f, fold_rng in enumerate(jax.random.split(rng, 3)):    # fold f's key
            ref = _reference_fit(x, y, ti[f][tm[f]], vi[f][vm[f]], hp, fold_rng)
            _agrees_with_reference(res.fold(f), ref)
            stopped.append(ref["stopped_epoch"])
    assert stopped[0] == stopped[3] == -1 and min(stopped[1:3] + stopped[4:]) >= 2
    # Three classes (softmax head)
    y3 = (x[:, 0] > 0.5).astype(int) + (x[:, 1] > 0.5)
    hp = head.HeadHParams(units=6, dropout=0.2, lr=5e-3, batch_size=48, epochs=3, patience=3)
    tr, va, rng = np.arange(2, 150), np.arange(150, 200), jax.random.PRNGKey(4)
    _agrees_with_reference(head.fit_one(x, y3, tr, va, hp, rng, n_classes=3),
                           _reference_fit(x, y3, tr, va, hp, rng, outputs=3))
