"""The fine-tuning recipe (#10): warm-up + cosine, a lower backbone learning rate, weight
decay on kernels only, on-the-fly augmentation with new draws each epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import config as cfg
from bt_jax.train import finetune, partitions


def _params():
    return {"backbone": {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)}},
            "head": {"out": {"kernel": jnp.ones((4, 1)), "bias": jnp.ones(1)}}}


def _labels(params, backbone="train"):
    return {"backbone": jax.tree.map(lambda _: backbone, params["backbone"]),
            "head": jax.tree.map(lambda _: "train", params["head"])}


def test_backbone_learns_at_a_fraction_of_the_head_learning_rate():
    p = _params()
    tx = partitions.make_tx(_labels(p), lr=0.1, optimizer="sgd", momentum=0.0,
                          backbone_lr_factor=0.25)
    grads = jax.tree.map(jnp.ones_like, p)
    upd, _ = tx.update(grads, tx.init(p), p)
    np.testing.assert_allclose(upd["head"]["out"]["kernel"], -0.1)
    np.testing.assert_allclose(upd["backbone"]["conv"]["kernel"], -0.025)
    frozen = partitions.make_tx(_labels(p, "frozen"), lr=0.1, optimizer="sgd", momentum=0.0,
                              backbone_lr_factor=0.25)
    upd, _ = frozen.update(grads, frozen.init(p), p)
    assert not np.asarray(upd["backbone"]["conv"]["kernel"]).any()


def test_weight_decay_shrinks_kernels_only():
    p = _params()
    tx = partitions.make_tx(_labels(p), lr=0.1, optimizer="adam", weight_decay=0.5)
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    np.testing.assert_allclose(upd["backbone"]["conv"]["kernel"], -0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(upd["head"]["out"]["kernel"], -0.1 * 0.5, rtol=1e-6)
    assert not np.asarray(upd["backbone"]["conv"]["bias"]).any()
    assert not np.asarray(upd["head"]["out"]["bias"]).any()


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    fs = finetune.FitSpec(epochs=4, lr=1e-3, schedule="warmup_cosine", warmup_epochs=1.0)
    sched = partitions.lr_schedule(fs, steps_per_epoch=10)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(25)) == pytest.approx(5e-4, rel=1e-3)  # halfway down the cosine
    assert float(sched(40)) == pytest.approx(0.0, abs=1e-9)
    assert partitions.lr_schedule(finetune.FitSpec(lr=2e-4), 10) == 2e-4
    # the backbone follows the schedule at its factor
    p = _params()
    tx = partitions.make_tx(_labels(p), lr=sched, optimizer="sgd", momentum=0.0,
                          backbone_lr_factor=0.5)
    state = tx.init(p)
    for _ in range(5):
        upd, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
    np.testing.assert_allclose(upd["head"]["out"]["bias"], -float(sched(4)), rtol=1e-6)
    np.testing.assert_allclose(upd["backbone"]["conv"]["bias"], -0.5 * float(sched(4)), rtol=1e-6)


def test_augment_all_draws_new_keys_every_epoch_for_every_row():
    n = 10
    data = finetune.FitData(images=np.zeros((n, 8, 8, 3), np.float32), labels=np.zeros(n, int),
                            train_src=np.arange(n), train_keys=np.zeros((n, 2), np.uint32),
                            train_aug=np.zeros(n, bool), val_idx=np.arange(2))
    fs = finetune.FitSpec(batch_size=n, augment_all=True)
    b0 = next(finetune._batches(data, fs, 1, np.random.default_rng(0), epoch=0))
    b1 = next(finetune._batches(data, fs, 1, np.random.default_rng(0), epoch=1))
    assert b0["aug"].all() and b1["aug"].all()
    assert len({tuple(k) for k in b0["keys"][0]}) == n  # one key per row
    assert not (b0["keys"] == b1["keys"]).all(axis=-1).any()  # all new next epoch
    plain = next(finetune._batches(data, finetune.FitSpec(batch_size=n), 1,
                                   np.random.default_rng(0)))
    assert not plain["aug"].any()


def test_recipe_settings_are_checked():
    c = cfg.base_config()
    c.finetune.schedule = "linear"
    with pytest.raises(cfg.ConfigError, match="^config.finetune.schedule: expected one of"):
        cfg.validate(c)
    c = cfg.base_config()
    c.finetune.backbone_lr_factor = 0.0
    with pytest.raises(cfg.ConfigError, match="^config.finetune.backbone_lr_factor: expected > 0"):
        cfg.validate(c)

