import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bt_jax.train import callbacks as cb
from bt_jax.train.head import make_optimizer


def _run_es(values, patience, **kw):
    es = cb.early_stopping_init({"w": jnp.float32(-1.0)}, mode=kw.get("mode", "min"))
    for e, v in enumerate(values):
        es = cb.early_stopping_update(es, v, e, {"w": jnp.float32(e)}, patience=patience, **kw)
    return es


def test_early_stopping_stops_after_patience_and_keeps_best_params():
    es = _run_es([1.0, 0.8, 0.9, 0.85, 0.95, 0.1, 0.05], patience=3)
    assert bool(es.stopped)
    assert int(es.stopped_epoch) == 4          # epochs 2, 3, 4 without improvement
    assert int(es.best_epoch) == 1
    assert float(es.best) == pytest.approx(0.8)
    assert float(es.best_params["w"]) == 1.0   # params saved at epoch 1
    # after stopping, later (masked) epochs change nothing, even a better value
    assert int(es.wait) == 3


def test_early_stopping_runs_through_when_improving_and_handles_nan():
    es = _run_es([3.0, 2.0, 1.0, 0.5], patience=1)
    assert not bool(es.stopped) and int(es.stopped_epoch) == -1 and int(es.best_epoch) == 3
    es = _run_es([1.0, float("nan"), float("nan")], patience=2)
    assert bool(es.stopped) and int(es.best_epoch) == 0 and int(es.stopped_epoch) == 2


def test_early_stopping_min_delta_and_max_mode():
    es = _run_es([1.0, 0.95, 0.9], patience=2, min_delta=0.1)
    assert bool(es.stopped) and int(es.best_epoch) == 0
    es = _run_es([0.5, 0.7, 0.6, 0.9], patience=2, mode="max")
    assert not bool(es.stopped) and int(es.best_epoch) == 3
    with pytest.raises(ValueError, match="mode"):
        cb.early_stopping_init({}, mode="up")


def test_early_stopping_jit_vmap_with_traced_patience():
    def run(values, patience):
        def body(es, xs):
            e, v = xs
            return cb.early_stopping_update(es, v, e, {"w": e.astype(jnp.float32)},
                                            patience=patience), None
        es, _ = jax.lax.scan(body, cb.early_stopping_init({"w": jnp.float32(0)}),
                             (jnp.arange(values.shape[0]), values))
        return es
    vals = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 0.5, 4.0, 5.0]])
    es = jax.jit(jax.vmap(run))(vals, jnp.array([2, 2]))
    np.testing.assert_array_equal(es.stopped_epoch, [2, 4])
    np.testing.assert_array_equal(es.best_epoch, [0, 2])
    np.testing.assert_array_equal(es.best_params["w"], [0.0, 2.0])


def _run_plateau(values, **kw):
    st = cb.plateau_init(1.0)
    lrs = []
    for v in values:
        st = cb.plateau_update(st, v, **kw)
        lrs.append(float(st.lr))
    return st, lrs


def test_plateau_reduces_after_patience_down_to_min_lr():
    vals = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    st, lrs = _run_plateau(vals, factor=0.5, patience=2, min_lr=0.1)
    assert lrs == pytest.approx([1, 1, .5, .5, .25, .25, .25, .125, .125, .1, .1, .1])
    assert int(st.n_reductions) == 4


def test_plateau_cooldown_delays_next_reduction():
    vals = [1.0] * 7
    _, lrs = _run_plateau(vals, factor=0.5, patience=1, cooldown=2, min_delta=0.0)
    # reduce at epoch 1; epochs 2, 3 cool down; epoch 4 counts wait=1 -> reduce again
    assert lrs == pytest.approx([1, .5, .5, .5, .25, .25, .25])


def test_set_learning_rate_on_head_and_nested_optimisers():
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    tx = make_optimizer("adam", 1e-3)
    s = cb.set_learning_rate(tx.init(params), 5e-4)
    assert float(s.hyperparams["learning_rate"]) == pytest.approx(5e-4)
    upd, _ = tx.update({"a": jnp.ones(3), "b": jnp.ones(2)}, s, params)
    # first Adam step moves by ~lr
    assert float(jnp.abs(upd["a"][0])) == pytest.approx(5e-4, rel=1e-3)
    multi = optax.multi_transform({"x": make_optimizer("sgd", 1e-2, 0.9),
                                   "y": make_optimizer("adam", 1e-3)}, {"a": "x", "b": "y"})
    ms = cb.set_learning_rate(multi.init(params), 0.1, scale=True)
    lrs = sorted(float(x) for x in jax.tree.leaves(
        jax.tree.map(lambda n: n.hyperparams["learning_rate"], ms.inner_states,
                     is_leaf=cb._is_inject)))
    assert lrs == pytest.approx([1e-4, 1e-3])
    with pytest.raises(ValueError, match="inject_hyperparams"):
        cb.set_learning_rate(optax.adam(1e-3).init(params), 1e-4)
