"""Nested CV (#10): each outer fold is held out of its own search, and the estimate is
made only of predictions on images their search never saw."""

import sys
from pathlib import Path

import jax
import numpy as np
import optuna
import pytest

from bt_jax import tuning
from bt_jax.method_a import nested, steps
from bt_jax.train import head
from bt_jax.train.folds import make_fold_arrays, row_sources

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import quickstart  # noqa: E402

pytestmark = pytest.mark.e2e  # whole pipelines: `pytest -m e2e`


def test_nested_cv_keeps_each_outer_fold_out_of_its_search(tmp_path):
    c = quickstart.get_config("quick")
    c.weights.random_init = True
    c.search.trials, c.search.nested_trials, c.eval.bootstrap = 2, 2, 50
    run = steps.prepare(c, tmp_path, c.search.backbones)
    s, n = run.ds.splits, len(run.ds.labels)
    for f in range(s.k):  # the inner folds never train on (or score with) the outer fold
        inner = make_fold_arrays(nested.inner_splits(s, f), n, run.copies.union.source)
        seen = np.concatenate([np.asarray(inner.train_idx)[np.asarray(inner.train_mask)],
                               np.asarray(inner.val_idx)[np.asarray(inner.val_mask)]])
        src, _ = row_sources(seen, n, run.copies.union.source)
        assert not np.intersect1d(src, s.fold_val(f)).size and not np.intersect1d(src, s.test).size
        assert inner.k == s.k - 1

    def objective(p):
        res = steps.cv_head(run, p["backbone"], head.HeadHParams.from_trial(p, c.train))
        return res.val_acc_mean, {}
    study = tuning.run_search(c, tmp_path, objective, available_backbones=list(run.feats),
                              progress=False)
    est = nested.nested_cv(run, study)
    n_fold_images = sum(len(v) for v in s.folds)
    assert est["n_images"] == n_fold_images and est["k"] == s.k
    assert 0 <= est["accuracy"]["value"] <= 1 and len(est["accuracy"]["ci"]) == 2
    assert est["search_best_cv_accuracy"] == study.best_value
    assert est["search_minus_nested_accuracy"] == study.best_value - est["accuracy"]["value"]
    for f in range(s.k):
        outer = optuna.load_study(study_name="quickstart-search-nested" + str(f),
                                  storage=f"sqlite:///{tmp_path / 'nested' / f'outer{f}' / 'search.db'}")
        assert len(outer.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    sizes = [len(v) for v in s.folds]  # the pooled accuracy is the fold accuracies' weighted mean
    assert np.average(est["outer_fold_accuracy"], weights=sizes) == \
        pytest.approx(est["accuracy"]["value"])
    # a relaunch reuses every outer study: same estimate, no new trial
    again = nested.nested_cv(run, study)
    assert again["accuracy"] == est["accuracy"] and again["outer_folds"] == est["outer_folds"]
    heading, text, _ = nested.nested_section(est)
    assert heading == "Nested cross-validation" and "| 0 |" in text
    assert jax.numpy.isfinite(est["roc_auc"]["value"])
