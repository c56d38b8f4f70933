"""Calibration: ECE, Brier, reliability curve and temperature scaling, against hand values."""

import numpy as np
import pytest

from bt_jax.reporting import calibration as C


def test_ece_and_brier_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.9])
    # bins of width 0.1 (right-closed): each case alone in its bin
    expected = np.mean([0.1, 0.3, 0.4, 0.1])
    assert C.expected_calibration_error(y, p) == pytest.approx(expected)
    assert C.brier_score(y, p) == pytest.approx(np.mean([0.01, 0.09, 0.16, 0.01]))
    curve = C.reliability_curve(y, p, n_bins=2)
    assert curve["count"].tolist() == [2, 2]
    assert curve["observed"].tolist() == [0.0, 1.0]
    np.testing.assert_allclose(curve["mean_predicted"], [0.2, 0.75])


def test_a_perfectly_calibrated_model_has_small_ece():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    assert C.expected_calibration_error(y, p) < 0.02
    rep = C.calibration_report(y[:500], p[:500], n_boot=100, seed=1)
    lo, hi = rep["ece"]["ci"]
    assert lo <= rep["ece"]["value"] <= hi and rep["n"] == 500


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 5000)
    y = (rng.uniform(0, 1, 5000) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * z))            # logits 3x too large
    t = C.fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = C.apply_temperature(overconfident, t)
    assert C.expected_calibration_error(y, fixed) < C.expected_calibration_error(y, overconfident)
    # temperature never moves a case across 0.5: decisions and AUC are unchanged
    assert np.array_equal(fixed >= 0.5, overconfident >= 0.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="probabilities in"):
        C.brier_score([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="temperature"):
        C.apply_temperature([0.5], 0.0)


def test_logistic_baseline_on_the_same_folds():
    from bt_jax.data import split
    from bt_jax.method_a import estimates
    from bt_jax.train import baseline
    from bt_jax.train.folds import make_fold_arrays
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 2
    feats = rng.normal(0, 1, (60, 5)) + labels[:, None] * 1.5
    s = split.make_splits(labels, np.arange(60), k=3, seed=0)
    folds = make_fold_arrays(s, 60, np.zeros(0, int))
    res = baseline.logistic_folds(feats, labels, folds, groups=np.arange(60), seed=0)
    assert res["val_acc"].shape == (3,) and res["val_acc"].mean() > 0.8
    assert np.isnan(res["val_prob"][~np.asarray(folds.val_mask)]).all()
    assert set(res["C"]) <= set(baseline.C_GRID)
    diff = {"accuracy": {"diff": 0.05, "ci": [0.01, 0.09]}, "roc_auc": {"diff": 0.0, "ci": [-0.02, 0.02]}}
    assert estimates.verdict({"head_minus_logistic": diff}).startswith(
        "The searched head beats logistic regression")


def test_logistic_inner_search_on_a_subset_of_whole_groups(monkeypatch):
    """Big folders: C is chosen on at most INNER_ROWS rows and the refit uses at most
    max_rows rows, each made of whole groups (a copy never apart from its original)."""
    from bt_jax.train import baseline
    groups = np.repeat(np.arange(400), 3)  # 1,200 rows, 3 per group
    sub = baseline._inner_subset(groups, seed=0, limit=100)
    assert 100 <= len(sub) <= 102 and len(sub) % 3 == 0
    assert all((groups[sub] == g).sum() == 3 for g in np.unique(groups[sub]))
    assert np.array_equal(sub, baseline._inner_subset(groups, seed=0, limit=100))
    assert len(baseline._inner_subset(groups, seed=0, limit=5000)) == 1200
    rng = np.random.default_rng(1)
    labels = np.arange(1200) % 2
    feats = rng.normal(0, 1, (1200, 4)) + labels[:, None]
    monkeypatch.setattr(baseline, "INNER_ROWS", 150)
    seen = {"path": [], "refit": []}
    from sklearn.linear_model import LogisticRegression
    real_fit = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, x, *a, **kw: seen[
        "path" if self.warm_start else "refit"].append(len(x)) or real_fit(self, x, *a, **kw))
    monkeypatch.setattr(baseline, "N_JOBS", 1)  # inner fits in this process, where fit is seen
    model, c, rows = baseline._fit_one(feats, labels, groups, inner_k=3, seed=0, max_rows=600)
    assert seen["path"] and max(seen["path"]) <= 152
    assert 600 <= rows <= 602 and rows % 3 == 0 and max(seen["refit"]) == rows
    assert model.predict(feats).shape == (1200,)
    assert model[-1].n_features_in_ == 4 and c in baseline.C_GRID


def test_logistic_path_chooses_the_grid_searchs_c():
    """Oracle: the warm-started path picks the C that a plain grid search of separate fits
    (scikit-learn's GridSearchCV on the same inner folds and score) picks, and the refit
    from the path's coefficients predicts like a cold fit with that C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from bt_jax.train import baseline
    rng = np.random.default_rng(3)
    for n_classes in (2, 3):
        labels = np.arange(300) % n_classes
        feats = rng.normal(0, 1, (300, 20)) + 0.6 * np.eye(n_classes, 20)[labels]
        groups = np.arange(300)
        model, c, _ = baseline._fit_one(feats, labels, groups, inner_k=3, seed=0, max_rows=10000)
        xs = StandardScaler().fit_transform(feats).astype(np.float32)
        inner = list(StratifiedGroupKFold(3, shuffle=True, random_state=0).split(xs, labels, groups))
        grid = GridSearchCV(LogisticRegression(max_iter=2000), {"C": list(baseline.C_GRID)},
                            cv=inner, scoring="neg_log_loss").fit(xs, labels)
        assert c == grid.best_params_["C"]
        cold = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        p_cold = cold.fit(feats, labels).predict_proba(feats)
        np.testing.assert_allclose(model.predict_proba(feats), p_cold, atol=2e-3)
