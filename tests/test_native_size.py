"""preprocess.native_size (issue #10): each backbone gets images at its native resolution,
with one set of rows, folds and copies for all; the run of the chosen backbone carries
its size; mismatched views are refused."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from bt_jax.config import base_config
from bt_jax.data.preprocess import PreprocessParams
from bt_jax.method_a import steps
from bt_jax.weights import load

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import real_search  # noqa: E402

L0, L1 = real_search.LITE[:2]


def test_sized_config_copies_only_when_the_size_changes():
    c = base_config()
    assert load.sized_config(c, L1) is c and load.input_size(c, L1) == c.preprocess.size
    c.preprocess.native_size = True
    c1 = load.sized_config(c, L1)
    assert (c1.preprocess.size, c.preprocess.size) == (240, 224)  # the user's config untouched
    assert load.sized_config(c, "inceptionv3").preprocess.size == 299
    assert load.sized_config(c, L0) is c
    # model.json and cache keys hold what is done to an image: the size, not the switch
    rec = PreprocessParams.record(c1.preprocess)
    assert "native_size" not in rec and PreprocessParams(**rec).size == 240


@pytest.mark.e2e
def test_each_backbone_sees_its_own_size_on_the_same_rows(phantom_dir, tmp_path):
    c = real_search.get_config("quick")
    c.data.dir = str(phantom_dir)
    run = steps.prepare(c, tmp_path, (L0, L1))
    assert {n: v.config.preprocess.size for n, v in run.views.items()} == {L0: 224, L1: 240}
    assert run.ds.images.shape[1:] == (224, 224, 3) and run.config.preprocess.size == 224
    r1 = run.at(L1)
    assert r1.ds.images.shape[1:] == (240, 240, 3) and r1.config.preprocess.size == 240
    assert r1.copies.images.shape[1:] == (240, 240, 3)
    assert r1.folds is run.folds and r1.feats is run.feats
    assert r1.ds.names == run.ds.names and len(run.copies.union) == len(r1.copies.union) > 0
    n_rows = len(run.labels_all)
    assert run.feats[L0].shape == run.feats[L1].shape == (n_rows, 1280)
    assert c.preprocess.size == 224   # prepare never edits the user's config
    # a view whose rows differ (e.g. a crop failing at one size only) is refused by name
    bad = dataclasses.replace(run.views[L1], ds=dataclasses.replace(
        r1.ds, names=list(reversed(r1.ds.names))))
    with pytest.raises(RuntimeError, match=r"native_size.*224 px and at 240 px"):
        steps.check_same_rows(run.views[L0], bad)
    # a search on these features scores each backbone on the same folds
    res0, res1 = (steps.cv_head(run, n, steps.head.HeadHParams(
        units=16, dropout=0.0, lr=1e-3, batch_size=16, epochs=2, patience=2)) for n in (L0, L1))
    assert res0.val_acc.shape == res1.val_acc.shape
    assert np.isfinite(res0.val_loss_best).all() and np.isfinite(res1.val_loss_best).all()
